"""The OpenVINO runtime: the plan's choice, conversion, the cache, parity with torch, records.

The plan's tests fake the machine and the extra both ways and need no OpenVINO; the rest
are skipped where the extra is not installed. The test checkpoint is converted once per
session (seconds); each test gets a copy of that cache entry, or fakes the conversion.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from resnext_cli.errors import ConfigError
from resnext_cli.model import openvino_runtime as ovr
from resnext_cli.model.weights import checkpoints_dir
from resnext_cli.results import Classified
from resnext_cli.run import network, pipeline
from resnext_cli.run.config import Config
from resnext_cli.run.engine import Classifier
from resnext_cli.run.plan import MachineFacts, resolve

needs_openvino = pytest.mark.skipif(
    not ovr.available(), reason="the openvino extra is not installed (pip install '.[openvino]')"
)

AVX2 = MachineFacts(cpu_count=2)
AVX2_OV = MachineFacts(cpu_count=2, openvino=True)
BF16_OV = MachineFacts(cpu_count=2, cpu_native_bf16=True, openvino=True)
GPU_OV = MachineFacts(
    cpu_count=16, cuda_count=1, cuda_bf16=True, cuda_free_bytes=80 << 30, openvino=True
)
MPS_OV = MachineFacts(mps=True, openvino=True)
HINT = (
    "the openvino runtime is not installed (pip install 'resnext-cli[openvino]', "
    "or use --runtime torch)"
)


# -- the plan ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "config", "runtime", "precision"),
    [
        (AVX2_OV, {}, "openvino", "fp32"),
        (AVX2, {}, "torch", "fp32"),  # the extra is not installed
        (BF16_OV, {}, "openvino", "bf16"),  # OpenVINO's bf16 on a native-bf16 CPU
        (MachineFacts(cpu_count=2, cpu_native_bf16=True), {}, "torch", "bf16"),
        (GPU_OV, {}, "torch", "bf16"),  # the GPU runs torch
        (GPU_OV, {"device": "cpu"}, "openvino", "fp32"),
        (MPS_OV, {}, "torch", "fp32"),
        (AVX2_OV, {"exact": True}, "torch", "fp32"),  # --exact is the torch reference
        (BF16_OV, {"exact": True}, "torch", "fp32"),
        (AVX2_OV, {"runtime": "torch"}, "torch", "fp32"),
        (AVX2_OV, {"precision": "bf16"}, "torch", "bf16"),  # emulated: torch, as before
        (BF16_OV, {"precision": "fp32"}, "openvino", "fp32"),
        (BF16_OV, {"runtime": "openvino", "precision": "bf16"}, "openvino", "bf16"),
        (AVX2_OV, {"model": "101", "quantized": True}, "torch", "int8"),  # torch's INT8
    ],
)
def test_the_plan_chooses_the_runtime_per_machine_and_extra(
    facts, config, runtime, precision
) -> None:
    plan = resolve(Config(**config), facts)
    assert (plan.runtime, plan.precision) == (runtime, precision)
    suffix = ", openvino" if runtime == "openvino" else ""
    assert plan.describe() == f"{plan.device}, {precision}{suffix}"


@pytest.mark.parametrize(
    ("facts", "config", "message"),
    [
        (AVX2, {"runtime": "openvino"}, HINT),
        (
            GPU_OV,
            {"runtime": "openvino"},
            "--runtime openvino runs on the CPU, not on cuda (use --device cpu, or --runtime auto)",
        ),
        (
            AVX2_OV,
            {"runtime": "openvino", "precision": "bf16"},
            "--runtime openvino runs bf16 only on a CPU with native bf16; this CPU has none "
            "(use --precision fp32, or --runtime torch)",
        ),
        (
            AVX2_OV,
            {"runtime": "openvino", "model": "101", "quantized": True},
            "--runtime openvino runs INT8 from a file made by 'resnext quantize --runtime "
            "openvino' (give it with --checkpoint FILE --quantized, or use --runtime torch)",
        ),
    ],
)
def test_an_impossible_runtime_is_one_clear_line(facts, config, message) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(Config(**config), facts)
    assert str(info.value) == message


def test_exact_through_openvino_and_unknown_runtimes_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        resolve(Config(exact=True, runtime="openvino"), AVX2_OV)
    assert str(info.value) == (
        "--exact is the torch fp32 reference; drop --runtime openvino or --exact"
    )
    with pytest.raises(ConfigError) as info:
        Config(runtime="onnx")
    assert str(info.value) == "unknown runtime 'onnx' (choose from: auto, torch, openvino)"


def test_missing_extra_is_a_one_line_hint_exit_2(resnext, checkpoint, make_image) -> None:
    # conftest's probe says the extra is absent (unless RESNEXT_TEST_RUNTIME=openvino).
    if os.environ.get("RESNEXT_TEST_RUNTIME") == "openvino":
        pytest.skip("the extra is installed and not hidden")
    photo = make_image("a.jpg")
    run = resnext("classify", photo, "--checkpoint", checkpoint, "--runtime", "openvino")
    assert (run.code, run.stdout, run.stderr) == (2, "", f"error: {HINT}\n"), run


def test_runtime_env_is_the_default_and_the_option_wins(
    resnext, checkpoint, make_image, monkeypatch
) -> None:
    monkeypatch.setenv("RESNEXT_RUNTIME", "openvino")
    monkeypatch.setattr(
        MachineFacts, "probe", classmethod(lambda cls, device="auto": AVX2)
    )  # no extra
    photo = make_image("a.jpg")
    run = resnext("classify", photo, "--checkpoint", checkpoint)
    assert (run.code, run.stderr) == (2, f"error: {HINT}\n"), run
    run = resnext("classify", photo, "--checkpoint", checkpoint, "--runtime", "torch")
    assert run.code == 0, run
    assert [r["runtime"] for r in run.records()] == ["torch"]


def test_the_module_says_the_same_when_openvino_cannot_be_imported(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ConfigError) as info:
        ovr.version()
    assert str(info.value) == HINT


# -- conversion and the cache -----------------------------------------------------------------


def _key(checkpoint: Path) -> ovr.CacheKey:
    return ovr.CacheKey("resnext50_32x4d", ovr.file_identity(checkpoint), True, 224)


def _torch_net(checkpoint: Path) -> torch.nn.Module:
    plan = resolve(Config(checkpoint=str(checkpoint), runtime="torch"), AVX2)
    return network.load_model(plan).net


@pytest.fixture(scope="session")
def converted(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test checkpoint's cache entry, converted once per session."""
    if not ovr.available():
        pytest.skip("the openvino extra is not installed")
    folder = tmp_path_factory.mktemp("ov_cache")
    _bundle, cached = ovr.cached_bundle(
        _key(checkpoint), folder, lambda: _torch_net(checkpoint), name=str(checkpoint)
    )
    assert not cached
    return folder / _key(checkpoint).file_name()


