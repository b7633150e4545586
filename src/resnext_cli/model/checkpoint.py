"""Checkpoint files into networks: load safely, unwrap, check, build, fold.

The one home of what a checkpoint file holds, below both the pipeline and INT8 (which
builds its own network from the same checks).
"""

from __future__ import annotations

import argparse
import os
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from resnext_cli.errors import CheckpointError

if TYPE_CHECKING:
    import torch

# torch is imported where a tensor is touched, never at import: 'resnext learn' unwraps a
# checkpoint read by model/torch_file.py without it, so a re-learn need not import torch.

T = TypeVar("T")

# The key 'resnext quantize' writes into the INT8 checkpoints it saves.
INT8_MARKER = "resnext_quantized"
# The key beside 'state_dict' under which 'resnext learn' (and 'resnext quantize' of a
# learned model) keep the class names, so a plain torchvision script still finds the
# state dict under 'state_dict'.
CLASSES_KEY = "resnext_classes"


def unwrap(obj: Any) -> Any:
    """Return the state dict inside {'state_dict': ...} or {'model': ...}, or *obj*."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    return obj


# What the plan's peek at a checkpoint read (the file's identity and the object), kept
# for the load that follows, so a run reads its checkpoint once. One entry, taken by
# that load: the weights are not held past it.
_peeked: tuple[tuple[int, ...], Any] | None = None
_peeked_lock = threading.Lock()


def _identity(fp: BinaryIO) -> tuple[int, ...]:
    """Which file, and which version of it: a file replaced or rewritten since differs."""
    st = os.fstat(fp.fileno())
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read(path: Path, *, keep: bool) -> Any:
    """torch.load *path* (weights only), or take what a peek at the same file read.

    With *keep* (a peek) the object stays for the load that follows; without, it is taken.
    """
    global _peeked
    with open(path, "rb") as fp:
        key = _identity(fp)
        with _peeked_lock:
            held, _peeked = _peeked, None
        if held is not None and held[0] == key:
            obj = held[1]
        else:
            import torch

            # An INT8 file read as float (it is refused after) makes torch warn of
            # quantized storage: the refusal says what to do.
            with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
                warnings.simplefilter("ignore", UserWarning)
                obj = torch.load(fp, map_location="cpu", weights_only=True)
    if keep:
        with _peeked_lock:
            _peeked = (key, obj)
    return obj


def load_object(path: Path, *, name: str) -> Any:
    """torch.load a checkpoint file safely (weights only), or raise one CheckpointError."""
    try:
        return _read(path, keep=False)
    except Exception as exc:
        raise CheckpointError(
            f"cannot load checkpoint '{name}': {exc.__class__.__name__} "
            "(give a state dict saved with torch.save)"
        ) from None


def stored_classes(path: Path) -> tuple[str, ...] | None:
    """The class names a checkpoint file keeps under CLASSES_KEY, or None.

    What this reads is kept for the load that follows (load_object), so a run reads its
    checkpoint once; a file this cannot read is left to that load, which says what is
    wrong with it.
    """
    try:
        obj = _read(path, keep=True)
    except Exception:
        return None
    names = obj.get(CLASSES_KEY) if isinstance(obj, dict) else None
    if not isinstance(names, (list, tuple)) or not names:
        return None
    if not all(isinstance(n, str) for n in names):
        return None
    return tuple(names)


def read_state_dict(path: Path, *, name: str) -> dict[str, torch.Tensor]:
    """Load a state dict from a file, unwrapping {'state_dict': ...} or {'model': ...}."""
    obj = load_object(path, name=name)
    state = unwrap(obj)
    if holds_int8(obj):
        raise CheckpointError(f"checkpoint '{name}' holds INT8 weights (add --quantized)")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(
            f"checkpoint '{name}' is not a state dict (expected a mapping of parameter "
            "names to tensors, or one under 'state_dict' or 'model')"
        )
    import torch

    tensors = state_entries(state, torch.Tensor)
    if not tensors:
        raise CheckpointError(f"checkpoint '{name}' holds no tensors (give a model state dict)")
    return tensors


def state_entries(state: dict[Any, Any], kind: type[T]) -> dict[str, T]:
    """The entries of an unwrapped state dict that are tensors (of *kind*: torch's, or
    torch_file's references to stored ones), keyed as torchvision names them."""
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, kind)}
    # Checkpoints saved from DataParallel or DDP prefix every key with 'module.'.
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def holds_int8(obj: object) -> bool:
    """Whether a loaded checkpoint (or the state dict read from one) holds INT8 weights."""
    if not isinstance(obj, dict):
        return False
    if INT8_MARKER in obj:
        return True
    state = unwrap(obj)
    # A torch tensor says whether it is quantized; torch_file's references never are.
    return isinstance(state, dict) and any(
        getattr(v, "is_quantized", False) is True or str(k).endswith("_packed_params")
        for k, v in state.items()
    )


