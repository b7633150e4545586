"""The steps of a run, as functions of a plan: prepare one input, infer a batch.

Both engines call exactly these: the local engine in its threads, the Ray engine in its
tasks and actors. None of them reads an option from anywhere but the plan.

On CUDA the hot path keeps per-image Python small: each file is read once and its header
parsed once (in a decode thread), the batch is normalised with mean and std kept on the
device, and the top-k of the whole batch is one stable sort on the device.

Through OpenVINO a batch stays numpy from the crop to the records (normalised in float32,
the head and softmax in float32, top-k by a stable sort): a run with a warm cache never
imports torch. The batch steps give back what they are given, numpy or torch.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeAlias, overload

import numpy as np

from resnext_cli.errors import InputError
from resnext_cli.imaging.budget import DECODING
from resnext_cli.imaging.preprocess import Preprocess, decode
from resnext_cli.inputs.sources import Source, file_facts, open_source
from resnext_cli.results import Classified, Failed, Prediction, Record
from resnext_cli.run.network import REDUCED, Model, forward_pass, pooled_features, reduced_dtype
from resnext_cli.run.plan import Plan

if TYPE_CHECKING:
    import torch

    from resnext_cli.imaging.tensor_decode import JpegInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Encoded:
    """A baseline JPEG's bytes, read by a decode thread, for the GPU to decode in a batch."""

    data: bytes
    info: JpegInfo | None = None  # its header, parsed once, in the decode thread


# uint8 CHW pixels of one crop (NCHW: a batch), or float32 rows of a batch: numpy through
# OpenVINO's light path, torch elsewhere.
Pixels: TypeAlias = "np.ndarray[Any, Any] | torch.Tensor"
Rows: TypeAlias = "np.ndarray[Any, Any] | torch.Tensor"
# What the per-input step gives the per-batch step: uint8 CHW pixels, a JPEG for the GPU,
# or the input's error.
Prepared: TypeAlias = "Pixels | Encoded | InputError"


# -- per input -------------------------------------------------------------------------------


def prepare(
    source: Source, plan: Plan, transform: Preprocess, *, as_numpy: bool = False
) -> Prepared:
    """Open, decode and crop one source; a bad input becomes its InputError.

    The crop is a uint8 tensor, or a numpy array with *as_numpy* (OpenVINO's light path:
    the same pixels, no torch). With GPU decoding, a JPEG the GPU can take is only read
    here (its bytes go to the batch step); everything else takes Pillow's path, as
    without it.
    """
    try:
        # The full-size picture holds its share of the process's decoding budget until
        # it is gone (after the crop), so large images wait for each other.
        with DECODING.reserve() as share:
            with open_source(source, timeout=plan.timeout, max_bytes=plan.max_download_bytes) as fp:
                if plan.decode_on == "gpu" and (data := _read_once(fp, plan.max_download_bytes)):
                    if (encoded := _for_gpu(data, plan)) is not None:
                        return encoded
                    image = decode(io.BytesIO(data), source.input, plan.decode, share)
                else:
                    image = decode(fp, source.input, plan.decode, share)
            crop = transform.pixels(image) if as_numpy else transform(image)
            del image
        return crop
    except InputError as exc:
        return exc
    except Exception as exc:  # a decoder bug must not end the run
        return InputError("unreadable", f"cannot read '{source.input}': {exc!r}")


def _read_once(fp: Any, limit: int) -> bytes | None:
    """A file's whole content in one read(), or None past *limit* (Pillow then reads it).

    read(limit + 1) would allocate *limit* bytes for every file; a regular file's size
    is known from fstat, and other streams (downloads, stdin) are in memory already.
    """
    facts = file_facts(fp)
    if facts is not None:
        if facts.size > limit:
            return None
        data: bytes = fp.read()
    else:
        data = fp.read(limit + 1)
    if len(data) > limit:
        fp.seek(0)
        return None
    return data


def _for_gpu(data: bytes, plan: Plan) -> Encoded | None:
    from resnext_cli.imaging.tensor_decode import gpu_decodable, jpeg_header

    info = jpeg_header(data)
    if info is None or not gpu_decodable(info, plan.decode.max_pixels):
        return None
    return Encoded(data, info)


