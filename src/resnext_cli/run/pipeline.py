"""The steps of a run, as functions of a plan: load the model, prepare one input, infer a batch.

Both engines call exactly these: the local engine in its threads, the Ray engine in its
tasks and actors. None of them reads an option from anywhere but the plan.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from resnext_cli.errors import CheckpointError, ConfigError, InputError, WeightsError
from resnext_cli.imaging.preprocess import Preprocess, decode
from resnext_cli.inputs.sources import Source, open_source
from resnext_cli.model.checkpoint import build_model, fold_batchnorm, read_state_dict
from resnext_cli.model.registry import resolve_weights, torchvision_weights
from resnext_cli.model.weights import Progress, checkpoints_dir, discard, fetch
from resnext_cli.results import Classified, Failed, FileFacts, Prediction, Record
from resnext_cli.run.plan import Plan

if TYPE_CHECKING:
    from resnext_cli.model.openvino_runtime import Network as OpenVinoNetwork

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Encoded:
    """A baseline JPEG's bytes, read by a decode thread, for the GPU to decode in a batch."""

    data: bytes


# What the per-input step gives the per-batch step: uint8 CHW pixels, a JPEG for the GPU,
# or the input's error.
Prepared = torch.Tensor | Encoded | InputError
State = tuple[dict[str, torch.Tensor], str]


# -- the model -----------------------------------------------------------------------------


def weights_file(plan: Plan, *, progress: Progress | None = None) -> tuple[Path, str]:
    """The local file of the weights or checkpoint the plan names (fetched if need be),
    with its name for messages."""
    cfg, info = plan.config, plan.info
    if cfg.checkpoint is None:
        path = fetch(info.url, offline=cfg.offline, progress=progress)
        return path, str(path)
    name = cfg.checkpoint
    if name.startswith(("http://", "https://")):
        return fetch(name, offline=cfg.offline, progress=progress), name
    path = Path(name)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{name}' does not exist (give a file)")
    return path, name


def load_state(plan: Plan, *, progress: Progress | None = None) -> State:
    """Fetch or read the state dict the plan names; return it with its name for messages.

    An INT8 plan's state is torchvision's quantized layout (packed parameters), read by
    quantized.py; a float plan's is plain tensors.
    """
    cfg, info = plan.config, plan.info
    read = _read_int8 if plan.precision == "int8" else read_state_dict
    path, name = weights_file(plan, progress=progress)
    try:
        return read(path, name=name), name
    except CheckpointError:
        if cfg.checkpoint is None:
            discard(path)
            quantized = " --quantized" if plan.precision == "int8" else ""
            raise WeightsError(
                f"cached weights file '{path}' was corrupt and has been removed (run again "
                f"to download it, or 'resnext download -m {info.model} -w {info.tag}{quantized}')"
            ) from None
        if name.startswith(("http://", "https://")):
            discard(path)  # never reuse a cached file that does not load
        raise


def _read_int8(path: Path, *, name: str) -> dict[str, torch.Tensor]:
    from resnext_cli.model.quantized import read_quantized

    return read_quantized(path, name=name).state


@dataclass
class Model:
    """The network of a plan, on its device, with the weights' own preprocessing."""

    plan: Plan
    # None when OpenVINO runs it: the torch network is then built only if asked for.
    _net: torch.nn.Module | None
    transform: Preprocess
    # The checkpoint (or cached weights file) it came from, for messages.
    name: str
    # The compiled OpenVINO network, when the plan's runtime is 'openvino'.
    openvino: OpenVinoNetwork | None = None

    @property
    def net(self) -> torch.nn.Module:
        """The torch network (under OpenVINO, built from the same weights on first use)."""
        if self._net is None:
            if self.plan.precision == "int8":
                raise ConfigError(
                    f"'{self.name}' is an OpenVINO INT8 model: it has no torch network "
                    "(use a checkpoint made by 'resnext quantize')"
                )
            self._net = load_model(replace(self.plan, runtime="torch")).net
        return self._net


