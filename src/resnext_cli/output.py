"""Writers for result records: table, json, jsonl, csv. They see records, never tensors."""

from __future__ import annotations

import csv
import json
from typing import IO, Protocol

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .results import Failed, Record

FORMATS = ("auto", "table", "json", "jsonl", "csv")
_BY_SUFFIX = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


class Writer(Protocol):
    """Takes records one at a time, in input order."""

    def write(self, record: Record) -> None:
        """Write one record and flush it."""

    def close(self) -> None:
        """Finish the output (closing brackets, pending table rows)."""


def resolve_format(fmt: str, *, is_terminal: bool, output_name: str | None) -> str:
    """Turn 'auto' into a concrete format from the destination."""
    if fmt != "auto":
        return fmt
    if output_name is not None:
        for suffix, name in _BY_SUFFIX.items():
            if output_name.lower().endswith(suffix):
                return name
        return "jsonl"
    return "table" if is_terminal else "jsonl"


def printable(text: str) -> str:
    """Escape control and other unprintable characters of untrusted text for a terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _dumps(record: Record) -> str:
    return json.dumps(record.to_dict(), ensure_ascii=False)


class JsonLinesWriter:
    """One JSON object per line, flushed as each record completes."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, record: Record) -> None:
        self._stream.write(_dumps(record) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


class JsonArrayWriter:
    """One JSON array, streamed element by element."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._count = 0

    def write(self, record: Record) -> None:
        self._stream.write(("[\n  " if self._count == 0 else ",\n  ") + _dumps(record))
        self._stream.flush()
        self._count += 1

    def close(self) -> None:
        self._stream.write("[]\n" if self._count == 0 else "\n]\n")
        self._stream.flush()


CSV_HEADER = ("input", "rank", "index", "label", "probability", "error_type", "error")


class CsvWriter:
    """One row per prediction; a failed input is one row with its error."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._csv = csv.writer(stream, lineterminator="\n")
        self._csv.writerow(CSV_HEADER)

    def write(self, record: Record) -> None:
        if isinstance(record, Failed):
            self._csv.writerow([record.input, "", "", "", "", record.error_type, record.message])
        else:
            for rank, p in enumerate(record.predictions, start=1):
                self._csv.writerow([record.input, rank, p.index, p.label, repr(p.probability)])
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


def _bar(probability: float, width: int = 24) -> Text:
    filled = round(probability * width)
    return Text("█" * filled + "░" * (width - filled), style="cyan")


class TableWriter:
    """A rich table: every class for one image, or one row per image for many."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._first: Record | None = None
        self._rows = 0

    def write(self, record: Record) -> None:
        if self._rows == 0 and self._first is None:
            self._first = record  # wait: a lone image gets the detailed view
            return
        if self._first is not None:
            self._row(self._first)
            self._first = None
        self._row(record)

    def _row(self, record: Record) -> None:
        table = Table(box=None, show_header=self._rows == 0, pad_edge=False, expand=True)
        table.add_column("input", ratio=1, no_wrap=True, overflow="ellipsis")
        table.add_column("top-1", width=24, no_wrap=True, overflow="ellipsis")
        table.add_column("prob", width=6, justify="right", no_wrap=True)
        table.add_column("", width=10, no_wrap=True)
        table.add_column("runner-up", width=22, no_wrap=True, overflow="ellipsis")
        name = Text(printable(record.input))
        if isinstance(record, Failed):
            table.add_row(name, Text(f"error: {record.error_type}", style="red"), "", "", "")
        else:
            second = record.predictions[1] if len(record.predictions) > 1 else None
            table.add_row(
                name,
                Text(printable(record.top1.label), style="bold"),
                f"{record.top1.probability:.1%}",
                _bar(record.top1.probability, 10),
                Text(f"{printable(second.label)} {second.probability:.1%}") if second else "",
            )
        self._console.print(table)
        self._rows += 1

    def _detail(self, record: Record) -> None:
        if isinstance(record, Failed):
            self._console.print(
                Text(f"{printable(record.input)}: ", style="bold")
                + Text(f"{record.error_type}: {printable(record.message)}", style="red")
            )
            return
        table = Table(title=Text(printable(record.input)), title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("label")
        table.add_column("index", justify="right")
        table.add_column("probability", justify="right")
        table.add_column("")
        for rank, p in enumerate(record.predictions, start=1):
            label = Text(printable(p.label))
            table.add_row(
                str(rank), label, str(p.index), f"{p.probability:.2%}", _bar(p.probability)
            )
        self._console.print(table)

    def close(self) -> None:
        if self._first is not None:
            self._detail(self._first)
            self._first = None


def make_writer(fmt: str, stream: IO[str], *, console: Console | None = None) -> Writer:
    """Return the writer for a concrete format."""
    if fmt == "jsonl":
        return JsonLinesWriter(stream)
    if fmt == "json":
        return JsonArrayWriter(stream)
    if fmt == "csv":
        return CsvWriter(stream)
    if fmt == "table":
        return TableWriter(console or Console(file=stream, highlight=False))
    raise ValueError(f"unknown format {fmt!r}")
