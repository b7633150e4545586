"""Engines schedule the pipeline's steps; the local one uses decode threads in this process.

An `Engine` takes sources and yields one record per source, in input order. The local
engine runs `pipeline.prepare` in daemon threads and `pipeline.infer` per batch here; the
Ray engine (ray_engine.py) runs the same two functions in Ray tasks and actors.
`Classifier` is the Python API: a plan, a model and the local engine, for any input a
Python user has at hand.
"""

from __future__ import annotations

import io
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from resnext_cli.errors import ConfigError, InputError
from resnext_cli.inputs.http import Progress
from resnext_cli.inputs.sources import Source, Warn, iter_sources
from resnext_cli.results import Record
from resnext_cli.run.config import Config
from resnext_cli.run.network import Model, State, load_model
from resnext_cli.run.pipeline import (
    Prepared,
    decode_ready,
    features,
    infer,
    make_record,
    prepare,
    score,
)
from resnext_cli.run.plan import MachineFacts, Plan, resolve

if TYPE_CHECKING:
    import numpy as np
    import torch


class Engine(Protocol):
    """Classifies sources into records, one per source, in input order."""

    plan: Plan

    def classify_sources(self, sources: Iterable[Source]) -> Iterator[Record]:
        """Yield one record per source, in order."""
        ...

    def describe(self) -> str:
        """Where the model runs, for the summary and the report: 'cpu, bf16'."""
        ...

    def close(self) -> None:
        """Release threads, actors, clusters."""
        ...


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


class LocalEngine:
    """Decode ahead in threads, infer batch by batch in this process.

    On CUDA (or with overlap=True) the batch steps overlap as three stages: a thread
    decodes batch N+1's JPEGs on its own CUDA stream while another runs the model on
    batch N, and the caller's thread builds (and writes) batch N-1's records.
    """

    def __init__(self, model: Model, *, overlap: bool | None = None) -> None:
        self.model = model
        self.plan = model.plan
        self.overlap = self.plan.device_type == "cuda" if overlap is None else overlap

    def describe(self) -> str:
        """Device and precision: 'cpu, bf16'."""
        return self.plan.describe()

    def close(self) -> None:
        """Nothing to release: the threads end with each run."""

    def prepare(self, source: Source) -> Prepared:
        """The per-input step (a method, so one engine's can be replaced in a test).

        Through OpenVINO the crops are numpy: the batch stays numpy to the records."""
        numpy = self.model.openvino is not None
        return prepare(source, self.plan, self.model.transform, as_numpy=numpy)

    def classify_sources(self, sources: Iterable[Source]) -> Iterator[Record]:
        """Classify already expanded sources, yielding one record per source, in order."""
        if self.overlap:
            yield from _Stages(self.model).run(self._batches(sources))
            return
        for batch in self._batches(sources):
            yield from infer(self.model, batch)

    def features_sources(
        self, sources: Iterable[Source]
    ) -> Iterator[tuple[Source, np.ndarray[Any, Any] | InputError]]:
        """The pooled features of each source (a float32 numpy vector, or its error), in
        order, batched as classify."""
        for batch in self._batches(sources):
            yield from features(self.model, batch)

    def _batches(self, sources: Iterable[Source]) -> Iterator[list[tuple[Source, Prepared]]]:
        """Prepared sources in batches of plan.batch_size decoded images (errors ride along)."""
        batch: list[tuple[Source, Prepared]] = []
        ready = 0
        for source, prepared in self._prepared(sources):
            batch.append((source, prepared))
            if not isinstance(prepared, InputError):
                ready += 1
            # A failed input's record goes out as soon as every earlier input has its own
            # (the decoded ones before it inferred now, as a smaller batch): nothing waits
            # for later images to fill a batch, and failures never pile up in memory.
            if ready == self.plan.batch_size or isinstance(prepared, InputError):
                yield batch
                batch, ready = [], 0
        if batch:
            yield batch

    def _prepared(self, sources: Iterable[Source]) -> Iterator[tuple[Source, Prepared]]:
        """Decode ahead in worker threads, keeping a bounded window, in input order."""
        workers = self.plan.workers
        if workers == 0:
            for source in sources:
                yield source, self.prepare(source)
            return
        window: deque[tuple[Source, Future[Prepared]]] = deque()
        limit = 2 * self.plan.batch_size + workers
        pool = _DecodePool(self.prepare, workers)
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


