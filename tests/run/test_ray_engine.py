"""The Ray engine: the same records as the local engine, from Ray Data tasks and actors.

The tests marked `ray` start a Ray on 127.0.0.1 (one per module) and take a few minutes
on 2 cores: they run with RESNEXT_TEST_RAY=1 and Ray installed (`pytest -m ray`). The
others need neither and run in the default suite.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from resnext_cli.errors import ConfigError, InputError
from resnext_cli.inputs.sources import Source
from resnext_cli.outputs import shards
from resnext_cli.results import Classified, Failed, Record
from resnext_cli.run import ray_engine
from resnext_cli.run.config import Config
from resnext_cli.run.engine import Classifier
from tests.conftest import natural_image, run_resnext
from tests.helpers import write_images

# Ray reads this when it is imported: a Ray started by these tests listens on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


TOLERANCE = 1e-5
HAVE_RAY = importlib.util.find_spec("ray") is not None


def needs_ray(test: Callable[..., None]) -> Callable[..., None]:
    """Mark a test that runs on the module's local Ray, with one torch thread here."""
    test = pytest.mark.usefixtures("one_thread")(test)
    test = pytest.mark.skipif(
        not os.environ.get("RESNEXT_TEST_RAY"), reason="starts Ray: set RESNEXT_TEST_RAY=1"
    )(test)
    test = pytest.mark.skipif(not HAVE_RAY, reason="needs Ray: pip install '.[ray]'")(test)
    return pytest.mark.ray(test)


def assert_same_records(local: Sequence[Record], remote: Sequence[Record]) -> None:
    """Same inputs in the same order, same errors, same top-k, probabilities within 1e-5."""
    assert [r.input for r in remote] == [r.input for r in local]
    for a, b in zip(local, remote, strict=True):
        assert type(a) is type(b), (a, b)
        if isinstance(a, Failed):
            assert b == a
            continue
        assert isinstance(a, Classified) and isinstance(b, Classified)
        assert (b.model, b.weights, b.path, b.checkpoint) == (
            a.model,
            a.weights,
            a.path,
            a.checkpoint,
        )
        assert [p.index for p in b.predictions] == [p.index for p in a.predictions]
        assert [p.label for p in b.predictions] == [p.label for p in a.predictions]
        for p, q in zip(a.predictions, b.predictions, strict=True):
            assert abs(p.probability - q.probability) <= TOLERANCE, (a.input, p, q)


# -- no Ray needed -----------------------------------------------------------------------


def test_cluster_address_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert ray_engine.cluster_address(None) is None  # nothing running: a private Ray
    assert ray_engine.cluster_address("10.0.0.5:6379") == "10.0.0.5:6379"
    assert ray_engine.cluster_address("auto") == "auto"
    assert ray_engine.cluster_address("local") is None
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:6379")
    assert ray_engine.cluster_address(None) == "auto"  # `ray start --head` was run here
    assert ray_engine.cluster_address("local") is None
    (tmp_path / "ray" / "ray_current_cluster").unlink()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert ray_engine.cluster_address(None) == "auto"


def test_an_address_nothing_answers_at_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    waits: list[object] = []
    real = socket.create_connection

    def connect(address: Any, timeout: object = None, *args: Any, **kwargs: Any) -> Any:
        waits.append(timeout)
        return real(address, timeout, *args, **kwargs)

    monkeypatch.setattr(ray_engine.socket, "create_connection", connect)
    with pytest.raises(ray_engine.ConfigError) as exc:
        ray_engine.probe(f"127.0.0.1:{port}")
    # It ends: ray.init would retry for minutes; the probe tries once, for 5 s at most.
    assert waits == [5.0]
    assert str(exc.value) == (
        f"no Ray answers at 127.0.0.1:{port}: Connection refused (start one with "
        "'ray start --head', or use --ray-address local for a private Ray)"
    )
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(ray_engine.ConfigError, match="the running cluster"):
        ray_engine.probe("auto")
    ray_engine.probe("ray://head:10001")  # Ray Client addresses are left to ray.init
    assert ray_engine.is_loopback(None) and ray_engine.is_loopback("localhost:6379")
    assert not ray_engine.is_loopback("10.0.0.5:6379")


