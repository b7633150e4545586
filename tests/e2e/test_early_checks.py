"""Mistakes the arguments alone decide are refused before torch is imported or a model
loads, each with one line and exit status 2.

The cases run in one child process in which torch and torchvision cannot be imported: a
check that came after the model would meet an ImportError instead of its own message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import natural_image
from tests.helpers import run_all


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("early")
    natural_image(1, (64, 48)).save(tmp / "cat.jpg")
    (tmp / "photos").mkdir()
    natural_image(2, (64, 48)).save(tmp / "photos" / "a.jpg")
    (tmp / "empty").mkdir()
    (tmp / "int8.pth").write_bytes(b"an earlier run's file")
    (tmp / "r.html").write_text("<html>an earlier report</html>")
    (tmp / "r.jsonl").write_text("")
    (tmp / "dest").mkdir()
    return tmp


def cases(t: Path) -> dict[str, tuple[list[str], str]]:
    cat, photos = str(t / "cat.jpg"), str(t / "photos")
    return {
        "one missing file": (
            ["classify", str(t / "cta.jpg")],
            f"error: no such file: '{t / 'cta.jpg'}'",
        ),
        "two missing files, each said once": (
            ["classify", str(t / "a.jpg"), str(t / "b.jpg")],
            f"error: no such file: '{t / 'a.jpg'}'\nerror: no such file: '{t / 'b.jpg'}'",
        ),
        "-k past the labels": (
            ["classify", cat, "-k", "2000"],
            "error: --topk 2000 is more than the 1000 classes (lower --topk)",
        ),
        "--checkpoint missing": (
            ["classify", cat, "--checkpoint", str(t / "mine.pth")],
            f"error: checkpoint '{t / 'mine.pth'}' does not exist (give a file)",
        ),
        "--labels missing": (
            ["classify", cat, "--labels", str(t / "labels.txt")],
            f"error: cannot read labels file '{t / 'labels.txt'}': FileNotFoundError (give a "
            "UTF-8 text file with one class name per line)",
        ),
        "-o with an unknown extension": (
            ["classify", cat, "-o", str(t / "out.txt")],
            f"error: cannot tell the format of '{t / 'out.txt'}' from its name (give -f "
            "jsonl, json, csv, parquet or table, or name it .jsonl, .json, .csv or .parquet)",
        ),
        "a report that exists names --resume": (
            ["classify", cat, "-o", str(t / "r2.jsonl"), "--report", str(t / "r.html")],
            f"error: report file '{t / 'r.html'}' exists (use --force to overwrite it, or "
            "--resume to continue the run)",
        ),
        "quantize onto an existing -o": (
            ["quantize", "--calibrate", photos, "-o", str(t / "int8.pth")],
            f"error: output file '{t / 'int8.pth'}' exists (use --force to overwrite it)",
        ),
        "quantize on an empty folder": (
            ["quantize", "--calibrate", str(t / "empty"), "-o", str(t / "new.pth")],
            "error: no photo to calibrate with (give --calibrate with a folder of your photos)",
        ),
        "quantize with a missing checkpoint": (
            [
                "quantize",
                "--checkpoint",
                str(t / "mine.pth"),
                "--calibrate",
                photos,
                "-o",
                str(t / "new.pth"),
            ],
            f"error: checkpoint '{t / 'mine.pth'}' does not exist (give a file)",
        ),
        "--exact with --quantized": (
            ["classify", cat, "-m", "101", "--exact", "--quantized"],
            "error: --exact is the fp32 reference and --quantized is INT8; give one",
        ),
        "--exact with --decode gpu": (
            ["classify", cat, "--exact", "--decode", "gpu"],
            "error: --exact decodes with Pillow, as the reference; drop --decode gpu",
        ),
        "weights the model does not have": (
            ["classify", cat, "--weights", "V9"],
            "error: unknown weights 'V9' for resnext50_32x4d (choose from: DEFAULT, "
            "IMAGENET1K_V1, IMAGENET1K_V2)",
        ),
        "learn with weights the model does not have": (
            ["learn", photos, "-o", str(t / "new.pth"), "-m", "101", "--weights", "V9"],
            "error: unknown weights 'V9' for resnext101_32x8d (choose from: DEFAULT, "
            "IMAGENET1K_V1, IMAGENET1K_V2)",
        ),
        "sort with a missing file": (
            ["sort", str(t / "cta.jpg"), str(t / "dest")],
            f"error: no such file: '{t / 'cta.jpg'}'",
        ),
        "sort -k past the labels": (
            ["sort", cat, str(t / "dest"), "-k", "2000"],
            "error: --topk 2000 is more than the 1000 classes (lower --topk)",
        ),
    }


def test_each_mistake_is_one_line_exit_2_and_torch_never_loads(place: Path) -> None:
    table = cases(place)
    results, imported = run_all([argv for argv, _ in table.values()])
    for (name, (argv, line)), (code, stdout, stderr) in zip(table.items(), results, strict=True):
        assert (code, stdout, stderr) == (2, "", line + "\n"), (name, argv)
    assert imported == []
    # Nothing was left behind by the refusals.
    assert not (place / "new.pth").exists() and not (place / "r2.jsonl").exists()
    assert (place / "int8.pth").read_bytes() == b"an earlier run's file"
    assert list((place / "dest").iterdir()) == []
