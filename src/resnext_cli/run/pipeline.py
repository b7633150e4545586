"""The steps of a run, as functions of a plan: load the model, prepare one input, infer a batch.

Both engines call exactly these: the local engine in its threads, the Ray engine in its
tasks and actors. None of them reads an option from anywhere but the plan.

On CUDA the hot path keeps per-image Python small: each file is read once and its header
parsed once (in a decode thread), the batch is normalised with mean and std kept on the
device, and the top-k of the whole batch is one stable sort on the device.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from resnext_cli.errors import CheckpointError, ConfigError, InputError, WeightsError
from resnext_cli.imaging.preprocess import Preprocess, decode
from resnext_cli.inputs.http import Progress
from resnext_cli.inputs.sources import Source, open_source
from resnext_cli.model.checkpoint import build_model, fold_batchnorm, read_state_dict
from resnext_cli.model.registry import torchvision_weights
from resnext_cli.model.weights import checkpoints_dir, discard, fetch
from resnext_cli.results import Classified, Failed, FileFacts, Prediction, Record
from resnext_cli.run.plan import Plan

if TYPE_CHECKING:
    from resnext_cli.imaging.tensor_decode import Budget, JpegInfo
    from resnext_cli.model.openvino_runtime import Network as OpenVinoNetwork

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Encoded:
    """A baseline JPEG's bytes, read by a decode thread, for the GPU to decode in a batch."""

    data: bytes
    info: JpegInfo | None = None  # its header, parsed once, in the decode thread


# What the per-input step gives the per-batch step: uint8 CHW pixels, a JPEG for the GPU,
# or the input's error.
Prepared = torch.Tensor | Encoded | InputError
State = tuple[dict[str, torch.Tensor], str]


# -- the model -----------------------------------------------------------------------------


def weights_file(plan: Plan, *, progress: Progress | None = None) -> tuple[Path, str]:
    """The local file of the weights or checkpoint the plan names (fetched if need be),
    with its name for messages."""
    info = plan.info
    if plan.checkpoint is None:
        path = fetch(info.url, offline=plan.offline, progress=progress, timeout=plan.timeout)
        return path, str(path)
    name = plan.checkpoint
    if name.startswith(("http://", "https://")):
        return fetch(name, offline=plan.offline, progress=progress, timeout=plan.timeout), name
    path = Path(name)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{name}' does not exist (give a file)")
    return path, name