def test_without_ray_the_engine_is_a_one_line_error(
    checkpoint: Path, make_image: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    image = make_image("a.jpg")
    run = run_resnext("classify", image, "--engine", "ray", "--checkpoint", checkpoint)
    assert run.code == 2, run
    assert run.stdout == ""
    assert run.stderr == (
        "error: --engine ray needs Ray, which is not installed (pip install 'resnext-cli[ray]')\n"
    )


def test_help_and_the_local_engine_never_import_ray(checkpoint: Path, make_image: Any) -> None:
    image = make_image("a.jpg")
    runs = [["--help"], ["classify", str(image), "--checkpoint", str(checkpoint), "-q"]]
    code = (
        "import sys\n"
        "from resnext_cli.cli.main import main\n"
        f"for argv in {runs!r}:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (argv, exc.code)\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.splitlines()[-1] == "[]", run.stderr
    assert '"predictions"' in run.stdout  # the local run did classify


def test_device_the_ray_engine_cannot_place(checkpoint: Path, make_image: Any) -> None:
    run = run_resnext(
        "classify", make_image("a.jpg"), "--engine", "ray", "--device", "mps", "--checkpoint",
        checkpoint,
    )  # fmt: skip
    assert run.code == 2, run
    assert run.stderr.startswith("error: --engine ray places models itself: use --device auto")


def test_decode_rows_carry_the_local_tensors_and_typed_errors(
    checkpoint: Path, tmp_path: Path
) -> None:
    [good] = write_images(tmp_path, 1)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"no picture here")
    local = Classifier(checkpoint=str(checkpoint), exact=True, device="cpu")
    sources = [
        Source(input=str(good), path=good),
        Source(input=str(broken), path=broken),
        Source(input="gone.jpg", path=Path("gone.jpg"), error=InputError("not_found", "gone")),
    ]
    import numpy as np

    rows = [ray_engine.to_row(i, s) for i, s in enumerate(sources)]
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    out = ray_engine.decode_batch(batch, local.plan)
    assert list(out["error_type"]) == ["", "not_an_image", "not_found"]
    shape = (int(out["c"][0]), int(out["h"][0]), int(out["w"][0]))
    tensor = torch.from_numpy(np.frombuffer(out["tensor"][0], dtype=np.uint8).reshape(shape))
    assert torch.equal(tensor, local.engine.prepare(sources[0]))  # type: ignore[arg-type]
    assert out["message"][1] == local.engine.prepare(sources[1]).message  # type: ignore[union-attr]


# -- on a local Ray ----------------------------------------------------------------------


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the local engine's reference with the CPU actors' one intra-op thread.

    fp32 sums are added in a different order with another number of threads: on this
    test's checkpoint, 1 and 2 threads differ by up to about 1.2e-5 in a probability, for
    either engine. At the same thread count the engines agree to well within 1e-5.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    """One Ray for the module, on 127.0.0.1 only; the engine joins it and leaves it up."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five broken files, one of each kind, then good/ with eight images of varied sizes."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "good").mkdir()
    for i in range(8):
        image = natural_image(10 + i, (64 + 8 * i, 96 - 4 * i))
        image.save(root / "good" / f"good{i}.jpg", quality=92)
    good = (root / "good" / "good0.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(good[: len(good) // 3])
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("this is not a picture")
    natural_image(99, (400, 300)).save(root / "huge.png")
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    return root


BROKEN = {
    "cut.jpg": "truncated",
    "empty.png": "not_an_image",
    "text.jpg": "not_an_image",
    "huge.png": "too_large",
    "dangling.jpg": "not_found",
}


@pytest.mark.usefixtures("ray_session")
@needs_ray
def test_records_equal_the_local_engines(checkpoint: Path, mixed_folder: Path) -> None:
    # Good images only, so that both engines batch the same images together: a batch
    # of another make-up adds fp32 sums in another order (broken files are the next test).
    options: dict[str, Any] = {"checkpoint": str(checkpoint), "exact": True, "batch_size": 4}
    local = list(Classifier(**options).classify([str(mixed_folder / "good")]))
    # Two Ray Data runs of 4 inputs: order and exactly-once hold across chunks.
    runner = ray_engine.RayEngine(**options, chunk_size=4)
    assert runner.describe() == "ray (1 CPU actor), fp32" and runner.plan.precision == "fp32"
    remote = list(runner.classify([str(mixed_folder / "good")]))
    assert len(local) == 8 and all(isinstance(r, Classified) for r in local)
    assert_same_records(local, remote)


@pytest.mark.usefixtures("ray_session")
@needs_ray
def test_cli_gives_one_typed_error_record_per_broken_file(
    checkpoint: Path, mixed_folder: Path, tmp_path: Path, http_server: tuple[str, Path]
) -> None:
    base, www = http_server  # URLs are fetched by the decode tasks
    natural_image(7, (80, 64)).save(www / "web.jpg")
    urls = [f"{base}/web.jpg", f"{base}/gone.jpg"]
    out = tmp_path / "out.jsonl"
    args = ["classify", mixed_folder, *urls, "--checkpoint", checkpoint, "--exact"]
    args += ["--max-pixels", "50000"]  # huge.png is over it
    run = run_resnext(*args, "--engine", "ray", "-o", out)
    assert run.code == 1, run  # some inputs failed
    records = [json.loads(line) for line in out.read_text().splitlines()]
    errors = {r["input"].rsplit("/")[-1]: r["error"]["type"] for r in records if "error" in r}
    assert errors == {**BROKEN, "gone.jpg": "download_failed"}
    assert len(records) == len({r["input"] for r in records}) == 15
    assert records[-2]["input"] == urls[0] and "predictions" in records[-2]
    assert "on ray (1 CPU actor), fp32; 6 failed" in run.stderr
    for name in BROKEN:  # one error line each on stderr
        assert len([ln for ln in run.stderr.splitlines() if name in ln]) == 1, run
    local = run_resnext(*args, "-f", "jsonl")
    assert local.code == 1, local
    for a, b in zip(local.records(), records, strict=True):
        assert a.keys() == b.keys() and a["input"] == b["input"]
        if "error" in a:
            assert a == b
        else:
            assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
    # The same run into Parquet shards: the writer sees the same records.
    folder = tmp_path / "shards"
    sharded = run_resnext(*args, "--engine", "ray", "-f", "parquet", "-o", f"{folder}/")
    assert sharded.code == 1, sharded
    pq = pytest.importorskip("pyarrow.parquet")
    table = [row for shard in shards.shards(folder) for row in pq.read_table(shard).to_pylist()]
    assert [r["input"] for r in table] == [r["input"] for r in records]
    for row, record in zip(table, records, strict=True):
        if "error" in record:
            assert (row["error_type"], row["error"]) == tuple(record["error"].values())
        else:
            assert row["label_1"] == record["predictions"][0]["label"]


def _map_workers(ray: Any) -> list[Any]:
    """The handles of the Predictor actors that Ray Data holds in this driver process."""
    return [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, ray.actor.ActorHandle)
        and "MapWorker(MapBatches(Predictor))" in repr(obj)
    ]


@needs_ray
def test_an_actor_killed_mid_run_is_replaced_and_no_input_is_lost_or_doubled(
    ray_session: Any, checkpoint: Path, tmp_path: Path
) -> None:
    images = write_images(tmp_path / "many", 20)
    options: dict[str, Any] = {"checkpoint": str(checkpoint), "exact": True, "batch_size": 2}
    runner = ray_engine.RayEngine(**options)
    remote: list[Record] = []
    killed: list[str] = []
    for record in runner.classify([str(tmp_path / "many")]):
        remote.append(record)
        if not killed:
            workers = _map_workers(ray_session)
            assert workers, "no Predictor actor found to kill"
            for actor in workers:
                ray_session.kill(actor, no_restart=False)
                killed.append(actor._actor_id.hex())
            killed_after = len(remote)
    assert killed and killed_after < len(images)  # the kill landed mid-run
    from ray._private import state

    restarts = [state.actors(actor_id=a)["NumRestarts"] for a in killed]
    assert all(n >= 1 for n in restarts), restarts  # Ray restarted the killed actor
    assert sorted(r.input for r in remote) == sorted(str(p) for p in images)  # exactly once
    local = list(Classifier(**options).classify([str(tmp_path / "many")]))
    assert_same_records(local, remote)


@pytest.mark.usefixtures("ray_session")
@needs_ray
def test_resume_completes_an_interrupted_run(checkpoint: Path, tmp_path: Path) -> None:
    images = write_images(tmp_path / "photos", 16)
    out = tmp_path / "out.jsonl"
    common = ["classify", tmp_path / "photos", "--checkpoint", checkpoint, "--exact", "-b", "1"]
    args = [str(a) for a in (*common, "--engine", "ray", "-o", out)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # A separate process with its own private Ray, stopped with SIGTERM mid-run.
    proc = subprocess.Popen(
        [sys.executable, "-m", "resnext_cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(out.read_bytes().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr.decode()
    assert "interrupted:" in stderr.decode()
    first = [json.loads(line)["input"] for line in out.read_text().splitlines()]
    assert 2 <= len(first) < len(images)
    run = run_resnext(*args, "--resume")
    assert run.code == 0, run
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"] for r in records] == [str(p) for p in images]  # each once, in order
    local = run_resnext(*common, "-f", "jsonl").records()
    for a, b in zip(local, records, strict=True):
        assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
        for p, q in zip(a["predictions"], b["predictions"], strict=True):
            assert abs(p["probability"] - q["probability"]) <= TOLERANCE


class _OneGpuRay:
    """Ray's remote/get as a cluster whose GPU task returns *answer* (or raises)."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.asked: list[dict[str, object]] = []

    def remote(self, **resources: object) -> Any:
        self.asked.append(resources)

        class Task:
            def __init__(self, fn: Any) -> None:
                self.fn = fn

            def remote(self) -> str:
                return "ref"

        return Task

    def get(self, ref: str, timeout: float) -> object:
        assert ref == "ref" and timeout > 0
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def test_a_cluster_gpu_without_bf16_is_planned_in_fp16() -> None:
    from resnext_cli.run.plan import MachineFacts, resolve
    from resnext_cli.run.ray_engine import gpu_facts

    # A T4 (Turing) has no bf16: the plan must not pick an emulated bf16 for it.
    turing = _OneGpuRay((False, 15 << 30, "Tesla T4"))
    facts = gpu_facts(turing)
    assert turing.asked == [{"num_gpus": 1}]
    assert (facts.bf16, facts.free_bytes, facts.name) == (False, 15 << 30, "Tesla T4")
    cluster = MachineFacts(
        cpu_count=8,
        cuda_count=1,
        cuda_bf16=facts.bf16,
        cuda_free_bytes=facts.free_bytes,
        placement="ray",
    )
    assert resolve(Config(), cluster).precision == "fp16"
    ampere = gpu_facts(_OneGpuRay((True, 70 << 30, "NVIDIA A100")))
    assert resolve(Config(), dataclasses.replace(cluster, cuda_bf16=ampere.bf16)).precision == (
        "bf16"
    )


def test_a_gpu_task_that_cannot_run_is_one_line() -> None:
    from resnext_cli.run.ray_engine import gpu_facts

    with pytest.raises(ConfigError) as info:
        gpu_facts(_OneGpuRay(TimeoutError("no node")))
    assert str(info.value) == (
        "could not ask the Ray cluster's GPUs what they offer (TimeoutError); check the "
        "cluster's GPU nodes, or use --device cpu"
    )


# -- in process, with fakes of Ray (what a mutation run reaches) -------------------------


def _batch(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rows as the object columns Ray Data hands a numpy batch."""
    return {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}


def test_to_row_flattens_every_kind_of_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    gone = InputError("not_found", "no such file: 'gone.jpg'")
    assert ray_engine.to_row(3, Source(input="a.jpg", path=Path("a.jpg"))) == {
        "seq": 3,
        "input": "a.jpg",
        "path": f"{tmp_path}/a.jpg",  # absolute: a worker elsewhere opens the same file
        "url": "",
        "data": b"",
        "error_type": "",
        "message": "",
    }
    assert ray_engine.to_row(0, Source(input="u", url="http://h/x.jpg", data=b"\x01")) == {
        "seq": 0,
        "input": "u",
        "path": "",
        "url": "http://h/x.jpg",
        "data": b"\x01",
        "error_type": "",
        "message": "",
    }
    assert ray_engine.to_row(7, Source(input="g", path=Path("/g"), error=gone)) == {
        "seq": 7,
        "input": "g",
        "path": "/g",
        "url": "",
        "data": b"",
        "error_type": "not_found",
        "message": "no such file: 'gone.jpg'",
    }


@pytest.fixture
def fake_prepare(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """prepare and transform_for replaced: each source prepared is recorded; the crop is
    a 2x3x4 uint8 tensor of the input's length (or the error its name asks for)."""
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(ray_engine, "transform_for", lambda plan: ("transform", plan))

    def prepare(source: Source, plan: Any, transform: Any) -> Any:
        calls.append((source, plan, transform))
        if source.input.startswith("bad"):
            return InputError("not_an_image", f"cannot decode '{source.input}'")
        # A transposed (non-contiguous) tensor: its pixels must travel in CHW order.
        return torch.full((4, 3, 2), len(source.input), dtype=torch.uint8).permute(2, 1, 0)

    monkeypatch.setattr(ray_engine, "prepare", prepare)
    return calls


def test_decoder_builds_the_source_each_row_names(
    fake_prepare: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[tuple[str, int]] = []

    def read_object(uri: str, max_bytes: int) -> bytes:
        reads.append((uri, max_bytes))
        if "missing" in uri:
            raise InputError("not_found", f"no such object: '{uri}'")
        return b"object bytes"

    monkeypatch.setattr(ray_engine, "read_object", read_object)
    plan: Any = SimpleNamespace(max_download_bytes=1234)
    sources = [
        Source(input="f.jpg", path=Path("/data/f.jpg")),
        Source(input="http://h/w.jpg", url="http://h/w.jpg"),
        Source(input="-", data=b"stdin bytes"),
        Source(input="s3://b/k.jpg", url="s3://b/k.jpg"),
        Source(input="gs://b/missing.jpg", url="gs://b/missing.jpg"),
        Source(input="gone", path=Path("/gone"), error=InputError("not_found", "gone")),
    ]
    batch = _batch([ray_engine.to_row(i, s) for i, s in enumerate(sources)])
    decoder = ray_engine._Decoder(plan)
    assert decoder.plan is plan and decoder.transform == ("transform", plan)
    outcomes = [decoder(batch, i) for i in range(len(sources))]
    assert reads == [("s3://b/k.jpg", 1234), ("gs://b/missing.jpg", 1234)]
    # The object store was read here; the other inputs are left to prepare as they are.
    assert [c[0] for c in fake_prepare] == [
        Source(input="f.jpg", path=Path("/data/f.jpg")),
        Source(input="http://h/w.jpg", url="http://h/w.jpg"),
        Source(input="-", data=b"stdin bytes"),
        Source(input="s3://b/k.jpg", data=b"object bytes"),
    ]
    assert all(c[1] is plan and c[2] == ("transform", plan) for c in fake_prepare)
    missing, gone = outcomes[4], outcomes[5]
    assert isinstance(missing, InputError) and isinstance(gone, InputError)
    assert (missing.error_type, missing.message) == (
        "not_found",
        "no such object: 'gs://b/missing.jpg'",
    )
    assert (gone.error_type, gone.message) == ("not_found", "gone")
    assert all(isinstance(o, torch.Tensor) for o in outcomes[:4])


def test_decode_batch_gives_pixels_shapes_and_error_columns(
    fake_prepare: list[tuple[Any, ...]],
) -> None:
    plan: Any = SimpleNamespace(max_download_bytes=10)
    sources = [
        Source(input="abc", path=Path("/abc")),
        Source(input="bad.jpg", path=Path("/bad.jpg")),
        Source(input="x", error=InputError("too_large", "over the limit")),
        Source(input="abcdefg", path=Path("/abcdefg")),
    ]
    batch = _batch([ray_engine.to_row(10 + i, s) for i, s in enumerate(sources)])
    out = ray_engine.decode_batch(batch, plan)
    assert sorted(out) == ["c", "error_type", "h", "input", "message", "path", "seq", "tensor", "w"]
    assert list(out["seq"]) == [10, 11, 12, 13]
    assert list(out["input"]) == ["abc", "bad.jpg", "x", "abcdefg"]
    assert list(out["path"]) == ["/abc", "/bad.jpg", "", "/abcdefg"]
    assert list(out["error_type"]) == ["", "not_an_image", "too_large", ""]
    assert list(out["message"]) == ["", "cannot decode 'bad.jpg'", "over the limit", ""]
    assert [list(out[k]) for k in "chw"] == [[2, 0, 0, 2], [3, 0, 0, 3], [4, 0, 0, 4]]
    assert [out[k].dtype for k in "chw"] == [np.dtype(np.int64)] * 3  # integer columns
    assert list(out["tensor"]) == [bytes([3] * 24), b"", b"", bytes([7] * 24)]


def test_predictor_builds_the_model_and_rebuilds_each_tensor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    got: list[object] = []

    def get(ref: object) -> str:
        got.append(ref)
        return "the state"

    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(get=get))
    built: list[tuple[Any, Any]] = []

    def load_model(plan: Any, state: Any) -> str:
        built.append((plan, state))
        return "model"

    monkeypatch.setattr(ray_engine, "load_model", load_model)
    seen: list[tuple[Any, list[tuple[Source, Any]]]] = []

    def infer(model: Any, pairs: list[tuple[Source, Any]]) -> Iterator[str]:
        seen.append((model, pairs))
        return (f"record of {source.input}" for source, _ in pairs)

    monkeypatch.setattr(ray_engine, "infer", infer)
    plan: Any = SimpleNamespace(name="plan")
    predictor = ray_engine.Predictor(plan, ["ref"])
    assert got == ["ref"] and built == [(plan, "the state")]
    pixels = bytes(range(24))
    batch = {
        "seq": np.array([5, 6, 7]),
        "input": np.array(["a", "b", "c"], dtype=object),
        "path": np.array(["/a", "", "/c"], dtype=object),
        "tensor": np.array([pixels, b"", bytes(range(6))], dtype=object),
        "c": np.array([2, 0, 1]),
        "h": np.array([3, 0, 2]),
        "w": np.array([4, 0, 3]),
        "error_type": np.array(["", "truncated", ""], dtype=object),
        "message": np.array(["", "cut short", ""], dtype=object),
    }
    out = predictor(batch)
    assert list(out["seq"]) == [5, 6, 7] and sorted(out) == ["record", "seq"]
    assert list(out["record"]) == ["record of a", "record of b", "record of c"]
    [(model, pairs)] = seen
    assert model == "model"
    assert [s for s, _ in pairs] == [
        Source(input="a", path=Path("/a")),
        Source(input="b"),
        Source(input="c", path=Path("/c")),
    ]
    first, error, last = (p for _, p in pairs)
    assert first.dtype == torch.uint8 and first.shape == (2, 3, 4)
    assert first.flatten().tolist() == list(range(24))
    assert first[1, 2, 3].item() == 23 and first[0, 1, 0].item() == 4
    assert isinstance(error, InputError)
    assert (error.error_type, error.message) == ("truncated", "cut short")
    assert last.shape == (1, 2, 3) and last.flatten().tolist() == list(range(6))
    first[0, 0, 0] = 200  # the tensor owns its pixels: the batch's bytes stay as they were
    assert pixels == bytes(range(24))


def test_ray_temp_dir_follows_rays_own_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_TMPDIR", "/r")
    monkeypatch.setenv("TMPDIR", "/t")
    assert ray_engine._ray_temp_dir() == Path("/r/ray")
    monkeypatch.setenv("RAY_TMPDIR", "")
    assert ray_engine._ray_temp_dir() == Path("/t/ray")
    monkeypatch.delenv("RAY_TMPDIR")
    monkeypatch.delenv("TMPDIR")
    assert ray_engine._ray_temp_dir() == Path("/tmp/ray")


def test_host_port_of_each_kind_of_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    host_port = ray_engine._host_port
    assert host_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert host_port("[::1]:6380") == ("::1", 6380)
    assert host_port("a:b:7") == ("a:b", 7)
    assert host_port("Xnode]:80") == ("Xnode", 80)  # only brackets are stripped
    for address in ("ray://head:10001", "head", "head:", "head:port", "head:-1"):
        assert host_port(address) is None, address
    assert host_port("auto") is None  # nothing running, nothing recorded
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(" 127.0.0.1:6390\n")
    assert host_port("auto") == ("127.0.0.1", 6390)
    monkeypatch.setenv("RAY_ADDRESS", "")  # empty: the recorded cluster
    assert host_port("auto") == ("127.0.0.1", 6390)
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:7000")
    assert host_port("auto") == ("10.1.2.3", 7000)


def test_which_addresses_are_loopback() -> None:
    assert ray_engine.is_loopback(None)
    assert ray_engine.is_loopback("127.0.0.2:6379")
    assert ray_engine.is_loopback("localhost:6379")
    for address in (
        "10.0.0.5:6379",
        "ray://127.0.0.1:10001",
        "127.0.0.1",
        "localhost.example:6379",
        "x127.0.0.1:6379",
        "[::1]:6379",
    ):
        assert not ray_engine.is_loopback(address), address


def test_probe_connects_once_and_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, object]] = []

    class Conn:
        def close(self) -> None:
            calls.append(("close", None))

    def create_connection(where: Any, timeout: object = None) -> Conn:
        calls.append((where, timeout))
        if where[0] == "down":
            raise OSError("boom")  # no strerror: the exception says it
        return Conn()

    monkeypatch.setattr(ray_engine.socket, "create_connection", create_connection)
    ray_engine.probe("head:6379", timeout=0.25)
    assert calls == [(("head", 6379), 0.25), ("close", None)]
    calls.clear()
    ray_engine.probe("ray://head:10001")  # Ray Client: nothing to connect to here
    assert calls == []
    monkeypatch.setenv("RAY_ADDRESS", "down:1")
    with pytest.raises(ConfigError) as info:
        ray_engine.probe("auto")
    assert calls == [(("down", 1), 5.0)]
    assert str(info.value) == (
        "no Ray answers at down:1 (the running cluster): boom (start one with "
        "'ray start --head', or use --ray-address local for a private Ray)"
    )


