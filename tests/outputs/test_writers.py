"""csv (wide and long), parquet and the uncertain mark, each read back by its own reader."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from resnext_cli.errors import OutputError
from resnext_cli.model.registry import WeightsInfo
from resnext_cli.outputs.writers import (
    PARQUET_HINT,
    CsvWriter,
    JsonArrayWriter,
    JsonLinesWriter,
    MissingDependencyError,
    ParquetWriter,
    TableWriter,
    make_writer,
    models_json,
    models_table,
    require_pyarrow,
    resolve_format,
)
from resnext_cli.results import (
    CategoryScore,
    Classified,
    Failed,
    Prediction,
    Record,
    apply_threshold,
)
from tests.helpers import WIDTHS

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
    # Only a missing file: refused before the model, as a glob that matches nothing.
    gone = tmp_path / "gone.jpg"
    nothing = resnext("classify", gone, "--checkpoint", checkpoint, "-f", "json")
    assert (nothing.code, nothing.stdout) == (2, ""), nothing
    assert nothing.stderr == f"error: no such file: '{gone}'\n"


# The writers one by one, with records built by hand: each check takes milliseconds, so a
# mutation run tries every change against them (the CLI tests above run a model).

CAT = Classified(
    "photos/\x1b[2Jcat.jpg",
    "resnext50_32x4d",
    "IMAGENET1K_V2",
    (
        Prediction("tabby, tabby cat", 281, 0.625),
        Prediction("tiger\ncat", 282, 0.25),
        Prediction("Egyptian cat", 285, 0.0625),
    ),
    precision="fp32",
)
CATEGORIES = (CategoryScore("cat\x07s", 0.9375), CategoryScore("other", 0.0625))
MISSING = Failed("c\n.jpg", "not_found", "no such file")


class FlushLog(io.StringIO):
    """A stream that keeps what had been written at each flush: what a pipe reader sees."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        super().flush()
        self.flushed.append(self.getvalue())


def test_auto_format_follows_the_destination() -> None:
    named = {
        "out.json": "json",
        "OUT.JSON": "json",
        "out.jsonl": "jsonl",
        "out.ndjson": "jsonl",
        "Out.Csv": "csv",
        "out.parquet": "parquet",
        "out.txt": "jsonl",
        "json": "jsonl",
    }
    for name, fmt in named.items():
        assert resolve_format("auto", is_terminal=True, output_name=name) == fmt, name
    assert resolve_format("auto", is_terminal=True, output_name=None) == "table"
    assert resolve_format("auto", is_terminal=False, output_name=None) == "jsonl"
    assert resolve_format("csv", is_terminal=True, output_name="out.json") == "csv"
    assert resolve_format("json", is_terminal=True, output_name=None) == "json"


def test_jsonl_is_one_line_per_record_flushed_as_it_comes() -> None:
    stream = FlushLog()
    writer = JsonLinesWriter(stream)
    cafe = Classified("café.jpg", "m", "w", (Prediction("espresso ☕", 967, 0.5),))
    writer.write(cafe)
    line = (
        '{"input": "café.jpg", "model": "m", "weights": "w", "predictions": '
        '[{"label": "espresso ☕", "index": 967, "probability": 0.5}]}\n'
    )
    assert stream.flushed == [line]  # written unescaped, and flushed before the next input
    writer.write(MISSING)
    missing = '{"input": "c\\n.jpg", "error": {"type": "not_found", "message": "no such file"}}\n'
    assert stream.flushed == [line, line + missing]
    writer.close()
    assert stream.getvalue() == line + missing


