"""INT8 ResNeXt on CPU: torchvision's quantizable models and eager post-training quantization.

This is the one module that uses torch.ao.quantization, which torch 2.14 marks deprecated
(its successor is torchao), so a later move touches this file only. Quantized models run
on CPU alone, with the x86 quantized engine where torch has it.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.ao.quantization as tq
from torch import nn

from resnext_cli.errors import CheckpointError, ConfigError, OutputError
from resnext_cli.files import OutputTarget
from resnext_cli.model.checkpoint import (
    CLASSES_KEY,
    INT8_MARKER,
    check_fit,
    holds_int8,
    load_object,
    unwrap,
)

# The marker key of a checkpoint `save_quantized` writes; its value describes the model.
MARKER = INT8_MARKER
FORMAT = 1
# Preferred first: x86 picks the fastest kernels on x86 CPUs, fbgemm is its older name
# there, qnnpack is what ARM builds have.
ENGINES = ("x86", "fbgemm", "qnnpack")
# (blocks per stage, groups, width per group), as torchvision's builders set them.
_ARCH: dict[str, tuple[list[int], int, int]] = {
    "resnext50_32x4d": ([3, 4, 6, 3], 32, 4),
    "resnext101_32x8d": ([3, 4, 23, 3], 32, 8),
    "resnext101_64x4d": ([3, 4, 23, 3], 64, 4),
}
_FC_PACKED = "fc._packed_params._packed_params"


@contextmanager
def _quiet() -> Iterator[None]:
    """Hide the deprecation notices torch.ao.quantization and quantized tensors raise."""
    with warnings.catch_warnings():
        for category, message in [
            (DeprecationWarning, "torch.ao.quantization is deprecated"),
            (UserWarning, "Please use quant_min and quant_max"),
            (UserWarning, ".*quantized tensor creation functions"),
            (UserWarning, "TypedStorage is deprecated"),
        ]:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: repacking weights is many small steps that threads slow.

    Building and loading a ResNeXt101 took 2 s on one thread and 11 s on two (a busy
    2-core machine), where threads mostly wait for each other.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def supported_engines() -> list[str]:
    """Return the quantized engines this torch build offers."""
    return list(torch.backends.quantized.supported_engines)


def quantized_engine() -> str:
    """Select the best quantized CPU engine torch offers and return its name."""
    supported = supported_engines()
    for name in ENGINES:
        if name in supported:
            torch.backends.quantized.engine = name
            return name
    raise ConfigError(
        f"this torch build has no quantized CPU engine (it offers: {', '.join(supported)}) "
        "(install a torch build with x86, fbgemm or qnnpack, or drop --quantized)"
    )


def _quantizable(model: str, num_classes: int) -> nn.Module:
    """Return torchvision's quantizable float ResNeXt *model* in eval mode, uninitialised.

    Every caller overwrites all parameters, so the random initialisation (a second or
    more for a ResNeXt101) is skipped: the model is laid out on the meta device first.
    """
    from torchvision.models.quantization.resnet import QuantizableBottleneck, QuantizableResNet

    layers, groups, width = _ARCH[model]
    with torch.device("meta"):
        net = QuantizableResNet(
            QuantizableBottleneck,
            layers,
            groups=groups,
            width_per_group=width,
            num_classes=num_classes,
        )
    # torchvision's builders swap the in-place ReLU the same way before quantizing.
    net.relu = nn.ReLU(inplace=False)
    built: nn.Module = net.to_empty(device="cpu").eval()
    return built


def _convert(net: nn.Module, qconfig: Any, batches: Iterable[torch.Tensor] | None) -> None:
    """Fuse, observe *batches* (None: nothing to observe), and swap *net* to INT8 in place."""
    with _quiet():
        net.fuse_model()  # type: ignore[operator]
        net.qconfig = qconfig
        tq.prepare(net, inplace=True)  # type: ignore[no-untyped-call]
        if batches is not None:
            seen = 0
            with torch.no_grad():
                for batch in batches:
                    net(batch)
                    seen += batch.shape[0]
            if seen == 0:
                raise ConfigError("no photos to calibrate on (give --calibrate a folder of photos)")
        with _one_thread():
            tq.convert(net, inplace=True)  # type: ignore[no-untyped-call]


def _converted(model: str, num_classes: int) -> nn.Module:
    """Return an INT8 *model* with zero weights, ready to load a state dict."""
    quantized_engine()
    net = _quantizable(model, num_classes)
    with torch.no_grad():
        for tensor in [*net.parameters(), *net.buffers()]:
            tensor.zero_()
    # Loading the state dict sets every scale and zero point, so fixed placeholder ones
    # do here: nothing needs observing, and convert() does no range search.
    placeholder = tq.QConfig(  # type: ignore[no-untyped-call]
        activation=tq.FixedQParamsObserver.with_args(scale=1.0, zero_point=0),
        weight=tq.default_per_channel_weight_observer,
    )
    _convert(net, placeholder, None)
    return net


def _classes(state: dict[str, Any], *, model: str, name: str) -> int:
    """Read the class count from the INT8 fc layer of *state*."""
    packed = state.get(_FC_PACKED)
    if isinstance(packed, tuple) and packed and isinstance(packed[0], torch.Tensor):
        return int(packed[0].shape[0])
    fc = state.get("fc.weight")
    if isinstance(fc, torch.Tensor) and fc.is_floating_point():
        raise CheckpointError(
            f"checkpoint '{name}' holds float weights, not INT8 (drop --quantized, or make "
            f"INT8 weights with 'resnext quantize -m {model} --checkpoint {name} "
            "--calibrate PHOTOS -o OUT.pth')"
        )
    raise CheckpointError(
        f"checkpoint '{name}' does not fit quantized {model}: it has no "
        f"'{_FC_PACKED}' (give a state dict of torchvision's quantized ResNeXt)"
    )


def num_classes(state: dict[str, Any], *, model: str, name: str) -> int:
    """The class count of an INT8 state dict (its packed fc layer)."""
    return _classes(state, model=model, name=name)


def build_quantized(model: str, state: dict[str, Any], *, name: str) -> nn.Module:
    """Build INT8 *model* and load *state*, a state dict in torchvision's quantized layout."""
    with _one_thread():
        net = _converted(model, _classes(state, model=model, name=name))
    own = net.state_dict()
    check_fit(own, state, model=model, name=name)
    if getattr(state, "_metadata", None) is None:
        # Saved as a plain dict, it lost the layout versions torch keeps in _metadata, and
        # without them the packed fc is read as an old layout ('fc.weight'). Its keys have
        # just been checked against this layout: its versions are this build's.
        state = OrderedDict(state)
        state._metadata = own._metadata  # type: ignore[attr-defined]
    try:
        with _quiet(), _one_thread():
            net.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint '{name}' does not fit quantized {model}: {first} "
            "(give a state dict of torchvision's quantized ResNeXt)"
        ) from None
    return net.eval()