def test_gpu_facts_asks_one_gpu_task_with_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[object] = []

    class Ray:
        def remote(self, **resources: object) -> Any:
            asked.append(resources)

            def wrap(fn: Any) -> Any:
                asked.append(fn)
                return SimpleNamespace(remote=lambda: "ref")

            return wrap

        def get(self, ref: str, timeout: float) -> object:
            asked.append((ref, timeout))
            return (1, 2.75, 5)

    facts = ray_engine.gpu_facts(Ray())
    assert asked == [{"num_gpus": 1}, ray_engine._probe_gpu, ("ref", 120.0)]
    assert facts == ray_engine.GpuFacts(bf16=True, free_bytes=2, name="5")
    assert facts.bf16 is True and type(facts.free_bytes) is int
    asked.clear()
    ray_engine.gpu_facts(Ray(), timeout=3.0)
    assert asked[-1] == ("ref", 3.0)
    assert ray_engine.GpuFacts() == ray_engine.GpuFacts(bf16=False, free_bytes=0, name="")


def test_probe_gpu_reads_the_devices_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (123.0, 456))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "NVIDIA X")
    answer = ray_engine._probe_gpu()
    assert answer == (True, 123, "NVIDIA X")
    assert answer[0] is True and type(answer[1]) is int


def test_import_ray_keeps_a_loopback_ray_there(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SimpleNamespace(name="ray")
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setitem(sys.modules, "ray.data", SimpleNamespace(name="ray.data"))
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    assert ray_engine.import_ray(loopback=False) is fake
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    assert ray_engine.import_ray(loopback=True) is fake
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")  # the user's own choice
    assert ray_engine.import_ray(loopback=True) is fake
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "1"
    monkeypatch.setitem(sys.modules, "ray.data", None)  # ray without its data extra
    with pytest.raises(ConfigError) as info:
        ray_engine.import_ray(loopback=False)
    assert str(info.value) == (
        "--engine ray needs Ray, which is not installed (pip install 'resnext-cli[ray]')"
    )


def test_quiet_ray_sets_both_loggers_to_errors() -> None:
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.DEBUG)
        ray_engine._quiet_ray()
        assert [logger.level for logger in loggers] == [logging.ERROR, logging.ERROR]
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class _FakeRay:
    """ray's driver calls, recorded: init, cluster_resources, put, shutdown, a GPU task."""

    def __init__(
        self,
        resources: dict[str, float] | None = None,
        *,
        initialized: bool = False,
        error: BaseException | None = None,
        gpu: tuple[bool, int, str] = (True, 40 << 30, "NVIDIA A100"),
    ) -> None:
        self.resources = resources or {}
        self.initialized = initialized
        self.error = error
        self.gpu = gpu
        self.calls: list[tuple[Any, ...]] = []

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **options: Any) -> None:
        self.calls.append(("init", options))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as ray.init installs its own
        if self.error is not None:
            raise self.error

    def cluster_resources(self) -> dict[str, float]:
        return dict(self.resources)

    def remote(self, **resources: object) -> Any:
        self.calls.append(("remote", resources))
        return lambda fn: SimpleNamespace(remote=lambda: "gpu-ref")

    def get(self, ref: str, timeout: float) -> object:
        return self.gpu

    def put(self, value: object) -> str:
        self.calls.append(("put", value))
        return "state-ref"

    def shutdown(self) -> None:
        self.calls.append(("shutdown",))