def _check_tensors(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], name: str
) -> dict[str, torch.Tensor]:
    """Refuse tensors the network cannot use; bring other float types to float32."""
    import torch

    out = {}
    for key, want in expected.items():
        have = state[key]
        where = f"checkpoint '{name}': tensor '{key}'"
        if have.layout != torch.strided or have.is_meta:
            kind = "meta" if have.is_meta else str(have.layout).removeprefix("torch.")
            raise CheckpointError(f"{where} is {kind}, not a dense tensor (save real weights)")
        if want.is_floating_point():
            if not have.is_floating_point():
                raise CheckpointError(
                    f"{where} is {str(have.dtype).removeprefix('torch.')}, not floating point "
                    "(give a float checkpoint)"
                )
            if not bool(torch.isfinite(have).all()):
                raise CheckpointError(
                    f"{where} holds NaN or infinite values (the checkpoint is damaged)"
                )
            have = have.to(torch.float32)
        elif have.is_floating_point() or have.is_complex():
            raise CheckpointError(f"{where} should hold integers, not {have.dtype}")
        out[key] = have
    return out


def _shape(value: Any) -> list[int] | None:
    import torch

    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):
        return list(value[0].shape)  # packed (weight, bias) of a quantized Linear
    return None


def check_fit(expected: dict[str, Any], state: dict[str, Any], *, model: str, name: str) -> None:
    """Raise CheckpointError naming the missing, unexpected and misshapen keys of *state*."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and _shape(state[k]) != _shape(expected[k])]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: '{missing[0]}')")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: '{unexpected[0]}')")
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} of the wrong shape (first: '{k}' is "
            f"{_shape(state[k])}, expected {_shape(expected[k])})"
        )
    raise CheckpointError(
        f"checkpoint '{name}' does not fit {model}: {'; '.join(parts)} "
        "(check --model matches the checkpoint)"
    )


def build_model(model: str, state: dict[str, torch.Tensor], *, name: str) -> torch.nn.Module:
    """Build *model* on the meta device and load *state* into it, checking it fits."""
    fc = state.get("fc.weight")
    if fc is None or fc.ndim != 2:
        raise CheckpointError(
            f"checkpoint '{name}' does not fit {model}: it has no 'fc.weight' "
            "(give a state dict in torchvision's ResNeXt layout)"
        )
    import torch
    import torchvision  # only where a network is built: reading a file needs none

    builder = getattr(torchvision.models, model)
    with torch.device("meta"):
        net: torch.nn.Module = builder(weights=None, num_classes=int(fc.shape[0]))
    expected = net.state_dict()
    check_fit(expected, state, model=model, name=name)
    net.load_state_dict(_check_tensors(state, expected, name), assign=True)
    return net.eval()


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Fold each eval-mode BatchNorm into the convolution before it (fewer passes)."""
    import torch
    import torchvision
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(parent: torch.nn.Module, conv: str, bn: str) -> None:
        fused = fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, bn))
        setattr(parent, conv, fused)
        setattr(parent, bn, torch.nn.Identity())

    fold(model, "conv1", "bn1")
    for module in model.modules():
        if isinstance(module, torchvision.models.resnet.Bottleneck):
            for i in (1, 2, 3):
                fold(module, f"conv{i}", f"bn{i}")
            if module.downsample is not None:
                fold(module.downsample, "0", "1")
    return model
