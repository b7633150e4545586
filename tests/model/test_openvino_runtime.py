"""The OpenVINO runtime: the plan's choice, conversion, the cache, parity with torch, records.

The plan's tests fake the machine and the extra both ways and need no OpenVINO; the rest
are skipped where the extra is not installed. The test checkpoint is converted once per
session (seconds); each test gets a copy of that cache entry, or fakes the conversion.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import shutil
import stat
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from resnext_cli.errors import CheckpointError, ConfigError
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


# -- fast unit tests, one function at a time (a tiny OpenVINO model, no resnext50) -----------

MANIFEST_NAME = "resnext-openvino.json"
REMAKE = "(make it again with 'resnext quantize --runtime openvino')"
# The tiny body: a 1x1 convolution (3 -> 2 channels) then the mean over H and W.
CONV = (np.arange(6, dtype=np.float32).reshape(2, 3) / np.float32(7)).astype(np.float32)
HEAD_W = np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]], dtype=np.float32)
HEAD_B = np.array([0.1, -0.2, 0.3], dtype=np.float32)


def _tiny_model(out: str = "f32", scale: float | None = None) -> Any:
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter(ov.PartialShape([-1, 3, 4, 4]), ov.Type.f32)
    conv = ops.convolution(
        x, ops.constant(CONV.reshape(2, 3, 1, 1)), [1, 1], [0, 0], [0, 0], [1, 1]
    )
    pooled = ops.reduce_mean(conv, ops.constant(np.array([2, 3], dtype=np.int64)), False)
    if scale is not None:  # one more float32 constant: 4 bytes more weights
        pooled = ops.multiply(pooled, ops.constant(np.float32(scale)))
    if out != "f32":
        pooled = ops.convert(pooled, out)
    return ov.Model([pooled], [x], "tiny")


def _tiny_features(x: np.ndarray) -> np.ndarray:
    """What the tiny body computes, in float64 numpy."""
    return x.astype(np.float64).mean(axis=(2, 3)) @ CONV.astype(np.float64).T


def _np_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _tiny_bundle(**manifest: Any) -> ovr.Bundle:
    return ovr.Bundle(_tiny_model(), HEAD_W, HEAD_B, {"format": 1, "model": "tiny", **manifest})


def _crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 4, 4)).astype(np.float32)


def _run(model: Any, x: np.ndarray) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(x)[0])


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _npy_bytes(array: np.ndarray, *, pickle: bool = False) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=pickle)
    return out.getvalue()


def _fields(model: str, source: str, fold: bool, crop: int) -> dict[str, Any]:
    import openvino as ov

    return {
        "format": 1,
        "model": model,
        "source": source,
        "fold_batchnorm": fold,
        "crop": crop,
        "openvino": ov.get_version(),
    }


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _entry_name(model: str, source: str, fold: bool, crop: int) -> str:
    """'<model>-<source hash>-<key hash>.zip', written out from the documented format."""
    digest = _sha(json.dumps(_fields(model, source, fold, crop), sort_keys=True))
    path = source.removeprefix("file:").rsplit(":", 2)[0]
    return f"{model}-{_sha('file:' + path)[:12]}-{digest[:16]}.zip"


def test_available_asks_for_the_openvino_package_without_importing_it(monkeypatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(ovr, "find_spec", lambda name: asked.append(name))
    assert ovr.available() is False
    monkeypatch.setattr(ovr, "find_spec", lambda name: asked.append(name) or object())
    assert ovr.available() is True
    assert asked == ["openvino", "openvino"]


@needs_openvino
def test_ov_and_version_are_the_installed_openvinos() -> None:
    import openvino

    assert ovr._ov() is openvino
    assert ovr.version() == str(openvino.get_version())
    assert isinstance(ovr.version(), str)


def test_is_bundle_reads_the_zip_magic_and_the_first_members_name(tmp_path) -> None:
    def file(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    name = MANIFEST_NAME.encode()
    assert ovr.is_bundle(file("exact", b"PK\x03\x04" + b"\0" * 26 + name))
    assert ovr.is_bundle(str(file("longer", b"PK\x03\x04" + b"\1" * 26 + name + b"more")))
    assert not ovr.is_bundle(file("magic", b"PK\x03\x05" + b"\0" * 26 + name))
    assert not ovr.is_bundle(file("shifted", b"PK\x03\x04" + b"\0" * 27 + name))
    assert not ovr.is_bundle(file("early", b"PK\x03\x04" + b"\0" * 25 + name + b"x"))
    assert not ovr.is_bundle(file("short", b"PK\x03\x04" + b"\0" * 26 + name[:-1]))
    assert not ovr.is_bundle(file("other", b"PK\x03\x04" + b"\0" * 26 + b"model.xml" + b"x" * 12))
    assert not ovr.is_bundle(file("empty", b""))
    assert not ovr.is_bundle(tmp_path / "missing")
    assert not ovr.is_bundle("nul\0in the name")  # ValueError, not a crash
    assert not ovr.is_bundle(tmp_path)  # a folder opens, but is not a regular file
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "exact")
    assert ovr.is_bundle(link)


def test_is_bundle_closes_what_it_opened_and_a_read_error_is_no(tmp_path, monkeypatch) -> None:
    path = tmp_path / "b.ov"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 26 + MANIFEST_NAME.encode())
    opened: list[int] = []

    class Os:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def open(*args: Any) -> int:
            opened.append(os.open(*args))
            return opened[-1]

    def closed(fd: int) -> bool:
        try:
            os.fstat(fd)
        except OSError:
            return True
        return False

    fake = Os()
    monkeypatch.setattr(ovr, "os", fake)
    assert ovr.is_bundle(path)
    assert ovr.is_bundle(tmp_path) is False
    assert len(opened) == 2 and all(closed(fd) for fd in opened)

    def boom(fd: int, n: int) -> bytes:
        raise OSError(5, "read error")

    fake.read = boom  # type: ignore[attr-defined]
    assert ovr.is_bundle(path) is False
    assert len(opened) == 3 and closed(opened[-1])


def test_npy_is_a_numpy_file_without_pickles() -> None:
    a = np.array([[1.5, -2.0], [3.25, 4.0]], dtype=np.float32)
    data = ovr._npy(a)
    assert data.startswith(b"\x93NUMPY")
    back = np.load(io.BytesIO(data), allow_pickle=False)
    assert back.dtype == np.float32 and back.tolist() == [[1.5, -2.0], [3.25, 4.0]]
    with pytest.raises(ValueError):
        ovr._npy(np.array([{"a": 1}], dtype=object))


@needs_openvino
def test_a_bundle_is_a_zip_of_manifest_ir_and_float32_head(tmp_path) -> None:
    dest = tmp_path / "a" / "b" / "entry.zip"  # folders made as needed
    bundle = _tiny_bundle(zeta=[1, 2], alpha="x")
    ovr.write_bundle(dest, bundle)
    assert [p.name for p in dest.parent.iterdir()] == ["entry.zip"]
    members = _members(dest)
    assert list(members) == [
        MANIFEST_NAME,
        "model.xml",
        "model.bin",
        "head_weight.npy",
        "head_bias.npy",
    ]
    assert members[MANIFEST_NAME] == (
        b'{"alpha": "x", "format": 1, "model": "tiny", "zeta": [1, 2]}'
    )
    with zipfile.ZipFile(dest) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    assert members["model.xml"].startswith(b"<?xml")
    assert np.load(io.BytesIO(members["head_weight.npy"])).tolist() == HEAD_W.tolist()
    assert np.load(io.BytesIO(members["head_bias.npy"])).tolist() == HEAD_B.tolist()
    assert ovr.is_bundle(dest)
    # Read back: the same head, manifest and body (weights not rounded to fp16).
    again = ovr.read_bundle(dest, name="entry")
    assert again.manifest == {"alpha": "x", "format": 1, "model": "tiny", "zeta": [1, 2]}
    assert again.weight.dtype == np.float32 and again.weight.tolist() == HEAD_W.tolist()
    assert again.bias.dtype == np.float32 and again.bias.tolist() == HEAD_B.tolist()
    assert again.classes == 3
    consts = [
        op
        for op in again.model.get_ops()
        if op.get_type_name() == "Constant" and list(op.get_output_shape(0)) == [2, 3, 1, 1]
    ]
    assert len(consts) == 1 and consts[0].get_element_type().get_type_name() == "f32"
    assert consts[0].get_data().reshape(2, 3).tolist() == CONV.tolist()
    x = _crops(2)
    assert np.allclose(_run(again.model, x), _tiny_features(x), atol=1e-5)
    # Written again over the old one: still one whole entry.
    ovr.write_bundle(dest, _tiny_bundle(alpha="y"))
    assert [p.name for p in dest.parent.iterdir()] == ["entry.zip"]
    assert ovr.read_manifest(dest) == {"alpha": "y", "format": 1, "model": "tiny"}


@needs_openvino
def test_write_bundle_goes_through_a_hidden_partial_file_and_cleans_up(
    tmp_path, monkeypatch
) -> None:
    dest = tmp_path / "entry.zip"
    seen: list[list[str]] = []
    real = ovr.write_bundle_into

    def watching(raw: Any, bundle: Any) -> None:
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        real(raw, bundle)

    monkeypatch.setattr(ovr, "write_bundle_into", watching)
    ovr.write_bundle(dest, _tiny_bundle())
    assert len(seen) == 1 and len(seen[0]) == 1
    assert seen[0][0].startswith(".entry.zip.") and seen[0][0].endswith(".partial")
    assert [p.name for p in tmp_path.iterdir()] == ["entry.zip"]

    def failing(raw: Any, bundle: Any) -> None:
        raw.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ovr, "write_bundle_into", failing)
    with pytest.raises(KeyboardInterrupt):
        ovr.write_bundle(tmp_path / "other.zip", _tiny_bundle())
    assert [p.name for p in tmp_path.iterdir()] == ["entry.zip"]


@needs_openvino
def test_write_bundle_into_saves_the_ir_uncompressed_in_a_private_folder(
    tmp_path, monkeypatch
) -> None:
    import openvino

    saved: list[tuple[str, dict[str, Any]]] = []
    real = openvino.save_model

    def save(model: Any, path: str, **kwargs: Any) -> None:
        saved.append((path, kwargs))
        real(model, path, **kwargs)

    monkeypatch.setattr(openvino, "save_model", save)
    with open(tmp_path / "out.ov", "wb") as raw:
        ovr.write_bundle_into(raw, _tiny_bundle())
    assert len(saved) == 1
    path, kwargs = saved[0]
    assert kwargs == {"compress_to_fp16": False}
    ir = Path(path)
    assert ir.name == "model.xml" and ir.parent.name.startswith("resnext-ir-")
    assert ir.parent.parent != tmp_path and not ir.parent.exists()  # removed after
    assert [p.name for p in tmp_path.iterdir()] == ["out.ov"]
    assert ovr.read_bundle(tmp_path / "out.ov", name="out").manifest == {
        "format": 1,
        "model": "tiny",
    }


@needs_openvino
def test_read_bundle_takes_ir_weights_of_any_length(tmp_path) -> None:
    dest = tmp_path / "odd.zip"
    ovr.write_bundle(dest, ovr.Bundle(_tiny_model(scale=2.0), HEAD_W, HEAD_B, {"format": 1}))
    assert len(_members(dest)["model.bin"]) % 8 == 4  # not a whole number of float64s
    bundle = ovr.read_bundle(dest, name="odd")
    x = _crops(2, seed=15)
    assert np.allclose(_run(bundle.model, x), 2 * _tiny_features(x), atol=1e-5)


@pytest.fixture
def good_members(tmp_path) -> dict[str, bytes]:
    if not ovr.available():
        pytest.skip("the openvino extra is not installed")
    ovr.write_bundle(tmp_path / "good.zip", _tiny_bundle())
    return _members(tmp_path / "good.zip")


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        pytest.param({MANIFEST_NAME: None}, "KeyError", id="no-manifest"),
        pytest.param({"model.xml": None}, "KeyError", id="no-xml"),
        pytest.param({"model.bin": None}, "KeyError", id="no-bin"),
        pytest.param({"head_weight.npy": None}, "KeyError", id="no-weight"),
        pytest.param({"head_bias.npy": None}, "KeyError", id="no-bias"),
        pytest.param({MANIFEST_NAME: b"{"}, "JSONDecodeError", id="bad-json"),
        pytest.param(
            {"head_weight.npy": _npy_bytes(np.array([{}], dtype=object), pickle=True)},
            "ValueError",
            id="pickled-weight",
        ),
        pytest.param(
            {"head_bias.npy": _npy_bytes(np.array([{}], dtype=object), pickle=True)},
            "ValueError",
            id="pickled-bias",
        ),
        pytest.param({"model.xml": b"<net>"}, "RuntimeError", id="bad-xml"),
        pytest.param({"model.bin": b""}, "RuntimeError", id="no-weights"),
    ],
)
def test_an_unreadable_bundle_is_one_line_naming_the_error(
    tmp_path, good_members, change, kind
) -> None:
    members = {**good_members, **change}
    path = _zip(tmp_path / "bad.zip", {k: v for k, v in members.items() if v is not None})
    with pytest.raises(CheckpointError) as info:
        ovr.read_bundle(path, name="my.ov")
    assert str(info.value) == f"cannot read OpenVINO file 'my.ov': {kind} {REMAKE}"


def test_not_a_zip_is_unreadable(tmp_path) -> None:
    if not ovr.available():
        pytest.skip("the openvino extra is not installed")
    path = tmp_path / "x.ov"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError) as info:
        ovr.read_bundle(path, name="x.ov")
    assert str(info.value) == f"cannot read OpenVINO file 'x.ov': BadZipFile {REMAKE}"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({MANIFEST_NAME: b"[]"}, id="manifest-list"),
        pytest.param({MANIFEST_NAME: b'{"format": 2}'}, id="format-2"),
        pytest.param({MANIFEST_NAME: b'{"model": "tiny"}'}, id="no-format"),
        pytest.param({"head_weight.npy": _npy_bytes(HEAD_W.astype(np.float64))}, id="w64"),
        pytest.param({"head_bias.npy": _npy_bytes(HEAD_B.astype(np.float64))}, id="b64"),
        pytest.param({"head_weight.npy": _npy_bytes(HEAD_B)}, id="weight-1d"),
        pytest.param({"head_weight.npy": _npy_bytes(HEAD_W[:, :, None])}, id="weight-3d"),
        pytest.param({"head_bias.npy": _npy_bytes(HEAD_B[:2])}, id="bias-short"),
        pytest.param({"head_bias.npy": _npy_bytes(HEAD_W[:, :1])}, id="bias-2d"),
    ],
)
def test_a_bundle_from_another_version_is_damaged(tmp_path, good_members, change) -> None:
    path = _zip(tmp_path / "odd.zip", {**good_members, **change})
    with pytest.raises(CheckpointError) as info:
        ovr.read_bundle(path, name="odd.ov")
    assert str(info.value) == f"OpenVINO file 'odd.ov' is damaged or from another version {REMAKE}"


def test_the_good_members_read_back(tmp_path, good_members) -> None:
    path = _zip(tmp_path / "same.zip", good_members)
    bundle = ovr.read_bundle(path, name="same")
    assert bundle.manifest == {"format": 1, "model": "tiny"}
    assert bundle.bias.shape == (3,) and bundle.weight.shape == (3, 2)


class _Spy(torch.nn.Module):
    """A layer that records the shapes it is run on (and that torch.jit.script refuses:
    its forward takes *args), so that a conversion that scripts instead of tracing fails."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[int, ...]] = []

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(int(d) for d in xs[0].shape))
        return self.inner(xs[0])