def test_json_array_is_streamed_and_always_one_document() -> None:
    empty = FlushLog()
    JsonArrayWriter(empty).close()
    assert empty.flushed == ["[]\n"]
    stream = FlushLog()
    writer = JsonArrayWriter(stream)
    a, b = (Classified(name, "m", "w", (Prediction("ü", 1, 0.25),)) for name in ("a", "b"))
    writer.write(a)
    one = '{"input": "a", "model": "m", "weights": "w", "predictions": '
    one += '[{"label": "ü", "index": 1, "probability": 0.25}]}'
    assert stream.flushed == ["[\n  " + one]
    writer.write(b)
    two = one.replace('"a"', '"b"')
    writer.close()
    assert stream.flushed[1:] == [f"[\n  {one},\n  {two}", f"[\n  {one},\n  {two}\n]\n"]
    assert [r["input"] for r in json.loads(stream.getvalue())] == ["a", "b"]


def test_a_non_finite_probability_is_refused_not_written() -> None:
    for writer in (JsonLinesWriter(io.StringIO()), JsonArrayWriter(io.StringIO())):
        with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
            writer.write(Classified("a", "m", "w", (Prediction("x", 0, math.nan),)))


def test_csv_rows_are_flushed_as_each_record_comes() -> None:
    stream = FlushLog()
    writer = CsvWriter(stream, topk=1, uncertain=True)
    header = "input,path,label_1,probability_1,uncertain,error_type,error\n"
    writer.write(apply_threshold(CAT, 0.75))
    row = 'photos/\x1b[2Jcat.jpg,,"tabby, tabby cat",0.625,true,,\n'
    writer.write(MISSING)
    assert stream.flushed == [header + row, header + row + '"c\n.jpg",,,,,not_found,no such file\n']


def test_parquet_schema_row_groups_and_an_empty_run(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed (the parquet extra)")
    long = ParquetWriter(tmp_path / "long.parquet", long=True, uncertain=True)
    long.close()
    table = pq.read_table(tmp_path / "long.parquet")
    assert table.num_rows == 0
    assert [(f.name, str(f.type)) for f in table.schema] == [
        ("input", "string"),
        ("path", "string"),
        ("rank", "int32"),
        ("index", "int32"),
        ("label", "string"),
        ("probability", "double"),
        ("uncertain", "bool"),
        ("error_type", "string"),
        ("error", "string"),
    ]
    wide = ParquetWriter(tmp_path / "wide.parquet", topk=1)
    for _ in range(4096 + 1):  # row groups of 4096 rows unless told otherwise
        wide.write(MISSING)
    wide.close()
    file = pq.ParquetFile(tmp_path / "wide.parquet")
    assert [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)] == [4096, 1]
    assert [(f.name, str(f.type)) for f in file.schema_arrow] == [
        ("input", "string"),
        ("path", "string"),
        ("label_1", "string"),
        ("probability_1", "double"),
        ("error_type", "string"),
        ("error", "string"),
    ]
    exact = ParquetWriter(tmp_path / "exact.parquet", topk=1, group_rows=2)
    for _ in range(2):
        exact.write(CAT)
    exact.close()  # nothing left to write: no empty row group at the end
    assert pq.ParquetFile(tmp_path / "exact.parquet").metadata.num_row_groups == 1