def calibrate(
    model: str,
    float_state: dict[str, torch.Tensor],
    batches: Iterable[torch.Tensor],
    *,
    name: str,
    progress: Callable[[int], None] | None = None,
) -> nn.Module:
    """Quantize float *model* post-training, observing normalised float NCHW *batches*.

    *progress*, when given, is called with the number of images observed so far.
    """
    fc = float_state.get("fc.weight")
    if fc is None or fc.ndim != 2 or not fc.is_floating_point():
        raise CheckpointError(
            f"checkpoint '{name}' does not fit {model}: it has no float 'fc.weight' "
            "(give a state dict in torchvision's ResNeXt layout)"
        )
    net = _quantizable(model, int(fc.shape[0]))
    check_fit(net.state_dict(), float_state, model=model, name=name)
    net.load_state_dict(float_state)

    def counted() -> Iterator[torch.Tensor]:
        done = 0
        for batch in batches:
            yield batch
            done += batch.shape[0]
            if progress is not None:
                progress(done)

    # The engine's default qconfig is torchvision's PTQ recipe: histogram observers for
    # activations, per-channel weights.
    qconfig = tq.get_default_qconfig(quantized_engine())  # type: ignore[no-untyped-call]
    _convert(net, qconfig, counted())
    return net.eval()


@dataclass(frozen=True)
class QuantizedCheckpoint:
    """An INT8 state dict and what its file says of it (None for a bare state dict)."""

    state: dict[str, Any]
    model: str | None = None
    engine: str | None = None
    num_classes: int | None = None
    source: str | None = None
    weights: str | None = None


def is_quantized_checkpoint(obj: object) -> bool:
    """Whether a loaded checkpoint (or the state dict read from one) holds INT8 weights."""
    return holds_int8(obj)