@pytest.fixture
def sigterm() -> Iterator[Any]:
    """A SIGTERM handler of the test's own, put back as it was afterwards."""

    def handler(signum: int, frame: object) -> None:  # pragma: no cover - never sent
        pass

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_connect_starts_a_private_ray_on_loopback(sigterm: Any) -> None:
    ray = _FakeRay()
    assert ray_engine.connect(ray, None, num_cpus=3) is True
    assert ray.calls == [
        (
            "init",
            {
                "address": "local",
                "num_cpus": 3,
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": logging.ERROR,
                "_node_ip_address": "127.0.0.1",
            },
        )
    ]
    assert signal.getsignal(signal.SIGTERM) is sigterm  # the CLI's handler is kept


def test_connect_joins_a_cluster_or_leaves_a_running_ray(sigterm: Any) -> None:
    ray = _FakeRay()
    assert ray_engine.connect(ray, "10.0.0.5:6379") is True
    assert ray.calls == [
        ("init", {"address": "10.0.0.5:6379", "log_to_driver": False, "logging_level": 40})
    ]
    assert signal.getsignal(signal.SIGTERM) is sigterm
    running = _FakeRay(initialized=True)
    assert ray_engine.connect(running, "auto") is False
    assert running.calls == []


@pytest.mark.parametrize(
    ("address", "error", "where"),
    [
        ("auto", ConnectionError("refused"), "the running Ray cluster"),
        ("10.0.0.5:6379", ValueError("bad address"), "Ray at '10.0.0.5:6379'"),
        (None, RuntimeError("no session"), "Ray at 'None'"),
    ],
    ids=["auto", "address", "private"],
)
def test_connect_failures_are_one_line(
    sigterm: Any, address: str | None, error: BaseException, where: str
) -> None:
    with pytest.raises(ConfigError) as info:
        ray_engine.connect(_FakeRay(error=error), address)
    assert str(info.value) == (
        f"cannot connect to {where}: {error} (check 'ray status', or use "
        "--ray-address local to start a private Ray)"
    )
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert signal.getsignal(signal.SIGTERM) is sigterm  # put back after a failure too