def test_make_writer_gives_each_format_its_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def written(fmt: str, **options: object) -> str:
        stream = io.StringIO()
        writer = make_writer(fmt, stream, **options)  # type: ignore[arg-type]
        writer.write(CAT)
        writer.close()
        return stream.getvalue()

    assert json.loads(written("jsonl"))["input"] == CAT.input
    assert written("json").startswith("[\n  {") and len(json.loads(written("json"))) == 1
    wide = written("csv", topk=1, uncertain=True).splitlines()
    assert wide[0] == "input,path,label_1,probability_1,uncertain,error_type,error"
    long = written("csv", long=True).splitlines()
    assert long[0] == "input,path,rank,index,label,probability,error_type,error"
    assert long[1:] == [
        'photos/\x1b[2Jcat.jpg,,1,281,"tabby, tabby cat",0.625,,',
        'photos/\x1b[2Jcat.jpg,,2,282,"tiger',
        'cat",0.25,,',
        "photos/\x1b[2Jcat.jpg,,3,285,Egyptian cat,0.0625,,",
    ]
    with pytest.raises(OutputError) as caught:
        make_writer("parquet", io.StringIO())
    assert str(caught.value) == "parquet output needs a file (give -o FILE.parquet)"
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed (the parquet extra)")
    assert written("parquet", path=tmp_path / "a.parquet", topk=1, long=True) == ""
    assert pq.read_table(tmp_path / "a.parquet").column_names[2:4] == ["rank", "index"]
    written("parquet", path=tmp_path / "b.parquet", topk=1, uncertain=True)
    assert pq.read_table(tmp_path / "b.parquet").column_names[2:5] == [
        "label_1",
        "probability_1",
        "uncertain",
    ]
    with pytest.raises(ValueError) as unknown:
        make_writer("xml", io.StringIO())
    assert str(unknown.value) == "unknown format 'xml'"
    # A table with no console of its own goes to the stream, captioned, numbers not coloured
    # even where colour is forced (only the bar is).
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    table = written("table", caption="made by hand")
    assert "\x1b[36m███████████████░░░░░░░░░\x1b[0m" in table
    assert "   281 │      62.50% │" in table
    assert "\x1b[2;3mmade by hand" in table


def table_of(records: list[Record], *, caption: str | None = None, colour: bool = False) -> str:
    stream = io.StringIO()
    console = (
        Console(file=stream, width=80, force_terminal=True, color_system="standard")
        if colour
        else Console(file=stream, width=80, color_system=None)
    )
    writer = TableWriter(console, caption=caption)
    for r in records:
        writer.write(r)
    writer.close()
    return stream.getvalue()