@pytest.fixture
def warm(converted: Path) -> Path:
    """This test's cache folder, holding a copy of the session's entry."""
    folder = ovr.cache_dir(checkpoints_dir())
    folder.mkdir(parents=True)
    shutil.copy(converted, folder / converted.name)
    return folder / converted.name


@pytest.fixture
def conversions(monkeypatch, converted) -> list[int]:
    """Fake conversion: count the calls, hand back the session's converted bundle."""
    calls: list[int] = []
    bundle = ovr.read_bundle(converted, name="session")

    def convert(net, *, crop, manifest):
        calls.append(1)
        return dataclasses.replace(bundle, manifest={"format": ovr.FORMAT, **manifest})

    monkeypatch.setattr(ovr, "convert", convert)
    return calls


def _ov_classifier(checkpoint: Path, **options) -> Classifier:
    return Classifier(checkpoint=str(checkpoint), runtime="openvino", facts=AVX2_OV, **options)


@needs_openvino
def test_a_bundle_is_recognised_by_its_first_bytes(converted, checkpoint, tmp_path) -> None:
    assert ovr.is_bundle(converted)
    assert not ovr.is_bundle(checkpoint)  # torch.save's zip starts with another member
    assert not ovr.is_bundle(tmp_path / "missing.zip")


@needs_openvino
def test_the_cache_is_hit_without_converting(warm, checkpoint, conversions) -> None:
    clf = _ov_classifier(checkpoint)
    assert conversions == [] and clf.runtime == "openvino"
    assert clf.loaded.openvino is not None
    assert clf.loaded.openvino.bundle.manifest["openvino"] == ovr.version()