class _TinyResNet(torch.nn.Module):
    """torchvision's ResNet attributes, each a small layer of its own."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(4)
        self.relu = torch.nn.ReLU()
        self.maxpool = torch.nn.MaxPool2d(2)
        self.layer1 = torch.nn.Conv2d(4, 4, 1)
        self.layer2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.layer3 = torch.nn.Conv2d(4, 4, 1)
        self.layer4 = torch.nn.Conv2d(4, 5, 2)
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(5, 3).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
            self.bn1.running_mean.copy_(torch.randn(4, generator=g))
            self.bn1.running_var.copy_(torch.rand(4, generator=g) + 0.5)


@needs_openvino
def test_convert_keeps_the_body_up_to_the_pooled_features_and_the_head() -> None:
    net = _TinyResNet().eval()
    spy = _Spy(net.layer1)
    net.layer1 = spy
    with torch.inference_mode():
        bundle = ovr.convert(net, crop=8, manifest={"model": "tiny"})
    # Traced once on one example crop: the trace is not run again to check it.
    assert spy.seen == [(1, 4, 4, 4)]
    assert bundle.manifest == {"format": 1, "model": "tiny"}
    assert str(bundle.model.input().get_partial_shape()) == "[?,3,8,8]"
    assert bundle.weight.dtype == np.float32 and bundle.bias.dtype == np.float32
    assert torch.equal(torch.from_numpy(bundle.weight), net.fc.weight.detach().float())
    assert torch.equal(torch.from_numpy(bundle.bias), net.fc.bias.detach().float())
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    body = torch.nn.Sequential(*list(net.children())[:-1])  # all but fc, in order
    with torch.inference_mode():
        want = torch.flatten(body(x), 1).numpy()
    got = _run(bundle.model, x.numpy())
    assert got.shape == (3, 5)
    assert np.allclose(got, want, atol=1e-4)
    assert net.training is False and net.fc.weight.dtype == torch.float64


def _fake_nncf(monkeypatch, calls: list[dict[str, Any]]) -> None:
    import types

    def quantize(model: Any, dataset: Any, **kwargs: Any) -> Any:
        sys.stdout.write("a progress bar\n")  # on stdout: NNCF's own
        warnings.warn("chatty", UserWarning, stacklevel=1)
        calls.append({"model": model, "items": list(dataset.items), **kwargs})
        return "quantized"

    fake = types.SimpleNamespace(
        quantize=quantize,
        Dataset=lambda items: types.SimpleNamespace(items=items),
        QuantizationPreset=types.SimpleNamespace(PERFORMANCE="performance", MIXED="mixed"),
    )
    monkeypatch.setitem(sys.modules, "nncf", fake)


def test_quantize_int8_calibrates_the_body_one_image_at_a_time(monkeypatch, capsys) -> None:
    calls: list[dict[str, Any]] = []
    _fake_nncf(monkeypatch, calls)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.NOTSET)
    batches = [np.arange(2 * 3, dtype=np.float32).reshape(2, 3, 1, 1), np.ones((1, 3, 1, 1))]
    bundle = ovr.Bundle("body", HEAD_W, HEAD_B, {"format": 1, "kind": "float"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ovr.quantize_int8(bundle, batches, manifest={"kind": "int8"})
    assert caught == []
    assert capsys.readouterr().out == ""
    assert logging.getLogger("torch.utils.cpp_extension").level == logging.ERROR
    assert out.model == "quantized" and out.weight is HEAD_W and out.bias is HEAD_B
    assert out.manifest == {"format": 1, "kind": "int8"}
    (call,) = calls
    assert call["model"] == "body"
    assert [i.shape for i in call["items"]] == [(1, 3, 1, 1)] * 3
    assert [i.ravel().tolist() for i in call["items"]] == [[0, 1, 2], [3, 4, 5], [1, 1, 1]]
    assert {k: call[k] for k in ("subset_size", "preset", "model_type")} == {
        "subset_size": 3,
        "preset": "performance",
        "model_type": None,
    }


def test_quantize_int8_without_nncf_is_a_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(ConfigError) as info:
        ovr.quantize_int8(_TinyBundleStub, [], manifest={})  # type: ignore[arg-type]
    assert str(info.value) == (
        "calibrating for OpenVINO needs NNCF (pip install 'resnext-cli[openvino]', "
        "or use --runtime torch)"
    )


_TinyBundleStub = ovr.Bundle(None, HEAD_W, HEAD_B, {})


@needs_openvino
def test_quantize_int8_through_nncf_quantizes_the_tiny_body() -> None:
    pytest.importorskip("nncf")
    batches = [_crops(4, seed=2), _crops(4, seed=3)]
    out = ovr.quantize_int8(_tiny_bundle(), batches, manifest={"kind": "int8"})
    assert "FakeQuantize" in {op.get_type_name() for op in out.model.get_ops()}
    assert out.manifest == {"format": 1, "kind": "int8"}
    x = _crops(2, seed=4)
    assert np.allclose(_run(out.model, x), _tiny_features(x), atol=0.1)


def test_file_identity_is_the_resolved_path_size_and_mtime(tmp_path) -> None:
    target = tmp_path / "real.pth"
    target.write_bytes(b"12345")
    os.utime(target, ns=(1_000_000_123, 2_000_000_456))
    link = tmp_path / "link.pth"
    link.symlink_to(target)
    want = f"file:{os.path.realpath(target)}:5:2000000456"
    assert ovr.file_identity(link) == want
    assert ovr.file_identity(target) == want
    with pytest.raises(FileNotFoundError):
        ovr.file_identity(tmp_path / "missing.pth")


def test_state_identity_hashes_names_dtypes_shapes_and_bytes_in_key_order() -> None:
    import struct

    w = torch.tensor([[1.5]], requires_grad=True)
    b = torch.tensor([[1, 2], [3, 4]], dtype=torch.int16).t()  # not contiguous
    want = hashlib.sha256(
        b"a:torch.float32:(1, 1)"
        + struct.pack("<f", 1.5)
        + b"b:torch.int16:(2, 2)"
        + struct.pack("<4h", 1, 3, 2, 4)
    ).hexdigest()
    assert ovr.state_identity({"b": b, "a": w}) == f"state:{want}"
    assert ovr.state_identity({"a": w, "b": b}) == f"state:{want}"
    assert ovr.state_identity({}) == f"state:{hashlib.sha256().hexdigest()}"


@needs_openvino
def test_cache_key_fields_and_file_name() -> None:
    source = "file:/w/a:b/ck.pth:10:20"
    key = ovr.CacheKey("resnext50_32x4d", source, True, 224)
    assert key.fields() == _fields("resnext50_32x4d", source, True, 224)
    digest = _sha(json.dumps(_fields("resnext50_32x4d", source, True, 224), sort_keys=True))
    name = f"resnext50_32x4d-{_sha('file:/w/a:b/ck.pth')[:12]}-{digest[:16]}.zip"
    assert key.file_name() == name == _entry_name("resnext50_32x4d", source, True, 224)
    # Another crop: another entry of the same source (the same prefix).
    other = ovr.CacheKey("resnext50_32x4d", source, False, 256).file_name()
    assert other != name and other[:-21] == name[:-21]
    state = "state:" + "0123456789abcdef" * 4
    digest = _sha(json.dumps(_fields("m", state, False, 8), sort_keys=True))
    assert ovr.CacheKey("m", state, False, 8).file_name() == f"m-0123456789ab-{digest[:16]}.zip"


def test_source_prefix_hashes_the_path_alone() -> None:
    path_hash = _sha("file:/w/a:b/ck.pth")[:12]
    assert ovr._source_prefix("m", "file:/w/a:b/ck.pth:10:20") == f"m-{path_hash}-"
    assert ovr._source_prefix("m", "file:/w/a:b/ck.pth:11:99") == f"m-{path_hash}-"
    assert ovr._source_prefix("x", "state:fedcba9876543210") == "x-fedcba987654-"


def test_read_manifest_alone_or_none(tmp_path) -> None:
    good = _zip(tmp_path / "good.zip", {MANIFEST_NAME: b'{"a": [1]}'})
    assert ovr.read_manifest(good) == {"a": [1]}
    assert ovr.read_manifest(_zip(tmp_path / "list.zip", {MANIFEST_NAME: b"[1]"})) is None
    assert ovr.read_manifest(_zip(tmp_path / "bad.zip", {MANIFEST_NAME: b"{"})) is None
    assert ovr.read_manifest(_zip(tmp_path / "none.zip", {"model.xml": b"x"})) is None
    (tmp_path / "text").write_text("not a zip")
    assert ovr.read_manifest(tmp_path / "text") is None
    assert ovr.read_manifest(tmp_path / "missing.zip") is None


def test_cached_classes_answers_from_this_very_files_entries(tmp_path) -> None:
    ck = tmp_path / "ck.pth"
    ck.write_bytes(b"weights")
    os.utime(ck, ns=(5, 7_000_000_000))
    source = f"file:{os.path.realpath(ck)}:7:7000000000"
    prefix = f"m-{_sha('file:' + os.path.realpath(ck))[:12]}-"
    folder = tmp_path / "openvino"
    assert ovr.cached_classes(folder, "m", ck) == (False, None)  # no folder
    folder.mkdir()

    def entry(name: str, **manifest: Any) -> None:
        _zip(folder / name, {MANIFEST_NAME: json.dumps(manifest).encode()})

    classes = "checkpoint_classes"
    entry(prefix + "0.zip", source=source)  # converted before names were kept
    entry(prefix + "1.zip", source=source + "1", **{classes: ["old"]})  # another mtime
    entry(prefix + "2.zip", source=source, **{classes: []})
    entry(prefix + "3.zip", source=source, **{classes: ["a", 3]})
    entry(prefix + "4.zip", source=source, **{classes: "ab"})
    (folder / (prefix + "5.zip")).write_bytes(b"damaged")
    entry(prefix + "6.json", source=source, **{classes: ["json"]})
    entry("n" + prefix[1:] + "7.zip", source=source, **{classes: ["other model"]})
    assert ovr.cached_classes(folder, "m", ck) == (False, None)
    entry(prefix + "8.zip", source=source, **{classes: ["cat", "dog"]})
    entry(prefix + "9.zip", source=source, **{classes: ["later"]})
    assert ovr.cached_classes(folder, "m", ck) == (True, ("cat", "dog"))
    entry(prefix + "75.zip", source=source, **{classes: None})
    assert ovr.cached_classes(folder, "m", ck) == (True, None)
    assert ovr.cached_classes(folder, "n", ck) == (True, ("other model",))  # its own prefix
    ck.unlink()
    assert ovr.cached_classes(folder, "m", ck) == (False, None)  # OSError: no answer


def test_cache_dir_is_beside_the_weights(tmp_path) -> None:
    assert ovr.cache_dir(tmp_path / "w") == tmp_path / "w" / "openvino"


def test_clear_leftovers_removes_old_partials_and_superseded_entries(tmp_path, monkeypatch) -> None:
    import types

    now = 1_000_000
    monkeypatch.setattr(ovr, "time", types.SimpleNamespace(time=lambda: float(now)))
    folder = tmp_path / "cache"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")

    def made(name: str, age: int, *, folder_: bool = False, link: Path | None = None) -> Path:
        path = folder / name
        if link is not None:
            path.symlink_to(link)
        elif folder_:
            path.mkdir()
            (path / "inside").write_text("x")
        else:
            path.write_text("x")
        os.utime(path, ns=((now - age) * 10**9,) * 2, follow_symlinks=False)
        return path

    entry = made("m-abc-111.zip", 0)
    made("m-abc-222.zip", 0)  # superseded
    made("m-abc-333.zip", 99999)  # superseded
    made("m-abcd-444.zip", 0)
    made("m-def-555.zip", 99999)
    made("m-abc-666.json", 0)
    made("m-abc-777.zip", 0, folder_=True)  # a folder: never removed
    made(".e.zip.1.partial", 3601)
    made(".e.zip.2.partial", 3600)  # one hour old exactly: kept
    made(".resnext-ir-old", 7200, folder_=True)
    made(".resnext-ir-new", 60, folder_=True)
    made("old-non-dot.zip", 99999)
    made(".link-dir", 7200, link=outside)
    made(".link-file", 7200, link=outside / "keep")
    ovr._clear_leftovers(folder, entry)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            "m-abc-111.zip",
            "m-abcd-444.zip",
            "m-def-555.zip",
            "m-abc-666.json",
            "m-abc-777.zip",
            ".e.zip.2.partial",
            ".resnext-ir-new",
            "old-non-dot.zip",
            ".link-dir",
        ]
    )
    assert (folder / ".resnext-ir-new" / "inside").is_file()
    assert (outside / "keep").read_text() == "x"  # a link's target is never touched
    ovr._clear_leftovers(tmp_path / "missing", entry)  # nothing to clear: no error


def test_clear_leftovers_goes_on_past_what_vanishes_meanwhile(tmp_path, monkeypatch) -> None:
    """Another process removes paths while this one lists them: the rest are still seen."""
    import types

    monkeypatch.setattr(ovr, "time", types.SimpleNamespace(time=lambda: 1e9))
    folder = tmp_path / "cache"
    folder.mkdir()
    old = (1e9 - 7200) * 1e9
    names = [
        ".racing-dir",
        ".racing-file",
        ".gone",
        ".racing-tree-dir",
        ".stale-dir",
        ".stale-file",
    ]
    for name in names:
        path = folder / name
        if name.endswith("dir"):
            path.mkdir()
            (path / "inside").write_text("x")
        elif name != ".gone":
            path.write_text("x")
        if path.exists():
            os.utime(path, ns=(int(old), int(old)))
    real_lstat = Path.lstat

    def racing(self: Path) -> os.stat_result:
        st = real_lstat(self)
        if self.name in (".racing-dir", ".racing-file"):  # removed by another after the stat
            shutil.rmtree(self) if self.name.endswith("dir") else self.unlink()
        return st

    monkeypatch.setattr(Path, "lstat", racing)
    real_is_symlink = Path.is_symlink

    def racing_tree(self: Path) -> bool:
        if self.name == ".racing-tree-dir" and self.exists():  # gone before it is removed
            shutil.rmtree(self)
            return False
        return real_is_symlink(self)

    monkeypatch.setattr(Path, "is_symlink", racing_tree)

    class Listing:
        def iterdir(self):
            return iter([folder / name for name in names])  # this order, always

    ovr._clear_leftovers(Listing(), folder / "m-a-1.zip")  # type: ignore[arg-type]
    assert list(folder.iterdir()) == []


# -- the cache, with the conversion faked --------------------------------------------------------


@pytest.fixture
def fake_convert(monkeypatch) -> list[tuple[Any, int, dict[str, Any]]]:
    calls: list[tuple[Any, int, dict[str, Any]]] = []

    def convert(net: Any, *, crop: int, manifest: dict[str, Any]) -> ovr.Bundle:
        calls.append((net, crop, manifest))
        return ovr.Bundle(_tiny_model(), HEAD_W, HEAD_B, {"format": 1, **manifest})

    monkeypatch.setattr(ovr, "convert", convert)
    return calls


SOURCE = "file:/w/ck.pth:1:2"


def _tiny_key() -> ovr.CacheKey:
    return ovr.CacheKey("tiny", SOURCE, True, 4)


@needs_openvino
def test_cached_bundle_converts_once_then_hits(tmp_path, fake_convert) -> None:
    folder = tmp_path / "cache"
    name = _entry_name("tiny", SOURCE, True, 4)
    superseded = folder / (name.rsplit("-", 1)[0] + "-0000000000000000.zip")
    folder.mkdir()
    superseded.write_bytes(b"an older conversion of this file")
    built: list[int] = []
    asked: list[int] = []

    def build() -> str:
        built.append(1)
        return "net"

    def extra() -> dict[str, Any]:
        asked.append(1)
        return {"checkpoint_classes": ["a"], "model": "not this one"}

    bundle, cached = ovr.cached_bundle(_tiny_key(), folder, build, name="ck.pth", extra=extra)
    want = {**_fields("tiny", SOURCE, True, 4), "checkpoint_classes": ["a"], "name": "ck.pth"}
    assert cached is False and built == [1] and asked == [1]
    assert fake_convert == [("net", 4, want)]
    assert bundle.manifest == want and bundle.weight is HEAD_W
    assert [p.name for p in folder.iterdir()] == [name]  # the older entry removed
    assert ovr.read_manifest(folder / name) == want
    again, cached = ovr.cached_bundle(_tiny_key(), folder, build, name="ck.pth", extra=extra)
    assert cached is True and built == [1] and asked == [1] and len(fake_convert) == 1
    assert again.manifest == want and again.weight.tolist() == HEAD_W.tolist()
    x = _crops(1)
    assert np.allclose(_run(again.model, x), _tiny_features(x), atol=1e-5)


@needs_openvino
def test_cached_bundle_without_extra_keeps_only_the_key_and_name(tmp_path, fake_convert) -> None:
    bundle, cached = ovr.cached_bundle(_tiny_key(), tmp_path, lambda: "net", name="n")
    assert cached is False
    assert fake_convert[0][2] == {**_fields("tiny", SOURCE, True, 4), "name": "n"}
    assert bundle.manifest == {**_fields("tiny", SOURCE, True, 4), "name": "n"}


@pytest.mark.parametrize(
    "manifest",
    [
        pytest.param({"openvino": "0.0"}, id="other-openvino"),
        pytest.param({"fold_batchnorm": False}, id="other-fold"),
        pytest.param({"fold_batchnorm": None}, id="missing-fold"),
        pytest.param({"source": "file:/w/ck.pth:1:3"}, id="other-source"),
    ],
)
@needs_openvino
def test_a_stale_entry_is_converted_again(tmp_path, fake_convert, caplog, manifest) -> None:
    entry = tmp_path / _entry_name("tiny", SOURCE, True, 4)
    fields = {**_fields("tiny", SOURCE, True, 4), **manifest}
    ovr.write_bundle(entry, ovr.Bundle(_tiny_model(), HEAD_W, HEAD_B, fields))
    with caplog.at_level(logging.WARNING, logger="resnext_cli.model.openvino_runtime"):
        _bundle, cached = ovr.cached_bundle(_tiny_key(), tmp_path, lambda: "net", name="n")
    assert cached is False and len(fake_convert) == 1
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            f"the converted model '{entry}' was damaged or stale: converting it again",
        )
    ]
    assert ovr.read_manifest(entry) == {**_fields("tiny", SOURCE, True, 4), "name": "n"}


@needs_openvino
def test_an_entry_with_more_in_its_manifest_is_a_hit(tmp_path, fake_convert, caplog) -> None:
    entry = tmp_path / _entry_name("tiny", SOURCE, True, 4)
    fields = {**_fields("tiny", SOURCE, True, 4), "name": "x", "checkpoint_classes": None}
    ovr.write_bundle(entry, ovr.Bundle(_tiny_model(), HEAD_W, HEAD_B, fields))
    bundle, cached = ovr.cached_bundle(_tiny_key(), tmp_path, lambda: "net", name="n")
    assert cached is True and fake_convert == [] and caplog.records == []
    assert bundle.manifest == fields


@needs_openvino
def test_a_damaged_entry_is_logged_removed_and_converted_again(
    tmp_path, fake_convert, caplog
) -> None:
    entry = tmp_path / _entry_name("tiny", SOURCE, True, 4)
    entry.write_bytes(b"PK\x03\x04 damaged")
    with caplog.at_level(logging.WARNING, logger="resnext_cli.model.openvino_runtime"):
        _bundle, cached = ovr.cached_bundle(_tiny_key(), tmp_path, lambda: "net", name="n")
    assert cached is False and len(fake_convert) == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"the converted model '{entry}' was damaged or stale: converting it again"
    ]
    assert ovr.read_manifest(entry) == {**_fields("tiny", SOURCE, True, 4), "name": "n"}


@needs_openvino
def test_a_damaged_entry_another_process_removed_first_is_no_error(
    tmp_path, fake_convert, monkeypatch
) -> None:
    entry = tmp_path / _entry_name("tiny", SOURCE, True, 4)
    entry.write_bytes(b"damaged")
    real = ovr.read_bundle
    reads: list[str] = []

    def read_then_gone(path: Path, *, name: str) -> ovr.Bundle:
        reads.append(name)
        if len(reads) == 1:
            path.unlink()  # the other process saw it damaged too, and removed it
        return real(path, name=name)

    monkeypatch.setattr(ovr, "read_bundle", read_then_gone)
    bundle, cached = ovr.cached_bundle(_tiny_key(), tmp_path, lambda: "net", name="n")
    assert cached is False and len(fake_convert) == 1 and reads == [str(entry)]
    assert bundle.manifest == ovr.read_manifest(entry)


@needs_openvino
def test_a_symlinked_entry_is_never_read_but_replaced(tmp_path, fake_convert, caplog) -> None:
    folder = tmp_path / "cache"
    elsewhere = tmp_path / "elsewhere.zip"
    fields = _fields("tiny", SOURCE, True, 4)
    ovr.write_bundle(elsewhere, ovr.Bundle(_tiny_model(), HEAD_W, HEAD_B, fields))
    before = elsewhere.read_bytes()
    folder.mkdir()
    entry = folder / _entry_name("tiny", SOURCE, True, 4)
    entry.symlink_to(elsewhere)
    _bundle, cached = ovr.cached_bundle(_tiny_key(), folder, lambda: "net", name="n")
    assert cached is False and len(fake_convert) == 1 and caplog.records == []
    assert not entry.is_symlink() and entry.is_file()
    assert elsewhere.read_bytes() == before


@needs_openvino
def test_an_entry_written_meanwhile_by_another_process_is_read(
    tmp_path, fake_convert, monkeypatch
) -> None:
    entry = tmp_path / _entry_name("tiny", SOURCE, True, 4)
    fields = {**_fields("tiny", SOURCE, True, 4), "name": "theirs"}
    built: list[int] = []

    class Publishing:
        """The lock, taken once another process has published the entry."""

        def __init__(self, data: bytes | None) -> None:
            self.data = data

        def __enter__(self) -> None:
            if self.data is None:
                ovr.write_bundle(entry, ovr.Bundle(_tiny_model(), HEAD_W, HEAD_B, fields))
            else:
                entry.write_bytes(self.data)

        def __exit__(self, *exc: object) -> None:
            return None

    real = ovr.read_bundle
    names: list[str] = []

    def read(path: Path, *, name: str) -> ovr.Bundle:
        names.append(name)  # what an error would name: the entry
        return real(path, name=name)

    monkeypatch.setattr(ovr, "read_bundle", read)
    monkeypatch.setattr(ovr, "_CONVERTING", Publishing(None))
    bundle, cached = ovr.cached_bundle(
        _tiny_key(), tmp_path, lambda: built.append(1), name="n", extra=lambda: built.append(2)
    )
    assert cached is True and fake_convert == [] and built == [] and names == [str(entry)]
    assert bundle.manifest == fields
    entry.unlink()
    monkeypatch.setattr(ovr, "_CONVERTING", Publishing(b"half written"))
    bundle, cached = ovr.cached_bundle(_tiny_key(), tmp_path, lambda: "net", name="n")
    assert cached is False and len(fake_convert) == 1
    assert ovr.read_manifest(entry) == {**_fields("tiny", SOURCE, True, 4), "name": "n"}


@needs_openvino
def test_a_cache_that_cannot_be_written_runs_from_memory(tmp_path, fake_convert) -> None:
    folder = tmp_path / "a-file"  # where the folder should be: every write fails
    folder.write_text("x")
    bundle, cached = ovr.cached_bundle(_tiny_key(), folder, lambda: "net", name="n")
    assert cached is False and len(fake_convert) == 1
    assert bundle.manifest == {**_fields("tiny", SOURCE, True, 4), "name": "n"}
    assert folder.read_text() == "x"


@needs_openvino
def test_add_to_manifest_rewrites_the_entry(tmp_path) -> None:
    entry = tmp_path / "e.zip"
    bundle = _tiny_bundle(keep=1, over="old")
    ovr.write_bundle(entry, bundle)
    updated = ovr.add_to_manifest(entry, bundle, {"over": "new", "more": [1]})
    want = {"format": 1, "model": "tiny", "keep": 1, "over": "new", "more": [1]}
    assert updated.manifest == want and ovr.read_manifest(entry) == want
    assert updated.model is bundle.model and updated.weight is HEAD_W and updated.bias is HEAD_B
    assert bundle.manifest["over"] == "old"  # the old bundle is left as it was
    blocked = tmp_path / "file"
    blocked.write_text("x")
    again = ovr.add_to_manifest(blocked / "e.zip", bundle, {"x": 1})  # read-only: kept
    assert again.manifest == {**bundle.manifest, "x": 1}


# -- running ---------------------------------------------------------------------------------


def test_softmax_is_a_stable_row_wise_float32_softmax() -> None:
    logits = np.array([[1000.0, 1001.0, 999.0], [-2.0, 0.0, 3.5]], dtype=np.float64)
    got = ovr.softmax(logits)
    assert got.dtype == np.float32 and got.shape == (2, 3)
    assert np.allclose(got, _np_softmax(logits), rtol=1e-6, atol=1e-7)
    assert np.isfinite(got).all()
    assert logits.tolist() == [[1000.0, 1001.0, 999.0], [-2.0, 0.0, 3.5]]
    single = ovr.softmax(np.array([[0.0, 0.0]], dtype=np.float32))
    assert single.tolist() == [[0.5, 0.5]]


def test_normalize_matches_torchs_float32_steps() -> None:
    batch = np.random.default_rng(3).integers(0, 256, size=(2, 3, 4, 5), dtype=np.uint8)
    kept = batch.copy()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    got = ovr.normalize(batch, mean, std)
    t = torch.from_numpy(batch).to(torch.float32) / 255.0
    want = (t - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    assert got.dtype == np.float32 and got.shape == (2, 3, 4, 5)
    assert np.array_equal(got, want.numpy())
    assert np.array_equal(batch, kept)


class _RecordingCore:
    """OpenVINO's Core, recording what is compiled."""

    def __init__(self, **more: Any) -> None:
        import openvino as ov

        self.core = ov.Core()
        self.more = more
        self.calls: list[tuple[Any, str, dict[str, Any]]] = []

    def compile_model(self, model: Any, device: str, config: dict[str, Any]) -> Any:
        self.calls.append((model, device, dict(config)))
        return self.core.compile_model(model, device, {**config, **self.more})