def stripped(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def caption_of(table: str) -> str:
    """The caption under a detailed table, its folded lines joined."""
    lines = stripped(table)
    bottom = next(i for i, line in enumerate(lines) if line.startswith("└"))
    return " ".join(lines[bottom + 1 :])


BARS = {  # 24 cells, in eighths: what each probability of CAT and CATEGORIES draws
    0.9375: "█" * 22 + "▌" + "░",
    0.625: "█" * 15 + "░" * 9,
    0.25: "█" * 6 + "░" * 18,
    0.0625: "█▌" + "░" * 22,
}


def test_one_image_gets_every_class_with_its_categories_first() -> None:
    # Categories and classes each under their own header, each numbered from 1.
    cats = replace(CAT, categories=CATEGORIES)
    assert stripped(table_of([cats], caption="resnext50_32x4d (IMAGENET1K_V2) on cpu")) == [
        "photos/\\x1b[2Jcat.jpg",
        "┏━━━┳━━━━━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━┓",
        "┃ # ┃ category ┃ probability ┃                          ┃",
        "┡━━━╇━━━━━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━┩",
        f"│ 1 │ cat\\x07s │      93.75% │ {BARS[0.9375]} │",
        f"│ 2 │ other    │       6.25% │ {BARS[0.0625]} │",
        "└───┴──────────┴─────────────┴──────────────────────────┘",
        "┏━━━┳━━━━━━━━━━━━━━━━━━┳━━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━┓",
        "┃ # ┃ class            ┃ index ┃ probability ┃                          ┃",
        "┡━━━╇━━━━━━━━━━━━━━━━━━╇━━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━┩",
        f"│ 1 │ tabby, tabby cat │   281 │      62.50% │ {BARS[0.625]} │",
        f"│ 2 │ tiger\\ncat       │   282 │      25.00% │ {BARS[0.25]} │",
        f"│ 3 │ Egyptian cat     │   285 │       6.25% │ {BARS[0.0625]} │",
        "└───┴──────────────────┴───────┴─────────────┴──────────────────────────┘",
        "resnext50_32x4d (IMAGENET1K_V2) on cpu",
    ]
    coloured = table_of([cats], colour=True)
    assert "│ \x1b[1mcat\\x07s\x1b[0m │" in coloured  # categories in bold
    assert "│ tabby, tabby cat │" in coloured  # classes plain
    for bar in BARS.values():
        assert f"\x1b[36m{bar}\x1b[0m" in coloured
    assert "\n┏━━━┳" in coloured  # a sure result: borders not dimmed


def test_one_image_caption_says_how_and_whether_it_is_uncertain() -> None:
    body = stripped(table_of([CAT]))
    assert body[0] == "photos/\\x1b[2Jcat.jpg"
    assert body[4:7] == [
        f"│ 1 │ tabby, tabby cat │   281 │      62.50% │ {BARS[0.625]} │",
        f"│ 2 │ tiger\\ncat       │   282 │      25.00% │ {BARS[0.25]} │",
        f"│ 3 │ Egyptian cat     │   285 │       6.25% │ {BARS[0.0625]} │",
    ]
    assert body[7:] == [
        "└───┴──────────────────┴───────┴─────────────┴──────────────────────────┘",
        "fp32",
    ]
    caption = "resnext50_32x4d (IMAGENET1K_V2) on cpu, fp32"
    assert caption_of(table_of([CAT], caption=caption)) == caption
    assert caption_of(table_of([replace(CAT, precision=None)])) == ""
    note = "uncertain: the top-1 probability is below --min-probability"
    unsure = replace(CAT, uncertain=True)
    assert caption_of(table_of([unsure])) == f"fp32; {note}"
    assert caption_of(table_of([unsure], caption=caption)) == f"{caption}; {note}"
    assert caption_of(table_of([replace(unsure, precision=None)])) == note
    assert caption_of(table_of([replace(CAT, uncertain=False)])) == "fp32"
    assert "\n\x1b[2m┏━━━┳" in table_of([unsure], colour=True)  # an uncertain result is dimmed


def test_one_image_name_and_caption_wider_than_the_table_stay_one_line() -> None:
    """A long path and a long caption (a checkpoint under a deep temp folder) are lines of
    their own, whole: a table would fold them to its width, mid-word."""
    name = "/tmp/" + "deep/" * 20 + "cat.jpg"
    caption = f"resnext50_32x4d ({'/tmp/' + 'ckpt/' * 20}my.pth) on cpu, fp32"
    body = stripped(table_of([replace(CAT, input=name)], caption=caption))
    assert body[0] == name
    assert body[-1] == caption
    assert body[1].startswith("┏") and body[-2].startswith("└")
    coloured = table_of([replace(CAT, input=name)], caption=caption, colour=True).splitlines()
    assert coloured[0] == f"\x1b[3m{name}\x1b[0m"  # italic, as rich styles a table's title
    assert coloured[-1] == f"\x1b[2;3m{caption}\x1b[0m"  # dim italic, as a table's caption


def test_one_failed_image_is_one_line() -> None:
    failed = Failed("scans/\x1bpage.png", "not_an_image", "cannot identify\x07 'page.png'")
    assert (
        table_of([failed]) == "scans/\\x1bpage.png: not_an_image: cannot identify\\x07 'page.png'\n"
    )
    assert table_of([failed], caption="made by hand", colour=True) == (
        "\x1b[1mscans/\\x1bpage.png: \x1b[0m"
        "\x1b[1;31mnot_an_image: cannot identify\\x07 'page.png'\x1b[0m\n"
    )


def test_many_images_are_one_row_each_names_shortened_in_the_middle_labels_folded() -> None:
    long = Classified(
        "holiday/" + "very-long-name-" * 5 + ".jpg",
        "m",
        "w",
        (
            Prediction("a label far longer than its column", 1, 1.0),
            Prediction("a runner-up far longer than its column", 2, 0.0),
        ),
    )
    lone = Classified(
        "IMG 0001 from the holiday.png", "m", "w", (Prediction("only", 7, 0.999),), uncertain=True
    )
    cats = replace(CAT, categories=CATEGORIES)
    # 80 columns: no bar; a name keeps its start and its end; a label is never cut, it folds.
    rows = [
        "input             category: top-1                 prob  runner-up",
        "photos/…Jcat.jpg  cat\\x07s: tabby, tabby cat     62.5%  tiger\\ncat 25.0%",
        "holiday…ame-.jpg  a label far longer than its   100.0%  a runner-up far longer",
        "                  column                                than its column 0.0%",
        "IMG 000…iday.png  only                           99.9%",
        "c\\n.jpg           error: not_found",
    ]
    assert stripped(table_of([cats, long, lone, MISSING])) == rows
    captioned = table_of([cats, long, lone, MISSING], caption="resnext50_32x4d " + "x" * 80)
    assert stripped(captioned) == [*rows, "resnext50_32x4d " + "x" * 80]  # never folded
    # The input column is as wide as the first names need, no wider.
    assert stripped(table_of([CAT, MISSING]))[:2] == [
        "input                  top-1                   prob  runner-up",
        "photos/\\x1b[2Jcat.jpg  tabby, tabby cat       62.5%  tiger\\ncat 25.0%",
    ]
    coloured = table_of([cats, MISSING], caption="made by hand", colour=True)
    assert coloured.endswith("\n\x1b[2mmade by hand\x1b[0m\n")  # the caption dimmed
    assert "\x1b[1mcat\\x07s: tabby, tabby cat  \x1b[0m" in coloured
    assert "\x1b[31merror: not_found            \x1b[0m" in coloured
    assert "\x1b[1minput" in coloured  # the header, once
    assert coloured.count("input") == 1 and coloured.count("top-1") == 1


# `resnext models`: torchvision's metadata as JSON or as a table that a pipe gets whole.

R50 = WeightsInfo(
    model="resnext50_32x4d",
    tag="IMAGENET1K_V2",
    url="https://download.pytorch.org/models/resnext50_32x4d-1a0047aa.pth",
    is_default=True,
    acc1=81.198,
    acc5=95.34,
    params=25028904,
    gflops=4.23,
    file_size_mb=95.833,
    resize_size=232,
    crop_size=224,
    num_classes=1000,
)
INT8 = WeightsInfo(  # made up: a mirror's URL, 88.75M parameters (shown rounded half even)
    model="resnext101_32x8d",
    tag="IMAGENET1K_FBGEMM_V1",
    url="https://mirror.example/quantized/resnext101_32x8_fbgemm_09835ccf.pth",
    is_default=False,
    acc1=78.986,
    acc5=94.48,
    params=88_750_000,
    gflops=16.414,
    file_size_mb=86.645,
    resize_size=256,
    crop_size=224,
    num_classes=1000,
    quantized=True,
    backend="fbgemm",
    unquantized="IMAGENET1K_V1",
)


def cache_r50() -> None:
    """Put resnext50's file where torch.hub keeps it: $TORCH_HOME/hub/checkpoints."""
    folder = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "resnext50_32x4d-1a0047aa.pth").write_bytes(b"listing never reads it")