def save_quantized(
    path: Path,
    model: nn.Module,
    *,
    model_name: str,
    labels_count: int,
    source: str,
    weights: str | None = None,
    names: tuple[str, ...] | None = None,
    target: OutputTarget | None = None,
) -> Path:
    """Write *model*'s INT8 state dict, marked as such, atomically to *path*.

    *source* names the float weights it was made from; *weights* is the float tag whose
    preprocessing calibration used, so classifying can use the same.
    """
    state = model.state_dict()
    classes = _classes(state, model=model_name, name=source)
    if classes != labels_count:
        raise ConfigError(
            f"the model has {classes} classes but there are {labels_count} labels "
            f"(give --labels FILE with {classes} lines)"
        )
    payload: dict[str, Any] = {
        MARKER: {
            "format": FORMAT,
            "model": model_name,
            "engine": torch.backends.quantized.engine,
            "num_classes": classes,
            "source": source,
            "weights": weights,
        },
        "state_dict": state,
    }
    if names is not None:  # a learned model's class names travel on to its INT8 copy
        payload[CLASSES_KEY] = list(names)
    path = Path(path)
    # One way of writing (files.py): a temporary file of this tool's, then published onto
    # nothing or the file there (target: claimed by the caller before the work began).
    out = target if target is not None else OutputTarget.claim(path, force=True)
    try:
        temp = out.temporary()
        try:
            torch.save(payload, temp)
        except BaseException:
            temp.close()
            raise
        out.publish(temp)
    except OSError as exc:
        raise OutputError(
            f"cannot write '{path}': {exc.strerror or exc} (choose a writable folder)"
        ) from None
    finally:
        if target is None:
            out.release()
    return path


def read_quantized(path: Path, *, name: str) -> QuantizedCheckpoint:
    """Load an INT8 checkpoint: one `save_quantized` wrote, or torchvision's state dict."""
    with _quiet():
        obj = load_object(path, name=name)
    if isinstance(obj, dict) and isinstance(obj.get(MARKER), dict):
        meta = obj[MARKER]
        state = obj.get("state_dict")
        if not isinstance(state, dict):
            raise CheckpointError(
                f"checkpoint '{name}' has no 'state_dict' (write it again with resnext quantize)"
            )
        return QuantizedCheckpoint(
            state=state,
            model=meta.get("model"),
            engine=meta.get("engine"),
            num_classes=meta.get("num_classes"),
            source=meta.get("source"),
            weights=meta.get("weights"),
        )
    if not is_quantized_checkpoint(obj):
        raise CheckpointError(
            f"checkpoint '{name}' holds no INT8 weights (drop --quantized, or make them "
            "with 'resnext quantize')"
        )
    return QuantizedCheckpoint(state=unwrap(obj))


def load_quantized(path: Path, model: str, *, name: str) -> tuple[nn.Module, QuantizedCheckpoint]:
    """Read an INT8 checkpoint for *model* and build the model; return both."""
    checkpoint = read_quantized(path, name=name)
    if checkpoint.model is not None and checkpoint.model != model:
        raise CheckpointError(
            f"checkpoint '{name}' holds quantized {checkpoint.model}, not {model} "
            f"(use -m {checkpoint.model})"
        )
    return build_quantized(model, checkpoint.state, name=name), checkpoint


class Agreement(NamedTuple):
    """How far INT8 predictions agree with float ones on the same images."""

    top1: float  # share of images with the same top-1 class
    top5: float  # share of images with the same set of top-5 classes
    max_abs_dp: float  # largest difference of any class probability
    images: int


def agreement(float_probs: torch.Tensor, int8_probs: torch.Tensor) -> Agreement:
    """Compare two (images, classes) probability tensors of the same images."""
    if float_probs.shape != int8_probs.shape or float_probs.ndim != 2:
        raise ValueError(
            f"probabilities of different shapes: {list(float_probs.shape)} and "
            f"{list(int8_probs.shape)}"
        )
    n, classes = float_probs.shape
    if n == 0:
        return Agreement(0.0, 0.0, 0.0, 0)
    a, b = float_probs.float(), int8_probs.float()
    k = min(5, classes)
    # Equal probabilities (INT8's are coarse) rank by class index, as records do: argmax
    # and topk leave ties to the kernel, which differs between CPUs.
    ra = torch.sort(a, dim=1, descending=True, stable=True).indices[:, :k]
    rb = torch.sort(b, dim=1, descending=True, stable=True).indices[:, :k]
    top1 = (ra[:, 0] == rb[:, 0]).float().mean().item()
    top5 = (ra.sort(dim=1).values == rb.sort(dim=1).values).all(dim=1).float().mean().item()
    return Agreement(top1, top5, (a - b).abs().max().item(), n)
