"""Writers for result records: table, json, jsonl, csv, parquet. They see records, never tensors."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from rich.cells import cell_len
from rich.console import Console, JustifyMethod
from rich.table import Table
from rich.text import Text

from resnext_cli.console import bar, middle_ellipsis, printable
from resnext_cli.errors import OutputError
from resnext_cli.model.registry import WeightsInfo
from resnext_cli.results import Classified, Failed, Record

FORMATS = ("auto", "table", "json", "jsonl", "csv", "parquet")
_BY_SUFFIX = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}
PARQUET_HINT = "install with pip install 'resnext-cli[parquet]'"


class MissingDependencyError(OutputError):
    """An optional package that the chosen output needs is not installed."""


class Writer(Protocol):
    """Takes records one at a time, in input order."""

    def write(self, record: Record) -> None:
        """Write one record and flush it."""

    def close(self) -> None:
        """Finish the output (closing brackets, pending table rows)."""


def known_suffix(output_name: str | None) -> str | None:
    """The format an output file's name says (.jsonl, .json, .csv, ...), or None."""
    if output_name is None:
        return None
    for suffix, name in _BY_SUFFIX.items():
        if output_name.lower().endswith(suffix):
            return name
    return None


def resolve_format(fmt: str, *, is_terminal: bool, output_name: str | None) -> str:
    """Turn 'auto' into a concrete format from the destination."""
    if fmt != "auto":
        return fmt
    if output_name is not None:
        # A device or a pipe, or a file continued by --resume: the CLI refuses other names.
        return known_suffix(output_name) or "jsonl"
    return "table" if is_terminal else "jsonl"


def _dumps(record: Record, *, terminal: bool = False) -> str:
    # NaN is refused: a non-finite number is a bug to see, never invalid JSON to ship.
    text = json.dumps(record.to_dict(), ensure_ascii=False, allow_nan=False)
    return terminal_json(text) if terminal else text


def terminal_json(text: str) -> str:
    """JSON text safe to show on a terminal: every unprintable character left in a string
    (DEL, C1 controls, bidirectional overrides; JSON escapes the C0 controls itself) as a
    \\u escape, which reads back as the same string."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ord(ch) > 0xFFFF:  # a surrogate pair, as JSON spells one
            high, low = divmod(ord(ch) - 0x10000, 0x400)
            out.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


class JsonLinesWriter:
    """One JSON object per line, flushed as each record completes."""

    def __init__(self, stream: IO[str], *, terminal: bool = False) -> None:
        self._stream = stream
        self._terminal = terminal

    def write(self, record: Record) -> None:
        self._stream.write(_dumps(record, terminal=self._terminal) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


class JsonArrayWriter:
    """One JSON array, streamed element by element."""

    def __init__(self, stream: IO[str], *, terminal: bool = False) -> None:
        self._stream = stream
        self._opened = False
        self._terminal = terminal

    def write(self, record: Record) -> None:
        text = _dumps(record, terminal=self._terminal)
        self._stream.write((",\n  " if self._opened else "[\n  ") + text)
        self._stream.flush()
        self._opened = True

    def close(self) -> None:
        self._stream.write("\n]\n" if self._opened else "[]\n")
        self._stream.flush()


# Tabular forms shared by csv and parquet. Wide: one row per input, the top-k as
# label_i/probability_i column pairs. Long: one row per prediction (rank 1..k). A failed
# input is one row with its error. "uncertain" is a column only when a threshold was given.
Cell = str | int | float | bool | None


@dataclass(frozen=True)
class TableShape:
    """Which table the csv and parquet writers produce."""

    topk: int = 5
    long: bool = False
    uncertain: bool = False
    # --embeddings (parquet only): a last column with each image's feature vector.
    embeddings: bool = False

    def columns(self) -> list[str]:
        """The column names, in order."""
        if self.long:
            middle = ["rank", "index", "label", "probability"]
        else:
            middle = [f"{n}_{i}" for i in range(1, self.topk + 1) for n in ("label", "probability")]
        flag = ["uncertain"] if self.uncertain else []
        vector = ["embedding"] if self.embeddings else []
        return ["input", "path", *middle, *flag, "error_type", "error", *vector]

    def rows(self, record: Record) -> list[list[Any]]:
        """The rows one record becomes, matching columns()."""
        rows: list[list[Any]] = [list(row) for row in self._rows(record)]
        if self.embeddings:
            vector = record.embedding if isinstance(record, Classified) else None
            for row in rows:
                row.append(None if vector is None else list(vector))
        return rows

    def _rows(self, record: Record) -> list[list[Cell]]:
        head: list[Cell] = [record.input, record.path]
        if isinstance(record, Failed):
            blanks: list[Cell] = [None] * (4 if self.long else 2 * self.topk)
            none: list[Cell] = [None] if self.uncertain else []
            return [[*head, *blanks, *none, record.error_type, record.message]]
        assert isinstance(record, Classified)
        flag: list[Cell] = [record.uncertain] if self.uncertain else []
        if self.long:
            return [
                [*head, rank, p.index, p.label, p.probability, *flag, None, None]
                for rank, p in enumerate(record.predictions, start=1)
            ]
        pairs: list[Cell] = []
        for i in range(self.topk):
            p = record.predictions[i] if i < len(record.predictions) else None
            pairs += [p.label, p.probability] if p else [None, None]
        return [[*head, *pairs, *flag, None, None]]


def _csv_cell(value: Cell) -> str | int:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return value


class CsvWriter:
    """One row per input (wide, the default) or per prediction (long)."""

    def __init__(
        self,
        stream: IO[str],
        *,
        topk: int = 5,
        long: bool = False,
        uncertain: bool = False,
        terminal: bool = False,
    ) -> None:
        self._stream = stream
        self._shape = TableShape(topk, long, uncertain)
        self._csv = csv.writer(stream, lineterminator="\n")
        self._csv.writerow(self._shape.columns())
        # On a terminal, names and labels (strangers' text) are shown escaped.
        self._cell = (lambda v: printable(v) if isinstance(v, str) else v) if terminal else None

    def write(self, record: Record) -> None:
        for row in self._shape.rows(record):
            cells = [_csv_cell(v) for v in row]
            if self._cell is not None:
                cells = [self._cell(v) for v in cells]
            self._csv.writerow(cells)
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


def require_pyarrow() -> Any:
    """Import pyarrow.parquet, or raise with how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError(f"parquet output needs pyarrow ({PARQUET_HINT})") from None
    return pq