def test_models_json_has_every_field() -> None:
    cache_r50()
    text = models_json([R50, INT8])
    assert text.startswith('[\n  {\n    "model": "resnext50_32x4d",\n    "weights"')
    assert json.loads(text) == [
        {
            "model": "resnext50_32x4d",
            "weights": "IMAGENET1K_V2",
            "quantized": False,
            "default": True,
            "acc@1": 81.198,
            "acc@5": 95.34,
            "params": 25028904,
            "gflops": 4.23,
            "file_size_mb": 95.833,
            "resize": 232,
            "crop": 224,
            "file": "resnext50_32x4d-1a0047aa.pth",
            "cached": True,
            "url": "https://download.pytorch.org/models/resnext50_32x4d-1a0047aa.pth",
        },
        {
            "model": "resnext101_32x8d",
            "weights": "IMAGENET1K_FBGEMM_V1",
            "quantized": True,
            "default": False,
            "acc@1": 78.986,
            "acc@5": 94.48,
            "params": 88_750_000,
            "gflops": 16.414,
            "file_size_mb": 86.645,
            "resize": 256,
            "crop": 224,
            "file": "resnext101_32x8_fbgemm_09835ccf.pth",
            "cached": False,
            "url": "https://mirror.example/quantized/resnext101_32x8_fbgemm_09835ccf.pth",
        },
    ]