def _hints(mode: str, precision: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"PERFORMANCE_HINT": mode, "ENABLE_CPU_PINNING": False}
    if precision is not None:
        out["INFERENCE_PRECISION_HINT"] = precision
    return out


@pytest.mark.parametrize(
    ("int8", "precision", "mode", "want"),
    [
        (False, "fp32", "LATENCY", _hints("LATENCY", "f32")),
        (False, "bf16", "THROUGHPUT", _hints("THROUGHPUT", "bf16")),
        (False, "int8", "LATENCY", _hints("LATENCY", "f32")),
        (False, "fp16", "LATENCY", _hints("LATENCY", None)),
        (True, "bf16", "THROUGHPUT", _hints("THROUGHPUT", "f32")),
        (True, "fp32", "LATENCY", _hints("LATENCY", "f32")),
        (True, "fp16", "LATENCY", _hints("LATENCY", "f32")),
    ],
)
@needs_openvino
def test_network_config_says_every_precision(int8, precision, mode, want) -> None:
    network = ovr.Network(_tiny_bundle(), int8=int8)
    assert network.int8 is int8
    assert network.config(precision, mode) == want


@needs_openvino
def test_network_compiles_once_per_precision_and_mode() -> None:
    import openvino as ov

    bundle = _tiny_bundle()
    network = ovr.Network(bundle)
    assert network.int8 is False and network.bundle is bundle
    core = _RecordingCore()
    network._core = core
    latency = network.compiled("fp32", "LATENCY")
    assert network.compiled("fp32", "LATENCY") is latency
    throughput = network.compiled("fp32", "THROUGHPUT")
    assert throughput is not latency
    assert [(m is bundle.model, d, c) for m, d, c in core.calls] == [
        (True, "CPU", _hints("LATENCY", "f32")),
        (True, "CPU", _hints("THROUGHPUT", "f32")),
    ]
    assert latency.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert str(throughput.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"


@needs_openvino
def test_network_features_one_image_latency_a_batch_throughput() -> None:
    network = ovr.Network(_tiny_bundle())
    core = _RecordingCore()
    network._core = core
    one, batch = _crops(1, seed=7), _crops(5, seed=8)
    # One image: any compiled model of its precision is used, else a latency one is made.
    network.compiled("int8", "THROUGHPUT")
    got = network.features(one, "fp32")
    assert sorted(network._compiled) == [("fp32", "LATENCY"), ("int8", "THROUGHPUT")]
    assert got.dtype == np.float32 and got.shape == (1, 2)
    assert np.allclose(got, _tiny_features(one), atol=1e-5)
    assert np.allclose(network.features(one, "int8"), _tiny_features(one), atol=1e-5)
    assert len(core.calls) == 2
    # A batch: split over the throughput model's parallel requests, in order.
    got = network.features(batch, "fp32")
    assert sorted(network._compiled) == [
        ("fp32", "LATENCY"),
        ("fp32", "THROUGHPUT"),
        ("int8", "THROUGHPUT"),
    ]
    assert got.dtype == np.float32 and got.shape == (5, 2)
    assert np.allclose(got, _tiny_features(batch), atol=1e-5)
    compiled = network._compiled[("fp32", "THROUGHPUT")]
    requests = network._requests[id(compiled)]
    jobs = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    assert len(requests) == max(1, jobs)
    two = _crops(2, seed=9)
    assert np.allclose(network.features(two, "fp32"), _tiny_features(two), atol=1e-5)
    assert network._requests == {id(compiled): requests}  # made once, kept
    assert sorted(network._compiled) == [
        ("fp32", "LATENCY"),
        ("fp32", "THROUGHPUT"),
        ("int8", "THROUGHPUT"),
    ]


@needs_openvino
def test_network_head_and_probabilities_are_float32_numpy() -> None:
    network = ovr.Network(_tiny_bundle())
    feats = np.array([[1.0, 2.0], [-0.5, 4.0]], dtype=np.float32)
    logits = feats.astype(np.float64) @ HEAD_W.astype(np.float64).T + HEAD_B
    got = network.head(feats)
    assert got.dtype == np.float32
    assert np.allclose(got, _np_softmax(logits), atol=1e-6)
    x = _crops(3, seed=11)
    want = _np_softmax(_tiny_features(x) @ HEAD_W.astype(np.float64).T + HEAD_B)
    for batch in (x, x[:1]):
        probs = network.probabilities(batch, "fp32")
        assert probs.dtype == np.float32 and probs.shape == (len(batch), 3)
        assert np.allclose(probs, want[: len(batch)], atol=1e-5)


@needs_openvino
def test_a_batch_runs_on_as_many_requests_as_openvino_recommends() -> None:
    network = ovr.Network(_tiny_bundle())
    network._core = _RecordingCore(PERFORMANCE_HINT_NUM_REQUESTS=1)  # recommends one
    batch = _crops(3, seed=12)
    got = network.features(batch, "fp32")
    assert np.allclose(got, _tiny_features(batch), atol=1e-5)
    compiled = network._compiled[("fp32", "THROUGHPUT")]
    assert int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) == 1
    assert len(network._requests[id(compiled)]) == 1


