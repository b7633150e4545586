"""--categories through the command: records, table, summary, sort, and a user's mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnext_cli.model.categories import Categories


@pytest.fixture
def photos(make_photos) -> Path:
    return make_photos(4)


def test_records_carry_categories_that_add_up(checkpoint, photos, resnext) -> None:
    run = resnext(
        "classify", photos, "--checkpoint", checkpoint, "--categories", "-k", "3",
        "--precision", "fp32", "-f", "jsonl",
    )  # fmt: skip
    assert run.code == 0, run
    full = resnext(
        "classify", photos, "--checkpoint", checkpoint, "-k", "1000", "--precision", "fp32"
    ).records()
    cats = Categories.default()
    for record, every in zip(run.records(), full, strict=True):
        assert len(record["categories"]) == 3
        # Each category's probability is the sum of its classes', from all 1000 classes.
        sums: dict[str, float] = {}
        for p in every["predictions"]:
            name = cats.name_of(p["index"])
            sums[name] = sums.get(name, 0.0) + p["probability"]
        best = sorted(sums.items(), key=lambda kv: -kv[1])[:3]
        assert [c["name"] for c in record["categories"]] == [n for n, _ in best]
        for c, (_, total) in zip(record["categories"], best, strict=True):
            assert c["probability"] == pytest.approx(total, abs=1e-5)
        assert record["categories"][0]["probability"] >= record["predictions"][0]["probability"]


def test_table_and_summary_show_categories(checkpoint, photos, resnext) -> None:
    one = next(iter(sorted(photos.iterdir())))
    run = resnext("classify", one, "--checkpoint", checkpoint, "--categories", "-f", "table")
    [record] = resnext(
        "classify", one, "--checkpoint", checkpoint, "--categories", "-f", "json"
    ).records()
    lines = run.stdout.splitlines()
    first_row = next(i for i, line in enumerate(lines) if line.startswith("│ 1 │"))
    assert record["categories"][0]["name"] in lines[first_row]
    label_row = next(i for i, line in enumerate(lines) if record["predictions"][0]["label"] in line)
    assert label_row > first_row  # categories first, the classes under them
    many = resnext("classify", photos, "--checkpoint", checkpoint, "--categories")
    assert "top-1 categories (" in many.stderr, many


def test_sort_by_category(checkpoint, photos, tmp_path, resnext) -> None:
    out = tmp_path / "r.jsonl"
    run = resnext("classify", photos, "--checkpoint", checkpoint, "--categories", "-o", out)
    assert run.code == 0, run
    records = [json.loads(line) for line in out.read_text().splitlines()]
    dest = tmp_path / "sorted"
    sort = resnext("sort", "--from", out, dest, "--by", "category")
    assert sort.code == 0, sort
    for record in records:
        name = Path(record["input"]).name
        assert (dest / record["categories"][0]["name"] / name).is_file()


def test_user_mapping_and_its_errors(checkpoint, photos, tmp_path, resnext) -> None:
    mapping = tmp_path / "groups.tsv"
    mapping.write_text("# my groups\nSamoyed\tfluffy\n259\tfluffy\n")
    run = resnext(
        "classify", photos, "--checkpoint", checkpoint, "--categories", mapping, "-k", "2"
    )
    assert run.code == 0, run
    assert {c["name"] for r in run.records() for c in r["categories"]} <= {"fluffy", "other"}
    bad = tmp_path / "bad.tsv"
    bad.write_text("Samoyed\tfluffy\nno such class\tx\n")
    run = resnext("classify", photos, "--checkpoint", checkpoint, "--categories", bad)
    assert run.code == 2 and run.stdout == ""
    assert run.stderr.startswith("error: ") and f"{bad}" in run.stderr and "line 2" in run.stderr


def test_default_mapping_refuses_other_labels(checkpoint10, photos, tmp_path, resnext) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    run = resnext(
        "classify", photos, "--checkpoint", checkpoint10, "--labels", labels, "--categories"
    )
    assert run.code == 2 and run.stdout == ""
    assert run.stderr == (
        "error: the default categories are for imagenet's 1000 classes, not these 10 labels "
        "(pass your own mapping: --categories FILE)\n"
    )
