"""The options of a classification run, validated before any image is read."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from resnext_cli.errors import ConfigError
from resnext_cli.imaging.limits import DEFAULT_MAX_PIXELS
from resnext_cli.model.registry import WeightsInfo, resolve_weights

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
    # The registry's facts of the weights named above, looked up once: a copy made by
    # with_() keeps them unless it names other weights (see weights_info()).
    looked_up: WeightsInfo | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.exact and self.quantized:
            raise ConfigError("--exact is the fp32 reference and --quantized is INT8; give one")
        # A checkpoint made by 'resnext quantize' brings its own INT8 weights: its model's
        # float tag still names the preprocessing.
        int8 = self.quantized and self.checkpoint is None
        info = self.looked_up
        if info is None or (info.model, info.tag, info.quantized) != (
            self.model,
            self.weights,
            int8,
        ):
            info = resolve_weights(self.model, self.weights, quantized=int8)
        # Store canonical names, so records say 'resnext50_32x4d', 'IMAGENET1K_V2'.
        object.__setattr__(self, "model", info.model)
        object.__setattr__(self, "weights", info.tag)
        object.__setattr__(self, "looked_up", info)
        if self.embeddings and self.quantized:
            raise ConfigError("--embeddings come from the float model; drop --quantized")
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
        if self.exact and self.precision not in ("auto", "fp32"):
            raise ConfigError(f"--exact runs in fp32; drop --precision {self.precision} or --exact")
        if self.quantized and self.precision not in ("auto", "int8"):
            raise ConfigError(
                f"--quantized runs in int8; drop --precision {self.precision} or --quantized"
            )
        if self.compile and self.quantized:
            raise ConfigError("--compile is for float models; drop --compile or --quantized")
        if self.decode not in DECODERS:
            raise ConfigError(
                f"unknown decoder '{self.decode}' (choose from: {', '.join(DECODERS)})"
            )
        if self.runtime not in RUNTIMES:
            raise ConfigError(
                f"unknown runtime '{self.runtime}' (choose from: {', '.join(RUNTIMES)})"
            )
        if self.exact and self.runtime == "openvino":
            raise ConfigError(
                "--exact is the torch fp32 reference; drop --runtime openvino or --exact"
            )
        if not _DEVICE.match(self.device):
            raise ConfigError(
                f"unknown device '{self.device}' (choose from: auto, cpu, cuda, cuda:N, mps)"
            )

    def weights_info(self) -> WeightsInfo:
        """The weights the network loads (torchvision's INT8 ones under --quantized without
        a checkpoint), as the registry describes them."""
        if self.looked_up is None:  # set by __post_init__: never
            raise ConfigError(f"weights '{self.weights}' of {self.model} were not looked up")
        return self.looked_up

    def with_(self, **changes: object) -> Config:
        """Return a copy with some fields changed (and validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]
