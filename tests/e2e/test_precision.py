"""Precision you can see and trust: bf16 on any CPU, ties, non-finite numbers, checkpoints."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from resnext_cli import Classifier
from resnext_cli.results import Classified, Failed
from resnext_cli.run.pipeline import topk


@pytest.fixture
def photos(make_photos):
    return make_photos(4, ext="png")


def test_topk_orders_ties_by_class_index() -> None:
    probs = torch.tensor([0.05, 0.2, 0.3, 0.05, 0.3, 0.1])
    _values, indices = topk(probs, 6)
    assert indices == [2, 4, 1, 5, 0, 3]  # 0.3 (2 before 4), 0.2, 0.1, 0.05 (0 before 3)
    for k in range(1, 6):  # top-k is always the start of top-(k+1)
        assert topk(probs, k)[1] == topk(probs, k + 1)[1][:k]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_topk_is_a_prefix_for_every_k_in_both_precisions(checkpoint, photos, precision) -> None:
    clf = Classifier(checkpoint=str(checkpoint), precision=precision, topk=10, workers=0)
    full = {r.input: r for r in clf.classify([str(photos)])}
    for k in (1, 3, 5):
        clf = Classifier(checkpoint=str(checkpoint), precision=precision, topk=k, workers=0)
        for record in clf.classify([str(photos)]):
            assert isinstance(record, Classified)
            reference = full[record.input]
            assert isinstance(reference, Classified)
            assert record.predictions == reference.predictions[:k]
            assert record.precision == precision


def test_bf16_runs_on_any_cpu_close_to_fp32(checkpoint, photos) -> None:
    # Forced: emulated where the CPU has no native bf16 (slow, but correct).
    fp32 = list(Classifier(checkpoint=str(checkpoint), precision="fp32").classify([str(photos)]))
    bf16 = list(Classifier(checkpoint=str(checkpoint), precision="bf16").classify([str(photos)]))
    for a, b in zip(fp32, bf16, strict=True):
        assert isinstance(a, Classified) and isinstance(b, Classified)
        assert (a.precision, b.precision) == ("fp32", "bf16")
        assert sum(p.probability for p in b.predictions) <= 1.0 + 1e-6
        # The head runs in float32, so probabilities are not bf16-rounded: bf16 keeps only
        # 8 bits, and a probability rounded to it would be a multiple of 2**-8 of its octave.
        assert any(
            p.probability != float(torch.tensor(p.probability).bfloat16()) for p in b.predictions
        )
        assert b.top1.probability == pytest.approx(a.top1.probability, abs=0.1)


def test_records_and_table_name_the_precision(checkpoint, photos, resnext) -> None:
    run = resnext("classify", photos, "--checkpoint", checkpoint, "--precision", "bf16", "-q")
    assert run.code == 0, run
    assert {r["precision"] for r in run.records()} == {"bf16"}
    one = next(photos.iterdir())
    run = resnext("classify", one, "--checkpoint", checkpoint, "-f", "table", "--precision", "fp32")
    assert "resnext50_32x4d (" in run.stdout and "on cpu, fp32" in run.stdout, run


def test_fp16_on_this_cpu_is_refused_before_any_work(
    checkpoint, photos, resnext, monkeypatch
) -> None:
    import resnext_cli.run.plan

    monkeypatch.setattr(
        resnext_cli.run.plan.MachineFacts,
        "probe",
        classmethod(lambda cls, device="auto": cls(cpu_count=2)),
    )
    run = resnext("classify", photos, "--checkpoint", checkpoint, "--precision", "fp16")
    assert run.code == 2 and run.stdout == ""
    assert run.stderr == (
        "error: --precision fp16 needs a GPU or a CPU with native fp16 (AMX-FP16); this CPU "
        "has none (use --precision bf16 or fp32)\n"
    )


def test_non_finite_batch_is_retried_in_fp32(checkpoint, photos, monkeypatch) -> None:
    import resnext_cli.run.pipeline as pipeline

    real = pipeline.probabilities

    def overflowing(model, batch, precision):
        out = real(model, batch, precision)
        return torch.full_like(out, math.nan) if precision != "fp32" else out

    monkeypatch.setattr(pipeline, "probabilities", overflowing)
    records = list(Classifier(checkpoint=str(checkpoint), precision="bf16").classify([str(photos)]))
    assert [r.precision for r in records if isinstance(r, Classified)] == ["fp32"] * 4
    assert all(math.isfinite(p.probability) for r in records for p in r.predictions)


def test_non_finite_output_becomes_an_error_record_and_valid_json(
    checkpoint, photos, monkeypatch, resnext, tmp_path
) -> None:
    import resnext_cli.run.pipeline as pipeline

    real = pipeline.probabilities
    monkeypatch.setattr(
        pipeline, "probabilities", lambda m, b, p: torch.full_like(real(m, b, p), math.nan)
    )
    report = tmp_path / "r.html"
    run = resnext("classify", photos, "--checkpoint", checkpoint, "--report", report, "-f", "json")
    assert run.code == 1, run
    records = json.loads(run.stdout)  # strict JSON: no NaN anywhere
    assert [r["error"]["type"] for r in records] == ["inference_failed"] * 4
    assert "non-finite probabilities" in records[0]["error"]["message"]
    # No bare NaN or Infinity token anywhere in the page's data (the message may say "NaN").
    assert re.search(r"[:\[,]\s*-?(NaN|Infinity)\b", report.read_text()) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s["layer1.0.conv1.weight"].view(-1).__setitem__(7, math.nan),
            "tensor 'layer1.0.conv1.weight' holds NaN or infinite values "
            "(the checkpoint is damaged)",
        ),
        (
            lambda s: s.__setitem__("fc.bias", s["fc.bias"].to(torch.int32)),
            "tensor 'fc.bias' is int32, not floating point (give a float checkpoint)",
        ),
        (
            lambda s: s.__setitem__("fc.bias", s["fc.bias"].to(torch.complex64)),
            "tensor 'fc.bias' is complex64, not floating point (give a float checkpoint)",
        ),
        (
            lambda s: s.__setitem__("fc.weight", s["fc.weight"].to_sparse()),
            "tensor 'fc.weight' is sparse_coo, not a dense tensor (save real weights)",
        ),
    ],
)
def test_unusable_checkpoint_tensors_are_refused_naming_the_first(
    checkpoint, photos, tmp_path, resnext, change, message
) -> None:
    state = torch.load(checkpoint, weights_only=True)
    change(state)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    run = resnext("classify", photos, "--checkpoint", bad)
    assert run.code == 2 and run.stdout == "", run
    assert run.stderr == f"error: checkpoint '{bad}': {message}\n"


def test_float64_and_bf16_checkpoints_load_as_float32(checkpoint, photos, tmp_path) -> None:
    state = torch.load(checkpoint, weights_only=True)
    reference = list(
        Classifier(checkpoint=str(checkpoint), precision="fp32").classify([str(photos)])
    )
    wide = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(wide, tmp_path / "f64.pth")
    got = list(
        Classifier(checkpoint=str(tmp_path / "f64.pth"), precision="fp32").classify([str(photos)])
    )
    for a, b in zip(reference, got, strict=True):
        assert not isinstance(a, Failed) and not isinstance(b, Failed)
        assert [p.index for p in a.predictions] == [p.index for p in b.predictions]