class ParquetWriter:
    """The csv table as a typed Parquet file, written in row groups as records arrive."""

    def __init__(
        self,
        path: Path | BinaryIO,
        *,
        topk: int = 5,
        long: bool = False,
        uncertain: bool = False,
        embeddings: bool = False,
        group_rows: int = 4096,
    ) -> None:
        pq = require_pyarrow()
        import pyarrow as pa

        self._pa = pa
        self._shape = TableShape(topk, long, uncertain, embeddings)
        types = {
            "rank": pa.int32(),
            "index": pa.int32(),
            "uncertain": pa.bool_(),
            "embedding": pa.list_(pa.float32()),
        }
        self._schema = pa.schema(
            [
                (n, pa.float64() if n.startswith("probability") else types.get(n, pa.string()))
                for n in self._shape.columns()
            ]
        )
        self._rows: list[list[Any]] = []
        self._group_rows = group_rows
        # A file object (this tool's own temporary file) is written as it is, never reopened.
        where = str(path) if isinstance(path, Path) else path
        self._file = pq.ParquetWriter(where, self._schema)

    def write(self, record: Record) -> None:
        self._rows.extend(self._shape.rows(record))
        if len(self._rows) >= self._group_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        columns = [
            self._pa.array([row[i] for row in self._rows], type=field.type)
            for i, field in enumerate(self._schema)
        ]
        # Typed by the arrays themselves: a table whose types differ from the file's is refused.
        self._file.write_table(self._pa.Table.from_arrays(columns, names=self._schema.names))
        self._rows = []

    def close(self) -> None:
        self._flush()
        self._file.close()


def _bar(probability: float, width: int = 24) -> Text:
    return Text(bar(probability, width, track="░"), style="cyan")


# Widths of the one-line-per-image table. Numbers have their width; labels get what most
# ImageNet labels need (97% are 19 cells or fewer) and fold when longer; the input gets
# what is left, up to what its names need, and loses its middle when longer.
PROB_WIDTH = len("100.0%")
BAR_WIDTH = 10
BAR_FROM = 100  # columns: narrower terminals leave the bar out
LABEL_WIDTH = 20
CATEGORY_WIDTH = 12  # 'category: ' before the label
INPUT_MIN = 16
GAP = 2