def test_models_table_for_a_pipe_is_whole() -> None:
    cache_r50()
    stream = io.StringIO()
    models_table([R50, INT8], stream, is_terminal=False)
    assert stripped(stream.getvalue()) == [
        " " * 36 + "ResNeXt weights (ImageNet-1K, torchvision's metadata)",
        "model             weights               acc@1  acc@5  params  GFLOPs  MB   resize"
        "  cached  file",
        "─" * 126,
        "resnext50_32x4d   IMAGENET1K_V2 *       81.20  95.34   25.0M    4.23  96  232/224"
        "     yes  resnext50_32x4d-1a0047aa.pth",
        "resnext101_32x8d  IMAGENET1K_FBGEMM_V1  78.99  94.48   88.8M   16.41  87  256/224"
        "      no  resnext101_32x8_fbgemm_09835ccf.pth",
        " " * 27 + "* the DEFAULT weights of each model; FBGEMM tags are INT8 (--quantized)",
    ]


def test_models_table_on_a_narrow_terminal_leaves_out_whole_columns_file_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    stream = io.StringIO()
    cache_r50()
    models_table([R50, INT8], stream, is_terminal=True)
    lines = stripped(stream.getvalue())
    assert lines[1] == (
        "model             weights               acc@1  acc@5  params  GFLOPs  MB   resize  cached"
    )
    assert lines[3:5] == [
        "resnext50_32x4d   IMAGENET1K_V2 *       81.20  95.34   25.0M    4.23  96  232/224     yes",
        "resnext101_32x8d  IMAGENET1K_FBGEMM_V1  78.99  94.48   88.8M   16.41  87  256/224      no",
    ]
    assert " ".join(" ".join(lines[5:]).split()) == (
        "* the DEFAULT weights of each model; FBGEMM tags are INT8 (--quantized); not shown: "
        "file (widen or see -f json)"
    )