Ready: TypeAlias = "Pixels | InputError"


def _decoded(model: Model, batch: Sequence[tuple[Source, Prepared]]) -> list[tuple[Source, Ready]]:
    """Decode a batch's JPEGs on the device in one call; what it cannot take, with Pillow."""
    pending = InputError("unreadable", "not decoded")  # replaced below, for each JPEG
    out: list[tuple[Source, Ready]] = [
        (s, pending if isinstance(p, Encoded) else p) for s, p in batch
    ]
    waiting = [i for i, (_, p) in enumerate(batch) if isinstance(p, Encoded)]
    if not waiting:
        return out

    import torch

    from resnext_cli.imaging.tensor_decode import Budget, decode_batch

    plan, t = model.plan, model.transform
    encoded = [p for _, p in batch if isinstance(p, Encoded)]
    if model.budget is None:
        model.budget = Budget()
    try:
        crops = decode_batch(
            [p.data for p in encoded],
            device=torch.device(plan.device),
            resize_size=t.resize_size[0],
            crop_size=t.crop_size[0],
            antialias=bool(t.antialias),
            max_pixels=plan.decode.max_pixels,
            infos=[p.info for p in encoded],
            budget=model.budget,
        )
    except Exception as exc:  # failed as a whole, after its one back-off: Pillow, this batch
        log.debug("the GPU decoder failed on a batch (%r): Pillow decodes its JPEGs", exc)
        crops = [None] * len(encoded)
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


def _is_numpy(x: object) -> bool:
    return isinstance(x, np.ndarray)


def _stack(crops: list[Pixels], device: str) -> Pixels:
    """One NCHW batch; crops the GPU decoded are on the device already, Pillow's are not."""
    if all(_is_numpy(c) for c in crops):
        return np.stack(crops)
    import torch

    tensors: list[torch.Tensor] = [torch.as_tensor(c) for c in crops]
    if all(t.device.type == "cpu" for t in tensors):
        return torch.stack(tensors)
    return torch.stack([t.to(device, non_blocking=True) for t in tensors])


def _cat(parts: list[Rows]) -> Rows:
    if len(parts) == 1:
        return parts[0]
    if all(_is_numpy(p) for p in parts):
        return np.concatenate(parts)
    import torch

    return torch.cat([torch.as_tensor(p) for p in parts])


def _on_cpu(rows: Rows) -> Rows:
    return rows if isinstance(rows, np.ndarray) else rows.cpu()


def _finite_rows(rows: Rows) -> list[bool]:
    """Whether each row holds only finite values."""
    if isinstance(rows, np.ndarray):
        flags: Any = np.isfinite(rows).all(axis=1)
        return [bool(ok) for ok in flags.tolist()]
    import torch

    return [bool(ok) for ok in torch.isfinite(rows).all(dim=1).tolist()]


def _like(batch: Pixels, rows: np.ndarray[Any, Any]) -> Rows:
    """*rows* as the kind of array *batch* is: numpy stays numpy, torch gets a tensor."""
    if isinstance(batch, np.ndarray):
        return rows
    import torch

    return torch.from_numpy(rows)


def _openvino_input(model: Model, batch: Pixels) -> np.ndarray[Any, Any]:
    """A uint8 NCHW batch normalised in numpy float32, as OpenVINO's network takes it."""
    from resnext_cli.model.openvino_runtime import normalize

    t = model.transform
    pixels = batch if isinstance(batch, np.ndarray) else batch.cpu().numpy()
    return normalize(pixels, t.mean, t.std)


def _normalize(model: Model, batch: torch.Tensor) -> torch.Tensor:
    """Preprocess.normalize's arithmetic, with mean and std kept on the batch's device."""
    import torch

    if model._norm is None or model._norm[0].device != batch.device:
        t = model.transform
        mean = torch.tensor(t.mean, dtype=torch.float32, device=batch.device).view(-1, 1, 1)
        std = torch.tensor(t.std, dtype=torch.float32, device=batch.device).view(-1, 1, 1)
        model._norm = (mean, std)
    mean, std = model._norm
    x = batch.to(torch.float32) / 255.0
    return x.sub_(mean).div_(std)


