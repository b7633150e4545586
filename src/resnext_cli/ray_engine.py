"""The same classification on Ray Data: decode in CPU tasks, infer in an actor pool.

`RayClassifier.classify_sources` yields the records `Classifier.classify_sources` yields
for the same sources, in the same order: decoding goes through `engine.prepare` and the
actors build a `Classifier` from the state dict the driver loaded, so preprocessing,
precision rules and record construction are the local engine's own code.

Ray is imported lazily: `resnext --help` and the local engine never load it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import numpy as np
import torch
from PIL.Image import Image

from .config import Config
from .engine import DEFAULT_BATCH, Classifier, Prepared, pick_precision, prepare
from .errors import ConfigError, InputError
from .preprocess import DecodeOptions
from .results import Record
from .sources import IMAGE_EXTENSIONS, Source, Warn
from .sources import iter_sources as local_sources
from .weights import Progress

RAY_HINT = "pip install 'resnext-cli[ray]'"
# Object stores read through pyarrow.fs; their URIs name 'bucket/key'.
OBJECT_SCHEMES = frozenset({"s3", "gs", "gcs"})
# Ray binds its services to loopback only when it believes it cannot form a cluster.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Inputs per Ray Data run. It bounds what the driver holds (about 1 KB an input); each
# run starts its actors afresh, so larger chunks spread that start over more images.
DEFAULT_CHUNK = 100_000
# What one decode worker may hold: torch and Pillow, a large photo decoded, its block.
DECODE_MEMORY = 1 << 30

Row = dict[str, Any]
Batch = dict[str, np.ndarray]


# -- inputs ----------------------------------------------------------------------------


def is_object_uri(spec: str) -> bool:
    """Whether *spec* is an object-store URI (s3://, gs://) the Ray engine reads."""
    scheme, sep, _ = spec.partition("://")
    return bool(sep) and scheme.lower() in OBJECT_SCHEMES


def _split(uri: str) -> tuple[str, str, str]:
    """Return (scheme://bucket[?query], bucket/key, ?query) for an object-store URI."""
    parts = urlsplit(uri)
    query = f"?{parts.query}" if parts.query else ""
    root = f"{parts.scheme.lower()}://{parts.netloc}{query}"
    return root, f"{parts.netloc}{parts.path}".rstrip("/"), query


@functools.lru_cache(maxsize=16)
def _filesystem(root: str) -> Any:
    """One pyarrow FileSystem per bucket: resolving S3's region costs a request."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(root)[0]


def object_sources(uri: str, warn: Warn | None = None) -> Iterator[Source]:
    """List an object URI lazily, one prefix level at a time, sorted, depth first."""
    from pyarrow import fs

    say: Warn = warn or (lambda _msg: None)
    root, key, query = _split(uri)
    scheme = root.partition("://")[0]
    try:
        filesystem = _filesystem(root)
        info = filesystem.get_file_info(key)
    except (OSError, ValueError) as exc:
        yield Source(
            input=uri, url=uri, error=InputError("unreadable", f"cannot list '{uri}': {exc}")
        )
        return
    if info.type == fs.FileType.File:
        yield Source(input=uri, url=uri)
        return
    if info.type == fs.FileType.NotFound:
        message = f"no such object or prefix: '{uri}'"
        yield Source(input=uri, url=uri, error=InputError("not_found", message))
        return
    found = 0
    stack = [key]
    while stack:
        prefix = stack.pop()
        try:
            entries = filesystem.get_file_info(fs.FileSelector(prefix, allow_not_found=True))
        except (OSError, ValueError) as exc:
            say(f"cannot list '{scheme}://{prefix}': {exc}")
            continue
        subdirs = []
        for entry in sorted(entries, key=lambda e: str(e.path)):
            if entry.base_name.startswith("."):
                continue
            if entry.type == fs.FileType.Directory:
                subdirs.append(entry.path)
            elif Path(entry.base_name).suffix.lower() in IMAGE_EXTENSIONS:
                found += 1
                child = f"{scheme}://{entry.path}{query}"
                yield Source(input=child, url=child)
        stack.extend(reversed(subdirs))
    if found == 0:
        say(f"no images found under '{uri}'")


def iter_sources(
    specs: Iterable[str], *, stdin: BinaryIO | None = None, warn: Warn | None = None
) -> Iterator[Source]:
    """Expand inputs as the local engine does, plus s3:// and gs:// URIs, lazily, in order."""
    for spec in specs:
        if is_object_uri(spec):
            yield from object_sources(spec, warn)
            continue
        for source in local_sources([spec], stdin=stdin, warn=warn):
            # A URI listed on standard input comes back as an unsupported scheme.
            if source.error is not None and source.path is None and is_object_uri(source.input):
                yield from object_sources(source.input, warn)
            else:
                yield source


def _read_object(uri: str, max_bytes: int) -> bytes:
    """Read one object, or raise a typed InputError."""
    import pyarrow as pa

    root, key, _ = _split(uri)
    try:
        with _filesystem(root).open_input_stream(key) as stream:
            data: bytes = stream.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError("not_found", f"no such object: '{uri}'") from None
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError("download_failed", f"cannot read '{uri}': {exc}") from None
    if len(data) > max_bytes:
        raise InputError("too_large", f"'{uri}' is over the {max_bytes}-byte download limit")
    return data


def to_row(seq: int, source: Source) -> Row:
    """Flatten a source into a row (no nulls, so every block has the same schema)."""
    error = source.error
    return {
        "seq": seq,
        "input": source.input,
        # Absolute, so a worker whose working folder differs opens the same file.
        "path": str(source.path.absolute()) if source.path is not None else "",
        "url": source.url or "",
        "data": source.data or b"",
        "error_type": error.error_type if error is not None else "",
        "message": error.message if error is not None else "",
    }


# -- the two stages ----------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeSpec:
    """What a decode task needs: the local engine's transform and decode options."""

    transform: Callable[[Image], torch.Tensor]
    options: DecodeOptions
    timeout: float
    max_bytes: int


def _source(batch: Batch, i: int) -> Source:
    path = str(batch["path"][i])
    return Source(input=str(batch["input"][i]), path=Path(path) if path else None)


def _decode_one(batch: Batch, i: int, spec: DecodeSpec) -> Prepared:
    source = _source(batch, i)
    if batch["error_type"][i]:
        return InputError(str(batch["error_type"][i]), str(batch["message"][i]))
    url = str(batch["url"][i])
    data = bytes(batch["data"][i])
    if url and is_object_uri(url):
        try:
            data = _read_object(url, spec.max_bytes)
        except InputError as exc:
            return exc
        url = ""
    source = Source(
        input=source.input, path=source.path, url=url or None, data=data if data else None
    )
    return prepare(
        source, spec.transform, spec.options, timeout=spec.timeout, max_bytes=spec.max_bytes
    )


def decode_batch(batch: Batch, spec: DecodeSpec) -> Batch:
    """Decode a block of input rows into tensors, or error rows (never raise for an input)."""
    n = len(batch["seq"])
    tensors = np.empty(n, dtype=object)
    shapes = np.zeros((n, 3), dtype=np.int64)
    error_types = np.empty(n, dtype=object)
    messages = np.empty(n, dtype=object)
    for i in range(n):
        outcome = _decode_one(batch, i, spec)
        if isinstance(outcome, InputError):
            tensors[i], error_types[i], messages[i] = b"", outcome.error_type, outcome.message
        else:
            array = outcome.contiguous().numpy()  # uint8 pixels, normalised by the actor
            tensors[i], error_types[i], messages[i] = array.tobytes(), "", ""
            shapes[i] = array.shape
    return {
        "seq": batch["seq"],
        "input": batch["input"],
        "path": batch["path"],
        "tensor": tensors,
        "c": shapes[:, 0],
        "h": shapes[:, 1],
        "w": shapes[:, 2],
        "error_type": error_types,
        "message": messages,
    }


class Predictor:
    """One model per actor, built from the driver's state dict in the object store."""

    def __init__(self, config: Config, state: list[Any]) -> None:
        import ray

        # The ref travels inside a list so that Ray hands it over unresolved.
        self.classifier = Classifier(config, state=ray.get(state[0]))

    def __call__(self, batch: Batch) -> Batch:
        pairs: list[tuple[Source, Prepared]] = []
        for i in range(len(batch["seq"])):
            prepared: Prepared
            if batch["error_type"][i]:
                prepared = InputError(str(batch["error_type"][i]), str(batch["message"][i]))
            else:
                shape = (int(batch["c"][i]), int(batch["h"][i]), int(batch["w"][i]))
                flat = np.frombuffer(bytes(batch["tensor"][i]), dtype=np.uint8)
                prepared = torch.from_numpy(flat.reshape(shape).copy())
            pairs.append((_source(batch, i), prepared))
        records = np.empty(len(pairs), dtype=object)
        for i, record in enumerate(self.classifier.classify_prepared(pairs)):
            records[i] = record
        return {"seq": batch["seq"], "record": records}


# -- connecting --------------------------------------------------------------------------


def _ray_temp_dir() -> Path:
    """Where `ray start` records the running cluster (Ray's own rule)."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"  # noqa: S108
    return Path(base) / "ray"


def cluster_address(address: str | None) -> str | None:
    """Return the address to join, or None to start a private Ray on loopback."""
    if address == "local":
        return None
    if address:
        return address
    if os.environ.get("RAY_ADDRESS") or (_ray_temp_dir() / "ray_current_cluster").is_file():
        return "auto"
    return None


def _host_port(address: str) -> tuple[str, int] | None:
    """Split 'host:port' (the bootstrap address `ray start` prints); None otherwise."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
        if not address:
            try:
                address = (_ray_temp_dir() / "ray_current_cluster").read_text().strip()
            except OSError:
                return None
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return None  # ray:// (Ray Client) and the like: let ray.init judge
    return host.strip("[]"), int(port)


def is_loopback(address: str | None) -> bool:
    """Whether *address* is a Ray on this machine's loopback (or None: a private one)."""
    if address is None:
        return True
    where = _host_port(address)
    return where is not None and (where[0] == "localhost" or where[0].startswith("127."))


def probe(address: str, *, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at *address*: ray.init would retry for minutes."""
    where = _host_port(address)
    if where is None:
        return
    try:
        socket.create_connection(where, timeout=timeout).close()
    except OSError as exc:
        shown = address if address != "auto" else f"{where[0]}:{where[1]} (the running cluster)"
        raise ConfigError(
            f"no Ray answers at {shown}: {exc.strerror or exc} (start one with "
            "'ray start --head', or use --ray-address local for a private Ray)"
        ) from None


def import_ray(*, loopback: bool) -> Any:
    """Import ray (and ray.data), or raise a one-line ConfigError saying how to install it."""
    if loopback:
        # Read when ray is imported: Ray then uses 127.0.0.1 for this node and a private
        # Ray listens there only.
        os.environ.setdefault(_LOOPBACK_ENV, "0")
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError(f"--engine ray needs Ray, which is not installed ({RAY_HINT})") from None
    return ray


def _quiet_ray() -> None:
    """Keep Ray's execution logs off stderr: the CLI draws its own progress and summary."""
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def connect(ray: Any, address: str | None, *, num_cpus: int | None = None) -> bool:
    """Start or join Ray unless it is already up; return whether we must shut it down."""
    if ray.is_initialized():
        return False
    # ray.init installs a SIGTERM handler; keep the CLI's, which reports and exits 143.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if address is None:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                _node_ip_address="127.0.0.1",
            )
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = "the running Ray cluster" if address == "auto" else f"Ray at '{address}'"
        raise ConfigError(
            f"cannot connect to {where}: {exc} (check 'ray status', or use "
            "--ray-address local to start a private Ray)"
        ) from None
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return True


# -- the runner --------------------------------------------------------------------------


class RayClassifier:
    """Classify on a Ray cluster (or a private local Ray); records as the local engine's."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        address: str | None = None,
        download_progress: Progress | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        num_cpus: int | None = None,
        **options: Any,
    ) -> None:
        self.config = cfg = config if config is not None else Config(**options)
        if cfg.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(
                f"--engine ray places models itself: use --device auto, cpu or cuda, "
                f"not '{cfg.device}'"
            )
        target = cluster_address(address)
        if target is not None:
            probe(target)
        # A Ray on loopback stays there: Ray would rewrite 127.0.0.1 to a public address.
        self._ray = import_ray(loopback=is_loopback(target))
        # The driver fetches and checks the weights once, with the local engine's cache
        # and checks; the actors get the state dict through the object store.
        state = Classifier.load_state(cfg, progress=download_progress)
        local = Classifier(cfg.with_(device="cpu", workers=0), state=state)
        self.info, self.labels = local.info, local.labels
        self._decode = DecodeSpec(
            local.transform, local.decode_options, cfg.timeout, cfg.max_download_bytes
        )
        del local
        self.chunk_size = chunk_size
        self._owned = connect(self._ray, target, num_cpus=num_cpus)
        try:
            self._plan(cfg)
            self._state_ref = self._ray.put(state)
        except BaseException:
            self.close()
            raise

    def _plan(self, cfg: Config) -> None:
        resources = self._ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = max(1, int(resources.get("CPU", 1)))
        if cfg.device == "cuda" and gpus == 0:
            raise ConfigError("--device cuda but the Ray cluster has no GPUs (use --device auto)")
        self.gpu = gpus > 0 and cfg.device != "cpu"
        kind = "cuda" if self.gpu else "cpu"
        self.batch_size = cfg.batch_size or DEFAULT_BATCH[kind]
        if self.gpu:
            self.actors: tuple[int, int] = (gpus, gpus)
            # Each actor resolves 'auto' on its own GPU, as pick_precision does locally.
            self.precision = "fp32" if cfg.exact else cfg.precision
            if self.precision == "auto":
                self.precision = "bf16 or fp16, per GPU"
        else:
            # Leave a CPU for the decode tasks; the pool grows as work queues up.
            self.actors = (1, max(1, cpus - 1))
            self.precision = pick_precision(cfg.precision, torch.device("cpu"), exact=cfg.exact)
        low, high = self.actors
        size = str(low) if low == high else f"{low}-{high}"
        plural = "s" if high > 1 else ""
        self.device = f"ray ({size} {'GPU' if self.gpu else 'CPU'} actor{plural})"
        self._actor_config = cfg.with_(device=kind, workers=0)

    def close(self) -> None:
        """Shut down the Ray this runner started or joined (not one already running)."""
        if self._owned:
            self._owned = False
            self._ray.shutdown()

    def iter_sources(
        self, specs: Iterable[str], *, stdin: BinaryIO | None = None, warn: Warn | None = None
    ) -> Iterator[Source]:
        """Expand inputs: the local engine's, plus object-store URIs."""
        return iter_sources(specs, stdin=stdin, warn=warn)

    def classify(
        self, inputs: Iterable[str], *, stdin: BinaryIO | None = None, warn: Warn | None = None
    ) -> Iterator[Record]:
        """Classify files, folders, globs, URLs, s3:// or gs:// URIs, yielding records in order."""
        return self.classify_sources(iter_sources(inputs, stdin=stdin, warn=warn))

    def classify_sources(self, sources: Iterable[Source]) -> Iterator[Record]:
        """Classify sources on Ray, yielding one record per source, in input order.

        The driver holds one chunk of inputs at a time; each chunk is one Ray Data run.
        Ray is shut down at the end when this runner started it.
        """
        seq = 0
        chunk: list[Row] = []
        try:
            for source in sources:
                chunk.append(to_row(seq, source))
                seq += 1
                if len(chunk) == self.chunk_size:
                    yield from self._run(chunk)
                    chunk = []
            if chunk:
                yield from self._run(chunk)
        finally:
            self.close()

    def _dataset(self, rows: list[Row]) -> Any:
        ray = self._ray
        _quiet_ray()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        low, high = self.actors
        # One block per inference batch: decode tasks spread over the cluster, and
        # records stream back batch by batch instead of in one block at the end.
        blocks = max(1, math.ceil(len(rows) / self.batch_size))
        return (
            ray.data.from_items(rows, override_num_blocks=blocks)
            .map_batches(
                decode_batch,
                batch_size=None,
                batch_format="numpy",
                fn_kwargs={"spec": self._decode},
                num_cpus=1,
                # Declaring memory also keeps Ray Data from fusing decoding into the
                # actors (it fuses maps with equal resources): decoding stays in CPU
                # tasks spread over the cluster, and inference gets the actors to itself.
                memory=DECODE_MEMORY,
            )
            .map_batches(
                Predictor,
                batch_size=self.batch_size,
                batch_format="numpy",
                fn_constructor_kwargs={"config": self._actor_config, "state": [self._state_ref]},
                compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
                num_cpus=1,
                num_gpus=1 if self.gpu else 0,
            )
        )

    def _run(self, rows: list[Row]) -> Iterator[Record]:
        """Run one chunk; restore input order and keep each input exactly once."""
        first = int(rows[0]["seq"])
        end = first + len(rows)
        pending: dict[int, Record] = {}
        following = first
        for batch in self._dataset(rows).iter_batches(batch_size=None, batch_format="numpy"):
            for seq, record in zip(batch["seq"], batch["record"], strict=True):
                key = int(seq)
                # A retried task may deliver a row twice; the first one counts.
                if following <= key < end and key not in pending:
                    pending[key] = record
            while following in pending:
                yield pending.pop(following)
                following += 1
        if following != end:
            missing = [rows[k - first]["input"] for k in range(following, end) if k not in pending]
            raise RuntimeError(
                f"the Ray run returned no record for {len(missing)} inputs "
                f"(first: '{missing[0]}'); run again with --resume"
            )