def check_classes(
    plan: Plan, state: dict[str, torch.Tensor], name: str, *, classes: int | None = None
) -> None:
    """Refuse a checkpoint whose class count differs from the labels', and a top-k past it."""
    fc = state.get("fc.weight")
    if classes is None and fc is not None and fc.ndim == 2:
        classes = int(fc.shape[0])
    if classes is not None and classes != len(plan.labels):
        labels = plan.config.labels
        source = f"labels file '{labels}' has" if labels else "the bundled ImageNet labels have"
        raise ConfigError(
            f"checkpoint '{name}' has {classes} classes but {source} "
            f"{len(plan.labels)} (give --labels FILE with {classes} lines)"
        )
    if plan.config.topk > len(plan.labels):
        raise ConfigError(
            f"--topk {plan.config.topk} is more than the {len(plan.labels)} classes (lower --topk)"
        )


def load_model(
    plan: Plan, *, progress: Progress | None = None, state: State | None = None
) -> Model:
    """Fetch or take the state dict, check it, build the network the plan describes."""
    if plan.runtime == "openvino":
        return _load_openvino(plan, progress=progress, state=state)
    tensors, name = state if state is not None else load_state(plan, progress=progress)
    if plan.precision == "int8":
        from resnext_cli.model.quantized import build_quantized, num_classes, quantized_engine

        quantized_engine()  # x86, else fbgemm, else qnnpack: what this torch offers
        classes = num_classes(tensors, model=plan.info.model, name=name)
        check_classes(plan, tensors, name, classes=classes)
        net = build_quantized(plan.info.model, tensors, name=name)
        return Model(plan, net, transform_for(plan), name)
    check_classes(plan, tensors, name)
    net = build_model(plan.info.model, tensors, name=name)
    if plan.fold_batchnorm:
        net = fold_batchnorm(net)
    # channels_last is only a memory layout, which oneDNN and cuDNN run faster.
    net = net.to(memory_format=torch.channels_last).to(plan.device)
    return Model(plan, net, transform_for(plan), name)


def _load_openvino(plan: Plan, *, progress: Progress | None, state: State | None) -> Model:
    """The plan's network through OpenVINO: converted once and cached beside the weights,
    or an INT8 file made by 'resnext quantize --runtime openvino'."""
    from resnext_cli.model import openvino_runtime as ovr

    info = plan.info
    transform = transform_for(plan)
    if plan.precision == "int8":
        path, name = weights_file(plan, progress=progress)
        bundle = ovr.read_bundle(path, name=name)
        made_for = bundle.manifest.get("model")
        if made_for != info.model:
            raise CheckpointError(
                f"checkpoint '{name}' was made for {made_for}, not {info.model} (use -m {made_for})"
            )
        check_classes(plan, {}, name, classes=bundle.classes)
        return Model(plan, None, transform, name, ovr.Network(bundle, int8=True))
    if state is not None:
        source, name = ovr.state_identity(state[0]), state[1]
    else:
        path, name = weights_file(plan, progress=progress)
        source = ovr.file_identity(path)

    def build() -> torch.nn.Module:
        torch_plan = replace(plan, runtime="torch", device="cpu")
        return load_model(torch_plan, progress=progress, state=state).net

    key = ovr.CacheKey(info.model, source, plan.fold_batchnorm, transform.crop_size[0])
    bundle, _cached = ovr.cached_bundle(key, ovr.cache_dir(checkpoints_dir()), build, name=name)
    check_classes(plan, {}, name, classes=bundle.classes)
    return Model(plan, None, transform, name, ovr.Network(bundle))


def transform_for(plan: Plan) -> Preprocess:
    """The weights' own Resize, CenterCrop and Normalize, split for batching (INT8 weights
    use those of the float weights they were made from)."""
    info = plan.info
    if info.quantized and info.unquantized:
        info = resolve_weights(info.model, info.unquantized)
    return Preprocess(torchvision_weights(info))


# -- per input -------------------------------------------------------------------------------