@needs_openvino
def test_features_are_float32_whatever_type_the_body_gives() -> None:
    network = ovr.Network(ovr.Bundle(_tiny_model("f16"), HEAD_W, HEAD_B, {"format": 1}))
    for x in (_crops(1, seed=13), _crops(4, seed=14)):
        got = network.features(x, "fp32")
        assert got.dtype == np.float32 and got.shape == (len(x), 2)
        assert np.allclose(got, _tiny_features(x), atol=1e-2)


class _Request:
    """An infer request that records what it was asked, its output the input plus one."""

    def __init__(self, log: list[str], name: str, fail: bool) -> None:
        self.log, self.name, self.fail = log, name, fail
        self.out: np.ndarray[Any, Any] | None = None

    def start_async(self, part: np.ndarray[Any, Any]) -> None:
        if self.fail:
            raise RuntimeError("REQUEST_BUSY")
        self.log.append(f"start {self.name} {len(part)}")
        self.out = part + 1

    def wait(self) -> None:
        self.log.append(f"wait {self.name}")

    def get_output_tensor(self, index: int) -> Any:
        assert index == 0 and self.out is not None
        return type("Tensor", (), {"data": self.out.astype(np.float64)})()


class _Compiled:
    def __init__(self, jobs: int, fail_at: int | None = None) -> None:
        self.jobs, self.fail_at = jobs, fail_at
        self.log: list[str] = []
        self.made = 0

    def get_property(self, name: str) -> int:
        assert name == "OPTIMAL_NUMBER_OF_INFER_REQUESTS"
        return self.jobs

    def create_infer_request(self) -> _Request:
        self.made += 1
        return _Request(self.log, f"r{self.made}", fail=self.made == self.fail_at)