def _to_device(model: Model, batch: Pixels) -> torch.Tensor:
    import torch

    plan, tensor = model.plan, torch.as_tensor(batch)
    if plan.device_type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(plan.device, non_blocking=True)
    return tensor.to(plan.device)


@overload
def probabilities(model: Model, batch: torch.Tensor, precision: str) -> torch.Tensor: ...
@overload
def probabilities(
    model: Model, batch: np.ndarray[Any, Any], precision: str
) -> np.ndarray[Any, Any]: ...
def probabilities(model: Model, batch: Pixels, precision: str) -> Rows:
    """Softmax probabilities (float32, on the model's device) of a uint8 NCHW batch of
    crops; numpy for a numpy batch through OpenVINO."""
    if model.openvino is not None:
        arr = _openvino_input(model, batch)
        return _like(batch, model.openvino.probabilities(arr, precision))
    import torch

    plan = model.plan
    on_device = _to_device(model, batch)
    n = len(on_device)
    if precision == plan.precision:
        if model.forward is None:
            model.forward = forward_pass(model)
        forward = model.forward
        if plan.compile and n < plan.batch_size:
            # A compiled graph is for one shape: the last, short batch is padded to it
            # rather than compiled again.
            pad = on_device.new_zeros((plan.batch_size - n, *on_device.shape[1:]))
            on_device = torch.cat([on_device, pad])
    else:  # the float32 retry of rows a reduced precision overflowed: the plain network
        forward = model.net
    x = _normalize(model, on_device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        logits = forward(x)[:n]
        return torch.softmax(logits.float(), dim=1)


def _pooled(model: Model, batch: Pixels, precision: str) -> Rows:
    """Pooled features (float32, on the model's device) of a uint8 NCHW batch: fc's input."""
    if model.openvino is not None:  # the same compiled network as the probabilities
        arr = _openvino_input(model, batch)
        return _like(batch, model.openvino.features(arr, precision))
    import torch

    plan, net = model.plan, model.net
    x = _normalize(model, _to_device(model, batch)).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        if precision in REDUCED:
            with torch.autocast(device_type=plan.device_type, dtype=reduced_dtype(precision)):
                return pooled_features(net, x).float()
        return pooled_features(net, x).float()


def _softmax_and_pooled(model: Model, batch: Pixels, precision: str) -> Rows:
    """Probabilities and pooled features of one pass, side by side in each row."""
    features = _pooled(model, batch, precision)
    if model.openvino is not None:
        feats = features if isinstance(features, np.ndarray) else features.numpy()
        rows = np.concatenate([model.openvino.head(feats), feats], axis=1)
        return _like(batch, rows)
    import torch

    head: Any = model.net.fc
    with torch.inference_mode():
        probs = torch.softmax(head(features).float(), dim=1)
    return torch.cat([probs, torch.as_tensor(features)], dim=1)


# One batch step: uint8 NCHW crops to float32 rows (probabilities, or features too).
Step = Callable[[Model, Any, str], Any]


def _out_of_memory(exc: BaseException) -> bool:
    """Whether *exc* is torch's out-of-memory error (never, where torch was not imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


def _device_rows(model: Model, crops: list[Pixels], precision: str, step: Step) -> Rows:
    """*step*'s rows of *crops* on the device; out of memory, the batch is halved once."""
    device = model.plan.device
    while True:
        size = model.max_batch or len(crops)
        try:
            parts = [
                step(model, _stack(crops[i : i + size], device), precision)
                for i in range(0, len(crops), size)
            ]
            return _cat(parts)
        except Exception as exc:
            if not _out_of_memory(exc) or model.max_batch is not None or len(crops) == 1:
                raise
            model.max_batch = max(1, len(crops) // 2)
            log.debug(
                "out of GPU memory on a batch of %d: the model takes at most %d images at "
                "a time from now on",
                len(crops),
                model.max_batch,
            )
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


# One input's probabilities (float32, CPU), the precision that made them, and its top-k.
Scored: TypeAlias = "tuple[Rows, str, list[float], list[int]]"


def _scored(
    model: Model,
    tensors: list[Pixels],
    names: list[str],
    *,
    step: Step | None = None,
    k: int | None = None,
) -> list[Scored | InputError]:
    """Each crop's rows (probabilities, or what *step* gives), precision and top-k of
    its first len(labels) values, or its error."""
    run = step or probabilities
    precision = model.plan.precision
    k = model.plan.topk if k is None else k
    classes = len(model.plan.labels)
    try:
        probs = _device_rows(model, tensors, precision, run)
    except Exception as exc:
        if len(tensors) == 1:
            return [InputError("inference_failed", f"the model failed on '{names[0]}': {exc!r}")]
        # Retry one at a time so only the guilty input gets an error record.
        out: list[Scored | InputError] = []
        for tensor, name in zip(tensors, names, strict=True):
            out.extend(_scored(model, [tensor], [name], step=step, k=k))
        return out
    values, indices = _batch_topk(probs[:, :classes], k)
    cpu = _on_cpu(probs)
    results: list[Scored | InputError] = [
        (p, precision, v, i) for p, v, i in zip(cpu, values, indices, strict=True)
    ]
    bad = [i for i, ok in enumerate(_finite_rows(cpu)) if not ok]
    if bad and precision in REDUCED:
        # Reduced precision overflowed: once more in float32, for those inputs only.
        again = run(model, _stack([tensors[i] for i in bad], model.plan.device), "fp32")
        top = zip(_on_cpu(again), *_batch_topk(again[:, :classes], k), strict=True)
        for i, (p, v, j) in zip(bad, top, strict=True):
            results[i] = (p, "fp32", v, j)
    for i in bad:
        p = results[i]
        if isinstance(p, tuple) and not _finite_rows(p[0][None])[0]:
            results[i] = InputError(
                "inference_failed",
                f"the model gave non-finite probabilities for '{names[i]}' "
                "(NaN or infinity; check the checkpoint)",
            )
    return results


def _numpy_order(probs: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Column order of a descending stable sort of each row, as torch.sort(descending=True,
    stable=True) gives it: equal values in class order, NaN first."""
    key = np.where(np.isnan(probs), -np.inf, -probs)
    return np.argsort(key, axis=-1, kind="stable")


def _batch_topk(probs: Rows, k: int) -> tuple[list[list[float]], list[list[int]]]:
    """topk() of every row at once, sorted where the probabilities are (one transfer)."""
    if isinstance(probs, np.ndarray):
        order = _numpy_order(probs)[:, :k]
        values = np.take_along_axis(probs, order, axis=1)
        return values.tolist(), order.tolist()
    import torch

    ordered, indices = torch.sort(torch.as_tensor(probs), dim=1, descending=True, stable=True)
    # Class indices are exact in float32 (below 2**24): one copy brings both back.
    top = torch.cat([ordered[:, :k], indices[:, :k].to(ordered.dtype)], dim=1).tolist()
    return [row[:k] for row in top], [[int(i) for i in row[k:]] for row in top]


def _probabilities(
    model: Model, tensors: list[Pixels], names: list[str], *, step: Step | None = None
) -> list[tuple[Rows, str] | InputError]:
    """Each crop's probabilities (or the rows *step* gives) with the precision that
    made them, or its error."""
    return [
        o if isinstance(o, InputError) else (o[0], o[1])
        for o in _scored(model, tensors, names, step=step, k=0 if step is _pooled else None)
    ]


def topk(probs: Rows, k: int) -> tuple[list[float], list[int]]:
    """The k largest probabilities; equal ones in class order, so top-k is a prefix of top-(k+1)."""
    if isinstance(probs, np.ndarray):
        order = _numpy_order(probs)[:k]
        return probs[order].tolist(), order.tolist()
    import torch

    values, indices = torch.sort(torch.as_tensor(probs), descending=True, stable=True)
    return values[:k].tolist(), indices[:k].tolist()


def make_record(
    model: Model, source: Source, outcome: tuple[Rows, str] | Scored | InputError
) -> Record:
    """The record of one input, from its probabilities (and top-k, when known) or its error."""
    path = str(source.path.absolute()) if source.path is not None else None
    facts = file_facts(source.path) if source.path is not None else None
    if isinstance(outcome, InputError):
        return Failed(source.input, outcome.error_type, outcome.message, path=path, file=facts)
    rows, precision = outcome[0], outcome[1]
    plan = model.plan
    # With --embeddings the pooled features follow the probabilities in the row.
    probs, embedding = rows[: len(plan.labels)], rows[len(plan.labels) :]
    if len(outcome) == 4:
        values, indices = outcome[2], outcome[3]
    else:
        values, indices = topk(probs, plan.topk)
    return Classified(
        input=source.input,
        model=plan.info.model,
        weights=plan.info.tag,
        predictions=tuple(
            Prediction(plan.labels[i], i, p) for p, i in zip(values, indices, strict=True)
        ),
        path=path,
        checkpoint=plan.checkpoint,
        precision=precision,
        runtime=plan.runtime,
        file=facts,
        categories=(plan.categories.scores(probs.tolist(), plan.topk) if plan.categories else None),
        embedding=tuple(embedding.tolist()) if plan.embeddings else None,
    )


def score(
    model: Model, batch: Sequence[tuple[Source, Ready]]
) -> list[tuple[Source, Scored | InputError]]:
    """Run the model on a batch's pixels (errors pass through), in order."""
    ready = [(s, p) for s, p in batch if not isinstance(p, InputError)]
    step = _softmax_and_pooled if model.plan.embeddings else None
    tensors, names = [p for _, p in ready], [s.input for s, _ in ready]
    outcomes = iter(_scored(model, tensors, names, step=step) if ready else [])
    out: list[tuple[Source, Scored | InputError]] = []
    for source, ready_or_error in batch:
        if isinstance(ready_or_error, InputError):
            out.append((source, ready_or_error))
        else:
            out.append((source, next(outcomes)))
    return out


def decode_ready(
    model: Model, prepared: Sequence[tuple[Source, Prepared]]
) -> list[tuple[Source, Ready]]:
    """A batch's pixels: its JPEGs decoded on the device, the rest as prepared."""
    return _decoded(model, prepared)


def infer(model: Model, prepared: Sequence[tuple[Source, Prepared]]) -> Iterable[Record]:
    """Infer one batch of prepared sources (errors pass through), one record each, in order."""
    for source, outcome in score(model, _decoded(model, prepared)):
        yield make_record(model, source, outcome)


def features(
    model: Model, prepared: Sequence[tuple[Source, Prepared]]
) -> Iterable[tuple[Source, np.ndarray[Any, Any] | InputError]]:
    """The pooled features (the input of fc) of one batch, or each input's error, in order.

    The same decoding, batching and precision as `infer`: features run at classify's speed.
    They are float32 numpy vectors whatever the runtime (what learns from them is numpy,
    so a learn through OpenVINO never imports torch).
    """
    batch = _decoded(model, prepared)
    ready = [(s, p) for s, p in batch if not isinstance(p, InputError)]
    tensors, names = [p for _, p in ready], [s.input for s, _ in ready]
    outcomes = iter(_probabilities(model, tensors, names, step=_pooled) if ready else [])
    for source, ready_or_error in batch:
        if isinstance(ready_or_error, InputError):
            yield source, ready_or_error
            continue
        outcome = next(outcomes)
        yield source, outcome if isinstance(outcome, InputError) else _vector(outcome[0])


def _vector(row: Rows) -> np.ndarray[Any, Any]:
    """One row of features as a float32 numpy vector, off the device."""
    if isinstance(row, np.ndarray):
        return np.ascontiguousarray(row, dtype=np.float32)
    import torch

    return np.asarray(row.detach().to("cpu", torch.float32).numpy())
