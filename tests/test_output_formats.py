"""csv (wide and long), parquet and the uncertain mark, each read back by its own reader."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
from rich.console import Console

from resnext_cli.output import (
    PARQUET_HINT,
    CsvWriter,
    MissingDependencyError,
    ParquetWriter,
    TableWriter,
    require_pyarrow,
)
from resnext_cli.results import Classified, Failed, Prediction, Record, apply_threshold

LABELS = ['tabby, "tabby" cat', "crane\nbird", "jack-o'-lantern"]


def records(threshold: float | None = None) -> list[Record]:
    a = Classified(
        "photos/a.jpg",
        "resnext50_32x4d",
        "IMAGENET1K_V2",
        (Prediction(LABELS[0], 281, 0.625), Prediction(LABELS[1], 134, 0.1 + 0.2)),
        path="/data/photos/a.jpg",
    )
    b = Classified(
        "https://example.test/b.png",
        "resnext50_32x4d",
        "IMAGENET1K_V2",
        (Prediction(LABELS[2], 607, 0.25), Prediction(LABELS[0], 281, 1 / 3)),
    )
    c = Failed(
        "photos/c.jpg", "truncated", "'photos/c.jpg' is truncated", path="/data/photos/c.jpg"
    )
    return [apply_threshold(r, threshold) for r in (a, b, c)]


def write_csv(rows: list[Record], **shape: object) -> str:
    stream = io.StringIO()
    writer = CsvWriter(stream, **shape)  # type: ignore[arg-type]
    for r in rows:
        writer.write(r)
    writer.close()
    return stream.getvalue()


def test_csv_wide_is_one_row_per_image() -> None:
    parsed = list(csv.DictReader(io.StringIO(write_csv(records(), topk=2))))
    assert list(parsed[0]) == [
        "input",
        "path",
        "label_1",
        "probability_1",
        "label_2",
        "probability_2",
        "error_type",
        "error",
    ]
    assert parsed == [
        {
            "input": "photos/a.jpg",
            "path": "/data/photos/a.jpg",
            "label_1": LABELS[0],
            "probability_1": "0.625",
            "label_2": LABELS[1],
            "probability_2": repr(0.1 + 0.2),
            "error_type": "",
            "error": "",
        },
        {
            "input": "https://example.test/b.png",
            "path": "",
            "label_1": LABELS[2],
            "probability_1": "0.25",
            "label_2": LABELS[0],
            "probability_2": repr(1 / 3),
            "error_type": "",
            "error": "",
        },
        {
            "input": "photos/c.jpg",
            "path": "/data/photos/c.jpg",
            "label_1": "",
            "probability_1": "",
            "label_2": "",
            "probability_2": "",
            "error_type": "truncated",
            "error": "'photos/c.jpg' is truncated",
        },
    ]
    assert float(parsed[0]["probability_2"]) == 0.1 + 0.2  # repr round-trips exactly


def test_csv_wide_pads_short_predictions_and_long_is_one_row_per_prediction() -> None:
    wide = list(csv.reader(io.StringIO(write_csv(records()[:1], topk=3))))
    assert wide[0][-4:] == ["label_3", "probability_3", "error_type", "error"]
    assert wide[1][6:8] == ["", ""]
    text = write_csv(records(0.5), topk=2, long=True, uncertain=True)
    long = list(csv.DictReader(io.StringIO(text)))
    assert [
        (r["input"], r["rank"], r["index"], r["label"], r["uncertain"], r["error_type"])
        for r in long
    ] == [
        ("photos/a.jpg", "1", "281", LABELS[0], "false", ""),
        ("photos/a.jpg", "2", "134", LABELS[1], "false", ""),
        ("https://example.test/b.png", "1", "607", LABELS[2], "true", ""),
        ("https://example.test/b.png", "2", "281", LABELS[0], "true", ""),
        ("photos/c.jpg", "", "", "", "", "truncated"),
    ]
    assert [float(r["probability"]) for r in long[:4]] == [0.625, 0.1 + 0.2, 0.25, 1 / 3]


def test_parquet_wide_and_long_read_back_typed(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed (the parquet extra)")
    wide_path, long_path = tmp_path / "wide.parquet", tmp_path / "long.parquet"
    for path, long in ((wide_path, False), (long_path, True)):
        writer = ParquetWriter(path, topk=2, long=long, uncertain=True, group_rows=2)
        for r in records(0.5):
            writer.write(r)
        writer.close()
    wide = pq.read_table(wide_path)
    assert wide.schema.field("probability_1").type == "double"
    assert wide.schema.field("uncertain").type == "bool"
    assert pq.ParquetFile(wide_path).metadata.num_row_groups == 2  # written as it went
    assert wide.to_pylist() == [
        {
            "input": "photos/a.jpg",
            "path": "/data/photos/a.jpg",
            "label_1": LABELS[0],
            "probability_1": 0.625,
            "label_2": LABELS[1],
            "probability_2": 0.1 + 0.2,
            "uncertain": False,
            "error_type": None,
            "error": None,
        },
        {
            "input": "https://example.test/b.png",
            "path": None,
            "label_1": LABELS[2],
            "probability_1": 0.25,
            "label_2": LABELS[0],
            "probability_2": 1 / 3,
            "uncertain": True,
            "error_type": None,
            "error": None,
        },
        {
            "input": "photos/c.jpg",
            "path": "/data/photos/c.jpg",
            "label_1": None,
            "probability_1": None,
            "label_2": None,
            "probability_2": None,
            "uncertain": None,
            "error_type": "truncated",
            "error": "'photos/c.jpg' is truncated",
        },
    ]
    long = pq.read_table(long_path)
    assert long.schema.field("rank").type == "int32"
    assert long.column("index").to_pylist() == [281, 134, 607, 281, None]
    assert long.column("probability").to_pylist() == [0.625, 0.1 + 0.2, 0.25, 1 / 3, None]


def test_parquet_without_pyarrow_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependencyError) as caught:
        require_pyarrow()
    assert str(caught.value) == f"parquet output needs pyarrow ({PARQUET_HINT})"
    assert PARQUET_HINT == "install with pip install 'resnext-cli[parquet]'"


def test_cli_parquet_errors_come_before_the_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, resnext
) -> None:
    # No --checkpoint and no weights: reaching the model would fail differently.
    run = resnext("classify", tmp_path, "-f", "parquet", "--offline")
    assert (run.code, run.stderr.strip()) == (
        2,
        "error: parquet cannot go to a terminal or a pipe (give -o FILE.parquet)",
    )
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    run = resnext("classify", tmp_path, "-o", tmp_path / "out.parquet", "--offline")
    assert (run.code, run.stderr.strip()) == (
        2,
        f"error: parquet output needs pyarrow ({PARQUET_HINT})",
    )
    assert not (tmp_path / "out.parquet").exists()


def test_table_dims_uncertain_rows() -> None:
    stream = io.StringIO()
    console = Console(file=stream, width=100, force_terminal=True, color_system="standard")
    writer = TableWriter(console)
    for r in records(0.5)[:2]:
        writer.write(r)
    writer.close()
    rows = [line for line in stream.getvalue().splitlines() if "jpg" in line or "png" in line]
    sure, unsure = rows
    assert "\x1b[2m" not in sure and "\x1b[2m" in unsure


def test_cli_csv_and_parquet_match_the_json_records(checkpoint, make_image, tmp_path, resnext):
    folder = tmp_path / "photos"
    for seed in range(3):
        make_image(f"{seed}.jpg", seed=seed, size=(80, 64), folder=folder)
    (folder / "bad.jpg").write_bytes(b"no image")
    common = ["--checkpoint", checkpoint, "-k", "3", "--min-probability", "0.5"]
    reference = resnext("classify", folder, *common, "-f", "jsonl")
    expected = [json.loads(line) for line in reference.stdout.splitlines()]
    wide = resnext("classify", folder, *common, "-f", "csv")
    assert wide.code == 1, wide
    rows = list(csv.DictReader(io.StringIO(wide.stdout)))
    assert [r["input"] for r in rows] == [e["input"] for e in expected]
    for row, record in zip(rows, expected, strict=True):
        assert row["path"] == record["path"]
        if "error" in record:
            assert (row["error_type"], row["error"]) == tuple(record["error"].values())
            continue
        got = [(row[f"label_{i}"], float(row[f"probability_{i}"])) for i in (1, 2, 3)]
        assert got == [(p["label"], p["probability"]) for p in record["predictions"]]
        assert row["uncertain"] == str(record["uncertain"]).lower()
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed (the parquet extra)")
    out = tmp_path / "out.parquet"
    long = resnext("classify", folder, *common, "--long", "-o", out)
    assert long.code == 1 and long.stdout == "", long
    table = pq.read_table(out).to_pylist()
    assert [(t["input"], t["rank"], t["label"], t["probability"]) for t in table if t["rank"]] == [
        (e["input"], rank, p["label"], p["probability"])
        for e in expected
        if "predictions" in e
        for rank, p in enumerate(e["predictions"], start=1)
    ]
    assert [t["error_type"] for t in table if t["error_type"]] == ["not_an_image"]


def test_json_is_one_array(checkpoint, make_image, tmp_path, resnext) -> None:
    images = [make_image(f"{i}.png", seed=50 + i, size=(64, 48)) for i in range(2)]
    run = resnext("classify", *images, "--checkpoint", checkpoint, "-f", "json", "-k", "2")
    assert run.code == 0, run
    data = json.loads(run.stdout)  # the whole of stdout is one JSON document
    assert isinstance(data, list)
    assert [r["input"] for r in data] == [str(p) for p in images]
    assert [len(r["predictions"]) for r in data] == [2, 2]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    mixed = resnext("classify", images[0], bad, "--checkpoint", checkpoint, "-f", "json")
    assert mixed.code == 1, mixed  # one input failed; the array still holds both records
    data = json.loads(mixed.stdout)
    assert [r["input"] for r in data] == [str(images[0]), str(bad)]
    assert "predictions" in data[0] and data[1]["error"]["type"] == "not_an_image"
    nothing = resnext("classify", tmp_path / "gone.jpg", "--checkpoint", checkpoint, "-f", "json")
    assert nothing.code == 1, nothing
    assert [r["error"]["type"] for r in json.loads(nothing.stdout)] == ["not_found"]
