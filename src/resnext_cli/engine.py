"""The Classifier: load a model once, decode in parallel, batch, infer, top-k records."""

from __future__ import annotations

import argparse
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import nullcontext
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torchvision
from PIL.Image import Image

from .config import Config
from .errors import CheckpointError, ConfigError, InputError, WeightsError
from .labels import load_labels
from .preprocess import DecodeOptions, Preprocess, decode
from .registry import WeightsInfo, resolve_weights, torchvision_weights
from .results import Classified, Failed, Prediction, Record
from .sources import Source, Warn, iter_sources, open_source
from .weights import Progress, fetch

DEFAULT_BATCH = {"cpu": 8, "cuda": 64, "mps": 16}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

Prepared = torch.Tensor | InputError


def pick_device(spec: str) -> torch.device:
    """Resolve 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' to an available device."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device '{spec}' is not available: no CUDA GPU (use --device cpu)")
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"device '{spec}' is not available: this machine has {count} CUDA "
                f"device(s) (use cuda:0 to cuda:{count - 1})"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{spec}' is not available (use --device cpu)")
    return device


def pick_precision(spec: str, device: torch.device, *, exact: bool) -> str:
    """Resolve 'auto' to the precision used on *device*; --exact always means fp32."""
    if exact or spec == "fp32":
        return "fp32"
    if spec != "auto":
        return spec
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slow."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Fold each eval-mode BatchNorm into the convolution before it (fewer passes)."""
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


def _unwrap(obj: Any) -> Any:
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def read_state_dict(path: Path, *, name: str) -> dict[str, torch.Tensor]:
    """Load a state dict from a file, unwrapping {'state_dict': ...} or {'model': ...}."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot load checkpoint '{name}': {exc.__class__.__name__} "
            "(give a state dict saved with torch.save)"
        ) from None
    state = _unwrap(obj)
    if not isinstance(state, dict) or not state:
        raise CheckpointError(
            f"checkpoint '{name}' is not a state dict (expected a mapping of parameter "
            "names to tensors, or one under 'state_dict' or 'model')"
        )
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint '{name}' holds no tensors (give a model state dict)")
    # Checkpoints saved from DataParallel or DDP prefix every key with 'module.'.
    if all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def build_model(model: str, state: dict[str, torch.Tensor], *, name: str) -> torch.nn.Module:
    """Build *model* on the meta device and load *state* into it, checking it fits."""
    fc = state.get("fc.weight")
    if fc is None or fc.ndim != 2:
        raise CheckpointError(
            f"checkpoint '{name}' does not fit {model}: it has no 'fc.weight' "
            "(give a state dict in torchvision's ResNeXt layout)"
        )
    builder = getattr(torchvision.models, model)
    with torch.device("meta"):
        net: torch.nn.Module = builder(weights=None, num_classes=int(fc.shape[0]))
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: '{unexpected[0]}')")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} of the wrong shape (first: '{k}' is "
                f"{list(state[k].shape)}, expected {list(expected[k].shape)})"
            )
        raise CheckpointError(
            f"checkpoint '{name}' does not fit {model}: {'; '.join(parts)} "
            "(check --model matches the checkpoint)"
        )
    net.load_state_dict(state, assign=True)
    return net.eval()


def prepare(
    source: Source,
    transform: Callable[[Image], torch.Tensor],
    options: DecodeOptions,
    *,
    timeout: float,
    max_bytes: int,
) -> Prepared:
    """Open, decode and transform one source; a bad input becomes its InputError."""
    try:
        with open_source(source, timeout=timeout, max_bytes=max_bytes) as fp:
            image = decode(fp, source.input, options)
        return transform(image)
    except InputError as exc:
        return exc
    except Exception as exc:  # a decoder bug must not end the run
        return InputError("unreadable", f"cannot read '{source.input}': {exc!r}")


class _DecodePool:
    """Decoding threads that never keep the process alive.

    concurrent.futures joins its workers at exit, so Ctrl-C during a stalled download
    or a slow decode would wait for it to finish; daemon threads let the run exit now.
    Idle threads are still joined, since one torn down while Python exits can abort it.
    """

    def __init__(self, work: Callable[[Source], Prepared], workers: int) -> None:
        self._work = work
        self._jobs: queue.SimpleQueue[tuple[Source, Future[Prepared]] | None]
        self._jobs = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"resnext-decode-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, source: Source) -> Future[Prepared]:
        future: Future[Prepared] = Future()
        self._jobs.put((source, future))
        return future

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            source, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._work(source))
            except BaseException as exc:  # the thread lives on; the input gets the error
                future.set_exception(exc)

    def shutdown(self, *, wait: float | None = None) -> None:
        """Stop the threads, waiting up to *wait* seconds (None: until they end)."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = None if wait is None else time.monotonic() + wait
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