def test_connect_off_the_main_thread_leaves_signals_alone() -> None:
    import threading

    ray = _FakeRay()
    ray.init = lambda **options: ray.calls.append(("init", options))  # type: ignore[method-assign]
    answers: list[object] = []

    def run() -> None:
        try:
            answers.append(ray_engine.connect(ray, "auto"))
        except BaseException as exc:
            answers.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert answers == [True]
    assert ray.calls == [("init", {"address": "auto", "log_to_driver": False, "logging_level": 40})]


@pytest.fixture
def engine_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """RayEngine's collaborators replaced: the cluster's address rules see nothing running,
    and the probe, ray's import, the plan's facts, the weights and the model are recorded."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    seen: dict[str, list[Any]] = {k: [] for k in ("probe", "facts", "state", "check", "build")}
    seen["machine"] = []
    monkeypatch.setattr(ray_engine, "probe", lambda target: seen["probe"].append(target))
    from resnext_cli.run.plan import MachineFacts

    def machine(cls: Any, device: str = "auto") -> MachineFacts:
        seen["machine"].append(device)
        # This machine's CPU and extras; its counts must not be the cluster's.
        return MachineFacts(cpu_count=64, cpu_native_bf16=True, openvino=True, cuda_count=8)

    monkeypatch.setattr(MachineFacts, "probe", classmethod(machine))
    real = ray_engine.resolve

    def resolve(cfg: Config, facts: MachineFacts) -> Any:
        seen["facts"].append(facts)
        return real(cfg, facts)

    monkeypatch.setattr(ray_engine, "resolve", resolve)
    weights = {"fc.weight": torch.zeros(2, 2)}

    def load_state(plan: Any, *, progress: Any = None) -> tuple[Any, str]:
        seen["state"].append((plan, progress))
        return weights, "weights.pth"

    monkeypatch.setattr(ray_engine, "load_state", load_state)
    monkeypatch.setattr(ray_engine, "check_classes", lambda *args: seen["check"].append(args))
    monkeypatch.setattr(
        ray_engine,
        "build_model",
        lambda model, tensors, name: seen["build"].append((model, tensors, name)),
    )
    return seen


def _with_ray(monkeypatch: pytest.MonkeyPatch, ray: _FakeRay) -> list[bool]:
    loopbacks: list[bool] = []

    def import_ray(*, loopback: bool) -> _FakeRay:
        loopbacks.append(loopback)
        return ray

    monkeypatch.setattr(ray_engine, "import_ray", import_ray)
    return loopbacks


def test_engine_plans_with_the_clusters_cpus(
    engine_parts: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch, sigterm: Any
) -> None:
    from resnext_cli.run.plan import MachineFacts

    ray = _FakeRay({"CPU": 4.0, "GPU": 2.0})
    loopbacks = _with_ray(monkeypatch, ray)
    progress = object()
    engine = ray_engine.RayEngine(
        Config(device="cpu", exact=True), download_progress=progress, num_cpus=6
    )
    assert loopbacks == [True] and engine_parts["probe"] == []  # a private Ray
    assert engine_parts["machine"] == ["cpu"]
    assert engine_parts["facts"] == [
        MachineFacts(
            cpu_count=4,
            cpu_native_bf16=True,
            openvino=True,
            cuda_count=2,
            cuda_bf16=False,
            cuda_free_bytes=0,
            cuda_name="",
            placement="ray",
        )
    ]
    assert (engine.plan.device, engine.plan.precision, engine.plan.runtime) == (
        "cpu",
        "fp32",
        "torch",
    )
    assert engine.gpu is False and engine.actors == (1, 3) and engine.chunk_size == 100_000
    assert engine.describe() == "ray (1-3 CPU actors), fp32"
    weights = {"fc.weight": torch.zeros(2, 2)}
    [(plan, given)] = engine_parts["state"]
    assert plan is engine.plan and given is progress
    [check] = engine_parts["check"]
    assert check[0] is engine.plan and check[2] == "weights.pth"
    assert check[1].keys() == weights.keys()
    [(model, tensors, name)] = engine_parts["build"]
    assert (model, name) == ("resnext50_32x4d", "weights.pth") and tensors is check[1]
    assert ray.calls[0][0] == "init" and ray.calls[0][1]["num_cpus"] == 6
    assert ray.calls[1:] == [("put", (check[1], "weights.pth"))]  # no GPU task for --device cpu
    assert engine._state_ref == "state-ref" and engine._owned is True
    engine.close()
    assert engine._owned is False
    engine.close()
    assert ray.calls[-2:] == [("put", (check[1], "weights.pth")), ("shutdown",)]


def test_engine_plans_with_a_clusters_gpu(
    engine_parts: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch, sigterm: Any
) -> None:
    ray = _FakeRay({"CPU": 16.0, "GPU": 2.0}, initialized=True)
    loopbacks = _with_ray(monkeypatch, ray)
    engine = ray_engine.RayEngine(address="10.0.0.5:6379", chunk_size=7)
    assert engine_parts["probe"] == ["10.0.0.5:6379"] and loopbacks == [False]
    [facts] = engine_parts["facts"]
    assert (facts.cpu_count, facts.cuda_count, facts.placement) == (16, 2, "ray")
    assert (facts.cuda_bf16, facts.cuda_free_bytes, facts.cuda_name) == (
        True,
        40 << 30,
        "NVIDIA A100",
    )
    assert ("remote", {"num_gpus": 1}) in ray.calls
    assert (engine.plan.device, engine.plan.precision) == ("cuda", "bf16")
    assert engine.gpu is True and engine.actors == (2, 2) and engine.chunk_size == 7
    assert engine.describe() == "ray (2 GPU actors), bf16"
    engine.close()  # a Ray that was up already is left up
    assert ("shutdown",) not in ray.calls and engine._owned is False


@pytest.mark.parametrize(
    ("resources", "actors", "described"),
    [
        ({}, (1, 1), "ray (1 CPU actor), fp32"),
        ({"CPU": 0.5}, (1, 1), "ray (1 CPU actor), fp32"),
        ({"CPU": 2.0}, (1, 1), "ray (1 CPU actor), fp32"),
        ({"CPU": 3.0}, (1, 2), "ray (1-2 CPU actors), fp32"),
    ],
    ids=["none", "half", "two", "three"],
)
def test_engine_leaves_a_cpu_for_decoding(
    engine_parts: dict[str, list[Any]],
    monkeypatch: pytest.MonkeyPatch,
    sigterm: Any,
    resources: dict[str, float],
    actors: tuple[int, int],
    described: str,
) -> None:
    ray = _FakeRay(resources)
    _with_ray(monkeypatch, ray)
    engine = ray_engine.RayEngine(Config(exact=True))
    [facts] = engine_parts["facts"]
    assert facts.cpu_count == max(1, int(resources.get("CPU", 1)))
    assert (facts.cuda_count, facts.cuda_bf16, facts.cuda_free_bytes) == (0, False, 0)
    assert [c[0] for c in ray.calls] == ["init", "put"]  # no GPU to ask
    assert engine.actors == actors and engine.describe() == described


def test_engine_options_make_the_config(
    engine_parts: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch, sigterm: Any
) -> None:
    ray = _FakeRay({"CPU": 2.0})
    loopbacks = _with_ray(monkeypatch, ray)
    engine = ray_engine.RayEngine(topk=3, exact=True, address="localhost:6379")
    assert engine.config == Config(topk=3, exact=True)
    assert engine_parts["probe"] == ["localhost:6379"] and loopbacks == [True]
    assert ray.calls[0] == (
        "init",
        {"address": "localhost:6379", "log_to_driver": False, "logging_level": logging.ERROR},
    )


def test_engine_refuses_openvino_int8_and_shuts_its_ray_down(
    engine_parts: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch, sigterm: Any
) -> None:
    ray = _FakeRay({"CPU": 2.0})
    _with_ray(monkeypatch, ray)
    resolve = ray_engine.resolve
    monkeypatch.setattr(
        ray_engine,
        "resolve",
        lambda cfg, facts: dataclasses.replace(
            resolve(cfg, facts), runtime="openvino", precision="int8"
        ),
    )
    with pytest.raises(ConfigError) as info:
        ray_engine.RayEngine(Config(exact=True))
    assert (
        str(info.value) == "--engine ray does not run OpenVINO INT8 files yet (use --engine local)"
    )
    assert ray.calls[-1] == ("shutdown",) and engine_parts["state"] == []
    # OpenVINO in another precision, or INT8 in torch, runs.
    for runtime, precision in (("openvino", "fp32"), ("torch", "int8")):
        monkeypatch.setattr(
            ray_engine,
            "resolve",
            lambda cfg, facts, r=runtime, p=precision: dataclasses.replace(
                resolve(cfg, facts), runtime=r, precision=p
            ),
        )
        engine = ray_engine.RayEngine(Config(exact=True))
        assert (engine.plan.runtime, engine.plan.precision) == (runtime, precision)


def test_engine_shuts_its_ray_down_when_planning_fails(
    engine_parts: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch, sigterm: Any
) -> None:
    ray = _FakeRay({"CPU": 2.0})
    _with_ray(monkeypatch, ray)
    with pytest.raises(ConfigError, match="the Ray cluster has no GPUs"):
        ray_engine.RayEngine(Config(device="cuda"))
    assert [c[0] for c in ray.calls] == ["init", "shutdown"]


def _bare_engine(**attributes: Any) -> Any:
    """A RayEngine with the attributes given and nothing started."""
    engine = object.__new__(ray_engine.RayEngine)
    engine.__dict__.update(attributes)
    return engine


@pytest.mark.parametrize(
    ("actors", "gpu", "precision", "runtime", "described"),
    [
        ((1, 1), False, "fp32", "torch", "ray (1 CPU actor), fp32"),
        ((1, 3), False, "bf16", "openvino", "ray (1-3 CPU actors), bf16, openvino"),
        ((1, 1), True, "fp16", "torch", "ray (1 GPU actor), fp16"),
        ((4, 4), True, "bf16", "torch", "ray (4 GPU actors), bf16"),
        ((2, 2), False, "fp32", "torch", "ray (2 CPU actors), fp32"),
    ],
    ids=["one_cpu", "openvino", "one_gpu", "four_gpus", "two_cpus"],
)
def test_describe_names_the_pool_and_precision(
    actors: tuple[int, int], gpu: bool, precision: str, runtime: str, described: str
) -> None:
    plan = SimpleNamespace(precision=precision, runtime=runtime)
    assert _bare_engine(actors=actors, gpu=gpu, plan=plan).describe() == described


def test_classify_expands_inputs_with_object_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    expanded: list[tuple[Any, ...]] = []
    sources = [Source(input="a"), Source(input="s3://b/k.jpg", url="s3://b/k.jpg")]

    def iter_sources(inputs: Any, *, stdin: Any, warn: Any) -> Iterator[Source]:
        expanded.append((list(inputs), stdin, warn))
        return iter(sources)

    monkeypatch.setattr(ray_engine, "iter_sources", iter_sources)
    ray = _FakeRay()
    runs: list[list[str]] = []

    def run(rows: list[dict[str, Any]]) -> Iterator[str]:
        runs.append([r["input"] for r in rows])
        return (f"record {r['seq']}" for r in rows)

    engine = _bare_engine(chunk_size=10, _owned=True, _ray=ray, _run=run)
    stdin, warn = object(), print
    records = list(engine.classify(["a", "s3://b/"], stdin=stdin, warn=warn))
    assert expanded == [(["a", "s3://b/"], stdin, warn)]
    assert records == ["record 0", "record 1"] and runs == [["a", "s3://b/k.jpg"]]
    assert ray.calls == [("shutdown",)]


@pytest.mark.parametrize(
    ("count", "chunks"),
    [(0, []), (4, [[0, 1], [2, 3]]), (5, [[0, 1], [2, 3], [4]])],
    ids=["none", "even", "odd"],
)
def test_classify_sources_runs_chunks_in_order(count: int, chunks: list[list[int]]) -> None:
    ray = _FakeRay()
    runs: list[list[int]] = []

    def run(rows: list[dict[str, Any]]) -> Iterator[str]:
        runs.append([r["seq"] for r in rows])
        return (f"record of {r['input']}" for r in rows)

    engine = _bare_engine(chunk_size=2, _owned=True, _ray=ray, _run=run)
    records = list(engine.classify_sources(Source(input=f"in{i}") for i in range(count)))
    assert records == [f"record of in{i}" for i in range(count)]
    assert runs == chunks
    assert ray.calls == [("shutdown",)]


def test_classify_sources_shuts_down_when_abandoned() -> None:
    ray = _FakeRay()
    run = lambda rows: (r["input"] for r in rows)  # noqa: E731
    engine = _bare_engine(chunk_size=1, _owned=True, _ray=ray, _run=run)
    records = engine.classify_sources(Source(input=f"in{i}") for i in range(3))
    assert next(records) == "in0" and ray.calls == []
    records.close()
    assert ray.calls == [("shutdown",)]


class _FakeDataset:
    """Ray Data's chain, recorded; iter_batches hands out *batches*, counting each."""

    def __init__(self, batches: Sequence[dict[str, Any]] = ()) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.batches = list(batches)
        self.handed = 0

    def map_batches(self, fn: Any, **options: Any) -> _FakeDataset:
        self.calls.append(("map_batches", fn, options))
        return self

    def iter_batches(self, **options: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(("iter_batches", options))
        for batch in self.batches:
            self.handed += 1
            yield batch


def test_dataset_decodes_in_tasks_and_infers_in_an_actor_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataset = _FakeDataset()
    context = SimpleNamespace(enable_progress_bars=True)
    made: list[tuple[Any, ...]] = []

    def from_items(rows: Any, **options: Any) -> _FakeDataset:
        made.append(("from_items", rows, options))
        return dataset

    def pool(**options: Any) -> tuple[str, dict[str, Any]]:
        return ("pool", options)

    data = SimpleNamespace(
        DataContext=SimpleNamespace(get_current=lambda: context),
        from_items=from_items,
        ActorPoolStrategy=pool,
    )
    quiet: list[bool] = []
    monkeypatch.setattr(ray_engine, "_quiet_ray", lambda: quiet.append(True))
    plan = SimpleNamespace(batch_size=4)
    rows = [{"seq": i} for i in range(9)]
    for gpu, actors in ((False, (1, 3)), (True, (2, 2))):
        engine = _bare_engine(
            _ray=SimpleNamespace(data=data), actors=actors, plan=plan, gpu=gpu, _state_ref="ref"
        )
        made.clear()
        dataset.calls.clear()
        assert engine._dataset(rows) is dataset
        assert context.enable_progress_bars is False and quiet
        assert made == [("from_items", rows, {"override_num_blocks": 3})]  # ceil(9 / 4)
        decode, predict = dataset.calls
        assert decode == (
            "map_batches",
            ray_engine.decode_batch,
            {
                "batch_size": None,
                "batch_format": "numpy",
                "fn_kwargs": {"plan": plan},
                "num_cpus": 1,
                "memory": 1 << 30,
            },
        )
        assert predict == (
            "map_batches",
            ray_engine.Predictor,
            {
                "batch_size": 4,
                "batch_format": "numpy",
                "fn_constructor_kwargs": {"plan": plan, "state": ["ref"]},
                "compute": ("pool", {"min_size": actors[0], "max_size": actors[1]}),
                "num_cpus": 1,
                "num_gpus": 1 if gpu else 0,
            },
        )
    made.clear()
    engine._dataset([{"seq": 0}])
    engine._dataset([])
    assert [m[2] for m in made] == [{"override_num_blocks": 1}, {"override_num_blocks": 1}]
    engine = _bare_engine(
        _ray=SimpleNamespace(data=data), actors=(1, 1), plan=SimpleNamespace(batch_size=3),
        gpu=False, _state_ref="ref",
    )  # fmt: skip
    made.clear()
    engine._dataset([{"seq": i} for i in range(6)])
    assert made[0][2] == {"override_num_blocks": 2}


def _records(*pairs: tuple[int, str]) -> dict[str, Any]:
    return {
        "seq": np.array([seq for seq, _ in pairs]),
        "record": np.array([record for _, record in pairs], dtype=object),
    }


def _rows(first: int, count: int) -> list[dict[str, Any]]:
    return [{"seq": first + i, "input": f"in{first + i}"} for i in range(count)]


def test_run_restores_input_order_and_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = _FakeDataset(
        [
            _records((11, "r11")),
            _records((11, "again"), (10, "r10")),  # a retried task: the first one counts
            _records((13, "r13"), (9, "old"), (14, "past"), (15, "past")),  # not this chunk's
            _records((12, "r12"), (11, "late")),
        ]
    )
    engine = _bare_engine(_dataset=lambda rows: dataset)
    records = engine._run(_rows(10, 4))
    assert next(records) == "r10" and next(records) == "r11"
    assert dataset.handed == 2  # records stream out batch by batch
    assert list(records) == ["r12", "r13"]
    assert dataset.calls == [("iter_batches", {"batch_size": None, "batch_format": "numpy"})]


def test_run_names_inputs_that_got_no_record() -> None:
    dataset = _FakeDataset([_records((10, "r10"), (12, "r12"), (14, "r14"))])
    engine = _bare_engine(_dataset=lambda rows: dataset)
    records = engine._run(_rows(10, 5))
    assert next(records) == "r10"
    with pytest.raises(ray_engine.EngineError) as info:
        next(records)
    assert str(info.value) == (
        "the Ray run returned no record for 2 inputs (first: 'in11'); run again with --resume"
    )
    # A batch whose columns disagree is an error at once, not an input silently lost.
    ragged = {"seq": np.array([0, 1]), "record": np.array(["r0"], dtype=object)}
    broken = _bare_engine(_dataset=lambda rows: _FakeDataset([ragged]))
    with pytest.raises(ValueError, match=r"^zip\(\) argument 2 is shorter than argument 1$"):
        list(broken._run(_rows(0, 2)))
    nothing = _bare_engine(_dataset=lambda rows: _FakeDataset([]))
    with pytest.raises(ray_engine.EngineError) as info:
        list(nothing._run(_rows(0, 1)))
    assert str(info.value) == (
        "the Ray run returned no record for 1 inputs (first: 'in0'); run again with --resume"
    )
