"""The options of a classification run, validated before any image is read."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Literal, get_args

from resnext_cli.errors import ConfigError
from resnext_cli.imaging.limits import DEFAULT_MAX_PIXELS
from resnext_cli.model.registry import resolve_model

# The choices each option offers; the plan gives 'auto' its meaning.
PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16"]
DecodeChoice = Literal["auto", "cpu", "gpu"]
RuntimeChoice = Literal["auto", "torch", "openvino"]
PRECISIONS: tuple[PrecisionChoice, ...] = get_args(PrecisionChoice)
DECODERS: tuple[DecodeChoice, ...] = get_args(DecodeChoice)
RUNTIMES: tuple[RuntimeChoice, ...] = get_args(RuntimeChoice)
# The command line's --runtime when it is not given.
RUNTIME_ENV = "RESNEXT_RUNTIME"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Config:
    """Everything that decides how inputs become records."""

    model: str = "resnext50_32x4d"
    weights: str = "DEFAULT"
    checkpoint: str | None = None
    labels: str | None = None
    topk: int = 5
    batch_size: int | None = None
    device: str = "auto"
    precision: PrecisionChoice = "auto"
    exact: bool = False
    workers: int | None = None
    offline: bool = False
    timeout: float = 10.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_download_bytes: int = 100 << 20
    allow_truncated: bool = False
    quantized: bool = False
    decode: DecodeChoice = "auto"
    # None: no categories; "default": the bundled ImageNet grouping; else a mapping file.
    categories: str | None = None
    # --embeddings: each record also carries the pooled features (the input of fc).
    embeddings: bool = False
    # torch.compile the forward pass (the first batch pays for compiling).
    compile: bool = False
    # auto: OpenVINO on the CPU when its extra is installed, else torch (see plan.py).
    runtime: RuntimeChoice = "auto"

    def __post_init__(self) -> None:
        # Each value on its own; which values contradict each other is the plan's to say
        # (run/plan.py, refuse_pairs), where --exact and --quantized get their meaning.
        # The canonical name, so records say 'resnext50_32x4d' for '50'; which weights of
        # it (a pair of options with --quantized) the plan looks up.
        object.__setattr__(self, "model", resolve_model(self.model))
        if self.topk < 1:
            raise ConfigError(f"--topk must be at least 1, not {self.topk}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, not {self.workers}")
        if not math.isfinite(self.timeout) or self.timeout <= 0:
            raise ConfigError(
                f"--timeout must be a positive number of seconds, not {self.timeout:g}"
            )
        if self.max_pixels < 1:
            raise ConfigError(f"--max-pixels must be at least 1, not {self.max_pixels}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision '{self.precision}' (choose from: {', '.join(PRECISIONS)})"
            )
        if self.decode not in DECODERS:
            raise ConfigError(
                f"unknown decoder '{self.decode}' (choose from: {', '.join(DECODERS)})"
            )
        if self.runtime not in RUNTIMES:
            raise ConfigError(
                f"unknown runtime '{self.runtime}' (choose from: {', '.join(RUNTIMES)})"
            )
        if not _DEVICE.match(self.device):
            raise ConfigError(
                f"unknown device '{self.device}' (choose from: auto, cpu, cuda, cuda:N, mps)"
            )

    def with_(self, **changes: object) -> Config:
        """Return a copy with some fields changed (and validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]