@needs_openvino
def test_a_changed_checkpoint_is_converted_again_and_the_old_entry_goes(
    warm, checkpoint, conversions, tmp_path
) -> None:
    changed = tmp_path / "ck.pth"
    shutil.copy(checkpoint, changed)
    os.utime(changed, ns=(1, 1))
    _ov_classifier(changed)
    first = warm.with_name(_key(changed).file_name())
    assert conversions == [1] and first.is_file()
    _ov_classifier(changed)
    assert conversions == [1]  # hit
    # An entry copied under another file's key says whose it is: not used for this one.
    first.unlink()
    shutil.copy(warm, first)
    _ov_classifier(changed)
    assert conversions == [1, 1]
    os.utime(changed, ns=(2, 2))  # the same file, written again: the entry is stale
    _ov_classifier(changed)
    assert conversions == [1, 1, 1]
    entries = sorted(p.name for p in warm.parent.iterdir())
    assert entries == sorted([warm.name, _key(changed).file_name()])


@needs_openvino
def test_a_corrupt_entry_is_rebuilt(warm, checkpoint, conversions) -> None:
    data = bytearray(warm.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\0" * 4096
    warm.unlink()
    warm.write_bytes(bytes(data[: len(data) - 1000]))  # damaged and cut short
    clf = _ov_classifier(checkpoint)
    assert conversions == [1]
    assert ovr.read_bundle(warm, name="again").classes == 1000
    assert clf.loaded.openvino is not None


@needs_openvino
def test_an_entry_from_another_openvino_is_rebuilt(
    warm, checkpoint, conversions, monkeypatch
) -> None:
    real = ovr.version()
    monkeypatch.setattr(ovr, "version", lambda: real + "-next")
    _ov_classifier(checkpoint)
    assert conversions == [1]  # another key: converted, and the old version's entry pruned
    assert [p.name for p in warm.parent.iterdir()] == [_key(checkpoint).file_name()]


@needs_openvino
def test_a_killed_conversion_leaves_nothing_half_written(
    checkpoint, conversions, monkeypatch, converted
) -> None:
    folder = ovr.cache_dir(checkpoints_dir())
    real_save = ovr._ov().save_model

    def killed(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # the model is half on its way into the zip

    monkeypatch.setattr(ovr._ov(), "save_model", killed)
    with pytest.raises(KeyboardInterrupt):
        _ov_classifier(checkpoint)
    assert list(folder.iterdir()) == []  # no entry, no temporary file, no IR folder
    monkeypatch.setattr(ovr._ov(), "save_model", real_save)
    # What SIGKILL leaves (a temporary file) is never read, and cleared once it is old.
    old, fresh = folder / ".x.zip.1.partial", folder / ".x.zip.2.partial"
    old.write_bytes(b"PK")
    fresh.write_bytes(b"PK")
    hours_ago = time.time() - 2 * ovr.STALE_PARTIAL_SECONDS
    os.utime(old, (hours_ago, hours_ago))
    _ov_classifier(checkpoint)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [fresh.name, _key(checkpoint).file_name()]
    )


@needs_openvino
def test_concurrent_writers_leave_one_whole_entry(converted, tmp_path) -> None:
    bundle = ovr.read_bundle(converted, name="session")
    dest = tmp_path / "cache" / "entry.zip"
    errors: list[BaseException] = []

    def write() -> None:
        try:
            ovr.write_bundle(dest, bundle)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in dest.parent.iterdir()] == ["entry.zip"]
    again = ovr.read_bundle(dest, name="entry")
    assert (again.weight == bundle.weight).all() and (again.bias == bundle.bias).all()