@needs_openvino
def test_a_batch_is_split_over_plain_requests_and_each_is_waited_for() -> None:
    network = ovr.Network(_tiny_bundle())
    compiled = _Compiled(jobs=3)
    x = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    got = network._in_parallel(compiled, x)
    assert got.dtype == np.float32 and np.array_equal(got, x + 1)  # in order
    assert compiled.log == [
        "start r1 3", "start r2 2", "start r3 2", "wait r1", "wait r2", "wait r3",
    ]  # fmt: skip
    # Two images on three requests: two parts, the requests made once and kept.
    compiled.log.clear()
    assert np.array_equal(network._in_parallel(compiled, x[:2]), x[:2] + 1)
    assert compiled.log == ["start r1 1", "start r2 1", "wait r1", "wait r2"]
    assert compiled.made == 3 and len(network._requests[id(compiled)]) == 3


@needs_openvino
def test_a_request_that_cannot_start_lets_the_started_ones_finish() -> None:
    network = ovr.Network(_tiny_bundle())
    compiled = _Compiled(jobs=3, fail_at=2)
    with pytest.raises(RuntimeError, match="REQUEST_BUSY"):
        network._in_parallel(compiled, np.zeros((6, 2), np.float32))
    assert compiled.log == ["start r1 2", "wait r1"]
