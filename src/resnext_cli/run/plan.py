"""The plan of a run: every option interpreted once, against the facts of the machine.

`resolve(config, facts)` is the only place where `--exact`, `auto` (device, precision,
runtime, batch size, workers, decoding) and `--quantized` are given their meaning. Everything
downstream (the pipeline, both engines, the summary, the report, the records) reads the
frozen `Plan` and never re-derives a value.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from resnext_cli.errors import ConfigError
from resnext_cli.imaging.preprocess import DecodeOptions
from resnext_cli.model import openvino_runtime
from resnext_cli.model.categories import Categories
from resnext_cli.model.labels import load_labels
from resnext_cli.model.registry import WeightsInfo, preprocessing_weights, resolve_weights
from resnext_cli.model.weights import checkpoints_dir
from resnext_cli.run.config import Config

Precision = Literal["fp32", "bf16", "fp16", "int8"]
DeviceType = Literal["cpu", "cuda", "mps"]
DecodeOn = Literal["cpu", "gpu"]
# 'local': models run on this machine. 'ray': a cluster's actors, which Ray places.
Placement = Literal["local", "ray"]
# What runs the network: torch, or OpenVINO on the CPU.
Runtime = Literal["torch", "openvino"]
# 'classify' (classify, sort) or 'calibrate' (quantize: the float network, unfolded, fp32).
Purpose = Literal["classify", "calibrate"]

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
    placement: Placement = "local"
    # Whether the CUDA device has a hardware JPEG decoder (facts handed in assume one).
    cuda_jpeg_hardware: bool = True
    cuda_name: str = ""
    # The optional OpenVINO extra is installed (pip install 'resnext-cli[openvino]').
    openvino: bool = False

    @classmethod
    def probe(cls, device: str) -> MachineFacts:
        """What this machine offers a run on *device*.

        On Linux with no GPU driver loaded, a CPU (or auto) run reads the CPU's flags from
        /proc/cpuinfo, so planning a run through OpenVINO does not import torch; elsewhere,
        or once torch is imported anyway, torch is asked. No CUDA call is made for a CPU or
        MPS run (each would start a CUDA context); memory, name and capability are those
        of the device the run will use.
        """
        if _before_torch(device):
            flags = _cpu_flags_without_a_gpu()
            if flags is not None:
                return cls.from_cpu_flags(flags)
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
            openvino=openvino_runtime.available(),
        )

    @classmethod
    def from_cpu_flags(cls, flags: frozenset[str]) -> MachineFacts:
        """The facts of a machine without GPUs whose CPU has /proc/cpuinfo's *flags*: the
        same flags torch's checks read (AVX512-BF16 or AMX tiles; AMX-FP16 or AVX512-FP16)."""
        return cls(
            cpu_count=os.cpu_count() or 1,
            cpu_native_bf16=bool(flags & {"avx512_bf16", "amx_tile"}),
            cpu_native_fp16=bool(flags & {"amx_fp16", "avx512_fp16"}),
            openvino=openvino_runtime.available(),
        )


# Present when a GPU driver is loaded: NVIDIA's, and AMD's compute (ROCm) device.
_GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/kfd")
_CPUINFO = "/proc/cpuinfo"


def _before_torch(device: str) -> bool:
    """A CPU (or auto) run that has not imported torch: its plan may not import it."""
    return device in ("auto", "cpu") and "torch" not in sys.modules


def cpu_flags(cpuinfo: str) -> frozenset[str] | None:
    """The feature flags of /proc/cpuinfo's first processor, or None where it lists none."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return None


def _cpu_flags_without_a_gpu() -> frozenset[str] | None:
    """The CPU's flags on Linux with no GPU driver loaded, else None (torch is asked)."""
    if not sys.platform.startswith("linux"):
        return None
    if any(os.path.exists(path) for path in _GPU_DRIVER_PATHS):
        return None
    try:
        with open(_CPUINFO, encoding="utf-8", errors="replace") as f:
            return cpu_flags(f.read())
    except OSError:
        return None