@needs_openvino
def test_a_concurrent_first_run_reads_what_the_other_wrote(
    checkpoint, converted, monkeypatch
) -> None:
    # Another process publishes the entry while this one converts: both end whole.
    folder = ovr.cache_dir(checkpoints_dir())
    entry = folder / _key(checkpoint).file_name()

    def other_process_first():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(converted, entry)
        return _torch_net(checkpoint)

    bundle, cached = ovr.cached_bundle(_key(checkpoint), folder, other_process_first, name="x")
    assert not cached
    assert [p.name for p in folder.iterdir()] == [entry.name]
    assert ovr.read_bundle(entry, name="x").classes == bundle.classes == 1000


# -- answers ----------------------------------------------------------------------------------


@pytest.fixture
def photos(make_image) -> list[Path]:
    return [make_image(f"{i}.jpg", seed=i, size=(300 + 20 * i, 240), quality=90) for i in range(5)]


def _all_probabilities(clf: Classifier, paths: list[Path]) -> torch.Tensor:
    crops = [pipeline.prepare(s, clf.plan, clf.loaded.transform) for s in _sources(paths)]
    assert all(isinstance(c, torch.Tensor) for c in crops)
    return pipeline.probabilities(clf.loaded, torch.stack(crops), "fp32")  # type: ignore[arg-type]


def _sources(paths: list[Path]):
    from resnext_cli.inputs.sources import iter_sources

    return list(iter_sources([str(p) for p in paths]))


@needs_openvino
def test_fp32_through_openvino_gives_torchs_answers(warm, checkpoint, photos) -> None:
    ov = _ov_classifier(checkpoint)
    reference = Classifier(checkpoint=str(checkpoint), runtime="torch", facts=AVX2_OV)
    assert (ov.plan.runtime, reference.plan.runtime) == ("openvino", "torch")
    got, want = _all_probabilities(ov, photos), _all_probabilities(reference, photos)
    assert float((got - want).abs().max()) < 1e-4
    assert (got.sum(dim=1) - 1).abs().max() < 1e-5
    for g, w in zip(got, want, strict=True):
        assert pipeline.topk(g, 5)[1] == pipeline.topk(w, 5)[1]
    # The predictions differ between photos, so agreeing means something.
    assert len({int(w.argmax()) for w in want}) >= 3
    # Through the engine, batched over parallel requests and one by one.
    batched = list(ov.classify([str(p) for p in photos]))
    single = list(_ov_classifier(checkpoint, batch_size=1, workers=0).classify(map(str, photos)))
    for records in (batched, single):
        assert all(isinstance(r, Classified) for r in records)
        for r, w in zip(records, want, strict=True):
            assert [p.index for p in r.predictions] == pipeline.topk(w, 5)[1]
            assert r.runtime == "openvino" and r.precision == "fp32"
            for p in r.predictions:
                assert p.probability == pytest.approx(float(w[p.index]), abs=1e-4)


@needs_openvino
def test_fp32_sets_openvinos_inference_precision_explicitly(warm, checkpoint) -> None:
    import openvino as ov

    network = _ov_classifier(checkpoint).loaded.openvino
    assert network is not None
    for mode in ("LATENCY", "THROUGHPUT"):
        compiled = network.compiled("fp32", mode)
        assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
        assert str(compiled.get_property("PERFORMANCE_HINT")) == mode
    assert network.config("bf16", "THROUGHPUT")["INFERENCE_PRECISION_HINT"] == "bf16"


