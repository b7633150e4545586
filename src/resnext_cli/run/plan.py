"""The plan of a run: every option interpreted once, against the facts of the machine.

`resolve(config, facts)` is the only place where `--exact`, `auto` (device, precision,
runtime, batch size, workers, decoding) and `--quantized` are given their meaning. Everything
downstream (the pipeline, both engines, the summary, the report, the records) reads the
frozen `Plan` and never re-derives a value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from resnext_cli.errors import ConfigError
from resnext_cli.imaging.preprocess import DecodeOptions
from resnext_cli.model import openvino_runtime
from resnext_cli.model.categories import Categories
from resnext_cli.model.labels import load_labels
from resnext_cli.model.registry import WeightsInfo, resolve_weights
from resnext_cli.run.config import Config

# Images per batch when --batch-size is not given. CUDA's is a floor: with the free
# memory known, the plan takes as many images as fit (see _cuda_batch).
DEFAULT_BATCH = {"cpu": 8, "mps": 16, "cuda": 64}
MAX_CUDA_BATCH = 256
# Activation memory one 224x224 image takes in a forward pass, per billion FLOPs of the
# model, in reduced precision, with headroom (ResNeXt-50: ~4.3 GFLOPs -> ~80 MB).
_BYTES_PER_GFLOP = 20 << 20


@dataclass(frozen=True)
class MachineFacts:
    """What the hardware offers; probed once, or handed in (Ray's cluster, tests)."""

    cpu_count: int = 1
    cpu_native_bf16: bool = False
    cpu_native_fp16: bool = False
    cuda_count: int = 0
    cuda_bf16: bool = False
    cuda_free_bytes: int = 0
    mps: bool = False
    # The optional OpenVINO extra is installed (pip install 'resnext-cli[openvino]').
    openvino: bool = False

    @classmethod
    def probe(cls) -> MachineFacts:
        """Ask torch about this machine (imports torch)."""
        import torch

        cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        free = 0
        if cuda:
            free, _total = torch.cuda.mem_get_info()

        def cpu(name: str) -> bool:
            check = getattr(torch.cpu, name, None)
            return bool(check()) if check is not None else False

        return cls(
            cpu_count=os.cpu_count() or 1,
            # AVX512-BF16 or AMX: bf16 computed in hardware. Elsewhere it is emulated,
            # correct but several times slower than fp32.
            cpu_native_bf16=cpu("_is_avx512_bf16_supported") or cpu("_is_amx_tile_supported"),
            cpu_native_fp16=cpu("_is_amx_fp16_supported") or cpu("_is_avx512_fp16_supported"),
            cuda_count=cuda,
            cuda_bf16=bool(cuda and torch.cuda.is_bf16_supported()),
            cuda_free_bytes=int(free),
            mps=bool(torch.backends.mps.is_available()),
            openvino=openvino_runtime.available(),
        )


@dataclass(frozen=True)
class Plan:
    """Everything a run does, decided before any image is read."""

    config: Config
    info: WeightsInfo
    labels: tuple[str, ...]
    device: str  # 'cpu', 'cuda', 'cuda:1', 'mps'
    precision: str  # 'fp32', 'bf16', 'fp16' or 'int8'
    batch_size: int
    workers: int
    decode: DecodeOptions
    # Fold BatchNorm into the convolutions (not under --exact: the reference network).
    fold_batchnorm: bool
    # Decode baseline JPEGs on the GPU ('gpu') or everything with Pillow ('cpu').
    decode_on: str = "cpu"
    # --categories: the grouping whose probabilities every record carries.
    categories: Categories | None = None
    # What runs the network: 'torch' or 'openvino' (CPU only).
    runtime: str = "torch"
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def device_type(self) -> str:
        """'cpu', 'cuda' or 'mps'."""
        return self.device.partition(":")[0]

    def describe(self) -> str:
        """Where and how the model runs, as the summary and the report say it: 'cpu, bf16'
        ('cpu, bf16, openvino' through OpenVINO)."""
        where = f"{self.device}, {self.precision}"
        return where if self.runtime == "torch" else f"{where}, {self.runtime}"

    def model_line(self) -> str:
        """Model, weights (or checkpoint) and precision, as a table caption says it."""
        source = self.config.checkpoint or self.info.tag
        return f"{self.info.model} ({source}) on {self.describe()}"


def _device(spec: str, facts: MachineFacts) -> str:
    if spec == "auto":
        if facts.cuda_count:
            return "cuda"
        return "mps" if facts.mps else "cpu"
    kind, _, index = spec.partition(":")
    if kind == "cuda":
        if facts.cuda_count == 0:
            raise ConfigError(f"device '{spec}' is not available: no CUDA GPU (use --device cpu)")
        if index and int(index) >= facts.cuda_count:
            raise ConfigError(
                f"device '{spec}' is not available: this machine has {facts.cuda_count} CUDA "
                f"device(s) (use cuda:0 to cuda:{facts.cuda_count - 1})"
            )
    if kind == "mps" and not facts.mps:
        raise ConfigError(f"device '{spec}' is not available (use --device cpu)")
    return spec


def _precision(cfg: Config, device_type: str, facts: MachineFacts) -> str:
    if cfg.quantized:
        if device_type != "cpu":
            raise ConfigError(
                f"--quantized runs INT8 on the CPU, not on {device_type} "
                "(use --device cpu, or drop --quantized)"
            )
        return "int8"
    if cfg.exact or cfg.precision == "fp32":
        return "fp32"
    if cfg.precision == "fp16" and device_type == "cpu" and not facts.cpu_native_fp16:
        raise ConfigError(
            "--precision fp16 needs a GPU or a CPU with native fp16 (AMX-FP16); this CPU "
            "has none (use --precision bf16 or fp32)"
        )
    if cfg.precision != "auto":
        return cfg.precision
    if device_type == "cuda":
        return "bf16" if facts.cuda_bf16 else "fp16"
    if device_type == "cpu" and facts.cpu_native_bf16:
        return "bf16"
    return "fp32"


def _runtime(cfg: Config, device_type: str, precision: str, facts: MachineFacts) -> str:
    """torch or openvino: auto takes OpenVINO on the CPU where its extra is installed and
    it runs the precision natively; --exact is always torch, the reference."""
    asked = cfg.runtime
    bundle = cfg.checkpoint is not None and openvino_runtime.is_bundle(cfg.checkpoint)
    if bundle and not cfg.quantized:
        raise ConfigError(
            f"checkpoint '{cfg.checkpoint}' holds OpenVINO INT8 weights (add --quantized)"
        )
    if bundle and asked == "torch":
        raise ConfigError(
            f"checkpoint '{cfg.checkpoint}' is an OpenVINO INT8 model "
            "(use --runtime openvino or auto, or a checkpoint made by 'resnext quantize')"
        )
    if asked == "openvino" or bundle:
        if not facts.openvino:
            raise ConfigError(
                "the openvino runtime is not installed "
                f"({openvino_runtime.EXTRA_HINT}, or use --runtime torch)"
            )
        if device_type != "cpu":
            raise ConfigError(
                f"--runtime openvino runs on the CPU, not on {device_type} "
                "(use --device cpu, or --runtime auto)"
            )
    if bundle:
        return "openvino"
    if cfg.exact or asked == "torch" or device_type != "cpu" or not facts.openvino:
        return "torch"
    native = precision == "fp32" or (precision == "bf16" and facts.cpu_native_bf16)
    if asked == "auto":
        return "openvino" if native else "torch"
    if precision == "int8":
        raise ConfigError(
            "--runtime openvino runs INT8 from a file made by 'resnext quantize --runtime "
            "openvino' (give it with --checkpoint FILE --quantized, or use --runtime torch)"
        )
    if precision == "fp16":
        raise ConfigError("--runtime openvino runs fp32 and bf16 (use --runtime torch for fp16)")
    if not native:
        raise ConfigError(
            f"--runtime openvino runs {precision} only on a CPU with native {precision}; "
            "this CPU has none (use --precision fp32, or --runtime torch)"
        )
    return "openvino"


def _cuda_batch(info: WeightsInfo, facts: MachineFacts) -> int:
    """As many images as half the free GPU memory holds, within 64..256."""
    per_image = max(1, int(info.gflops * _BYTES_PER_GFLOP))
    fits = (facts.cuda_free_bytes // 2) // per_image
    batch = DEFAULT_BATCH["cuda"]
    while batch * 2 <= min(fits, MAX_CUDA_BATCH):
        batch *= 2
    return batch


def _decode_on(cfg: Config, device_type: str) -> str:
    if cfg.decode == "gpu":
        if cfg.exact:
            raise ConfigError("--exact decodes with Pillow, as the reference; drop --decode gpu")
        if device_type != "cuda":
            raise ConfigError(
                f"--decode gpu needs a CUDA device, not {device_type} (use --decode auto)"
            )
        return "gpu"
    if cfg.decode == "auto" and device_type == "cuda" and not cfg.exact:
        return "gpu"
    return "cpu"


def resolve(config: Config, facts: MachineFacts | None = None) -> Plan:
    """Interpret *config* on this machine (or on *facts*), once, into a frozen Plan."""
    facts = facts if facts is not None else MachineFacts.probe()
    info = resolve_weights(
        config.model, config.weights, quantized=config.quantized and config.checkpoint is None
    )
    labels = load_labels(config.labels)
    device = _device(config.device, facts)
    device_type = device.partition(":")[0]
    precision = _precision(config, device_type, facts)
    runtime = _runtime(config, device_type, precision, facts)
    if config.batch_size is not None:
        batch = config.batch_size
    elif device_type == "cuda":
        batch = _cuda_batch(info, facts)
    else:
        batch = DEFAULT_BATCH[device_type]
    workers = config.workers if config.workers is not None else min(8, facts.cpu_count)
    notes = []
    if precision == "bf16" and device_type == "cpu" and not facts.cpu_native_bf16:
        notes.append("this CPU has no native bf16: it is emulated, slower than fp32")
    decode = DecodeOptions(
        exact=config.exact,
        max_pixels=config.max_pixels,
        allow_truncated=config.allow_truncated,
        # JPEGs decode at a reduced scale, no smaller than twice the resize target, so
        # the antialiased resize still makes the last step.
        draft_min_side=0 if config.exact else 2 * info.resize_size,
    )
    return Plan(
        config=config,
        info=info,
        labels=labels,
        device=device,
        precision=precision,
        batch_size=batch,
        workers=workers,
        decode=decode,
        fold_batchnorm=not config.exact and precision != "int8",
        decode_on=_decode_on(config, device_type),
        categories=(
            Categories.for_labels(config.categories, labels) if config.categories else None
        ),
        runtime=runtime,
        notes=tuple(notes),
    )