@dataclass(frozen=True)
class Plan:
    """Everything a run does, decided before any image is read."""

    # The weights the network loads (torchvision's INT8 ones under --quantized).
    info: WeightsInfo
    # The float weights whose Resize/CenterCrop/Normalize the inputs get (for INT8 weights,
    # those of the float weights they were made from).
    preprocess: WeightsInfo
    labels: tuple[str, ...]
    device: str  # 'cpu', 'cuda', 'cuda:1', 'mps'
    precision: Precision
    batch_size: int
    workers: int
    decode: DecodeOptions
    # Fold BatchNorm into the convolutions (not under --exact: the reference network).
    fold_batchnorm: bool
    topk: int = 5
    # --embeddings: records carry the pooled features too.
    embeddings: bool = False
    # --checkpoint (a path or URL), else None: the weights of `info`.
    checkpoint: str | None = None
    # --labels FILE, else None: the bundled ImageNet names, or the checkpoint's own.
    labels_file: str | None = None
    # The labels are the class names the checkpoint keeps ('resnext learn' writes them).
    labels_kept: bool = False
    offline: bool = False
    timeout: float = 10.0
    max_download_bytes: int = 100 << 20
    # Decode baseline JPEGs on the GPU ('gpu') or everything with Pillow ('cpu').
    decode_on: DecodeOn = "cpu"
    # --categories: the grouping whose probabilities every record carries.
    categories: Categories | None = None
    # What runs the network: 'torch' or 'openvino' (CPU only).
    runtime: Runtime = "torch"
    notes: tuple[str, ...] = field(default=(), compare=False)
    # --compile: torch.compile the forward pass.
    compile: bool = False
    # Choices the plan made that --debug names (why the JPEG decoder is what it is).
    choices: tuple[str, ...] = field(default=(), compare=False)

    @property
    def device_type(self) -> DeviceType:
        """'cpu', 'cuda' or 'mps'."""
        kind = self.device.partition(":")[0]
        return "cuda" if kind == "cuda" else "mps" if kind == "mps" else "cpu"

    def describe(self) -> str:
        """Where and how the model runs, as the summary and the report say it: 'cpu, bf16'
        ('cpu, bf16, openvino' through OpenVINO)."""
        where = f"{self.device}, {self.precision}"
        return where if self.runtime == "torch" else f"{where}, {self.runtime}"

    def source_line(self) -> str:
        """Model and weights (or checkpoint): 'resnext50_32x4d (IMAGENET1K_V2)'."""
        return f"{self.info.model} ({self.checkpoint or self.info.tag})"

    def model_line(self) -> str:
        """Model, weights (or checkpoint) and precision, as a table caption says it."""
        return f"{self.source_line()} on {self.describe()}"


def _ray_device(spec: str, facts: MachineFacts) -> str:
    """Ray places the models: its actors take the cluster's GPUs, else CPUs."""
    if spec not in ("auto", "cpu", "cuda"):
        raise ConfigError(
            f"--engine ray places models itself: use --device auto, cpu or cuda, not '{spec}'"
        )
    if spec == "cuda" and facts.cuda_count == 0:
        raise ConfigError("--device cuda but the Ray cluster has no GPUs (use --device auto)")
    return "cuda" if facts.cuda_count and spec != "cpu" else "cpu"


def _device(spec: str, facts: MachineFacts) -> str:
    if facts.placement == "ray":
        return _ray_device(spec, facts)
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


def _precision(cfg: Config, device_type: str, facts: MachineFacts) -> Precision:
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
    if cfg.precision == "bf16":
        return "bf16"
    if cfg.precision == "fp16":
        return "fp16"
    if device_type == "cuda":
        return "bf16" if facts.cuda_bf16 else "fp16"
    if device_type == "cpu" and facts.cpu_native_bf16:
        return "bf16"
    return "fp32"


def _runtime(cfg: Config, device_type: str, precision: str, facts: MachineFacts) -> Runtime:
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


def _decode_on(cfg: Config, device_type: str, facts: MachineFacts) -> tuple[DecodeOn, str | None]:
    """The JPEG decoder, and why when --decode auto decided it on CUDA."""
    if facts.placement == "ray":
        if cfg.decode == "gpu":
            raise ConfigError("--engine ray decodes in CPU tasks; drop --decode gpu")
        return "cpu", None
    if cfg.decode == "auto" and device_type == "cuda" and not cfg.exact:
        name = f"'{facts.cuda_name}'" if facts.cuda_name else "this GPU"
        if facts.cuda_jpeg_hardware:
            return "gpu", f"decode: gpu (--decode auto: {name} has a hardware JPEG decoder)"
        return "cpu", (
            f"decode: cpu (--decode auto: {name} has no hardware JPEG decoder, and nvJPEG's "
            "hybrid decoder is slower than Pillow threads; --decode gpu forces it)"
        )
    return _decode_choice(cfg, device_type), None


def _decode_choice(cfg: Config, device_type: str) -> DecodeOn:
    if cfg.decode == "gpu":
        if device_type != "cuda":
            raise ConfigError(
                f"--decode gpu needs a CUDA device, not {device_type} (use --decode auto)"
            )
        return "gpu"
    return "cpu"


def _labels(config: Config, model: str) -> tuple[str, ...] | None:
    """The class names a local checkpoint keeps ('resnext learn' writes them) when no
    --labels is given, else None."""
    if config.labels is None and config.checkpoint and "://" not in config.checkpoint:
        path = Path(config.checkpoint)
        if not path.is_file() or openvino_runtime.is_bundle(path):
            return None  # an OpenVINO INT8 file keeps no names (and torch cannot read it)
        # A converted copy in the cache recorded them: no torch to read them again.
        folder = openvino_runtime.cache_dir(checkpoints_dir())
        known, names = openvino_runtime.cached_classes(folder, model, path)
        if known:
            return names
        from resnext_cli.model.checkpoint import stored_classes  # imports torch

        return stored_classes(path)
    return None


