"""The plan of a run: every option interpreted once, against the facts of the machine.

`resolve(config, facts)` is the only place where `--exact`, `auto` (device, precision,
batch size, workers, decoding) and `--quantized` are given their meaning. Everything
downstream (the pipeline, both engines, the summary, the report, the records) reads the
frozen `Plan` and never re-derives a value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from resnext_cli.errors import ConfigError
from resnext_cli.imaging.preprocess import DecodeOptions
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
# With GPU decoding, each image of a batch is also decoded at full size on the device
# before it is resized: a 12 MP phone photo is 36 MB of RGB (256 of them, ~9 GB).
_DECODED_BYTES = 3 * 12_000_000
# Compute capabilities whose GPUs carry a hardware JPEG decoder (A100 and A30; H100,
# H200 and GH200; B200): elsewhere nvJPEG decodes in a hybrid mode, per image on the
# inference thread, slower than Pillow threads, so --decode auto keeps the CPU.
_HARDWARE_JPEG = frozenset({(8, 0), (9, 0), (10, 0)})


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
    # Whether the CUDA device has a hardware JPEG decoder (facts handed in assume one).
    cuda_jpeg_hardware: bool = True
    cuda_name: str = ""

    @classmethod
    def probe(cls, device: str = "auto") -> MachineFacts:
        """Ask torch about this machine (imports torch) for a run on *device*.

        No CUDA call is made for a CPU or MPS run (each would start a CUDA context);
        memory, name and capability are those of the device the run will use.
        """
        import torch

        kind, _, number = device.partition(":")
        cuda = 0
        if kind in ("auto", "cuda") and torch.cuda.is_available():
            cuda = torch.cuda.device_count()
        free, name, hardware = 0, "", True
        index = int(number) if number else 0
        if cuda and index < cuda:
            free, _total = torch.cuda.mem_get_info(index)
            name = torch.cuda.get_device_name(index)
            hardware = tuple(torch.cuda.get_device_capability(index)) in _HARDWARE_JPEG

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
            mps=kind in ("auto", "mps") and bool(torch.backends.mps.is_available()),
            cuda_jpeg_hardware=hardware,
            cuda_name=name,
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
    notes: tuple[str, ...] = field(default=(), compare=False)
    # TF32 for float32 convolutions and matmuls on CUDA: never, so that every record that
    # says fp32 (--exact, --precision fp32, a bf16 row's fp32 retry) was computed in fp32.
    tf32: bool = False
    # --compile: torch.compile the forward pass.
    compile: bool = False
    # Choices the plan made that --debug names (why the JPEG decoder is what it is).
    choices: tuple[str, ...] = field(default=(), compare=False)

    @property
    def device_type(self) -> str:
        """'cpu', 'cuda' or 'mps'."""
        return self.device.partition(":")[0]

    def describe(self) -> str:
        """Where and how the model runs, as the summary and the report say it: 'cpu, bf16'."""
        return f"{self.device}, {self.precision}"

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


def _cuda_batch(info: WeightsInfo, facts: MachineFacts, *, decode_on: str) -> int:
    """As many images as half the free GPU memory holds (activations, and decoded pixels
    when the GPU decodes), a power of two within 64..256; below 64 (down to 8) only where
    64 would not fit in all of it."""
    per_image = max(1, int(info.gflops * _BYTES_PER_GFLOP))
    if decode_on == "gpu":
        per_image += _DECODED_BYTES
    fits = (facts.cuda_free_bytes // 2) // per_image
    batch = DEFAULT_BATCH["cuda"]
    while batch > 8 and batch > facts.cuda_free_bytes // per_image:
        batch //= 2
    while batch * 2 <= min(fits, MAX_CUDA_BATCH):
        batch *= 2
    return batch


def _decode_on(cfg: Config, device_type: str, facts: MachineFacts) -> tuple[str, str | None]:
    """The JPEG decoder, and why when --decode auto decided it on CUDA."""
    if cfg.decode == "auto" and device_type == "cuda" and not cfg.exact:
        name = f"'{facts.cuda_name}'" if facts.cuda_name else "this GPU"
        if facts.cuda_jpeg_hardware:
            return "gpu", f"decode: gpu (--decode auto: {name} has a hardware JPEG decoder)"
        return "cpu", (
            f"decode: cpu (--decode auto: {name} has no hardware JPEG decoder, and nvJPEG's "
            "hybrid decoder is slower than Pillow threads; --decode gpu forces it)"
        )
    return _decode_choice(cfg, device_type), None


def _decode_choice(cfg: Config, device_type: str) -> str:
    if cfg.decode == "gpu":
        if cfg.exact:
            raise ConfigError("--exact decodes with Pillow, as the reference; drop --decode gpu")
        if device_type != "cuda":
            raise ConfigError(
                f"--decode gpu needs a CUDA device, not {device_type} (use --decode auto)"
            )
        return "gpu"
    return "cpu"


def resolve(config: Config, facts: MachineFacts | None = None) -> Plan:
    """Interpret *config* on this machine (or on *facts*), once, into a frozen Plan."""
    facts = facts if facts is not None else MachineFacts.probe(config.device)
    info = resolve_weights(
        config.model, config.weights, quantized=config.quantized and config.checkpoint is None
    )
    labels = load_labels(config.labels)
    device = _device(config.device, facts)
    device_type = device.partition(":")[0]
    precision = _precision(config, device_type, facts)
    decode_on, why = _decode_on(config, device_type, facts)
    if config.batch_size is not None:
        batch = config.batch_size
    elif device_type == "cuda":
        batch = _cuda_batch(info, facts, decode_on=decode_on)
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
        decode_on=decode_on,
        categories=(
            Categories.for_labels(config.categories, labels) if config.categories else None
        ),
        notes=tuple(notes),
        tf32=False,
        compile=config.compile,
        choices=(why,) if why else (),
    )