def load_state(plan: Plan, *, progress: Progress | None = None) -> State:
    """Fetch or read the state dict the plan names; return it with its name for messages.

    An INT8 plan's state is torchvision's quantized layout (packed parameters), read by
    quantized.py; a float plan's is plain tensors.
    """
    info = plan.info
    read = _read_int8 if plan.precision == "int8" else read_state_dict
    path, name = weights_file(plan, progress=progress)
    try:
        return read(path, name=name), name
    except CheckpointError:
        if plan.checkpoint is None:
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
    # The plan's forward pass (uint8 crops normalised -> float32 logits), compiled under
    # --compile; None: built on first use.
    forward: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    # Seconds the first compiled call took (compiling included), once it has run.
    compile_seconds: float | None = None
    # Out-of-memory back-offs, each taken once per run: the GPU decoder's resize chunk,
    # and the largest batch the model is given at once.
    budget: Budget | None = field(default=None, repr=False)
    max_batch: int | None = None
    _norm: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

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
        labels = plan.labels_file
        source = f"labels file '{labels}' has" if labels else "the bundled ImageNet labels have"
        raise ConfigError(
            f"checkpoint '{name}' has {classes} classes but {source} "
            f"{len(plan.labels)} (give --labels FILE with {classes} lines)"
        )
    if plan.topk > len(plan.labels):
        raise ConfigError(
            f"--topk {plan.topk} is more than the {len(plan.labels)} classes (lower --topk)"
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
    configure_backends(plan)
    # channels_last is only a memory layout, which oneDNN and cuDNN run faster.
    net = net.to(memory_format=torch.channels_last).to(plan.device)
    model = Model(plan, net, transform_for(plan), name)
    if plan.compile:
        model.forward = _compiled(model)
    return model


def configure_backends(plan: Plan) -> None:
    """Set torch's process-wide numerics for a CUDA plan: TF32 as the plan says, cuDNN autotuning.

    cuDNN's TF32 is on by default, so an fp32 run (--exact, --precision fp32, or the fp32
    retry of an overflowed bf16 row) would otherwise compute in TF32 while its records say
    fp32. Every batch has the same 224x224 shape, so cuDNN's autotuner pays off.
    """
    if plan.device_type != "cuda":
        return
    torch.backends.cudnn.allow_tf32 = plan.tf32
    torch.backends.cuda.matmul.allow_tf32 = plan.tf32
    torch.set_float32_matmul_precision("high" if plan.tf32 else "highest")
    torch.backends.cudnn.benchmark = True


def _forward(model: Model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The plan's forward pass: float32 logits of a normalised batch."""
    net, precision, device_type = model.net, model.plan.precision, model.plan.device_type
    head: Any = net.fc
    if precision not in _DTYPES:
        return net
    dtype = _DTYPES[precision]

    def reduced(x: torch.Tensor) -> torch.Tensor:
        # The body runs in reduced precision; the head and the softmax in float32, so
        # logits are not rounded to bf16's 8 bits (equal probabilities, top-k by luck).
        with torch.autocast(device_type=device_type, dtype=dtype):
            features = _features(net, x)
        logits: torch.Tensor = head(features.float())
        return logits

    return reduced


def _compiled(model: Model) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile of the plan's forward pass; its first call's time is the compile time."""
    compiled = torch.compile(_forward(model), dynamic=False)
    first = True

    def forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal first
        if not first:
            return compiled(x)
        started = time.perf_counter()
        out: torch.Tensor = compiled(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        model.compile_seconds = time.perf_counter() - started
        first = False
        log.info("torch.compile: %.1f s compiling (the first batch's call)", model.compile_seconds)
        return out

    return forward


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
    return Preprocess(torchvision_weights(plan.preprocess))


# -- per input -------------------------------------------------------------------------------


def prepare(source: Source, plan: Plan, transform: Preprocess) -> Prepared:
    """Open, decode and crop one source; a bad input becomes its InputError.

    With GPU decoding, a JPEG the GPU can take is only read here (its bytes go to the
    batch step); everything else takes Pillow's path, as without it.
    """
    try:
        with open_source(source, timeout=plan.timeout, max_bytes=plan.max_download_bytes) as fp:
            if plan.decode_on == "gpu" and (data := _read_once(fp, plan.max_download_bytes)):
                if (encoded := _for_gpu(data, plan)) is not None:
                    return encoded
                image = decode(io.BytesIO(data), source.input, plan.decode)
            else:
                image = decode(fp, source.input, plan.decode)
        return transform(image)
    except InputError as exc:
        return exc
    except Exception as exc:  # a decoder bug must not end the run
        return InputError("unreadable", f"cannot read '{source.input}': {exc!r}")


def _read_once(fp: Any, limit: int) -> bytes | None:
    """A file's whole content in one read(), or None past *limit* (Pillow then reads it).

    read(limit + 1) would allocate *limit* bytes for every file; a regular file's size
    is known from fstat, and other streams (downloads, stdin) are in memory already.
    """
    from resnext_cli.inputs.sources import file_facts

    facts = file_facts(fp)
    if facts is not None:
        if facts[0] > limit:
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
            model.forward = _forward(model)
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
    plan, net = model.plan, model.net
    if plan.device_type == "cuda" and batch.device.type == "cpu":
        batch = batch.pin_memory().to(plan.device, non_blocking=True)
    else:
        batch = batch.to(plan.device)
    x = _normalize(model, batch).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        if precision in _DTYPES:
            with torch.autocast(device_type=plan.device_type, dtype=_DTYPES[precision]):
                return _features(net, x).float()
        return _features(net, x).float()


def _softmax_and_pooled(model: Model, batch: torch.Tensor, precision: str) -> torch.Tensor:
    """Probabilities and pooled features of one pass, side by side in each row."""
    features = _pooled(model, batch, precision)
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
    if bad and precision in _DTYPES:
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
    model: Model, source: Source, outcome: tuple[torch.Tensor, str] | Scored | InputError
) -> Record:
    """The record of one input, from its probabilities (and top-k, when known) or its error."""
    path = str(source.path.absolute()) if source.path is not None else None
    facts = file_facts(source)
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
