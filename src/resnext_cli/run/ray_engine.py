"""The same classification on Ray Data: decode in CPU tasks, infer in an actor pool.

`RayEngine.classify_sources` yields the records the local engine yields for the same
sources, in the same order: the driver resolves one plan with the cluster's facts, decode
tasks run `pipeline.prepare` and the actors `pipeline.infer` on a model built from the
state dict the driver loaded, so preprocessing, precision and records are the same code.

Ray is imported lazily: `resnext --help` and the local engine never load it.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from resnext_cli.errors import ConfigError, EngineError, InputError
from resnext_cli.inputs.http import Progress
from resnext_cli.inputs.objects import is_object_uri, iter_sources, read_object
from resnext_cli.inputs.sources import Source, Warn
from resnext_cli.model.checkpoint import build_model
from resnext_cli.results import Record
from resnext_cli.run.config import Config
from resnext_cli.run.network import check_classes, load_model, load_state, transform_for
from resnext_cli.run.pipeline import Prepared, infer, prepare
from resnext_cli.run.plan import MachineFacts, Plan, resolve

RAY_HINT = "pip install 'resnext-cli[ray]'"
# Ray binds its services to loopback only when it believes it cannot form a cluster.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Inputs per Ray Data run. It bounds what the driver holds (about 1 KB an input); each
# run starts its actors afresh, so larger chunks spread that start over more images.
DEFAULT_CHUNK = 100_000
# What one decode worker may hold: torch and Pillow, a large photo decoded, its block.
DECODE_MEMORY = 1 << 30

Row = dict[str, Any]
Batch = dict[str, np.ndarray]


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


def _source(batch: Batch, i: int) -> Source:
    path = str(batch["path"][i])
    return Source(input=str(batch["input"][i]), path=Path(path) if path else None)


class _Decoder:
    """The per-input step for one decode task: object-store reads, then the pipeline's."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.transform = transform_for(plan)

    def __call__(self, batch: Batch, i: int) -> Prepared:
        source = _source(batch, i)
        if batch["error_type"][i]:
            return InputError(str(batch["error_type"][i]), str(batch["message"][i]))
        url = str(batch["url"][i])
        data = bytes(batch["data"][i])
        if url and is_object_uri(url):
            try:
                data = read_object(url, self.plan.max_download_bytes)
            except InputError as exc:
                return exc
            url = ""
        source = Source(
            input=source.input, path=source.path, url=url or None, data=data if data else None
        )
        return prepare(source, self.plan, self.transform)


def decode_batch(batch: Batch, plan: Plan) -> Batch:
    """Decode a block of input rows into tensors, or error rows (never raise for an input)."""
    decoder = _Decoder(plan)
    n = len(batch["seq"])
    tensors = np.empty(n, dtype=object)
    shapes = np.zeros((n, 3), dtype=np.int64)
    error_types = np.empty(n, dtype=object)
    messages = np.empty(n, dtype=object)
    for i in range(n):
        outcome = decoder(batch, i)
        if isinstance(outcome, InputError):
            tensors[i], error_types[i], messages[i] = b"", outcome.error_type, outcome.message
        else:
            assert isinstance(outcome, torch.Tensor)  # the plan decodes on the CPU here
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

    def __init__(self, plan: Plan, state: list[Any]) -> None:
        import ray

        # The ref travels inside a list so that Ray hands it over unresolved.
        self.model = load_model(plan, state=ray.get(state[0]))

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
        for i, record in enumerate(infer(self.model, pairs)):
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


@dataclass(frozen=True)
class GpuFacts:
    """What one of the cluster's GPUs offers (the plan's precision and batch size)."""

    bf16: bool = False
    free_bytes: int = 0
    name: str = ""


def _probe_gpu() -> tuple[bool, int, str]:
    import torch

    free, _total = torch.cuda.mem_get_info()
    return bool(torch.cuda.is_bf16_supported()), int(free), str(torch.cuda.get_device_name())