def test_models_table_for_a_pipe_has_long_file_names_whole_and_no_colour(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # colour forced: the numbers still stay plain
    monkeypatch.delenv("NO_COLOR", raising=False)
    name = "resnext50_32x4d-" + "0123456789abcdef" * 10 + ".pth"
    mirrored = replace(R50, url=f"https://mirror.example/models/{name}")
    stream = io.StringIO()
    models_table([mirrored], stream, is_terminal=False)
    row = stream.getvalue().splitlines()[3]
    assert row.rstrip() == (
        "resnext50_32x4d  IMAGENET1K_V2 *  81.20  95.34   25.0M    4.23  96  232/224      no  "
        + name
    )


def test_ten_classes_are_numbered_right_aligned() -> None:
    ten = replace(CAT, predictions=tuple(Prediction(f"class {i}", i, 0.1) for i in range(10)))
    rows = [line for line in stripped(table_of([ten])) if line.startswith("│")]
    assert [row[:22] for row in rows[8:]] == ["│  9 │ class 8 │     8", "│ 10 │ class 9 │     9"]


def test_five_predictions_unless_told_otherwise() -> None:
    five = [f"{n}_{i}" for i in range(1, 6) for n in ("label", "probability")]
    header = ["input", "path", *five, "error_type", "error"]
    assert write_csv([]).splitlines() == [",".join(header)]
    stream = io.StringIO()
    make_writer("csv", stream).close()
    assert stream.getvalue().splitlines() == [",".join(header)]


# -- strangers' text on a terminal ---------------------------------------------------------

HOSTILE_NAMES = [
    "\x1b]0;pwned\x07\x1b[31mred\x1b[0m",  # a title change and a colour
    "evil\u202egpj.exe",  # a right-to-left override
    "del\x7f and c1 \x9b31m",  # DEL and a C1 control sequence introducer
    "astral \U000e0001 tag",  # an invisible astral format character
    "lone \udcff surrogate",  # a file name that was not UTF-8
    "café ok, 名前 ok",  # printable text stays as it is
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_json_for_a_terminal_escapes_what_a_terminal_would_obey(name: str) -> None:
    from resnext_cli.outputs.writers import terminal_json

    text = terminal_json(json.dumps({"label": name}, ensure_ascii=False))
    assert text.isprintable()  # nothing left that a terminal acts on or hides
    assert json.loads(text) == {"label": name}  # and the same data reads back
    if name.isprintable():
        assert text == json.dumps({"label": name}, ensure_ascii=False)


def test_records_on_a_terminal_show_labels_and_names_escaped(tmp_path: Path, checkpoint) -> None:
    """A labels file (a stranger's) on a real pty: jsonl, json and csv all escaped there,
    while the same run into a pipe keeps the labels exactly as given."""
    import pty
    import subprocess

    from PIL import Image

    names = [n for n in HOSTILE_NAMES if "\udcff" not in n]  # a labels file is UTF-8
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(names[i % len(names)] for i in range(1000)) + "\n")
    photo = tmp_path / "evil\u202egpj.png"
    Image.new("RGB", (64, 48), "orange").save(photo)
    base = [sys.executable, "-m", "resnext_cli", "classify", str(photo), "--checkpoint",
            str(checkpoint), "--labels", str(labels), "-q"]  # fmt: skip
    for fmt in ("jsonl", "json", "csv"):
        main, secondary = pty.openpty()
        with subprocess.Popen([*base, "-f", fmt], stdout=secondary, stderr=subprocess.PIPE) as run:
            os.close(secondary)
            shown = b""
            while True:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # the pty's other end closed
                    break
                if not chunk:
                    break
                shown += chunk
            assert run.wait() == 0, run.stderr.read() if run.stderr else ""
        os.close(main)
        text = shown.decode("utf-8", "replace")
        assert "\x1b" not in text and "\u202e" not in text and "\x7f" not in text, (fmt, text)
        assert "\x9b" not in text and "\U000e0001" not in text, (fmt, text)
        assert "\\u202e" in text  # said, not obeyed (printable() and JSON spell it alike)
    piped = subprocess.run([*base, "-f", "jsonl"], capture_output=True, check=True)
    record = json.loads(piped.stdout)
    assert {p["label"] for p in record["predictions"]} <= set(names)
    assert record["input"] == str(photo)


def test_models_keeps_its_numbers_whole_at_every_width(monkeypatch: pytest.MonkeyPatch) -> None:
    from resnext_cli.model.registry import all_weights
    from resnext_cli.outputs.writers import models_table

    rows = all_weights(include_quantized=True)
    for width in WIDTHS:
        monkeypatch.setenv("COLUMNS", str(width))
        stream = io.StringIO()
        models_table(rows, stream, is_terminal=True)
        lines = stream.getvalue().splitlines()
        assert all(len(line) <= width for line in lines), width
        table = "\n".join(lines)
        assert "…" not in table
        for w in rows:  # the accuracy and the size of every tag, whole
            assert f"{w.acc1:.2f}" in table and f"{w.file_size_mb:.0f}" in table
        assert ("resnext50_32x4d-1a0047aa.pth" in table) == (width >= 200), width
        assert ("cached" in lines[1]) == (width >= 80), width
