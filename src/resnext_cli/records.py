"""The one reader of result records written by `resnext classify -o` (JSON Lines or a JSON array).

`--resume` (outputs/sinks.py) and `sort --from` (sort/) both read records back through
:func:`read_records`. A records file is data from a stranger: every line must be a record
this tool could have written (an object with an ``input``; ``predictions`` or an
``error``; a ``path``, if any, absolute, without NUL and nameable on this system; ``size``
and ``mtime_ns`` whole numbers; probabilities finite numbers from 0 to 1, indexes 0 or
more, an embedding a list of finite numbers; text where the tool writes text), or the
whole file is refused with :class:`RecordsProblem` naming the line; JSON nested too deep,
lines over 16 MB, bytes that are not UTF-8 and ``NaN`` are refused the same way. Keys the
tool does not know are kept in :attr:`Entry.data` for callers that file by them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from resnext_cli import reviewed
from resnext_cli.files import FileProblem, open_user_file
from resnext_cli.results import Record, head_problem, record_from_dict

MAX_LINE = 16 << 20  # far above any record (1,000 predictions take about 60 KB)
MAX_ARRAY = 256 << 20  # a JSON array is read whole: bounded so memory stays bounded
ROUNDING = 1e-4  # float32 sums of up to 1,000 probabilities land within this of 1
_BOM = b"\xef\xbb\xbf"


PREDICTION = "a prediction needs a 'label', an 'index' (0 or more) and a 'probability' (0 to 1)"
CATEGORY = "a category needs a 'name' and a 'probability' (0 to 1)"


class RecordsProblem(Exception):
    """A records file that cannot be read: *line* (0: the file as a whole) and *detail*."""

    def __init__(self, line: int, detail: str) -> None:
        super().__init__(f"line {line}: {detail}")
        self.line = line
        self.detail = detail


@dataclass(frozen=True)
class Entry:
    """One record read back, with its JSON object as it was (unknown keys included)."""

    record: Record
    data: dict[str, Any]
    line: int


@dataclass(frozen=True)
class RecordsRead:
    """What :func:`read_records` found: the entries and the length of the whole lines."""

    entries: list[Entry]
    end: int  # bytes of complete lines (JSON Lines with a torn last line: before it)


def _number(value: Any) -> bool:
    """A finite JSON number (not true or false, not an integer past a float's range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer of hundreds of digits
        return False


def _probability(value: Any) -> bool:
    """A number from 0 to 1 (a category's sum of probabilities may pass 1 by rounding)."""
    return _number(value) and 0 <= value <= 1 + ROUNDING


def record_problem(data: Any) -> str | None:
    """What keeps *data* from being a record this tool wrote, if anything."""
    if not isinstance(data, dict):
        return "not a JSON object"
    problem = head_problem(data)
    if problem is not None:
        return problem
    if "error" in data:
        error = data["error"]
        if not (
            isinstance(error, dict)
            and all(isinstance(error.get(k), str) for k in ("type", "message"))
        ):
            return "'error' needs a 'type' and a 'message'"
        return None
    predictions = data.get("predictions")
    if not isinstance(predictions, list) or not predictions:
        return "no 'predictions' and no 'error'"
    for p in predictions:
        if not (
            isinstance(p, dict)
            and isinstance(p.get("label"), str)
            and type(p.get("index")) is int
            and p["index"] >= 0
            and _probability(p.get("probability"))
        ):
            return PREDICTION
    for key in ("model", "weights"):
        if key not in data:
            return f"no '{key}'"
        if not isinstance(data[key], str):
            return f"'{key}' is not text"
    for key in ("checkpoint", "precision", "runtime"):
        if data.get(key) is not None and not isinstance(data[key], str):
            return f"'{key}' is not text"
    if data.get("uncertain") is not None and not isinstance(data["uncertain"], bool):
        return "'uncertain' is not true or false"
    categories = data.get("categories")
    if categories is not None and not (
        isinstance(categories, list)
        and all(
            isinstance(c, dict)
            and isinstance(c.get("name"), str)
            and _probability(c.get("probability"))
            for c in categories
        )
    ):
        return CATEGORY
    embedding = data.get("embedding")
    if embedding is not None and not (
        isinstance(embedding, list) and all(_number(v) for v in embedding)
    ):
        return "'embedding' is not a list of numbers"
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def parse_json(text: str) -> Any:
    """JSON from a stranger: ValueError for what is not JSON, for NaN and Infinity, and for
    nesting too deep to read (a RecursionError from the json module)."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _entry(data: Any, line: int) -> Entry:
    if reviewed.is_reviewed_line(data):  # a report's exported review (NAME.reviewed.jsonl)
        problem = reviewed.review_problem(data)
        if problem is None:
            return Entry(reviewed.reviewed_from_dict(data), data, line)
        raise RecordsProblem(line, f"not a reviewed record ({problem})")
    problem = record_problem(data)
    if problem is None:
        try:
            return Entry(record_from_dict(data), data, line)
        except ValueError as exc:
            problem = str(exc)
    raise RecordsProblem(line, problem)


def read_records(path: Path, *, torn_tail: bool = False, arrays: bool = True) -> RecordsRead:
    """Read and check every record in *path*; raise RecordsProblem or FileProblem.

    *torn_tail*: a last line without its newline (a run killed mid-write) is left out
    when it looks like the start of a record. *arrays*: a JSON array (``-f json``) is read
    too; else only JSON Lines.
    """
    with open_user_file(path) as fh:
        first = _first_byte(fh)
        fh.seek(0)
        if first == b"[":
            if not arrays:
                raise RecordsProblem(1, "a JSON array, not JSON Lines")
            data = fh.read(MAX_ARRAY + 1)
            if len(data) > MAX_ARRAY:
                raise RecordsProblem(
                    0, "too large to read as one JSON array (classify with -f jsonl)"
                )
            entries = _from_array(data)
            return RecordsRead(entries, len(data))
        return _from_lines(fh, torn_tail=torn_tail)


def _first_byte(fh: BinaryIO) -> bytes:
    """The first byte after a byte-order mark and any white space (b"" when none)."""
    head = fh.read(4096).removeprefix(_BOM)
    while True:
        rest = head.lstrip()
        if rest:
            return rest[:1]
        head = fh.read(4096)
        if not head:
            return b""


def _lines(fh: BinaryIO) -> Iterator[tuple[int, bytes]]:
    number = 0
    while raw := fh.readline(MAX_LINE + 1):
        number += 1
        if len(raw) > MAX_LINE:
            raise RecordsProblem(number, "the line is too long")
        yield number, raw


def _from_lines(fh: BinaryIO, *, torn_tail: bool) -> RecordsRead:
    entries: list[Entry] = []
    end = 0
    for number, raw in _lines(fh):
        if not raw.endswith(b"\n") and torn_tail:
            if raw.startswith(b'{"input"'):
                break  # cut off by a crash: left out, and cut by the next writer
            raise RecordsProblem(number, "does not end in result records")
        text = (raw.removeprefix(_BOM) if number == 1 else raw).strip()
        if text:
            try:
                data = parse_json(text.decode("utf-8"))
            except ValueError as exc:  # text that is not UTF-8 included
                detail = str(exc) if "nested" in str(exc) or "not a number" in str(exc) else ""
                raise RecordsProblem(number, detail or "not JSON") from None
            entries.append(_entry(data, number))
        end += len(raw)
    return RecordsRead(entries, end)


def _from_array(data: bytes) -> list[Entry]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordsProblem(data.count(b"\n", 0, exc.start) + 1, "not UTF-8") from None
    decoder = json.JSONDecoder(parse_constant=_no_constant)
    entries: list[Entry] = []
    space = re.compile(r"\s*")

    def skip(pos: int) -> int:
        match = space.match(text, pos)
        assert match is not None
        return match.end()

    counted = [0, 1]  # up to which offset the newlines were counted, and the line there

    def line_at(pos: int) -> int:
        counted[1] += text.count("\n", counted[0], pos)
        counted[0] = pos
        return counted[1]

    pos = skip(text.index("[") + 1)
    while pos < len(text) and text[pos] != "]":
        try:
            item, end = decoder.raw_decode(text, pos)
        except RecursionError:
            raise RecordsProblem(line_at(pos), "JSON nested too deeply") from None
        except ValueError:
            raise RecordsProblem(line_at(pos), "not JSON") from None
        entries.append(_entry(item, line_at(pos)))
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos >= len(text) or text[pos] != "]":
            raise RecordsProblem(line_at(pos), "expected ',' or ']'")
    if pos >= len(text) or text[skip(pos + 1) :]:
        raise RecordsProblem(line_at(pos), "the JSON array does not end with ']'")
    return entries


__all__ = ["Entry", "FileProblem", "RecordsProblem", "RecordsRead", "read_records"]