@dataclass(frozen=True)
class RowLayout:
    """Column widths of the one-line-per-image table at one terminal width."""

    input: int
    top: int
    runner: int
    bar: bool

    @classmethod
    def fit(cls, width: int, *, names: int, categories: bool = False) -> RowLayout:
        """Widths for a *width*-column terminal and input names of up to *names* cells."""
        bar = width >= BAR_FROM
        label = LABEL_WIDTH + (CATEGORY_WIDTH if categories else 0)
        runner = LABEL_WIDTH + 1 + PROB_WIDTH  # 'label 12.3%'
        avail = width - PROB_WIDTH - 3 * GAP - (BAR_WIDTH + GAP if bar else 0)
        # The input first, as far as its names need and the labels' full width allows...
        shown = min(max(INPUT_MIN, names), max(INPUT_MIN, avail - label - runner))
        # ...then the labels share the rest; a label longer than its column folds.
        rest = max(2 * (INPUT_MIN // 2), avail - shown)
        top = min(label, rest * label // (label + runner))
        return cls(shown, top, min(runner, rest - top), bar)


class TableWriter:
    """A rich table: every class for one image, or one row per image for many."""

    def __init__(self, console: Console, *, caption: str | None = None) -> None:
        self._console = console
        self._caption = caption
        self._first: Record | None = None
        self._rows_shown = False
        self._layout: RowLayout | None = None

    def write(self, record: Record) -> None:
        if not self._rows_shown and self._first is None:
            self._first = record  # wait: a lone image gets the detailed view
            return
        if self._first is not None:
            first, self._first = self._first, None
            names = max(cell_len(printable(r.input)) for r in (first, record))
            categories = isinstance(first, Classified) and bool(first.categories)
            self._layout = RowLayout.fit(self._console.width, names=names, categories=categories)
            self._row(first)
        self._row(record)

    def _row(self, record: Record) -> None:
        layout = self._layout
        assert layout is not None
        table = Table(box=None, show_header=not self._rows_shown, pad_edge=False)
        table.add_column("input", width=layout.input, no_wrap=True)
        categories = isinstance(record, Classified) and bool(record.categories)
        top_header = "category: top-1" if categories else "top-1"
        table.add_column(top_header, width=layout.top, overflow="fold")
        table.add_column("prob", width=PROB_WIDTH, justify="right", no_wrap=True)
        if layout.bar:
            table.add_column("", width=BAR_WIDTH, no_wrap=True)
        table.add_column("runner-up", width=layout.runner, overflow="fold")
        name = Text(middle_ellipsis(printable(record.input), layout.input))
        if isinstance(record, Failed):
            table.add_row(name, Text(f"error: {record.error_type}", style="red"))
        else:
            second = record.predictions[1] if len(record.predictions) > 1 else None
            top = printable(record.top1.label)
            if record.categories:
                top = f"{printable(record.categories[0].name)}: {top}"
            cells: list[Any] = [name, Text(top, style="bold"), f"{record.top1.probability:.1%}"]
            if layout.bar:
                cells.append(_bar(record.top1.probability, BAR_WIDTH))
            cells.append(
                Text(f"{printable(second.label)} {second.probability:.1%}") if second else ""
            )
            table.add_row(*cells, style="dim" if record.uncertain else None)
        self._console.print(table)
        self._rows_shown = True

    def _detail(self, record: Record) -> None:
        if isinstance(record, Failed):
            self._console.print(
                Text(f"{printable(record.input)}: ", style="bold")
                + Text(f"{record.error_type}: {printable(record.message)}", style="red")
            )
            return
        # The name above the table and the caption under it are lines of their own, as
        # long as they are: a table would fold them to its own width (a pipe gets them whole).
        caption = self._caption or record.precision
        style = ""
        if record.uncertain:
            note = "uncertain: the top-1 probability is below --min-probability"
            caption = f"{caption}; {note}" if caption else note
            style = "dim"
        tables = []
        if record.categories:
            # Categories first (what a person files under), then the classes, each numbered
            # under its own header.
            groups = Table(style=style)
            groups.add_column("#", justify="right")
            groups.add_column("category", overflow="fold")
            groups.add_column("probability", justify="right", no_wrap=True)
            groups.add_column("")
            for rank, c in enumerate(record.categories, start=1):
                groups.add_row(
                    str(rank),
                    Text(printable(c.name), style="bold"),
                    f"{c.probability:.2%}",
                    _bar(c.probability),
                )
            tables.append(groups)
        table = Table(style=style)
        table.add_column("#", justify="right")
        table.add_column("class" if record.categories else "label", overflow="fold")
        table.add_column("index", justify="right", no_wrap=True)
        table.add_column("probability", justify="right", no_wrap=True)
        table.add_column("")
        for rank, p in enumerate(record.predictions, start=1):
            label = Text(printable(p.label))
            table.add_row(
                str(rank), label, str(p.index), f"{p.probability:.2%}", _bar(p.probability)
            )
        tables.append(table)
        self._console.print(Text(printable(record.input), style="table.title"), soft_wrap=True)
        for t in tables:
            self._console.print(t)
        if caption:
            self._console.print(Text(caption, style="table.caption"), soft_wrap=True)

    def close(self) -> None:
        if self._first is not None:
            self._detail(self._first)
            self._first = None
        elif self._rows_shown and self._caption:
            # One line, as long as it is: a terminal folds it, a pipe gets it whole.
            self._console.print(Text(self._caption, style="dim"), soft_wrap=True)


def make_writer(
    fmt: str,
    stream: IO[str],
    *,
    console: Console | None = None,
    topk: int = 5,
    long: bool = False,
    uncertain: bool = False,
    path: Path | BinaryIO | None = None,
    caption: str | None = None,
    embeddings: bool = False,
    terminal: bool = False,
) -> Writer:
    """Return the writer for a concrete format (parquet writes to *path*, not *stream*).

    *terminal*: the stream is a terminal, where strangers' text is shown escaped (JSON
    with \\u escapes that read back as the same strings; CSV cells as printable() shows).
    """
    if fmt == "jsonl":
        return JsonLinesWriter(stream, terminal=terminal)
    if fmt == "json":
        return JsonArrayWriter(stream, terminal=terminal)
    if fmt == "csv":
        return CsvWriter(stream, topk=topk, long=long, uncertain=uncertain, terminal=terminal)
    if fmt == "parquet":
        if path is None:
            raise OutputError("parquet output needs a file (give -o FILE.parquet)")
        return ParquetWriter(path, topk=topk, long=long, uncertain=uncertain, embeddings=embeddings)
    if fmt == "table":
        return TableWriter(console or Console(file=stream, highlight=False), caption=caption)
    raise ValueError(f"unknown format {fmt!r}")


def models_json(rows: list[WeightsInfo]) -> str:
    """The weights list as JSON, with each file's name and whether it is cached."""
    from resnext_cli.model.weights import cached_path

    payload = [
        {
            "model": w.model,
            "weights": w.tag,
            "quantized": w.quantized,
            "default": w.is_default,
            "acc@1": w.acc1,
            "acc@5": w.acc5,
            "params": w.params,
            "gflops": w.gflops,
            "file_size_mb": w.file_size_mb,
            "resize": w.resize_size,
            "crop": w.crop_size,
            "file": w.filename,
            "cached": cached_path(w.url).is_file(),
            "url": w.url,
        }
        for w in rows
    ]
    return json.dumps(payload, indent=2)


# What a narrow terminal leaves out of `resnext models` first: numbers are never cut.
_MODELS_DROP = ("file", "resize", "GFLOPs", "params", "cached", "acc@5")


def models_table(rows: list[WeightsInfo], stream: IO[str], *, is_terminal: bool) -> None:
    """The weights list as a compact table; a terminal too narrow for every column loses
    whole columns (the file name first), never digits; a pipe gets every column."""
    from resnext_cli.model.weights import cached_path

    cells = {
        "model": [w.model for w in rows],
        "weights": [w.tag + (" *" if w.is_default else "") for w in rows],
        "acc@1": [f"{w.acc1:.2f}" for w in rows],
        "acc@5": [f"{w.acc5:.2f}" for w in rows],
        "params": [f"{w.params / 1e6:.1f}M" for w in rows],
        "GFLOPs": [f"{w.gflops:.2f}" for w in rows],
        "MB": [f"{w.file_size_mb:.0f}" for w in rows],
        "resize": [f"{w.resize_size}/{w.crop_size}" for w in rows],
        "cached": ["yes" if cached_path(w.url).is_file() else "no" for w in rows],
        "file": [w.filename for w in rows],
    }
    console = Console(file=stream, highlight=False)
    unbounded = console.options.update_width(sys.maxsize)
    shown = list(cells)
    table = _models(cells, shown)
    if is_terminal:
        for name in _MODELS_DROP:
            if console.measure(table, options=unbounded).maximum <= console.width:
                break
            shown.remove(name)
            table = _models(cells, shown)
        left_out = ", ".join(name for name in cells if name not in shown)
        if left_out:
            table.caption = f"{table.caption}; not shown: {left_out} (widen or see -f json)"
    else:  # rich assumes 80 columns for a pipe: a pipe gets every row whole
        console.width = console.measure(table, options=unbounded).maximum
    console.print(table)


def _models(cells: dict[str, list[str]], shown: list[str]) -> Table:
    from rich import box

    table = Table(
        title="ResNeXt weights (ImageNet-1K, torchvision's metadata)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
        pad_edge=False,
        caption="* the DEFAULT weights of each model; FBGEMM tags are INT8 (--quantized)",
    )
    for name in shown:
        justify: JustifyMethod = "left" if name in ("model", "weights", "file") else "right"
        table.add_column(name, justify=justify, no_wrap=True)
    for row in zip(*(cells[name] for name in shown), strict=True):
        table.add_row(*row)
    return table