def prepare(source: Source, plan: Plan, transform: Preprocess) -> Prepared:
    """Open, decode and crop one source; a bad input becomes its InputError.

    With GPU decoding, a JPEG the GPU can take is only read here (its bytes go to the
    batch step); everything else takes Pillow's path, as without it.
    """
    cfg = plan.config
    try:
        with open_source(source, timeout=cfg.timeout, max_bytes=cfg.max_download_bytes) as fp:
            if plan.decode_on == "gpu":
                data = fp.read(cfg.max_download_bytes + 1)
                if len(data) <= cfg.max_download_bytes and _gpu_takes(data, plan):
                    return Encoded(data)
                fp.seek(0)
            image = decode(fp, source.input, plan.decode)
        return transform(image)
    except InputError as exc:
        return exc
    except Exception as exc:  # a decoder bug must not end the run
        return InputError("unreadable", f"cannot read '{source.input}': {exc!r}")


def _gpu_takes(data: bytes, plan: Plan) -> bool:
    from resnext_cli.imaging.tensor_decode import gpu_decodable, jpeg_header

    info = jpeg_header(data)
    return info is not None and gpu_decodable(info, plan.decode.max_pixels)


Ready = torch.Tensor | InputError


def _decoded(model: Model, batch: Sequence[tuple[Source, Prepared]]) -> list[tuple[Source, Ready]]:
    """Decode a batch's JPEGs on the device in one call; what it cannot take, with Pillow."""
    pending = InputError("unreadable", "not decoded")  # replaced below, for each JPEG
    out: list[tuple[Source, Ready]] = [
        (s, pending if isinstance(p, Encoded) else p) for s, p in batch
    ]
    waiting = [i for i, (_, p) in enumerate(batch) if isinstance(p, Encoded)]
    if not waiting:
        return out
    from resnext_cli.imaging.tensor_decode import decode_batch

    plan, t = model.plan, model.transform
    datas = [p.data for _, p in batch if isinstance(p, Encoded)]
    try:
        crops = decode_batch(
            datas,
            device=torch.device(plan.device),
            resize_size=t.resize_size[0],
            crop_size=t.crop_size[0],
            antialias=bool(t.antialias),
            max_pixels=plan.decode.max_pixels,
        )
    except Exception:  # the GPU decoder failed as a whole: Pillow takes every one
        crops = [None] * len(datas)
    pillow_plan = replace(plan, decode_on="cpu")
    for i, crop in zip(waiting, crops, strict=True):
        source, data = batch[i]
        assert isinstance(data, Encoded)
        if crop is not None:
            out[i] = (source, crop)
            continue
        again = prepare(
            Source(input=source.input, path=source.path, data=data.data), pillow_plan, t
        )
        assert not isinstance(again, Encoded)
        out[i] = (source, again)
    return out


# -- per batch -------------------------------------------------------------------------------


