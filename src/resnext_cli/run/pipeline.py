"""The steps of a run, as functions of a plan: prepare one input, infer a batch.

Both engines call exactly these: the local engine in its threads, the Ray engine in its
tasks and actors. None of them reads an option from anywhere but the plan.

On CUDA the hot path keeps per-image Python small: each file is read once and its header
parsed once (in a decode thread), the batch is normalised with mean and std kept on the
device, and the top-k of the whole batch is one stable sort on the device.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from resnext_cli.errors import InputError
from resnext_cli.imaging.budget import DECODING
from resnext_cli.imaging.preprocess import Preprocess, decode
from resnext_cli.inputs.sources import Source, file_facts, open_source
from resnext_cli.results import Classified, Failed, Prediction, Record
from resnext_cli.run.network import REDUCED_DTYPES, Model, forward_pass, pooled_features
from resnext_cli.run.plan import Plan

if TYPE_CHECKING:
    from resnext_cli.imaging.tensor_decode import JpegInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Encoded:
    """A baseline JPEG's bytes, read by a decode thread, for the GPU to decode in a batch."""

    data: bytes
    info: JpegInfo | None = None  # its header, parsed once, in the decode thread


# What the per-input step gives the per-batch step: uint8 CHW pixels, a JPEG for the GPU,
# or the input's error.
Prepared = torch.Tensor | Encoded | InputError


# -- per input -------------------------------------------------------------------------------


def prepare(source: Source, plan: Plan, transform: Preprocess) -> Prepared:
    """Open, decode and crop one source; a bad input becomes its InputError.

    With GPU decoding, a JPEG the GPU can take is only read here (its bytes go to the
    batch step); everything else takes Pillow's path, as without it.
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
            crop = transform(image)
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


def _stack(tensors: list[torch.Tensor], device: str) -> torch.Tensor:
    """One NCHW batch; crops the GPU decoded are on the device already, Pillow's are not."""
    if all(t.device.type == "cpu" for t in tensors):
        return torch.stack(tensors)
    return torch.stack([t.to(device, non_blocking=True) for t in tensors])


def _normalize(model: Model, batch: torch.Tensor) -> torch.Tensor:
    """Preprocess.normalize's arithmetic, with mean and std kept on the batch's device."""
    if model._norm is None or model._norm[0].device != batch.device:
        t = model.transform
        mean = torch.tensor(t.mean, dtype=torch.float32, device=batch.device).view(-1, 1, 1)
        std = torch.tensor(t.std, dtype=torch.float32, device=batch.device).view(-1, 1, 1)
        model._norm = (mean, std)
    mean, std = model._norm
    x = batch.to(torch.float32) / 255.0
    return x.sub_(mean).div_(std)


def probabilities(model: Model, batch: torch.Tensor, precision: str) -> torch.Tensor:
    """Softmax probabilities (float32, on the model's device) of a uint8 NCHW batch of crops."""
    if model.openvino is not None:
        from resnext_cli.model.openvino_runtime import normalize

        t = model.transform
        pixels = normalize(batch.cpu().numpy(), t.mean, t.std)
        return torch.from_numpy(model.openvino.probabilities(pixels, precision))
    plan = model.plan
    if plan.device_type == "cuda" and batch.device.type == "cpu":
        batch = batch.pin_memory().to(plan.device, non_blocking=True)
    else:
        batch = batch.to(plan.device)
    n = len(batch)
    if precision == plan.precision:
        if model.forward is None:
            model.forward = forward_pass(model)
        forward = model.forward
        if plan.compile and n < plan.batch_size:
            # A compiled graph is for one shape: the last, short batch is padded to it
            # rather than compiled again.
            pad = batch.new_zeros((plan.batch_size - n, *batch.shape[1:]))
            batch = torch.cat([batch, pad])
    else:  # the float32 retry of rows a reduced precision overflowed: the plain network
        forward = model.net
    x = _normalize(model, batch).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        logits = forward(x)[:n]
        return torch.softmax(logits.float(), dim=1)


def _pooled(model: Model, batch: torch.Tensor, precision: str) -> torch.Tensor:
    """Pooled features (float32, on the model's device) of a uint8 NCHW batch: fc's input."""
    if model.openvino is not None:  # the same compiled network as the probabilities
        from resnext_cli.model.openvino_runtime import normalize

        t = model.transform
        pixels = normalize(batch.cpu().numpy(), t.mean, t.std)
        return torch.from_numpy(model.openvino.features(pixels, precision))
    plan, net = model.plan, model.net
    if plan.device_type == "cuda" and batch.device.type == "cpu":
        batch = batch.pin_memory().to(plan.device, non_blocking=True)
    else:
        batch = batch.to(plan.device)
    x = _normalize(model, batch).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        if precision in REDUCED_DTYPES:
            with torch.autocast(device_type=plan.device_type, dtype=REDUCED_DTYPES[precision]):
                return pooled_features(net, x).float()
        return pooled_features(net, x).float()


def _softmax_and_pooled(model: Model, batch: torch.Tensor, precision: str) -> torch.Tensor:
    """Probabilities and pooled features of one pass, side by side in each row."""
    features = _pooled(model, batch, precision)
    if model.openvino is not None:
        probs = torch.from_numpy(model.openvino.head(features.numpy()))
        return torch.cat([probs, features], dim=1)
    head: Any = model.net.fc
    with torch.inference_mode():
        probs = torch.softmax(head(features).float(), dim=1)
    return torch.cat([probs, features], dim=1)