def gpu_facts(ray: Any, *, timeout: float = 120.0) -> GpuFacts:
    """Ask a GPU of the cluster, in a one-GPU task, whether it runs bf16 natively (Ampere
    and later), its free memory and its name: a cluster of older GPUs gets fp16, not an
    emulated bf16. A cluster of mixed GPUs is planned by the one Ray places this task on."""
    task = ray.remote(num_gpus=1)(_probe_gpu)
    try:
        bf16, free, name = ray.get(task.remote(), timeout=timeout)
    except Exception as exc:  # a task that cannot run says why, in one line
        raise ConfigError(
            f"could not ask the Ray cluster's GPUs what they offer ({type(exc).__name__}); "
            "check the cluster's GPU nodes, or use --device cpu"
        ) from None
    return GpuFacts(bf16=bool(bf16), free_bytes=int(free), name=str(name))


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


class RayEngine:
    """Classify on a Ray cluster (or a private local Ray); records as the local engine's."""

    actors: tuple[int, int]  # the inference actors' pool size (min, max)

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
        target = cluster_address(address)
        if target is not None:
            probe(target)
        # A Ray on loopback stays there: Ray would rewrite 127.0.0.1 to a public address.
        self._ray = import_ray(loopback=is_loopback(target))
        self.chunk_size = chunk_size
        self._owned = connect(self._ray, target, num_cpus=num_cpus)
        try:
            resources = self._ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            cpus = max(1, int(resources.get("CPU", 1)))
            # The cluster's facts, not this machine's: the plan is resolved once, here,
            # and every task and actor reads it; a GPU of the cluster says what it runs.
            here = MachineFacts.probe("cpu")
            gpu = gpu_facts(self._ray) if gpus and cfg.device != "cpu" else GpuFacts()
            facts = MachineFacts(
                cpu_count=cpus,
                cpu_native_bf16=here.cpu_native_bf16,
                # The extra is installed on every node, as [ray] is: the driver's says.
                openvino=here.openvino,
                cuda_count=gpus,
                cuda_bf16=gpu.bf16,
                cuda_free_bytes=gpu.free_bytes,
                cuda_name=gpu.name,
                placement="ray",
            )
            self.plan = resolve(cfg, facts)
            self.gpu = self.plan.device_type == "cuda"
            if self.plan.runtime == "openvino" and self.plan.precision == "int8":
                raise ConfigError(
                    "--engine ray does not run OpenVINO INT8 files yet (use --engine local)"
                )
            # The driver fetches and checks the weights once, with the local engine's
            # cache and checks; the actors get the state dict through the object store.
            state = load_state(self.plan, progress=download_progress)
            check_classes(self.plan, *state)  # a bad checkpoint fails here, not in actors
            build_model(self.plan.info.model, state[0], name=state[1])
            # Leave a CPU for the decode tasks; the pool grows as work queues up.
            self.actors = (gpus, gpus) if self.gpu else (1, max(1, cpus - 1))
            self._state_ref = self._ray.put(state)
        except BaseException:
            self.close()
            raise

    def describe(self) -> str:
        """The actor pool and the precision: 'ray (1-3 CPU actors), bf16'."""
        low, high = self.actors
        size = str(low) if low == high else f"{low}-{high}"
        plural = "s" if high > 1 else ""
        where = f"ray ({size} {'GPU' if self.gpu else 'CPU'} actor{plural}), {self.plan.precision}"
        return where if self.plan.runtime == "torch" else f"{where}, {self.plan.runtime}"

    def close(self) -> None:
        """Shut down the Ray this runner started or joined (not one already running)."""
        if self._owned:
            self._owned = False
            self._ray.shutdown()

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
        blocks = max(1, math.ceil(len(rows) / self.plan.batch_size))
        return (
            ray.data.from_items(rows, override_num_blocks=blocks)
            .map_batches(
                decode_batch,
                batch_size=None,
                batch_format="numpy",
                fn_kwargs={"plan": self.plan},
                num_cpus=1,
                # Declaring memory also keeps Ray Data from fusing decoding into the
                # actors (it fuses maps with equal resources): decoding stays in CPU
                # tasks spread over the cluster, and inference gets the actors to itself.
                memory=DECODE_MEMORY,
            )
            .map_batches(
                Predictor,
                batch_size=self.plan.batch_size,
                batch_format="numpy",
                fn_constructor_kwargs={"plan": self.plan, "state": [self._state_ref]},
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
            raise EngineError(
                f"the Ray run returned no record for {len(missing)} inputs "
                f"(first: '{missing[0]}'); run again with --resume"
            )