def _features(net: Any, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet forward up to the pooled features (everything but fc)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


def _stack(tensors: list[torch.Tensor], device: str) -> torch.Tensor:
    """One NCHW batch; crops the GPU decoded are on the device already, Pillow's are not."""
    if all(t.device.type == "cpu" for t in tensors):
        return torch.stack(tensors)
    return torch.stack([t.to(device, non_blocking=True) for t in tensors])


def _softmax(model: Model, batch: torch.Tensor, precision: str) -> torch.Tensor:
    """Softmax probabilities (float32, on the CPU) of a uint8 NCHW batch of crops."""
    if model.openvino is not None:
        from resnext_cli.model.openvino_runtime import normalize

        t = model.transform
        pixels = normalize(batch.numpy(), t.mean, t.std)
        return torch.from_numpy(model.openvino.probabilities(pixels, precision))
    plan, net = model.plan, model.net
    head: Any = net.fc
    if plan.device_type == "cuda" and batch.device.type == "cpu":
        batch = batch.pin_memory().to(plan.device, non_blocking=True)
    else:
        batch = batch.to(plan.device)
    x = model.transform.normalize(batch).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        if precision in _DTYPES:
            # The body runs in reduced precision; the head and the softmax in float32, so
            # logits are not rounded to bf16's 8 bits (equal probabilities, top-k by luck).
            with torch.autocast(device_type=plan.device_type, dtype=_DTYPES[precision]):
                features = _features(net, x)
            logits = head(features.float())
        else:
            logits = net(x)
        return torch.softmax(logits.float(), dim=1).cpu()


def _probabilities(
    model: Model, tensors: list[torch.Tensor], names: list[str]
) -> list[tuple[torch.Tensor, str] | InputError]:
    """Each tensor's probabilities with the precision that made them, or its error."""
    precision = model.plan.precision
    try:
        probs = _softmax(model, _stack(tensors, model.plan.device), precision)
    except Exception as exc:
        if len(tensors) == 1:
            return [InputError("inference_failed", f"the model failed on '{names[0]}': {exc!r}")]
        # Retry one at a time so only the guilty input gets an error record.
        out: list[tuple[torch.Tensor, str] | InputError] = []
        for tensor, name in zip(tensors, names, strict=True):
            out.extend(_probabilities(model, [tensor], [name]))
        return out
    finite = torch.isfinite(probs).all(dim=1).tolist()
    results: list[tuple[torch.Tensor, str] | InputError] = [(p, precision) for p in probs]
    bad = [i for i, ok in enumerate(finite) if not ok]
    if bad and precision in _DTYPES:
        # Reduced precision overflowed: once more in float32, for those inputs only.
        again = _softmax(model, _stack([tensors[i] for i in bad], model.plan.device), "fp32")
        for i, p in zip(bad, again, strict=True):
            results[i] = (p, "fp32")
    for i in bad:
        p = results[i]
        if isinstance(p, tuple) and not bool(torch.isfinite(p[0]).all()):
            results[i] = InputError(
                "inference_failed",
                f"the model gave non-finite probabilities for '{names[i]}' "
                "(NaN or infinity; check the checkpoint)",
            )
    return results


def topk(probs: torch.Tensor, k: int) -> tuple[list[float], list[int]]:
    """The k largest probabilities; equal ones in class order, so top-k is a prefix of top-(k+1)."""
    values, indices = torch.sort(probs, descending=True, stable=True)
    return values[:k].tolist(), indices[:k].tolist()


def file_facts(source: Source) -> FileFacts | None:
    """Size and mtime of a local input, to tell later whether it is still the same file."""
    if source.path is None:
        return None
    try:
        st = os.stat(source.path)
    except (OSError, ValueError):
        return None
    return FileFacts(st.st_size, st.st_mtime_ns)


def make_record(
    model: Model, source: Source, outcome: tuple[torch.Tensor, str] | InputError
) -> Record:
    """The record of one input, from its probabilities or its error."""
    path = str(source.path.absolute()) if source.path is not None else None
    facts = file_facts(source)
    if isinstance(outcome, InputError):
        return Failed(source.input, outcome.error_type, outcome.message, path=path, file=facts)
    probs, precision = outcome
    plan = model.plan
    values, indices = topk(probs, plan.config.topk)
    return Classified(
        input=source.input,
        model=plan.info.model,
        weights=plan.info.tag,
        predictions=tuple(
            Prediction(plan.labels[i], i, p) for p, i in zip(values, indices, strict=True)
        ),
        path=path,
        checkpoint=plan.config.checkpoint,
        precision=precision,
        runtime=plan.runtime,
        file=facts,
        categories=(
            plan.categories.scores(probs.tolist(), plan.config.topk) if plan.categories else None
        ),
    )


def infer(model: Model, prepared: Sequence[tuple[Source, Prepared]]) -> Iterable[Record]:
    """Infer one batch of prepared sources (errors pass through), one record each, in order."""
    batch = _decoded(model, prepared)
    ready = [(s, p) for s, p in batch if isinstance(p, torch.Tensor)]
    outcomes = iter(
        _probabilities(model, [p for _, p in ready], [s.input for s, _ in ready]) if ready else []
    )
    for source, ready_or_error in batch:
        outcome = next(outcomes) if isinstance(ready_or_error, torch.Tensor) else ready_or_error
        yield make_record(model, source, outcome)