@needs_openvino
def test_int8s_unquantized_layers_run_in_float32_on_every_cpu(warm, checkpoint) -> None:
    import openvino as ov

    network = _ov_classifier(checkpoint).loaded.openvino
    assert network is not None
    int8 = ovr.Network(network.bundle, int8=True)
    for precision in ("int8", "bf16", "fp32"):  # whatever it is asked, INT8 is INT8 + f32
        compiled = int8.compiled(precision, "LATENCY")
        assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32


@needs_openvino
def test_the_head_and_softmax_are_float32_and_ties_go_by_class_index(warm, checkpoint) -> None:
    network = _ov_classifier(checkpoint).loaded.openvino
    assert network is not None
    assert network.bundle.weight.dtype.name == "float32"
    logits = torch.tensor([[2.0, 5.0, 5.0, 1.0, 5.0]])
    probs = torch.from_numpy(ovr.softmax(logits.numpy()))
    assert torch.allclose(probs, torch.softmax(logits, dim=1), atol=1e-7)
    assert pipeline.topk(probs[0], 4)[1] == [1, 2, 4, 0]


@needs_openvino
def test_non_finite_bf16_is_retried_in_fp32_then_fails(
    warm, checkpoint, photos, monkeypatch
) -> None:
    clf = Classifier(checkpoint=str(checkpoint), facts=BF16_OV)
    assert (clf.plan.runtime, clf.plan.precision) == ("openvino", "bf16")
    network = clf.loaded.openvino
    assert network is not None
    real = type(network).probabilities
    seen: list[str] = []

    def overflowing(self, x, precision):
        seen.append(precision)
        out = real(self, x, "fp32")  # this CPU may lack bf16: the retry is what is tested
        return out * math.nan if precision == "bf16" else out

    monkeypatch.setattr(type(network), "probabilities", overflowing)
    records = list(clf.classify([str(p) for p in photos[:2]]))
    assert seen == ["bf16", "fp32"]
    assert [r.precision for r in records if isinstance(r, Classified)] == ["fp32", "fp32"]
    monkeypatch.setattr(
        type(network), "probabilities", lambda self, x, p: real(self, x, p) * math.nan
    )
    records = list(clf.classify([str(photos[0])]))
    assert [r.to_dict()["error"]["type"] for r in records] == ["inference_failed"]


# -- the command line -------------------------------------------------------------------------


@pytest.fixture
def with_extra(monkeypatch) -> None:
    monkeypatch.setattr(MachineFacts, "probe", classmethod(lambda cls, device="auto": AVX2_OV))
    monkeypatch.delenv("RESNEXT_RUNTIME", raising=False)  # conftest's torch default


@needs_openvino
def test_records_caption_and_summary_name_the_runtime(
    warm, with_extra, resnext, checkpoint, photos
) -> None:
    run = resnext("classify", *photos[:2], "--checkpoint", checkpoint, "-f", "jsonl")
    assert run.code == 0, run
    records = run.records()
    assert [(r["runtime"], r["precision"]) for r in records] == [("openvino", "fp32")] * 2
    assert "on cpu, fp32, openvino" in run.stderr
    table = resnext("classify", photos[0], "--checkpoint", checkpoint, "-f", "table")
    assert f"resnext50_32x4d ({checkpoint}) on cpu, fp32, openvino" in " ".join(
        table.stdout.split()
    )


@needs_openvino
def test_exact_never_runs_openvino(with_extra, resnext, checkpoint, photos, conversions) -> None:
    run = resnext("classify", photos[0], "--checkpoint", checkpoint, "--exact", "-f", "jsonl")
    assert run.code == 0, run
    assert [(r["runtime"], r["precision"]) for r in run.records()] == [("torch", "fp32")]
    assert conversions == []
    run = resnext(
        "classify", photos[0], "--checkpoint", checkpoint, "--exact", "--runtime", "openvino"
    )
    assert (run.code, run.stderr) == (
        2,
        "error: --exact is the torch fp32 reference; drop --runtime openvino or --exact\n",
    )


