"""`resnext quantize` under 90% top-1 agreement: said plainly, nothing saved unless --force."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnext_cli.model import quantized


def test_low_agreement_saves_nothing_unless_forced(
    checkpoint: Path, photos: Path, tmp_path: Path, resnext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agreement is the model's business (test_quantized.py); here it is 1 photo of 3.
    low = quantized.Agreement(top1=1 / 3, top5=0.0, max_abs_dp=0.5, images=3)
    monkeypatch.setattr(quantized, "agreement", lambda *_a, **_k: low)
    out = tmp_path / "int8.pth"
    args = ("quantize", "-m", "50", "--checkpoint", checkpoint, "--calibrate", photos, "-o", out)
    run = resnext(*args)
    assert (run.code, run.stdout) == (1, ""), run
    said = (
        "INT8 agrees with the float model on 33.3% of the 3 photos' top-1 (top-5 sets: 0.0%; "
        "largest probability change 0.500)"
    )
    lines = run.stderr.splitlines()
    assert lines[-2] == (
        f"error: {said}: under 90%, the INT8 model is not usable as it is, and '{out}' was "
        "not written"
    )
    assert lines[-1].startswith("try more calibration photos, and more varied ones")
    assert "layers kept in float (fc first)" in lines[-1] and "--force" in lines[-1]
    assert not out.exists()

    forced = resnext(*args, "--force")
    assert (forced.code, forced.stdout) == (0, f"{out}\n"), forced
    lines = forced.stderr.splitlines()
    warning = "warning: under 90%, the INT8 model is not usable as it is; saved anyway (--force)"
    assert lines[lines.index(said) + 1] == warning
    assert out.is_file()