def refuse_pairs(config: Config) -> None:
    """Refuse options that contradict each other, before anything is probed or loaded.

    The command line calls this before torch is imported; `resolve` calls it first too,
    for the Python API and the engines.
    """
    if config.exact and config.quantized:
        raise ConfigError("--exact is the fp32 reference and --quantized is INT8; give one")
    if config.embeddings and config.quantized:
        raise ConfigError("--embeddings come from the float model; drop --quantized")
    if config.exact and config.precision not in ("auto", "fp32"):
        raise ConfigError(f"--exact runs in fp32; drop --precision {config.precision} or --exact")
    if config.quantized and config.precision != "auto":  # --precision has no int8
        raise ConfigError(
            f"--quantized runs in int8; drop --precision {config.precision} or --quantized"
        )
    if config.compile and config.quantized:
        raise ConfigError("--compile is for float models; drop --compile or --quantized")
    if config.exact and config.runtime == "openvino":
        raise ConfigError("--exact is the torch fp32 reference; drop --runtime openvino or --exact")
    if config.exact and config.decode == "gpu":
        raise ConfigError("--exact decodes with Pillow, as the reference; drop --decode gpu")


def weights_for(config: Config) -> WeightsInfo:
    """The weights the network loads: torchvision's INT8 ones under --quantized without a
    checkpoint (a checkpoint made by 'resnext quantize' brings its own INT8 weights, and
    its model's float tag still names the preprocessing), else the float ones."""
    int8 = config.quantized and config.checkpoint is None
    return resolve_weights(config.model, config.weights, quantized=int8)


def resolve(
    config: Config, facts: MachineFacts | None = None, *, purpose: Purpose = "classify"
) -> Plan:
    """Interpret *config* on this machine (or on *facts*), once, into a frozen Plan.

    ``purpose="calibrate"`` is quantize's plan: the float network on the CPU through torch,
    in fp32, BatchNorm unfolded (INT8 conversion fuses it itself).
    """
    refuse_pairs(config)
    if purpose == "calibrate":
        config = config.with_(precision="fp32", quantized=False, device="cpu", runtime="torch")
    facts = facts if facts is not None else MachineFacts.probe(config.device)
    info = weights_for(config)
    preprocess = preprocessing_weights(info)
    stored = _labels(config, info.model)
    if stored is not None and config.topk > len(stored):
        # A learned model's few classes: the default top-5 means all of them.
        config = config.with_(topk=len(stored))
    labels = stored if stored is not None else load_labels(config.labels)
    device = _device(config.device, facts)
    device_type = device.partition(":")[0]
    precision = _precision(config, device_type, facts)
    decode_on, why = _decode_on(config, device_type, facts)
    runtime = _runtime(config, device_type, precision, facts)
    if config.batch_size is not None:
        batch = config.batch_size
    elif device_type == "cuda":
        batch = _cuda_batch(info, facts, decode_on=decode_on)
    else:
        batch = DEFAULT_BATCH[device_type]
    if facts.placement == "ray":
        workers = 0  # Ray's tasks decode; each actor only runs the model
    else:
        workers = config.workers if config.workers is not None else min(8, facts.cpu_count)
    notes = []
    if precision == "bf16" and device_type == "cpu" and not facts.cpu_native_bf16:
        notes.append("this CPU has no native bf16: it is emulated, slower than fp32")
    # --exact is the hub page's pipeline: `Image.open(f).convert("RGB")` at full size, no
    # EXIF rotation, the unfolded network in fp32, Pillow decoding.
    decode = DecodeOptions(
        max_pixels=config.max_pixels,
        allow_truncated=config.allow_truncated,
        # JPEGs decode at a reduced scale, no smaller than twice the resize target, so
        # the antialiased resize still makes the last step.
        draft_min_side=0 if config.exact else 2 * preprocess.resize_size,
        upright=not config.exact,
        plain_rgb=config.exact,
    )
    return Plan(
        info=info,
        preprocess=preprocess,
        labels=labels,
        device=device,
        precision=precision,
        batch_size=batch,
        workers=workers,
        decode=decode,
        fold_batchnorm=not config.exact and precision != "int8" and purpose == "classify",
        topk=config.topk,
        embeddings=config.embeddings,
        checkpoint=config.checkpoint,
        labels_file=config.labels,
        labels_kept=stored is not None,
        offline=config.offline,
        timeout=config.timeout,
        max_download_bytes=config.max_download_bytes,
        decode_on=decode_on,
        categories=(
            Categories.for_labels(config.categories, labels) if config.categories else None
        ),
        runtime=runtime,
        notes=tuple(notes),
        compile=config.compile,
        choices=(why,) if why else (),
    )