def _settled(source: Source, future: Future[Prepared]) -> Prepared:
    """Wait for one decode; whatever killed it becomes that input's error."""
    error = future.exception()  # Ctrl-C while waiting here propagates as usual
    if error is None:
        return future.result()
    return InputError("unreadable", f"decoding '{source.input}' failed: {error!r}")


class Classifier:
    """Classify images with one ResNeXt model, loaded once."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        download_progress: Progress | None = None,
        state: tuple[dict[str, torch.Tensor], str] | None = None,
        **options: Any,
    ) -> None:
        self.config = config if config is not None else Config(**options)
        cfg = self.config
        self.info: WeightsInfo = resolve_weights(cfg.model, cfg.weights)
        self.labels = load_labels(cfg.labels)
        self.device = pick_device(cfg.device)
        self.precision = pick_precision(cfg.precision, self.device, exact=cfg.exact)
        self.batch_size = cfg.batch_size or DEFAULT_BATCH.get(self.device.type, 8)
        self.workers = cfg.workers if cfg.workers is not None else min(8, os.cpu_count() or 1)
        self.decode_options = DecodeOptions(
            exact=cfg.exact,
            max_pixels=cfg.max_pixels,
            allow_truncated=cfg.allow_truncated,
            # JPEGs decode at a reduced scale, no smaller than twice the resize target,
            # so the antialiased resize still makes the last step.
            draft_min_side=0 if cfg.exact else 2 * self.info.resize_size,
        )
        self.transform = Preprocess(torchvision_weights(self.info))
        # A Ray actor passes the *state* its driver loaded, so workers never download.
        tensors, name = state or self.load_state(cfg, progress=download_progress)
        fc = tensors.get("fc.weight")
        classes = int(fc.shape[0]) if fc is not None and fc.ndim == 2 else None
        if classes is not None and classes != len(self.labels):
            source = f"labels file '{cfg.labels}'" if cfg.labels else "the bundled ImageNet labels"
            raise ConfigError(
                f"checkpoint '{name}' has {classes} classes but {source} has "
                f"{len(self.labels)} (give --labels FILE with {classes} lines)"
            )
        self.model = build_model(self.info.model, tensors, name=name)
        if cfg.topk > len(self.labels):
            raise ConfigError(
                f"--topk {cfg.topk} is more than the {len(self.labels)} classes (lower --topk)"
            )
        # channels_last is only a memory layout, which oneDNN and cuDNN run faster; the
        # reference network's modules stay as they are under --exact, and otherwise
        # BatchNorm is folded into the convolutions.
        if not cfg.exact:
            self.model = fold_batchnorm(self.model)
        self.model = self.model.to(memory_format=torch.channels_last).to(self.device)

    @staticmethod
    def load_state(
        cfg: Config, *, progress: Progress | None = None
    ) -> tuple[dict[str, torch.Tensor], str]:
        """Fetch or read the state dict *cfg* names; return it with its name for messages."""
        info = resolve_weights(cfg.model, cfg.weights)
        if cfg.checkpoint is None:
            path = fetch(info.url, offline=cfg.offline, progress=progress)
            try:
                state = read_state_dict(path, name=str(path))
            except CheckpointError:
                raise WeightsError(
                    f"cached weights file '{path}' is corrupt (delete it and run "
                    f"'resnext download -m {info.model} -w {info.tag}')"
                ) from None
            name = str(path)
        else:
            name = cfg.checkpoint
            if cfg.checkpoint.startswith(("http://", "https://")):
                path = fetch(cfg.checkpoint, offline=cfg.offline, progress=progress)
            else:
                path = Path(cfg.checkpoint)
                if not path.is_file():
                    raise CheckpointError(f"checkpoint '{name}' does not exist (give a file)")
            state = read_state_dict(path, name=name)
        return state, name

    # -- the pipeline ----------------------------------------------------------------

    def classify(
        self,
        inputs: Iterable[str],
        *,
        stdin: BinaryIO | None = None,
        warn: Warn | None = None,
    ) -> Iterator[Record]:
        """Classify files, folders, globs, URLs or '-' (stdin), yielding records in order."""
        return self.classify_sources(iter_sources(inputs, stdin=stdin, warn=warn))

    def classify_sources(self, sources: Iterable[Source]) -> Iterator[Record]:
        """Classify already expanded sources, yielding one record per source, in order."""
        batch: list[tuple[Source, Prepared]] = []
        ready = 0
        for source, prepared in self._prepared(sources):
            batch.append((source, prepared))
            if isinstance(prepared, torch.Tensor):
                ready += 1
            if ready == self.batch_size:
                yield from self._finish(batch)
                batch, ready = [], 0
        if batch:
            yield from self._finish(batch)

    def _prepare(self, source: Source) -> Prepared:
        cfg = self.config
        return prepare(
            source,
            self.transform,
            self.decode_options,
            timeout=cfg.timeout,
            max_bytes=cfg.max_download_bytes,
        )

    def _prepared(self, sources: Iterable[Source]) -> Iterator[tuple[Source, Prepared]]:
        """Decode ahead in worker threads, keeping a bounded window, in input order."""
        if self.workers == 0:
            for source in sources:
                yield source, self._prepare(source)
            return
        window: deque[tuple[Source, Future[Prepared]]] = deque()
        limit = 2 * self.batch_size + self.workers
        pool = _DecodePool(self._prepare, self.workers)
        stopped = True
        try:
            for source in sources:
                window.append((source, pool.submit(source)))
                while len(window) >= limit:
                    done, future = window.popleft()
                    yield done, _settled(done, future)
            while window:
                done, future = window.popleft()
                yield done, _settled(done, future)
            stopped = False
        finally:
            for _, future in window:
                future.cancel()
            # Stopped early (Ctrl-C, SIGTERM, a consumer that quit): give busy threads a
            # moment, then leave them, so a stalled download cannot hold up the exit.
            pool.shutdown(wait=1.0 if stopped else None)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Return softmax probabilities for a uint8 batch of cropped images."""
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        batch = self.transform.normalize(batch).contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])
            if self.precision != "fp32"
            else nullcontext()
        )
        with torch.inference_mode(), autocast:
            logits = self.model(batch)
        return torch.softmax(logits.float(), dim=1).cpu()

    def _probabilities(self, tensors: list[torch.Tensor]) -> list[torch.Tensor | InputError]:
        try:
            return list(self._forward(torch.stack(tensors)))
        except Exception as exc:
            if len(tensors) == 1:
                return [InputError("inference_failed", f"the model failed: {exc!r}")]
        # Retry one at a time so only the guilty input gets an error record.
        out: list[torch.Tensor | InputError] = []
        for tensor in tensors:
            out.extend(self._probabilities([tensor]))
        return out

    def classify_prepared(self, batch: list[tuple[Source, Prepared]]) -> Iterator[Record]:
        """Infer one batch of decoded sources (errors pass through), one record each."""
        return self._finish(batch)

    def _finish(self, batch: list[tuple[Source, Prepared]]) -> Iterator[Record]:
        tensors = [p for _, p in batch if isinstance(p, torch.Tensor)]
        probs = iter(self._probabilities(tensors) if tensors else [])
        for source, prepared in batch:
            outcome = next(probs) if isinstance(prepared, torch.Tensor) else prepared
            yield self._record(source, outcome)

    def _record(self, source: Source, outcome: torch.Tensor | InputError) -> Record:
        path = str(source.path.absolute()) if source.path is not None else None
        if isinstance(outcome, InputError):
            return Failed(source.input, outcome.error_type, outcome.message, path=path)
        values, indices = torch.topk(outcome, self.config.topk)
        predictions = tuple(
            Prediction(self.labels[i], i, p)
            for p, i in zip(values.tolist(), indices.tolist(), strict=True)
        )
        return Classified(
            input=source.input,
            model=self.info.model,
            weights=self.info.tag,
            predictions=predictions,
            path=path,
            checkpoint=self.config.checkpoint,
        )


def classify(
    inputs: Iterable[str], *, stdin: BinaryIO | None = None, **options: Any
) -> list[Record]:
    """Classify *inputs* with a fresh Classifier and return all records."""
    return list(Classifier(**options).classify(inputs, stdin=stdin))