# One batch step: uint8 NCHW crops to float32 rows (probabilities, or features too).
Step = Callable[[Model, torch.Tensor, str], torch.Tensor]


def _device_rows(
    model: Model, tensors: list[torch.Tensor], precision: str, step: Step
) -> torch.Tensor:
    """*step*'s rows of *tensors* on the device; out of memory, the batch is halved once."""
    device = model.plan.device
    while True:
        size = model.max_batch or len(tensors)
        try:
            parts = [
                step(model, _stack(tensors[i : i + size], device), precision)
                for i in range(0, len(tensors), size)
            ]
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        except torch.OutOfMemoryError:
            if model.max_batch is not None or len(tensors) == 1:
                raise
            model.max_batch = max(1, len(tensors) // 2)
            log.debug(
                "out of GPU memory on a batch of %d: the model takes at most %d images at "
                "a time from now on",
                len(tensors),
                model.max_batch,
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


# One input's probabilities (float32, CPU), the precision that made them, and its top-k.
Scored = tuple[torch.Tensor, str, list[float], list[int]]


def _scored(
    model: Model,
    tensors: list[torch.Tensor],
    names: list[str],
    *,
    step: Step | None = None,
    k: int | None = None,
) -> list[Scored | InputError]:
    """Each tensor's rows (probabilities, or what *step* gives), precision and top-k of
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
    cpu = probs.cpu()
    results: list[Scored | InputError] = [
        (p, precision, v, i) for p, v, i in zip(cpu, values, indices, strict=True)
    ]
    bad = [i for i, ok in enumerate(torch.isfinite(cpu).all(dim=1).tolist()) if not ok]
    if bad and precision in REDUCED_DTYPES:
        # Reduced precision overflowed: once more in float32, for those inputs only.
        again = run(model, _stack([tensors[i] for i in bad], model.plan.device), "fp32")
        top = zip(again.cpu(), *_batch_topk(again[:, :classes], k), strict=True)
        for i, (p, v, j) in zip(bad, top, strict=True):
            results[i] = (p, "fp32", v, j)
    for i in bad:
        p = results[i]
        if isinstance(p, tuple) and not bool(torch.isfinite(p[0]).all()):
            results[i] = InputError(
                "inference_failed",
                f"the model gave non-finite probabilities for '{names[i]}' "
                "(NaN or infinity; check the checkpoint)",
            )
    return results


def _batch_topk(probs: torch.Tensor, k: int) -> tuple[list[list[float]], list[list[int]]]:
    """topk() of every row at once, sorted where the probabilities are (one transfer)."""
    values, indices = torch.sort(probs, dim=1, descending=True, stable=True)
    # Class indices are exact in float32 (below 2**24): one copy brings both back.
    top = torch.cat([values[:, :k], indices[:, :k].to(values.dtype)], dim=1).tolist()
    return [row[:k] for row in top], [[int(i) for i in row[k:]] for row in top]


def _probabilities(
    model: Model, tensors: list[torch.Tensor], names: list[str], *, step: Step | None = None
) -> list[tuple[torch.Tensor, str] | InputError]:
    """Each tensor's probabilities (or the rows *step* gives) with the precision that
    made them, or its error."""
    return [
        o if isinstance(o, InputError) else (o[0], o[1])
        for o in _scored(model, tensors, names, step=step, k=0 if step is _pooled else None)
    ]


def topk(probs: torch.Tensor, k: int) -> tuple[list[float], list[int]]:
    """The k largest probabilities; equal ones in class order, so top-k is a prefix of top-(k+1)."""
    values, indices = torch.sort(probs, descending=True, stable=True)
    return values[:k].tolist(), indices[:k].tolist()


def make_record(
    model: Model, source: Source, outcome: tuple[torch.Tensor, str] | Scored | InputError
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
    ready = [(s, p) for s, p in batch if isinstance(p, torch.Tensor)]
    step = _softmax_and_pooled if model.plan.embeddings else None
    tensors, names = [p for _, p in ready], [s.input for s, _ in ready]
    outcomes = iter(_scored(model, tensors, names, step=step) if ready else [])
    out: list[tuple[Source, Scored | InputError]] = []
    for source, ready_or_error in batch:
        if isinstance(ready_or_error, torch.Tensor):
            out.append((source, next(outcomes)))
        else:
            out.append((source, ready_or_error))
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
) -> Iterable[tuple[Source, torch.Tensor | InputError]]:
    """The pooled features (the input of fc) of one batch, or each input's error, in order.

    The same decoding, batching and precision as `infer`: features run at classify's speed.
    """
    batch = _decoded(model, prepared)
    ready = [(s, p) for s, p in batch if isinstance(p, torch.Tensor)]
    tensors, names = [p for _, p in ready], [s.input for s, _ in ready]
    outcomes = iter(_probabilities(model, tensors, names, step=_pooled) if ready else [])
    for source, ready_or_error in batch:
        if not isinstance(ready_or_error, torch.Tensor):
            yield source, ready_or_error
            continue
        outcome = next(outcomes)
        yield source, outcome if isinstance(outcome, InputError) else outcome[0]
