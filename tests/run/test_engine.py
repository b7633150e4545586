"""The classifier against the hub page's reference pipeline, and its batching and inputs."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from resnext_cli import Classifier
from resnext_cli.errors import CheckpointError, ConfigError
from resnext_cli.model.checkpoint import CLASSES_KEY
from resnext_cli.results import Classified, Failed
from tests.conftest import make_checkpoint
from tests.helpers import _FakeStream


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
