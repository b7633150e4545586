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
from typing import Any

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