# -- INT8 through OpenVINO --------------------------------------------------------------------


@needs_openvino
def test_int8_calibration_round_trip(with_extra, resnext, checkpoint, photos, conversions) -> None:
    import re

    out = photos[0].parent / "int8" / "model.ov"
    out.parent.mkdir()
    args = ["quantize", "--checkpoint", checkpoint, "--runtime", "openvino", "-o", out]
    run = resnext(*args, "--calibrate", photos[0].parent, "--force")
    assert run.code == 0, run
    assert run.stdout == f"{out}\n"  # NNCF's own progress bar kept off stdout
    said = re.search(r"INT8 agrees with the float model on ([\d.]+)% of the 5 photos", run.stderr)
    assert said, run
    bundle = ovr.read_bundle(out, name="int8")
    assert (bundle.manifest["kind"], bundle.manifest["model"]) == ("int8", "resnext50_32x4d")
    assert any(op.get_type_name() == "FakeQuantize" for op in bundle.model.get_ops())
    classified = resnext("classify", *photos, "--checkpoint", out, "--quantized", "-f", "jsonl")
    assert classified.code == 0, classified
    records = classified.records()
    assert {(r["precision"], r["runtime"]) for r in records} == {("int8", "openvino")}
    # The agreement it reported is the agreement classify shows against torch in fp32.
    reference = Classifier(checkpoint=str(checkpoint), runtime="torch", facts=AVX2_OV)
    want = [r.top1.index for r in reference.classify(map(str, photos))]  # type: ignore[union-attr]
    got = [r["predictions"][0]["index"] for r in records]
    same = sum(a == b for a, b in zip(got, want, strict=True)) / len(photos)
    assert float(said.group(1)) == pytest.approx(100 * same, abs=0.05)
    # An OpenVINO INT8 file is not a torch checkpoint, and says what to do.
    run = resnext("classify", photos[0], "--checkpoint", out)
    assert (run.code, run.stderr) == (
        2,
        f"error: checkpoint '{out}' holds OpenVINO INT8 weights (add --quantized)\n",
    )


@needs_openvino
def test_int8_is_published_the_one_way_onto_what_was_claimed(
    with_extra, resnext, checkpoint, photos, conversions, monkeypatch, device_node
) -> None:
    """quantize --runtime openvino -o writes as every output does (files.py): a device is
    written into, never replaced by a file, and a file that appeared at -o while
    calibrating is not replaced without --force."""
    appear: list[Path] = []

    def calibrated(bundle: Any, batches: Any, manifest: Any) -> Any:
        for path in appear:  # another program creates -o meanwhile
            path.write_bytes(b"theirs")
        return dataclasses.replace(bundle, manifest=manifest)  # the float body, as INT8

    monkeypatch.setattr(ovr, "quantize_int8", calibrated)
    calibrate = (
        "--calibrate",
        photos[0].parent,
        "--checkpoint",
        checkpoint,
        "--runtime",
        "openvino",
    )
    zero = device_node("zero", "int8.ov")
    run = resnext("quantize", *calibrate, "-o", zero, "--force")
    assert (run.code, run.stdout) == (0, f"{zero}\n"), run
    assert stat.S_ISCHR(os.lstat(zero).st_mode)  # written into: still the device
    late = photos[0].parent / "late.ov"
    appear.append(late)
    run = resnext("quantize", *calibrate, "-o", late)
    assert (run.code, run.stdout) == (2, ""), run
    assert run.stderr.splitlines()[-1] == (
        f"error: '{late}' appeared while this run was writing it: not replaced (use --force "
        "to replace it, or give another name)"
    )
    assert late.read_bytes() == b"theirs"
    assert not [p.name for p in late.parent.iterdir() if p.name.startswith(".resnext")]


