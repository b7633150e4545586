"""cli/classify.py: `resnext classify`'s output options: -f and -o, and the table."""

from __future__ import annotations

import json

from tests.helpers import expected_order


def test_json_is_one_array(checkpoint, folder, resnext) -> None:
    run = resnext("classify", folder, "--checkpoint", checkpoint, "-f", "json", "-k", "2")
    assert run.code == 0, run
    data = json.loads(run.stdout)
    assert [r["input"] for r in data] == expected_order(folder)
    assert all(len(r["predictions"]) == 2 for r in data)


def test_output_file_and_format_from_suffix(checkpoint, folder, tmp_path, resnext) -> None:
    out = tmp_path / "res.json"
    run = resnext("classify", folder, "--checkpoint", checkpoint, "-o", out)
    assert run.code == 0 and run.stdout == ""
    assert len(json.loads(out.read_text())) == 3
    again = resnext("classify", folder, "--checkpoint", checkpoint, "-o", out)
    assert again.code == 2
    assert again.stderr.strip() == (
        f"error: output file '{out}' exists (use --force to overwrite it, or --resume to "
        "continue it)"
    )


def test_table_for_one_image_and_for_many(checkpoint, folder, resnext) -> None:
    one = resnext("classify", folder / "a.png", "--checkpoint", checkpoint, "-f", "table")
    labels = [
        p["label"]
        for p in resnext("classify", folder / "a.png", "--checkpoint", checkpoint).records()[0][
            "predictions"
        ]
    ]
    assert one.code == 0
    for label in labels:
        assert label in one.stdout
    many = resnext(
        "classify", folder, "--checkpoint", checkpoint, "-f", "table", "--precision", "fp32"
    )
    lines = [ln for ln in many.stdout.splitlines() if ln.strip()]
    assert lines[0].split()[:2] == ["input", "top-1"]
    assert len(lines) == 5  # a header, one row per image, and the caption
    assert lines[-1] == f"resnext50_32x4d ({checkpoint}) on cpu, fp32"
