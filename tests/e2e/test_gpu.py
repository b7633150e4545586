"""On a real CUDA GPU: --decode gpu against --decode cpu on hostile files, and fp32 without TF32.

Skipped unless RESNEXT_TEST_GPU=1 on a machine with CUDA:

    RESNEXT_TEST_GPU=1 PYTHONPATH=src pytest -q tests/e2e/test_gpu.py
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import (
    _component_ids,
    _scan_start,
    _without_jfif,
    jpeg,
    photo,
    with_segment,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or not os.environ.get("RESNEXT_TEST_GPU"),
        reason="needs a CUDA GPU and RESNEXT_TEST_GPU=1",
    ),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:torchvision"),
]


def _twelve_bit(data: bytes) -> bytes:
    """The frame header says 12 bits per sample (the scan is 8-bit: a lie either way)."""
    at = data.index(b"\xff\xc0")
    return data[: at + 4] + b"\x0c" + data[at + 5 :]


def _corrupt_scan(data: bytes) -> bytes:
    """Scan bytes changed, markers and stuffing kept: libjpeg decodes it with warnings."""
    out = bytearray(data)
    for at in range(_scan_start(data) + 40, len(data) - 40, 89):
        if 0xFF not in (out[at - 1], out[at]):
            out[at] ^= 0x2A
    return bytes(out)


def hostile_files(folder: Path) -> list[Path]:
    """Every kind of JPEG the two decoders might disagree on, plus plain good ones."""
    rotated = Image.Exif()
    rotated[0x0112] = 6
    whole = jpeg(photo(100, (500, 375)))
    body = _scan_start(whole)
    files = {
        "good.jpg": whole,
        "portrait.jpg": jpeg(photo(101, (375, 500))),
        "truncated.jpg": whole[: (body + len(whole)) // 2],
        "no_eoi.jpg": whole[:-2],
        "progressive.jpg": jpeg(photo(102, (400, 300)), progressive=True),
        "cmyk.jpg": jpeg(photo(103, (400, 300), "CMYK")),
        "grey.jpg": jpeg(photo(104, (400, 300), "L")),
        "rotated.jpg": jpeg(photo(105, (500, 375)), exif=rotated),
        "twelve_bit.jpg": _twelve_bit(whole),
        "rgb_ids.jpg": _component_ids(_without_jfif(jpeg(photo(106, (400, 300)))), b"RGB"),
        "adobe_rgb.jpg": with_segment(
            _component_ids(_without_jfif(jpeg(photo(107, (400, 300)))), b"RGB"),
            0xEE,
            b"Adobe\x00\x64\x00\x00\x00\x00\x01",
        ),
        "corrupt_scan.jpg": _corrupt_scan(jpeg(photo(108, (500, 375)))),
        "phone.jpg": jpeg(photo(109, (4032, 3024)), exif=rotated),
    }
    paths = []
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def _summary(records: list) -> list[tuple[str, str | None, list[int] | None]]:
    return [
        (
            Path(r.input).name,
            getattr(r, "error_type", None),
            [p.index for p in r.predictions] if hasattr(r, "predictions") else None,
        )
        for r in records
    ]


@pytest.mark.parametrize("allow_truncated", [False, True])
def test_gpu_decoding_gives_the_cpu_decodings_records(
    checkpoint: Path, tmp_path: Path, allow_truncated: bool
) -> None:
    from resnext_cli import Classifier

    paths = [str(p) for p in hostile_files(tmp_path)]
    common = {
        "checkpoint": str(checkpoint),
        "device": "cuda",
        "precision": "fp32",
        "allow_truncated": allow_truncated,
        "batch_size": 4,
    }
    gpu = Classifier(decode="gpu", **common)
    cpu = Classifier(decode="cpu", **common)
    assert gpu.plan.decode_on == "gpu" and cpu.plan.decode_on == "cpu"
    got, want = list(gpu.classify(paths)), list(cpu.classify(paths))
    # Same error types and the same top-5 classes, file by file (the corrupt scan's
    # picture is what each decoder makes of the damage: its class may differ).
    for a, b in zip(_summary(got), _summary(want), strict=True):
        assert a[:2] == b[:2], a[0]
        if a[0] != "corrupt_scan.jpg":
            assert a[2] == b[2], a[0]
    for a, b in zip(got, want, strict=True):
        if hasattr(a, "predictions") and Path(a.input).name != "corrupt_scan.jpg":
            assert a.predictions[0].probability == pytest.approx(
                b.predictions[0].probability, abs=0.02
            )


def test_fp32_on_cuda_is_not_tf32(checkpoint: Path, make_image) -> None:
    from resnext_cli import Classifier

    paths = [str(make_image(f"{i}.png", seed=i)) for i in range(4)]
    gpu = Classifier(checkpoint=str(checkpoint), device="cuda", exact=True)
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False
    cpu = Classifier(checkpoint=str(checkpoint), device="cpu", exact=True)
    for a, b in zip(cpu.classify(paths), gpu.classify(paths), strict=True):
        assert [p.index for p in a.predictions] == [p.index for p in b.predictions]
        for pa, pb in zip(a.predictions, b.predictions, strict=True):
            # TF32 keeps 10 mantissa bits: through ResNeXt-50 it moves these by ~1e-3.
            assert pa.probability == pytest.approx(pb.probability, abs=1e-4)


def test_decoder_sync_survives_overlap(checkpoint: Path, tmp_path: Path) -> None:
    """Many batches through the overlapped stages: every record as in a serial run."""
    import dataclasses

    from resnext_cli import Classifier
    from resnext_cli.run.engine import LocalEngine

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(96):
        (folder / f"{i:03d}.jpg").write_bytes(jpeg(photo(200 + i % 12, (500, 375))))
    clf = Classifier(checkpoint=str(checkpoint), device="cuda", decode="gpu", batch_size=8)
    assert clf.engine.overlap
    names = sorted(str(p) for p in folder.iterdir())
    overlapped = [r.to_dict() for r in clf.classify(names)]
    serial_engine = LocalEngine(dataclasses.replace(clf.loaded), overlap=False)
    serial = [
        r.to_dict()
        for r in serial_engine.classify_sources(clf._sources(names, stdin=None, warn=None))
    ]
    for a, b in zip(overlapped, serial, strict=True):
        assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]


def test_hostile_file_kinds_are_what_they_claim(tmp_path: Path) -> None:
    """The fixtures themselves, checked with Pillow (runs wherever this module runs)."""
    kinds = {p.name: p for p in hostile_files(tmp_path)}
    assert Image.open(kinds["cmyk.jpg"]).mode == "CMYK"
    assert Image.open(kinds["grey.jpg"]).mode == "L"
    assert Image.open(io.BytesIO(kinds["progressive.jpg"].read_bytes())).info.get("progressive")