@needs_openvino
def test_int8_that_disagrees_is_not_saved_without_force(
    with_extra, resnext, checkpoint, photos, conversions, monkeypatch
) -> None:
    from resnext_cli.run import quantize

    monkeypatch.setattr(quantize, "USABLE_AGREEMENT", 1.01)  # nothing can agree enough
    monkeypatch.setattr(
        ovr,
        "quantize_int8",
        lambda bundle, batches, manifest: dataclasses.replace(bundle, manifest=manifest),
    )
    out = photos[0].parent / "int8.ov"
    args = ["quantize", "--checkpoint", checkpoint, "--runtime", "openvino", "-o", out]
    run = resnext(*args, "--calibrate", photos[0].parent)
    assert (run.code, run.stdout) == (1, ""), run
    assert run.stderr.splitlines()[-1] == (
        "error: INT8 agrees with the float model on 100.0% of the 5 photos' top-1 (top-5 "
        "sets: 100.0%; largest probability change 0.000): below 101%, so "
        f"'{out}' was not saved (calibrate with more photos like the ones you will "
        "classify, or save it anyway with --force)"
    )
    assert not out.exists()


def test_sniffing_a_checkpoint_never_blocks_on_a_fifo(tmp_path) -> None:
    fifo = tmp_path / "ck.pth"
    os.mkfifo(fifo)
    assert not ovr.is_bundle(fifo)  # returns at once: nothing writes into the FIFO
    plain = tmp_path / "plain.zip"
    plain.write_bytes(b"PK\x03\x04" + b"\0" * 26 + ovr.MANIFEST.encode())
    assert ovr.is_bundle(plain)
    assert not ovr.is_bundle(tmp_path)


@needs_openvino
def test_the_python_api_still_hands_out_the_torch_network(warm, checkpoint) -> None:
    clf = _ov_classifier(checkpoint)
    assert clf.loaded._net is None  # not built to run OpenVINO
    network = clf.loaded.openvino
    assert network is not None
    fc = clf.model.fc  # built on demand from the same weights
    assert isinstance(fc, torch.nn.Linear)
    assert torch.equal(fc.weight.detach(), torch.from_numpy(network.bundle.weight))
    assert torch.equal(torch.load(checkpoint)["fc.bias"], torch.from_numpy(network.bundle.bias))


@needs_openvino
def test_features_and_embeddings_run_through_openvino_not_a_torch_network(
    warm, checkpoint, photos
) -> None:
    ov = _ov_classifier(checkpoint)
    got = ov.features([str(p) for p in photos])
    records = list(_ov_classifier(checkpoint, embeddings=True).classify(map(str, photos)))
    assert ov.loaded._net is None  # OpenVINO computed them: no torch network was built
    # The reference: torchvision's network up to the pooled output, on the same crops.
    net = _torch_net(checkpoint)
    crops = torch.stack(
        [pipeline.prepare(s, ov.plan, ov.loaded.transform) for s in _sources(photos)]
    )  # type: ignore[misc]
    mean = torch.tensor(ov.loaded.transform.mean).view(-1, 1, 1)
    std = torch.tensor(ov.loaded.transform.std).view(-1, 1, 1)
    with torch.inference_mode():
        body = torch.nn.Sequential(*list(net.children())[:-1])
        want = torch.flatten(body((crops.float() / 255 - mean) / std), 1)
    assert got.shape == (len(photos), 2048)
    assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())
    for r, w in zip(records, want, strict=True):
        assert isinstance(r, Classified) and r.embedding is not None
        assert float((torch.tensor(r.embedding) - w).abs().max()) < 1e-4 * float(w.abs().max())
        with torch.inference_mode():
            logits = net.fc(w)
        assert [p.index for p in r.predictions] == pipeline.topk(torch.softmax(logits, 0), 5)[1]
