"""The classifier against the hub page's reference pipeline, and its batching and inputs."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import queue
import threading
import types
from concurrent.futures import Future
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from resnext_cli import Classifier
from resnext_cli.errors import CheckpointError, ConfigError, InputError
from resnext_cli.inputs.sources import Source
from resnext_cli.model.checkpoint import CLASSES_KEY
from resnext_cli.results import Classified, Failed
from resnext_cli.run import engine
from resnext_cli.run.config import Config
from resnext_cli.run.network import Model, transform_for
from resnext_cli.run.plan import resolve
from tests.conftest import make_checkpoint
from tests.helpers import AVX2, GPU, _FakeStream


def reference_top5(checkpoint: Path, image: Path, tag: str) -> tuple[list[int], list[float]]:
    """The hub page's snippet, by hand: PIL open, RGB, preprocess, model, softmax, topk."""
    model = torchvision.models.resnext50_32x4d(weights=None)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    model.eval()
    if tag == "IMAGENET1K_V1":  # the page's own Compose
        preprocess = transforms.Compose(
            [
                transforms.Resize(256),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            ]
        )
    else:
        preprocess = torchvision.models.ResNeXt50_32X4D_Weights[tag].transforms()
    input_batch = preprocess(Image.open(image).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        output = model(input_batch)
    probabilities = torch.nn.functional.softmax(output[0], dim=0)
    top5_prob, top5_catid = torch.topk(probabilities, 5)
    return top5_catid.tolist(), top5_prob.tolist()


@pytest.fixture
def parity_images(make_image) -> list[Path]:
    return [
        make_image("photo.jpg", seed=11, size=(500, 375), quality=90),
        make_image("tall.png", seed=12, size=(240, 410)),
        make_image("gray.jpg", seed=13, size=(300, 300), mode="L"),
        make_image("alpha.png", seed=14, size=(260, 200), mode="RGBA"),
        make_image("small.png", seed=15, size=(120, 90)),
    ]


@pytest.mark.parametrize("tag", ["IMAGENET1K_V1", "IMAGENET1K_V2"])
def test_exact_matches_the_hub_reference(checkpoint, parity_images, resnext, tag) -> None:
    run = resnext(
        "classify",
        *parity_images,
        "--checkpoint",
        checkpoint,
        "-w",
        tag,
        "--exact",
        "--precision",
        "fp32",
        "-f",
        "json",
        "-b",
        "3",
    )
    assert run.code == 0, run

    records = json.loads(run.stdout)
    assert [r["input"] for r in records] == [str(p) for p in parity_images]
    for record, image in zip(records, parity_images, strict=True):
        indices, probs = reference_top5(checkpoint, image, tag)
        assert [p["index"] for p in record["predictions"]] == indices, image.name
        got = [p["probability"] for p in record["predictions"]]
        assert got == pytest.approx(probs, abs=1e-5), image.name
        assert record["weights"] == tag
        assert record["model"] == "resnext50_32x4d"


def test_predictions_differ_between_images(checkpoint, parity_images) -> None:
    # Guards the test checkpoint itself: a near-uniform model would make parity vacuous.
    records = Classifier(checkpoint=str(checkpoint)).classify(map(str, parity_images))
    tops = [r.top1 for r in records if isinstance(r, Classified)]
    assert len({t.index for t in tops}) >= 3
    assert max(t.probability for t in tops) > 0.3


def test_batched_and_single_runs_agree(checkpoint, make_image, tmp_path) -> None:
    paths = [str(make_image(f"{i:02d}.png", seed=i, size=(200, 160))) for i in range(7)]
    paths.insert(3, str(tmp_path / "missing.png"))
    batched = list(Classifier(checkpoint=str(checkpoint), batch_size=4).classify(paths))
    single = list(Classifier(checkpoint=str(checkpoint), batch_size=1, workers=0).classify(paths))
    assert [r.input for r in batched] == paths
    assert [r.input for r in single] == paths
    assert isinstance(batched[3], Failed) and batched[3].error_type == "not_found"
    for a, b in zip(batched, single, strict=True):
        if isinstance(a, Classified):
            assert isinstance(b, Classified)
            assert [p.index for p in a.predictions] == [p.index for p in b.predictions]
            for pa, pb in zip(a.predictions, b.predictions, strict=True):
                assert pa.probability == pytest.approx(pb.probability, abs=1e-4)


def test_probabilities_are_a_sorted_softmax(checkpoint, make_image) -> None:
    [record] = Classifier(checkpoint=str(checkpoint), topk=1000).classify(
        [str(make_image("a.png", seed=3))]
    )
    assert isinstance(record, Classified)
    probs = [p.probability for p in record.predictions]
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    assert sorted(p.index for p in record.predictions) == list(range(1000))


def test_finetuned_checkpoint_with_its_labels(checkpoint10, make_image, tmp_path) -> None:
    labels = tmp_path / "labels.txt"
    names = [f"class {chr(65 + i)}" for i in range(10)]
    labels.write_text("\n".join(names) + "\n")
    clf = Classifier(checkpoint=str(checkpoint10), labels=str(labels), topk=3)
    [record] = clf.classify([str(make_image("x.png", seed=5))])
    assert isinstance(record, Classified)
    assert all(p.label == names[p.index] for p in record.predictions)
    assert all(0 <= p.index < 10 for p in record.predictions)


def test_class_count_mismatch_is_a_config_error(checkpoint10, tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        Classifier(checkpoint=str(checkpoint10))
    assert str(info.value) == (
        f"checkpoint '{checkpoint10}' has 10 classes but the bundled ImageNet labels have 1000 "
        "(give --labels FILE with 10 lines)"
    )
    # Class names kept in the file itself (as 'resnext learn' writes them) that do not
    # match its fc are named as such, not as the bundled labels.
    state = torch.load(checkpoint10, weights_only=True)
    kept = tmp_path / "kept.pth"
    torch.save({**state, CLASSES_KEY: ["cat", "dog"]}, kept)
    with pytest.raises(ConfigError) as info:
        Classifier(checkpoint=str(kept))
    assert str(info.value) == (
        f"checkpoint '{kept}' has 10 classes but the class names it keeps are 2 "
        "(give --labels FILE with 10 lines)"
    )


def test_wrong_architecture_is_named(checkpoint) -> None:
    with pytest.raises(CheckpointError) as info:
        Classifier(model="resnext101_64x4d", checkpoint=str(checkpoint))
    message = str(info.value)
    assert message.startswith(f"checkpoint '{checkpoint}' does not fit resnext101_64x4d:")
    assert "missing keys" in message


def test_checkpoint_wrappers_and_module_prefix(checkpoint, make_image, tmp_path) -> None:
    state = torch.load(checkpoint, weights_only=True)
    image = str(make_image("w.png", seed=9))
    expected = next(iter(Classifier(checkpoint=str(checkpoint)).classify([image])))
    for name, obj in {
        "sd.pth": {"state_dict": state},
        "ddp.pth": {"module." + k: v for k, v in state.items()},
        "ref.pth": {"model": state, "epoch": 3, "args": __import__("argparse").Namespace(lr=1)},
    }.items():
        torch.save(obj, tmp_path / name)
        got = next(iter(Classifier(checkpoint=str(tmp_path / name)).classify([image])))
        assert isinstance(got, Classified) and isinstance(expected, Classified)
        assert got.predictions == expected.predictions, name


def test_model_is_built_without_random_init(monkeypatch, checkpoint) -> None:
    # Building on the meta device means no kaiming init runs on real tensors.
    calls: list[int] = []
    real = torch.nn.init.kaiming_normal_

    def spy(tensor, *a, **k):
        if not tensor.is_meta:
            calls.append(tensor.numel())
        return real(tensor, *a, **k)

    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", spy)
    Classifier(checkpoint=str(checkpoint))
    assert calls == []


def test_other_architectures_load(tmp_path, make_image) -> None:
    path = make_checkpoint(tmp_path / "r101.pth", arch="resnext101_64x4d", num_classes=1000)
    [record] = Classifier(model="101-64", checkpoint=str(path), topk=2).classify(
        [str(make_image("z.png", seed=2, size=(96, 96)))]
    )
    assert isinstance(record, Classified)
    assert record.model == "resnext101_64x4d"
    assert record.weights == "IMAGENET1K_V1"


@pytest.mark.skipif(
    not torch.cuda.is_available() or not os.environ.get("RESNEXT_TEST_GPU"),
    reason="needs a CUDA GPU and RESNEXT_TEST_GPU=1",
)
@pytest.mark.gpu
def test_cuda_matches_cpu(checkpoint, make_image) -> None:
    from resnext_cli import Classifier

    paths = [str(make_image(f"{i}.png", seed=i)) for i in range(4)]
    cpu = list(Classifier(checkpoint=str(checkpoint), device="cpu", exact=True).classify(paths))
    gpu = list(Classifier(checkpoint=str(checkpoint), device="cuda", exact=True).classify(paths))
    for a, b in zip(cpu, gpu, strict=True):
        assert [p.index for p in a.predictions] == [p.index for p in b.predictions]
        for pa, pb in zip(a.predictions, b.predictions, strict=True):
            assert pa.probability == pytest.approx(pb.probability, abs=1e-3)


def test_overlapped_stages_on_fake_cuda_match_the_serial_run(
    checkpoint, make_image, monkeypatch, tmp_path
) -> None:
    """CUDA faked: the decode thread works on its own stream and synchronises it before
    each decode; the model waits for each batch's event; records come in input order."""
    import threading

    import torchvision.io

    import resnext_cli.run.pipeline as pipeline
    from resnext_cli import Classifier
    from resnext_cli.inputs.sources import Source
    from resnext_cli.run.engine import LocalEngine

    images = [make_image(f"{i}.jpg", seed=i, size=(300, 200), quality=90) for i in range(7)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(images[0].read_bytes()[:500])
    paths = [*images[:3], bad, *images[3:]]
    clf = Classifier(checkpoint=str(checkpoint), precision="fp32", workers=2, batch_size=3)
    # The serial run with the same decoder (the CPU's decode_jpeg standing in for nvJPEG).
    cpu_gpu_plan = dataclasses.replace(clf.plan, decode_on="gpu")
    serial = LocalEngine(dataclasses.replace(clf.loaded, plan=cpu_gpu_plan), overlap=False)
    reference = [
        r.to_dict() for r in serial.classify_sources(Source(str(p), path=p) for p in paths)
    ]

    log = []
    local = threading.local()
    default = _FakeStream(log, "default")
    made = []

    def new_stream(device=None):
        made.append(_FakeStream(log, f"side{len(made)}"))
        return made[-1]

    class on_stream:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            local.stream = self.stream

        def __exit__(self, *exc):
            local.stream = None

    real_decode = torchvision.io.decode_jpeg

    def fake_decode(datas, mode, device):
        log.append(("decode", getattr(local, "stream", None) and local.stream.name))
        return [real_decode(d, mode=mode) for d in datas]

    monkeypatch.setattr(torch.cuda, "Stream", new_stream)
    monkeypatch.setattr(torch.cuda, "stream", on_stream)
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: getattr(local, "stream", None) or default)  # fmt: skip
    monkeypatch.setattr(torchvision.io, "decode_jpeg", fake_decode)
    cpu_model = clf.loaded
    real_softmax = pipeline.probabilities
    scored_threads = set()

    def on_cpu(model, batch, precision):
        scored_threads.add(threading.current_thread().name)
        log.append(("infer", len(batch)))
        return real_softmax(cpu_model, batch, precision)

    monkeypatch.setattr(pipeline, "probabilities", on_cpu)
    cuda_plan = dataclasses.replace(clf.plan, device="cuda", decode_on="gpu")
    engine = LocalEngine(dataclasses.replace(clf.loaded, plan=cuda_plan))
    assert engine.overlap  # on by default on CUDA
    got = [r.to_dict() for r in engine.classify_sources(Source(str(p), path=p) for p in paths)]
    assert got == reference
    assert scored_threads == {"resnext-infer"}
    assert [s.name for s in made] == ["side0"]
    # Every decode ran on the side stream right after that stream was synchronised.
    decodes = [i for i, e in enumerate(log) if e[0] == "decode"]
    assert len(decodes) == 3  # 7 whole JPEGs in batches of 3: 3, 3, 1
    for i in decodes:
        assert log[i] == ("decode", "side0") and log[i - 1] == ("sync", "side0")
    # Each batch's inference waited, on the default stream, for that batch's event.
    records = [i for i, e in enumerate(log) if e[0] == "record"]
    waits = [e for e in log if e[0] == "wait"]
    assert [w[2] for w in waits] == [("event", i + 1) for i in records]
    assert all(w[1] == "default" for w in waits)
    for record_at, wait in zip(records, waits, strict=True):
        wait_at = log.index(wait)
        infer_at = next(i for i in range(wait_at, len(log)) if log[i][0] == "infer")
        assert record_at < wait_at < infer_at


def test_overlap_stops_cleanly_when_the_caller_stops(checkpoint, make_image) -> None:
    import threading

    from resnext_cli import Classifier
    from resnext_cli.inputs.sources import Source
    from resnext_cli.run.engine import LocalEngine

    paths = [make_image(f"{i}.png", seed=i) for i in range(9)]
    clf = Classifier(checkpoint=str(checkpoint), precision="fp32", workers=1, batch_size=2)
    engine = LocalEngine(clf.loaded, overlap=True)
    records = engine.classify_sources(Source(str(p), path=p) for p in paths)
    first = next(records)
    assert first.input == str(paths[0])
    records.close()  # the consumer quits after one record
    alive = {t.name: t for t in threading.enumerate()}
    assert "resnext-infer" not in alive  # joined: no model work outlives the run
    if "resnext-gpu-decode" in alive:  # it had a moment; it ends with its current wait
        alive["resnext-gpu-decode"].join(60)
        assert not alive["resnext-gpu-decode"].is_alive()


def test_failed_records_go_out_before_later_inputs_are_read() -> None:
    from resnext_cli.errors import InputError
    from resnext_cli.inputs.sources import Source
    from resnext_cli.run import engine as engine_module

    engine = engine_module.LocalEngine.__new__(engine_module.LocalEngine)

    class Plan:
        batch_size = 8
        workers = 0

    engine.plan = Plan()  # type: ignore[assignment]
    engine.model = None  # type: ignore[assignment]
    engine.overlap = False  # the serial path (the CPU's)
    engine.prepare = lambda source: source.error  # type: ignore[method-assign]
    read = []

    def sources():
        for i in range(1_000):
            read.append(i)
            yield Source(input=f"missing-{i}", error=InputError("not_found", f"no {i}"))

    def infer(model, batch):
        return [Failed(s.input, p.error_type, p.message) for s, p in batch]

    original = engine_module.infer
    engine_module.infer = infer
    try:
        stream = engine.classify_sources(sources())
        first = next(stream)
        assert first.input == "missing-0" and read == [0]  # out before input 1 is read
        assert len(list(stream)) == 999
    finally:
        engine_module.infer = original


# -- fast, in-process tests of engine.py: fake networks, fake pools, fake threads -------------


class TinyNet(torch.nn.Module):
    """A stand-in network: the mean of each channel through a 3 -> 1000 linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 1000)
        with torch.no_grad():
            self.fc.weight.copy_(torch.linspace(-2.0, 2.0, 3000).reshape(1000, 3))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def _fp32_plan(**changes: object):
    return dataclasses.replace(resolve(Config(precision="fp32"), AVX2), **changes)  # type: ignore[arg-type]


def _tiny_model(**changes: object) -> Model:
    plan = _fp32_plan(**changes)
    return Model(plan, TinyNet(), transform_for(plan), "tiny.pth")


def _sources(*names: str) -> list[Source]:
    return [Source(input=name) for name in names]


def _bad(name: str) -> InputError:
    return InputError("not_found", f"no {name}")


# _DecodePool


def test_decode_pool_threads_are_named_daemons_that_end_on_shutdown() -> None:
    pool = engine._DecodePool(lambda source: source * 2, 3)  # type: ignore[arg-type,operator]
    assert [t.name for t in pool._threads] == [f"resnext-decode-{i}" for i in range(3)]
    assert all(t.daemon for t in pool._threads)
    futures = [pool.submit(n) for n in range(5)]  # type: ignore[arg-type]
    assert [f.result(timeout=60) for f in futures] == [0, 2, 4, 6, 8]
    pool.shutdown()
    assert not any(t.is_alive() for t in pool._threads)


def test_decode_pool_errors_go_to_the_input_and_cancelled_jobs_are_skipped() -> None:
    gate, busy = threading.Event(), threading.Event()
    calls: list[object] = []

    def work(source):
        calls.append(source)
        if source == "first":
            busy.set()
            gate.wait(60)
        if source == "bad":
            raise ValueError("broken decoder")
        return f"done {source}"

    pool = engine._DecodePool(work, 1)
    first = pool.submit("first")  # type: ignore[arg-type]
    assert busy.wait(60)
    cancelled = pool.submit("cancelled")  # type: ignore[arg-type]
    assert cancelled.cancel()
    bad = pool.submit("bad")  # type: ignore[arg-type]
    last = pool.submit("last")  # type: ignore[arg-type]
    gate.set()
    assert first.result(timeout=60) == "done first"
    error = bad.exception(timeout=60)
    assert isinstance(error, ValueError) and str(error) == "broken decoder"
    assert last.result(timeout=60) == "done last"  # the thread lived on
    pool.shutdown()
    assert calls == ["first", "bad", "last"]


class _Joined:
    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def join(self, timeout: float | None = None) -> None:
        self.timeouts.append(timeout)


@pytest.mark.parametrize(
    ("wait", "ticks", "expected"),
    [
        (None, [], [None, None]),
        (1.0, [100.0, 100.25, 100.5], [0.75, 0.5]),
        (1.0, [100.0, 102.0, 103.0], [0.0, 0.0]),
    ],
    ids=["until_they_end", "within_the_deadline", "past_the_deadline"],
)
def test_decode_pool_shutdown_stops_each_thread_within_the_deadline(
    monkeypatch, wait, ticks, expected
) -> None:
    pool = engine._DecodePool(lambda source: source, 0)  # type: ignore[arg-type,return-value]
    threads = [_Joined(), _Joined()]
    pool._threads = threads  # type: ignore[assignment]
    clock = iter(ticks)
    monkeypatch.setattr(engine, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    pool.shutdown(wait=wait)
    assert [t.timeouts[0] for t in threads] == expected
    assert all(len(t.timeouts) == 1 for t in threads)
    assert [pool._jobs.get_nowait(), pool._jobs.get_nowait()] == [None, None]
    assert pool._jobs.empty()


def test_settled_passes_a_result_and_names_the_input_of_an_error() -> None:
    done: Future[object] = Future()
    done.set_result("pixels")
    assert engine._settled(Source("a.png"), done) == "pixels"  # type: ignore[arg-type]
    failed: Future[object] = Future()
    failed.set_exception(MemoryError("out of memory"))
    error = engine._settled(Source("b.png"), failed)  # type: ignore[arg-type]
    assert isinstance(error, InputError)
    assert error.error_type == "unreadable"
    assert error.message == "decoding 'b.png' failed: MemoryError('out of memory')"


# LocalEngine


@pytest.mark.parametrize(
    ("device", "overlap", "expected"),
    [
        ("cpu", None, False),
        ("cuda", None, True),
        ("cuda:1", None, True),
        ("cpu", True, True),
        ("cuda", False, False),
    ],
)
def test_local_engine_overlaps_on_cuda_unless_told(device, overlap, expected) -> None:
    model = _tiny_model(device=device)
    local = engine.LocalEngine(model, overlap=overlap)
    assert local.overlap is expected
    assert local.model is model and local.plan is model.plan
    assert local.describe() == f"{device}, fp32"
    assert local.close() is None


def test_local_engine_prepares_numpy_crops_only_through_openvino(monkeypatch) -> None:
    calls: list[tuple[object, ...]] = []

    def prepare(source, plan, transform, *, as_numpy=False):
        calls.append((source, plan, transform, as_numpy))
        return "crop"

    monkeypatch.setattr(engine, "prepare", prepare)
    model = _tiny_model()
    source = Source("a.png")
    assert engine.LocalEngine(model).prepare(source) == "crop"
    openvino = dataclasses.replace(model, openvino=object())  # type: ignore[arg-type]
    assert engine.LocalEngine(openvino).prepare(source) == "crop"
    assert calls == [
        (source, model.plan, model.transform, False),
        (source, model.plan, model.transform, True),
    ]


def _serial_engine(batch_size: int, prepared: dict[str, object], workers: int = 0):
    local = engine.LocalEngine(_tiny_model(batch_size=batch_size, workers=workers))
    local.prepare = lambda source: prepared[source.input]  # type: ignore[method-assign]
    return local


def test_batches_fill_to_the_batch_size_and_a_failure_closes_its_batch() -> None:
    prepared: dict[str, object] = {f"ok{i}": f"px{i}" for i in range(6)}
    prepared.update(bad1=_bad("bad1"), bad2=_bad("bad2"), bad3=_bad("bad3"))
    local = _serial_engine(2, prepared)
    order = ["ok0", "ok1", "ok2", "bad1", "ok3", "ok4", "bad2", "bad3", "ok5"]
    got = [[s.input for s, _ in batch] for batch in local._batches(_sources(*order))]
    assert got == [["ok0", "ok1"], ["ok2", "bad1"], ["ok3", "ok4"], ["bad2"], ["bad3"], ["ok5"]]
    batches = list(local._batches(_sources("ok0", "bad1")))
    assert [[p for _, p in b] for b in batches] == [["px0", prepared["bad1"]]]
    assert list(local._batches([])) == []


def test_serial_classify_infers_each_batch_in_order(monkeypatch) -> None:
    seen: list[list[str]] = []

    def infer(model, batch):
        seen.append([s.input for s, _ in batch])
        return [f"record of {s.input}: {p}" for s, p in batch]

    monkeypatch.setattr(engine, "infer", infer)
    local = _serial_engine(3, {f"i{i}": f"px{i}" for i in range(5)})
    records = list(local.classify_sources(_sources(*(f"i{i}" for i in range(5)))))
    assert records == [f"record of i{i}: px{i}" for i in range(5)]
    assert seen == [["i0", "i1", "i2"], ["i3", "i4"]]


def test_features_sources_batches_as_classify(monkeypatch) -> None:
    seen: list[list[str]] = []

    def features(model, batch):
        seen.append([s.input for s, _ in batch])
        return [(s, np.full(2, float(len(p)), dtype=np.float32)) for s, p in batch]

    monkeypatch.setattr(engine, "features", features)
    local = _serial_engine(2, {"a": "x", "b": "xy", "c": "xyz"})
    got = [(s.input, v.tolist()) for s, v in local.features_sources(_sources("a", "b", "c"))]
    assert got == [("a", [1.0, 1.0]), ("b", [2.0, 2.0]), ("c", [3.0, 3.0])]
    assert seen == [["a", "b"], ["c"]]


class _LazyFuture(Future):  # type: ignore[type-arg]
    """Runs its job when first waited on; never started, it can still be cancelled."""

    def __init__(self, work, source) -> None:
        super().__init__()
        self.job = (work, source)

    def exception(self, timeout=None):
        if not self.done():
            work, source = self.job
            try:
                self.set_result(work(source))
            except Exception as exc:
                self.set_exception(exc)
        return super().exception(timeout)


class _FakePool:
    made: ClassVar[list[_FakePool]] = []

    def __init__(self, work, workers: int) -> None:
        self.work, self.workers = work, workers
        self.futures: list[_LazyFuture] = []
        self.waits: list[float | None] = []
        _FakePool.made.append(self)

    def submit(self, source):
        self.futures.append(_LazyFuture(self.work, source))
        return self.futures[-1]

    def shutdown(self, *, wait=None) -> None:
        self.waits.append(wait)


@pytest.fixture
def fake_pool(monkeypatch) -> list[_FakePool]:
    _FakePool.made = []
    monkeypatch.setattr(engine, "_DecodePool", _FakePool)
    return _FakePool.made


def _counted(read: list[int], count: int):
    for i in range(count):
        read.append(i)
        yield Source(f"s{i}")


def test_decoding_runs_a_bounded_window_ahead_and_stopping_cancels_the_rest(fake_pool) -> None:
    # batch 3, 2 workers: 2 x 3 + 2 = 8 inputs in flight before the first is handed on.
    local = engine.LocalEngine(_tiny_model(batch_size=3, workers=2))

    def prepare(source):
        if source.input == "s1":
            raise OSError("stalled")
        return source.input.upper()

    local.prepare = prepare  # type: ignore[method-assign]
    read: list[int] = []
    stream = local._prepared(_counted(read, 20))
    source, first = next(stream)
    assert (source.input, first) == ("s0", "S0")
    assert len(read) == 8
    [pool] = fake_pool
    assert pool.workers == 2 and pool.work == local.prepare
    source, second = next(stream)
    assert source.input == "s1" and len(read) == 9
    assert isinstance(second, InputError)
    assert second.message == "decoding 's1' failed: OSError('stalled')"
    stream.close()  # the consumer quits: the waiting inputs are cancelled
    assert [f.cancelled() for f in pool.futures] == [False, False] + [True] * 7
    assert pool.waits == [1.0]


def test_decoding_to_the_end_hands_every_input_on_in_order(fake_pool) -> None:
    local = engine.LocalEngine(_tiny_model(batch_size=1, workers=1))
    local.prepare = lambda source: source.input.upper()  # type: ignore[method-assign]
    read: list[int] = []
    got = [(s.input, p) for s, p in local._prepared(_counted(read, 6))]
    assert got == [(f"s{i}", f"S{i}") for i in range(6)]
    [pool] = fake_pool
    assert pool.waits == [None]
    assert not any(f.cancelled() for f in pool.futures)


def test_without_workers_each_input_is_decoded_as_it_is_read(fake_pool) -> None:
    local = engine.LocalEngine(_tiny_model(batch_size=4, workers=0))
    local.prepare = lambda source: source.input.upper()  # type: ignore[method-assign]
    read: list[int] = []
    stream = local._prepared(_counted(read, 5))
    assert [next(stream)[1], next(stream)[1]] == ["S0", "S1"]
    assert read == [0, 1]
    assert [p for _, p in stream] == ["S2", "S3", "S4"]
    assert fake_pool == []


def test_real_decode_threads_keep_the_input_order() -> None:
    local = engine.LocalEngine(_tiny_model(batch_size=2, workers=3))
    local.prepare = lambda source: source.input[::-1]  # type: ignore[method-assign]
    names = [f"in{i:02d}" for i in range(25)]
    assert [(s.input, p) for s, p in local._prepared(_sources(*names))] == [
        (n, n[::-1]) for n in names
    ]
    assert not [t for t in threading.enumerate() if t.name.startswith("resnext-decode-")]


# _Stages, with the pipeline's steps faked


@pytest.fixture
def fake_steps(monkeypatch) -> dict[str, list[object]]:
    """decode_ready, score and make_record faked: each notes its thread and what it got."""
    seen: dict[str, list[object]] = {"decode": [], "score": [], "threads": []}

    def decode_ready(model, batch):
        seen["decode"].append([s.input for s, _ in batch])
        seen["threads"].append(("decode", threading.current_thread().name))
        return [(s, f"ready {p}") for s, p in batch]

    def score(model, ready):
        seen["score"].append([s.input for s, _ in ready])
        seen["threads"].append(("score", threading.current_thread().name))
        return [(s, f"scored {p}") for s, p in ready]

    def make_record(model, source, outcome):
        return f"{source.input}: {outcome}"

    monkeypatch.setattr(engine, "decode_ready", decode_ready)
    monkeypatch.setattr(engine, "score", score)
    monkeypatch.setattr(engine, "make_record", make_record)
    return seen


class _Thread(threading.Thread):
    made: ClassVar[list[_Thread]] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.joins: list[float | None] = []
        _Thread.made.append(self)

    def join(self, timeout=None) -> None:
        self.joins.append(timeout)
        super().join(timeout)


@pytest.fixture
def stage_threads(monkeypatch) -> list[_Thread]:
    _Thread.made = []
    monkeypatch.setattr(
        engine, "threading", types.SimpleNamespace(Thread=_Thread, Event=threading.Event)
    )
    return _Thread.made


def _batches(*batches: list[str]):
    return [[(Source(name), f"px {name}") for name in batch] for batch in batches]


def test_overlapped_classify_yields_every_record_in_order(fake_steps, stage_threads) -> None:
    local = engine.LocalEngine(_tiny_model(batch_size=2, workers=0), overlap=True)
    local.prepare = lambda source: f"px {source.input}"  # type: ignore[method-assign]
    names = ["a", "b", "c", "d", "e"]
    records = list(local.classify_sources(_sources(*names)))
    assert records == [f"{n}: scored ready px {n}" for n in names]
    assert fake_steps["decode"] == [["a", "b"], ["c", "d"], ["e"]]
    assert fake_steps["score"] == [["a", "b"], ["c", "d"], ["e"]]
    assert set(fake_steps["threads"]) == {
        ("decode", "resnext-gpu-decode"),
        ("score", "resnext-infer"),
    }
    assert [(t.name, t.daemon) for t in stage_threads] == [
        ("resnext-gpu-decode", True),
        ("resnext-infer", True),
    ]
    decode, infer_ = stage_threads
    assert infer_.joins == [None] and decode.joins == [2.0]
    assert not infer_.is_alive()


@pytest.mark.parametrize("where", ["decode", "score"])
def test_a_stage_error_reaches_the_caller_after_the_earlier_records(
    fake_steps, stage_threads, monkeypatch, where
) -> None:
    real = getattr(engine, f"{where}_ready" if where == "decode" else where)

    def failing(model, batch):
        if batch[0][0].input == "c":
            raise RuntimeError(f"{where} failed")
        return real(model, batch)

    monkeypatch.setattr(engine, f"{where}_ready" if where == "decode" else where, failing)
    stages = engine._Stages(_tiny_model())
    got = []
    with pytest.raises(RuntimeError, match=f"^{where} failed$"):
        for record in stages.run(iter(_batches(["a", "b"], ["c"], ["d"]))):
            got.append(record)
    assert got == ["a: scored ready px a", "b: scored ready px b"]
    assert stages.stop.is_set()
    assert not stage_threads[1].is_alive()


def test_stopping_the_stages_early_stops_both_threads(fake_steps, stage_threads) -> None:
    closed = threading.Event()

    def batches():
        try:
            for i in range(100):
                yield [(Source(f"s{i}"), f"px {i}")]
        finally:
            closed.set()

    stages = engine._Stages(_tiny_model())
    records = stages.run(batches())
    assert next(records) == "s0: scored ready px 0"
    records.close()
    assert stages.stop.is_set()
    decode, infer_ = stage_threads
    assert not infer_.is_alive()
    decode.join()  # it ends with its current wait
    assert closed.is_set()  # the decode thread closed the batches it iterated
    assert len(fake_steps["decode"]) < 100


def test_stages_on_the_cpu_use_no_stream() -> None:
    stages = engine._Stages(_tiny_model())
    assert stages.cuda is False and stages.device == torch.device("cpu")
    stream, context = stages._stream()
    assert stream is None
    with context as entered:
        assert entered is None
    assert stages.decoded.maxsize == 1 and stages.scored.maxsize == 1
    assert not stages.stop.is_set()


def test_stages_on_cuda_decode_on_a_side_stream(monkeypatch) -> None:
    made: list[tuple[str, object]] = []
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: made.append(("stream", device)) or "S")
    monkeypatch.setattr(torch.cuda, "stream", lambda s: ("on", s))
    stages = engine._Stages(_tiny_model(device="cuda:1"))
    assert stages.cuda is True and stages.device == torch.device("cuda:1")
    assert stages._stream() == ("S", ("on", "S"))
    assert made == [("stream", torch.device("cuda:1"))]


def _unbounded(stages) -> None:
    stages.decoded, stages.scored = queue.Queue(), queue.Queue()


def _drain(q) -> list[object]:
    items = []
    while not q.empty():
        items.append(q.get_nowait())
    return items


def test_decode_stage_hands_each_batch_on_then_done_and_closes_its_batches(fake_steps) -> None:
    closed = []

    def batches():
        try:
            yield from _batches(["a", "b"], ["c"])
        finally:
            closed.append(True)

    stages = engine._Stages(_tiny_model())
    _unbounded(stages)
    stages._decode(batches())
    a, b, c = Source("a"), Source("b"), Source("c")
    assert _drain(stages.decoded) == [
        ([(a, "ready px a"), (b, "ready px b")], None),
        ([(c, "ready px c")], None),
        engine._DONE,
    ]
    assert closed == [True]
    stages._decode(iter(_batches(["d"])))  # an iterator without close()
    assert _drain(stages.decoded) == [([(Source("d"), "ready px d")], None), engine._DONE]


def test_decode_stage_records_an_event_per_batch_on_its_stream(fake_steps, monkeypatch) -> None:
    log: list[object] = []
    stream = _FakeStream(log, "side")
    monkeypatch.setattr(engine._Stages, "_stream", lambda self: (stream, _Context(log)))
    stages = engine._Stages(_tiny_model())
    _unbounded(stages)
    stages._decode(iter(_batches(["a"], ["b"])))
    items = _drain(stages.decoded)
    assert [event for _, event in items[:2]] == [("event", 2), ("event", 3)]
    assert items[2] is engine._DONE
    assert log == ["enter", ("record", "side"), ("record", "side"), "exit"]


class _Context:
    def __init__(self, log: list[object]) -> None:
        self.log = log

    def __enter__(self) -> None:
        self.log.append("enter")

    def __exit__(self, *exc: object) -> None:
        self.log.append("exit")


def test_decode_stage_hands_an_error_on_in_order(fake_steps, monkeypatch) -> None:
    def decode_ready(model, batch):
        if batch[0][0].input == "b":
            raise KeyboardInterrupt
        return [(s, "ok") for s, _ in batch]

    monkeypatch.setattr(engine, "decode_ready", decode_ready)
    closed = []

    def batches():
        try:
            yield from _batches(["a"], ["b"], ["c"])
        finally:
            closed.append(True)

    stages = engine._Stages(_tiny_model())
    _unbounded(stages)
    stages._decode(batches())
    first, error, done = _drain(stages.decoded)
    assert first == ([(Source("a"), "ok")], None)
    assert isinstance(error, KeyboardInterrupt)
    assert done is engine._DONE
    assert closed == [True]


def test_decode_stage_stops_once_the_run_has_stopped(fake_steps) -> None:
    stages = engine._Stages(_tiny_model())
    stages.stop.set()
    stages._decode(iter(_batches(["a"], ["b"], ["c"])))
    assert fake_steps["decode"] == [["a"]]  # nothing past the batch no one takes
    assert stages.decoded.empty()


class _Full:
    """A queue full for *full* tries, then taking items; it stops the run when told."""

    def __init__(self, full: int, stop: threading.Event | None = None) -> None:
        self.full, self.stop = full, stop
        self.timeouts: list[float] = []
        self.items: list[object] = []

    def put(self, item, timeout=None) -> None:
        self.timeouts.append(timeout)
        if len(self.timeouts) <= self.full:
            if self.stop is not None and len(self.timeouts) == self.full:
                self.stop.set()
            raise queue.Full
        self.items.append(item)


def test_put_waits_for_room_until_the_run_stops() -> None:
    stages = engine._Stages(_tiny_model())
    roomy = _Full(2)
    assert stages._put(roomy, "item") is True  # type: ignore[arg-type]
    assert roomy.timeouts == [0.1, 0.1, 0.1] and roomy.items == ["item"]
    stuck = _Full(3, stages.stop)
    assert stages._put(stuck, "item") is False  # type: ignore[arg-type]
    assert stuck.timeouts == [0.1, 0.1, 0.1] and stuck.items == []


class _Decoded:
    """The decode stage's queue: empty for a few waits, then its items."""

    def __init__(self, empty: int, items: list[object]) -> None:
        self.empty, self.items = empty, list(items)
        self.timeouts: list[float] = []

    def get(self, timeout=None):
        self.timeouts.append(timeout)
        if self.empty:
            self.empty -= 1
            raise queue.Empty
        return self.items.pop(0)


def test_infer_stage_scores_each_batch_and_passes_done_on(fake_steps) -> None:
    stages = engine._Stages(_tiny_model())
    _unbounded(stages)
    a, b = Source("a"), Source("b")
    decoded = _Decoded(2, [([(a, "pa")], None), ([(b, "pb")], None), engine._DONE, "left"])
    stages.decoded = decoded  # type: ignore[assignment]
    stages._infer()
    assert _drain(stages.scored) == [[(a, "scored pa")], [(b, "scored pb")], engine._DONE]
    assert decoded.items == ["left"] and decoded.timeouts == [0.1] * 5


def test_infer_stage_passes_a_decode_error_on_and_ends(fake_steps) -> None:
    stages = engine._Stages(_tiny_model())
    _unbounded(stages)
    error = RuntimeError("decode failed")
    stages.decoded = _Decoded(0, [error, ([(Source("a"), "pa")], None)])  # type: ignore[assignment]
    stages._infer()
    assert _drain(stages.scored) == [error]
    assert fake_steps["score"] == []


def test_infer_stage_hands_on_a_scoring_error_and_ends(fake_steps, monkeypatch) -> None:
    def score(model, ready):
        raise ValueError("bad batch")

    monkeypatch.setattr(engine, "score", score)
    stages = engine._Stages(_tiny_model())
    _unbounded(stages)
    decoded = _Decoded(0, [([(Source("a"), "pa")], None), engine._DONE])
    stages.decoded = decoded  # type: ignore[assignment]
    stages._infer()
    [error] = _drain(stages.scored)
    assert isinstance(error, ValueError) and str(error) == "bad batch"
    assert decoded.items == [engine._DONE]


def test_infer_stage_ends_when_the_run_stops(fake_steps) -> None:
    stages = engine._Stages(_tiny_model())
    decoded = _Decoded(0, [([(Source("a"), "pa")], None), ([(Source("b"), "pb")], None)])
    stages.decoded = decoded  # type: ignore[assignment]
    stages.scored = _Full(1, stages.stop)  # type: ignore[assignment]
    stages._infer()
    assert fake_steps["score"] == [["a"]]
    assert len(decoded.items) == 1
    stopped = engine._Stages(_tiny_model())
    stopped.stop.set()
    stopped.decoded = _Decoded(0, [engine._DONE])  # type: ignore[assignment]
    stopped._infer()
    assert stopped.scored.empty()


class _CudaTensor(torch.Tensor):
    """A CPU tensor that says it is on CUDA and notes the streams it is recorded on."""

    streams: list[object]

    @property
    def device(self):  # type: ignore[override]
        return torch.device("cuda")

    def record_stream(self, stream) -> None:  # type: ignore[override]
        self.streams.append(stream)


def test_infer_stage_waits_for_each_batchs_event_and_records_cuda_tensors(
    fake_steps, monkeypatch
) -> None:
    log: list[object] = []
    current = _FakeStream(log, "default")
    asked: list[object] = []
    monkeypatch.setattr(
        torch.cuda, "current_stream", lambda device=None: asked.append(device) or current
    )
    gpu = torch.Tensor._make_subclass(_CudaTensor, torch.zeros(1))
    gpu.streams = []
    cpu = torch.zeros(1)
    stages = engine._Stages(_tiny_model())
    _unbounded(stages)
    ready = [(Source("a"), gpu), (Source("b"), cpu), (Source("c"), np.zeros(1))]
    stages.decoded = _Decoded(0, [(ready, ("event", 7)), engine._DONE])  # type: ignore[assignment]
    stages._infer()
    assert log == [("wait", "default", ("event", 7))]
    assert asked == [torch.device("cpu")]
    assert gpu.streams == [current]
    scored, done = _drain(stages.scored)
    assert [s.input for s, _ in scored] == ["a", "b", "c"] and done is engine._DONE


# local_engine, the Python API's helpers and Classifier, with the network faked


@pytest.fixture
def tiny_loads(monkeypatch) -> list[tuple[object, object, object]]:
    """engine.load_model builds TinyNet for the plan: each call's plan, progress, state."""
    calls: list[tuple[object, object, object]] = []

    def load_model(plan, *, progress=None, state=None):
        calls.append((plan, progress, state))
        return Model(plan, TinyNet(), transform_for(plan), "tiny.pth")

    monkeypatch.setattr(engine, "load_model", load_model)
    return calls


def test_local_engine_resolves_the_plan_and_loads_its_model(tiny_loads) -> None:
    progress = object()
    config = Config(precision="fp32", batch_size=3)
    local = engine.local_engine(config, download_progress=progress, facts=AVX2)  # type: ignore[arg-type]
    [(plan, given, state)] = tiny_loads
    assert plan == resolve(config, AVX2) and given is progress and state is None
    assert isinstance(local, engine.LocalEngine) and local.plan is plan
    assert local.plan.batch_size == 3


def _rgb() -> Image.Image:
    return Image.frombytes("RGB", (4, 2), bytes(range(24)))


def test_in_memory_images_bytes_and_arrays_become_sources() -> None:
    image = engine._in_memory(_rgb(), 3)
    assert image is not None and image.input == "<image 3>"
    decoded = Image.open(io.BytesIO(image.data or b""))
    assert decoded.format == "PNG" and decoded.tobytes() == bytes(range(24))
    for n, item in enumerate([b"\x01\x02", bytearray(b"\x01\x02"), memoryview(b"\x01\x02")]):
        source = engine._in_memory(item, n)
        assert source == Source(input=f"<bytes {n}>", data=b"\x01\x02")
        assert type(source.data) is bytes
    array = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    source = engine._in_memory(array, 5)
    assert source is not None and source.input == "<array 5>" and source.error is None
    assert Image.open(io.BytesIO(source.data or b"")).tobytes() == bytes(range(24))


def test_an_array_that_is_no_image_is_that_inputs_error() -> None:
    bad = np.zeros((2, 2, 5), dtype=np.float64)
    with pytest.raises(TypeError) as pillow:
        Image.fromarray(bad)
    source = engine._in_memory(bad, 7)
    assert source is not None and source.input == "<array 7>" and source.data is None
    assert source.error is not None
    assert source.error.error_type == "not_an_image"
    assert source.error.message == f"array 7 is not an image: {pillow.value}"


def test_paths_and_other_objects_are_not_in_memory(tmp_path) -> None:
    for item in ("a.png", tmp_path / "a.png", torch.zeros(2, 2, dtype=torch.uint8), 3):
        assert engine._in_memory(item, 0) is None


def test_one_input_stays_one_input() -> None:
    image, array = _rgb(), np.zeros((2, 2), dtype=np.uint8)
    for one in ("a.png", Path("a.png"), b"x", bytearray(b"x"), memoryview(b"x"), image, array):
        items = engine._as_items(one)
        assert isinstance(items, list) and len(items) == 1 and items[0] is one
    many = ["a.png", "b.png"]
    assert engine._as_items(many) is many
    tensor = torch.zeros(2, 2)
    assert engine._as_items(tensor) is tensor  # has a shape, but is no numpy array


def test_classifier_resolves_its_config_and_loads_the_model_once(tiny_loads) -> None:
    progress, state = object(), ({}, "given.pth")
    clf = Classifier(precision="fp32", topk=3, facts=AVX2, download_progress=progress, state=state)  # type: ignore[arg-type]
    assert clf.config == Config(precision="fp32", topk=3)
    [(plan, given, handed)] = tiny_loads
    assert plan is clf.plan and plan == resolve(Config(precision="fp32", topk=3), AVX2)
    assert given is progress and handed is state
    assert clf.engine.model is clf.loaded and clf.engine.plan is plan
    assert clf.model is clf.loaded.net and isinstance(clf.model, TinyNet)
    assert (clf.precision, clf.runtime) == ("fp32", "torch")
    assert clf.labels is plan.labels and len(clf.labels) == 1000
    assert clf.describe() == "cpu, fp32"
    config = Config(precision="fp32", topk=2)
    given_config = Classifier(config, facts=AVX2, topk=4)
    assert given_config.config is config and given_config.plan.topk == 2


def test_classifier_classifies_every_kind_of_input_alike(tiny_loads, tmp_path) -> None:
    picture = Image.frombytes("RGB", (40, 30), bytes((i * 7) % 256 for i in range(3600)))
    path = tmp_path / "p.png"
    picture.save(path)
    clf = Classifier(precision="fp32", topk=3, batch_size=2, workers=1, facts=AVX2)
    inputs = [picture, path.read_bytes(), np.asarray(picture), str(path), path]
    records = list(clf.classify(inputs))
    assert [r.input for r in records] == [
        "<image 0>",
        "<bytes 1>",
        "<array 2>",
        str(path),
        str(path),
    ]
    assert all(isinstance(r, Classified) for r in records)
    first = records[0].predictions
    assert len(first) == 3
    assert all(r.predictions == first for r in records)
    [one] = clf.classify(path)  # one path is one input
    assert one.input == str(path) and one.predictions == first


def test_classifier_sources_expand_paths_with_the_plans_stdin_cap(tiny_loads, monkeypatch) -> None:
    calls: list[tuple[object, ...]] = []

    def iter_sources(specs, *, stdin=None, warn=None, max_stdin_bytes=0):
        calls.append((specs, stdin, warn, max_stdin_bytes))
        yield Source(f"expanded {specs[0]}")

    monkeypatch.setattr(engine, "iter_sources", iter_sources)
    clf = Classifier(precision="fp32", max_download_bytes=12345, facts=AVX2)
    stdin, warn = io.BytesIO(b""), print
    got = list(clf._sources(["a.png", Path("b"), b"xy"], stdin=stdin, warn=warn))
    assert [s.input for s in got] == ["expanded a.png", "expanded b", "<bytes 2>"]
    assert calls == [(["a.png"], stdin, warn, 12345), (["b"], stdin, warn, 12345)]


def test_classifier_classify_sources_uses_its_engine(tiny_loads) -> None:
    clf = Classifier(precision="fp32", facts=AVX2)

    class Engine:
        def classify_sources(self, sources):
            return iter([f"record {s.input}" for s in sources])

    clf.engine = Engine()  # type: ignore[assignment]
    assert list(clf.classify_sources(_sources("a", "b"))) == ["record a", "record b"]
    assert list(clf.classify([b"x", b"y"])) == ["record <bytes 0>", "record <bytes 1>"]


def test_features_are_tensors_and_the_first_error_is_raised(tiny_loads, monkeypatch) -> None:
    def features(model, batch):
        for source, _ in batch:
            if source.data == b"b":
                yield source, InputError("unreadable", "bad bytes")
            else:
                yield source, np.full(3, float(len(source.input)), dtype=np.float32)

    monkeypatch.setattr(engine, "features", features)
    clf = Classifier(precision="fp32", facts=AVX2)
    got = list(clf.iter_features([b"a", b"b", b"c"]))
    assert [name for name, _ in got] == ["<bytes 0>", "<bytes 1>", "<bytes 2>"]
    assert isinstance(got[0][1], torch.Tensor) and got[0][1].tolist() == [9.0, 9.0, 9.0]
    assert isinstance(got[1][1], InputError) and got[1][1].message == "bad bytes"
    stacked = clf.features([b"a", b"c"])
    assert stacked.shape == (2, 3) and stacked.tolist() == [[9.0] * 3, [9.0] * 3]
    with pytest.raises(InputError, match=r"^bad bytes$"):
        clf.features([b"a", b"b"])


def test_features_of_nothing_have_the_heads_width(tiny_loads) -> None:
    clf = Classifier(precision="fp32", facts=AVX2)
    empty = clf.features([])
    assert empty.shape == (0, 3) and empty.dtype == torch.float32
    bundle = types.SimpleNamespace(weight=np.zeros((1000, 5), dtype=np.float32))
    openvino = types.SimpleNamespace(bundle=bundle)
    clf.loaded = Model(clf.plan, None, clf.loaded.transform, "ov", openvino=openvino)  # type: ignore[arg-type]
    assert clf.features([]).shape == (0, 5)  # no torch network is built for it


def test_int8_has_no_features(tiny_loads) -> None:
    clf = Classifier(precision="fp32", facts=AVX2)
    clf.plan = dataclasses.replace(clf.plan, precision="int8")
    with pytest.raises(ConfigError) as info:
        next(clf.iter_features([b"x"]))
    assert str(info.value) == "features come from the float model; drop --quantized"


def test_classify_function_makes_a_classifier_and_returns_a_list(monkeypatch) -> None:
    made: list[tuple[dict[str, object], object, object]] = []

    class Fake:
        def __init__(self, **options) -> None:
            self.options = options

        def classify(self, inputs, *, stdin=None):
            made.append((self.options, inputs, stdin))
            return iter(["r1", "r2"])

    monkeypatch.setattr(engine, "Classifier", Fake)
    stdin = io.BytesIO(b"")
    got = engine.classify(["a"], stdin=stdin, topk=2)
    assert got == ["r1", "r2"] and isinstance(got, list)
    assert made == [({"topk": 2}, ["a"], stdin)]


def test_the_facts_handed_in_make_the_plan(tiny_loads) -> None:
    # Facts of a machine with a GPU: the plan runs on CUDA wherever the test runs.
    local = engine.local_engine(Config(precision="fp32"), facts=GPU)
    assert local.plan.device == "cuda" and local.overlap is True
    clf = Classifier(Config(precision="fp32"), facts=GPU)
    assert clf.plan.device == "cuda" and clf.describe() == "cuda, fp32"


def test_features_read_paths_with_the_stdin_and_warn_given(tiny_loads, monkeypatch) -> None:
    calls: list[tuple[object, object]] = []

    def iter_sources(specs, *, stdin=None, warn=None, max_stdin_bytes=0):
        calls.append((stdin, warn))
        yield Source(specs[0])

    def features(model, batch):
        return [(s, np.ones(2, dtype=np.float32)) for s, _ in batch]

    monkeypatch.setattr(engine, "iter_sources", iter_sources)
    monkeypatch.setattr(engine, "features", features)
    clf = Classifier(precision="fp32", facts=AVX2)
    stdin, warn = io.BytesIO(b""), print
    assert [name for name, _ in clf.iter_features("-", stdin=stdin, warn=warn)] == ["-"]
    assert calls == [(stdin, warn)]
    calls.clear()
    assert clf.features("-", stdin=stdin).tolist() == [[1.0, 1.0]]
    assert calls == [(stdin, None)]


def test_classify_reads_paths_with_the_stdin_and_warn_given(tiny_loads, monkeypatch) -> None:
    calls: list[tuple[object, object]] = []

    def iter_sources(specs, *, stdin=None, warn=None, max_stdin_bytes=0):
        calls.append((stdin, warn))
        yield Source(specs[0], error=InputError("not_found", "gone"))

    monkeypatch.setattr(engine, "iter_sources", iter_sources)
    clf = Classifier(precision="fp32", facts=AVX2)
    stdin, warn = io.BytesIO(b""), print
    [record] = clf.classify("-", stdin=stdin, warn=warn)
    assert isinstance(record, Failed) and record.input == "-" and record.message == "gone"
    assert calls == [(stdin, warn)]
