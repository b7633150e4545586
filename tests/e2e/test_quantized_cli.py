"""--quantized and `resnext quantize` through the command: records, refusals, downloads."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import torch

from resnext_cli.run.plan import MachineFacts
from tests.conftest import natural_image, run_resnext


@pytest.fixture(scope="module")
def int8(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A resnext50 calibrated by `resnext quantize` on 8 photos: (file, photos, stderr)."""
    work = tmp_path_factory.mktemp("int8")
    photos = work / "photos"
    photos.mkdir()
    for seed in range(8):
        natural_image(seed, (160, 120)).save(photos / f"{seed}.jpg", quality=92)
    out = work / "my50-int8.pth"
    # A random-init network's INT8 copy agrees with it on under 90% of 8 photos: --force
    # saves it anyway (test_quantize_agreement.py checks the refusal without it).
    run = run_resnext(
        "quantize", "-m", "50", "--checkpoint", checkpoint, "--calibrate", photos, "-o", out,
        "--force",
    )  # fmt: skip
    assert run.code == 0, run
    assert run.stdout == f"{out}\n"
    return out, photos, run.stderr


def test_quantize_reports_agreement_and_how_to_use_it(int8) -> None:
    out, _, stderr = int8
    lines = stderr.splitlines()
    assert lines[0] == (
        "warning: only 8 photos: calibration is steadier with a few hundred like the ones "
        "you will classify"
    )
    assert any(line.startswith("INT8 agrees with the float model on ") for line in lines)
    assert (
        lines[-1]
        == f"use it with: resnext classify --checkpoint {out} --quantized -m resnext50_32x4d"
    )


def test_quantized_records_table_and_summary_say_int8(int8, resnext) -> None:
    out, photos, _ = int8
    run = resnext("classify", photos, "--checkpoint", out, "--quantized")
    assert run.code == 0, run
    assert {r["precision"] for r in run.records()} == {"int8"}
    assert " on cpu, int8" in run.stderr.splitlines()[0]
    one = sorted(photos.iterdir())[0]
    table = resnext("classify", one, "--checkpoint", out, "--quantized", "-f", "table")
    # The caption may wrap at the table's width: compare the words.
    assert f"resnext50_32x4d ({out}) on cpu, int8" in " ".join(table.stdout.split())


def test_int8_file_without_quantized_says_what_to_add(int8, resnext) -> None:
    out, photos, _ = int8
    run = resnext("classify", photos, "--checkpoint", out)
    assert (run.code, run.stdout) == (2, "")
    assert run.stderr == f"error: checkpoint '{out}' holds INT8 weights (add --quantized)\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--exact", "--quantized"],
            "--exact is the fp32 reference and --quantized is INT8; give one",
        ),
        (
            ["--quantized", "-m", "50"],
            "resnext50_32x4d has no published INT8 weights (make them from your own photos "
            "with 'resnext quantize -m resnext50_32x4d --calibrate PHOTOS -o my50-int8.pth', "
            "then use --checkpoint my50-int8.pth --quantized)",
        ),
        (
            ["--quantized", "-m", "101", "--device", "cuda"],
            "--quantized runs INT8 on the CPU, not on cuda (use --device cpu, or drop --quantized)",
        ),
    ],
)
def test_refusals(args, message, make_image, resnext, monkeypatch) -> None:
    gpu = MachineFacts(cpu_count=2, cuda_count=1, cuda_bf16=True, cuda_free_bytes=8 << 30)
    monkeypatch.setattr(MachineFacts, "probe", classmethod(lambda cls, device="auto": gpu))
    run = resnext("classify", make_image("a.png"), *args)
    assert (run.code, run.stdout) == (2, ""), run
    assert run.stderr == f"error: {message}\n"


def test_published_int8_weights_download_and_run(int8, http_server, monkeypatch, resnext) -> None:
    """The published-weights path: fetch through the mirror, cache, hash check, run."""
    from resnext_cli.model import registry

    out, photos, _ = int8
    base, root = http_server
    data = out.read_bytes()
    name = f"resnext50_int8-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (root / "models").mkdir()
    (root / "models" / name).write_bytes(data)
    snapshot = copy.deepcopy(registry._snapshot())
    entry = snapshot["resnext50_32x4d"]
    published = copy.deepcopy(snapshot["resnext101_64x4d"]["quantized"])
    tag = published["default"]
    published["weights"][tag]["url"] = f"https://download.pytorch.org/models/{name}"
    entry["quantized"] = published
    monkeypatch.setattr(registry, "_snapshot", lambda: snapshot)
    monkeypatch.setenv("RESNEXT_WEIGHTS_MIRROR", f"{base}/models/")
    fetched = resnext("download", "-m", "50", "--quantized", "-q")
    assert fetched.code == 0, fetched
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    assert fetched.stdout == f"{cached}\n" and cached.read_bytes() == data
    run = resnext("classify", photos, "-m", "50", "--quantized", "--offline")
    assert run.code == 0, run
    assert {(r["weights"], r["precision"]) for r in run.records()} == {(tag, "int8")}