_DONE = object()


class _Stages:
    """Decode, infer and record in three threads' turns, batch by batch, in order."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.stop = threading.Event()
        # One batch waiting between stages: decoding runs one batch ahead of the model.
        self.decoded: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.scored: queue.Queue[Any] = queue.Queue(maxsize=1)
        import torch

        self.cuda = model.plan.device_type == "cuda"
        self.device = torch.device(model.plan.device)

    def run(self, batches: Iterator[list[tuple[Source, Prepared]]]) -> Iterator[Record]:
        """Yield the records of *batches*; stopping early stops the stages."""
        threads = [
            threading.Thread(
                target=self._decode, args=(batches,), name="resnext-gpu-decode", daemon=True
            ),
            threading.Thread(target=self._infer, name="resnext-infer", daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            while (item := self.scored.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                for source, outcome in item:
                    yield make_record(self.model, source, outcome)
        finally:
            self.stop.set()
            for q in (self.decoded, self.scored):  # unblock a stage waiting to hand over
                while not q.empty():
                    q.get_nowait()
            # The model's thread ends with its batch (no GPU work outlives the run); the
            # decode thread may wait on a stalled download, so it gets a moment only.
            decode, infer_ = threads
            infer_.join()
            decode.join(timeout=2.0)

    def _put(self, q: queue.Queue[Any], item: Any) -> bool:
        """Hand *item* to the next stage; False once the run has stopped."""
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _stream(self) -> tuple[Any, AbstractContextManager[Any]]:
        if not self.cuda:
            return None, nullcontext()
        import torch

        stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        return stream, torch.cuda.stream(stream)

    def _decode(self, batches: Iterator[list[tuple[Source, Prepared]]]) -> None:
        stream, on_stream = self._stream()
        try:
            with on_stream:
                for batch in batches:
                    ready = decode_ready(self.model, batch)
                    event = stream.record_event() if stream is not None else None
                    if not self._put(self.decoded, (ready, event)):
                        break
        except BaseException as exc:  # the run's caller sees it, in order
            self._put(self.decoded, exc)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # the decode threads stop here, in the thread that iterated them
        self._put(self.decoded, _DONE)

    def _infer(self) -> None:
        while not self.stop.is_set():
            try:
                item = self.decoded.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _DONE or isinstance(item, BaseException):
                self._put(self.scored, item)
                return
            ready, event = item
            try:
                if event is not None:
                    import torch

                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    for _, tensor in ready:
                        # Made on the decode stream, read on this one: the allocator must
                        # not hand its memory back to the decode stream before that.
                        if isinstance(tensor, torch.Tensor) and tensor.device.type == "cuda":
                            tensor.record_stream(current)
                outcomes = score(self.model, ready)
            except BaseException as exc:
                self._put(self.scored, exc)
                return
            if not self._put(self.scored, outcomes):
                return


def local_engine(
    config: Config,
    *,
    download_progress: Progress | None = None,
    facts: MachineFacts | None = None,
) -> LocalEngine:
    """Resolve the plan on this machine, load its model, and schedule it here."""
    plan = resolve(config, facts)
    return LocalEngine(load_model(plan, progress=download_progress))


# -- the Python API ----------------------------------------------------------------------


def _png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _in_memory(item: Any, n: int) -> Source | None:
    """A source for an object a Python caller has at hand, or None for a path-like."""
    from PIL import Image

    if isinstance(item, Image.Image):
        # Kept as PNG bytes: the same decode path as a file (modes, alpha, pixel limit).
        return Source(input=f"<image {n}>", data=_png(item))
    if isinstance(item, (bytes, bytearray, memoryview)):
        return Source(input=f"<bytes {n}>", data=bytes(item))
    if type(item).__module__ == "numpy" and hasattr(item, "shape"):
        try:
            image = Image.fromarray(item)
        except (TypeError, ValueError) as exc:
            error = InputError("not_an_image", f"array {n} is not an image: {exc}")
            return Source(input=f"<array {n}>", error=error)
        return Source(input=f"<array {n}>", data=_png(image))
    return None


def _as_items(inputs: Any) -> list[Any] | Iterable[Any]:
    """One input stays one input: a str, a path, an image, bytes or an array."""
    from PIL import Image

    if isinstance(inputs, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        return [inputs]
    if type(inputs).__module__ == "numpy" and hasattr(inputs, "shape"):
        return [inputs]
    return inputs  # type: ignore[no-any-return]


class Classifier:
    """Classify images with one ResNeXt model, loaded once.

    `classify` takes a path, URL, folder or glob, a PIL image, image bytes, a numpy array
    (HxW or HxWx3 uint8), or a list of any of these, and yields one record per image.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        download_progress: Progress | None = None,
        facts: MachineFacts | None = None,
        state: State | None = None,
        **options: Any,
    ) -> None:
        self.config = config if config is not None else Config(**options)
        self.plan = resolve(self.config, facts)
        self.loaded = load_model(self.plan, progress=download_progress, state=state)
        self.engine = LocalEngine(self.loaded)

    @property
    def model(self) -> torch.nn.Module:
        """The network."""
        return self.loaded.net

    @property
    def precision(self) -> str:
        """The precision the plan chose: 'fp32', 'bf16', 'fp16' or 'int8'."""
        return self.plan.precision

    @property
    def runtime(self) -> str:
        """What runs the network: 'torch' or 'openvino'."""
        return self.plan.runtime

    @property
    def labels(self) -> tuple[str, ...]:
        """The class names."""
        return self.plan.labels

    def describe(self) -> str:
        """Device and precision: 'cpu, bf16'."""
        return self.engine.describe()

    def classify(
        self, inputs: Any, *, stdin: BinaryIO | None = None, warn: Warn | None = None
    ) -> Iterator[Record]:
        """Classify inputs (see the class docstring), yielding records in input order."""
        return self.classify_sources(self._sources(inputs, stdin=stdin, warn=warn))

    def _sources(
        self, inputs: Any, *, stdin: BinaryIO | None, warn: Warn | None
    ) -> Iterator[Source]:
        for n, item in enumerate(_as_items(inputs)):
            source = _in_memory(item, n)
            if source is not None:
                yield source
            else:
                yield from iter_sources(
                    [os.fspath(item)],
                    stdin=stdin,
                    warn=warn,
                    max_stdin_bytes=self.plan.max_download_bytes,
                )

    def classify_sources(self, sources: Iterable[Source]) -> Iterator[Record]:
        """Classify already expanded sources, yielding one record per source, in order."""
        return self.engine.classify_sources(sources)

    def iter_features(
        self, inputs: Any, *, stdin: BinaryIO | None = None, warn: Warn | None = None
    ) -> Iterator[tuple[str, torch.Tensor | InputError]]:
        """Each input's name with its pooled features (or the InputError it ended with)."""
        if self.plan.precision == "int8":
            raise ConfigError("features come from the float model; drop --quantized")
        import torch

        sources = self._sources(inputs, stdin=stdin, warn=warn)
        for source, outcome in self.engine.features_sources(sources):
            yield (
                source.input,
                outcome if isinstance(outcome, InputError) else torch.from_numpy(outcome),
            )

    def features(self, inputs: Any, *, stdin: BinaryIO | None = None) -> torch.Tensor:
        """One pooled feature vector per image (2,048 for ResNeXt: the input of fc), in
        input order, as an N x D float32 tensor; same inputs as `classify`.

        Raises the InputError of the first input that cannot be read; `iter_features`
        gives each input's outcome instead.
        """
        rows = []
        for _name, outcome in self.iter_features(inputs, stdin=stdin):
            if isinstance(outcome, InputError):
                raise outcome
            rows.append(outcome)
        import torch

        if rows:
            return torch.stack(rows)
        openvino = self.loaded.openvino
        head: Any = None if openvino else self.model.fc
        width = openvino.bundle.weight.shape[1] if openvino else head.in_features
        return torch.empty(0, int(width))


def classify(inputs: Any, *, stdin: BinaryIO | None = None, **options: Any) -> list[Record]:
    """Classify *inputs* with a fresh Classifier and return all records."""
    return list(Classifier(**options).classify(inputs, stdin=stdin))
