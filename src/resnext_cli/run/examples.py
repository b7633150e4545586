"""The examples `resnext learn` learns from: class folders, or a --from list of path,label.

A folder holds one subfolder per class (the layout `resnext sort` writes and torchvision's
ImageFolder reads); sort's _uncertain/ and _failed/, hidden entries (its journal) and loose
files are left out, in one line. A --from file is a CSV with path and label columns, or
JSON Lines (a classify records file works as it is, with each image's top-1 label). What
cannot be learned from is refused here, before any feature is computed.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnext_cli.console import Console, printable
from resnext_cli.errors import ConfigError, InputError
from resnext_cli.files import FileProblem, read_user_file
from resnext_cli.inputs.sources import iter_sources
from resnext_cli.model.feature_cache import Identity
from resnext_cli.records import parse_json
from resnext_cli.sort.names import FAILED_FOLDER, UNCERTAIN_FOLDER

# Folders sort makes that hold no class.
SKIPPED_FOLDERS = (UNCERTAIN_FOLDER, FAILED_FOLDER)
# Fewer images than this in a class: said plainly.
FEW_IMAGES = 5
MAX_LIST_BYTES = 100 << 20
_LIST_HELP = (
    'give a CSV with a header row naming them, or JSON Lines of {"path": ..., "label": ...}'
)
_SHOWN = 60  # a class name in a message is cut after this many characters


@dataclass
class Example:
    """One image with its class, as found; digest and feature once known."""

    input: str
    path: Path
    label: str
    identity: Identity | None = None
    digest: bytes | None = None
    feature: np.ndarray[Any, Any] | None = None


@dataclass
class Tally:
    """Images skipped along the way, by error type."""

    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, error: InputError, console: Console) -> None:
        self.skipped[error.error_type] = self.skipped.get(error.error_type, 0) + 1
        console.note(f"error: {error.message}", style="red")

    @property
    def total(self) -> int:
        return sum(self.skipped.values())

    def line(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped.items()))
        return f"skipped {self.total} images that could not be used ({kinds})"


def shown(label: str) -> str:
    """A class name as a message quotes it: escaped, and cut when very long."""
    text = printable(label)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def examples_from_folder(root: str, console: Console, tally: Tally) -> list[Example]:
    """One class per subfolder of *root*; sort's _uncertain/, _failed/ and hidden entries
    (its journal) are left out, and said so in one line."""
    path = Path(root)
    left_out: list[str] = []
    classes: list[tuple[str, Path]] = []
    try:
        if not path.exists():
            raise ConfigError(
                f"folder '{root}' does not exist (give a folder with one subfolder per class)"
            )
        if not path.is_dir():
            raise ConfigError(
                f"'{root}' is a file, not a folder (give a folder with one subfolder per "
                "class, or --from FILE with a path,label list)"
            )
        with os.scandir(path) as listing:
            for entry in sorted(listing, key=lambda e: e.name):
                if entry.name.startswith(".") or entry.name in SKIPPED_FOLDERS:
                    left_out.append(entry.name + ("/" if entry.is_dir() else ""))
                elif entry.is_dir():
                    classes.append((entry.name, Path(entry.path)))
                else:
                    left_out.append(entry.name)
    except OSError as exc:  # no permission to list it, a name too long for the system
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read folder '{root}': {reason}") from None
    if left_out:
        names = ", ".join(f"'{printable(n)}'" for n in left_out[:5])
        more = f" and {len(left_out) - 5} more" if len(left_out) > 5 else ""
        console.note(f"left out of '{printable(root)}': {names}{more} (not class folders)")

    def warn(message: str) -> None:
        if not message.startswith("no images found in folder"):  # said per class below
            console.warn(message)

    examples: list[Example] = []
    for label, folder in classes:
        for source in iter_sources([str(folder)], warn=warn):
            if source.error is not None:
                tally.add(source.error, console)
                continue
            assert source.path is not None
            examples.append(Example(source.input, source.path, label))
    check_classes(
        [label for label, _ in classes],
        examples,
        where=f"'{printable(root)}'",
        hint="make one subfolder of images per class",
    )
    return examples


def _read_list(name: str) -> str:
    """The text of a --from file: a regular file of at most MAX_LIST_BYTES, UTF-8."""
    try:
        data = read_user_file(name, max_bytes=MAX_LIST_BYTES)
    except FileProblem as exc:
        if exc.kind == "missing":
            raise ConfigError(f"--from file '{name}' does not exist ({_LIST_HELP})") from None
        if exc.kind == "folder":
            raise ConfigError(f"--from '{name}' is a folder ({_LIST_HELP})") from None
        if exc.kind == "not_regular":
            raise ConfigError(f"--from '{name}' is not a regular file ({_LIST_HELP})") from None
        if exc.kind == "too_large":
            raise ConfigError(
                f"--from file '{name}' is over the {MAX_LIST_BYTES}-byte limit"
            ) from None
        raise ConfigError(f"cannot read --from file '{name}': {exc.reason}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"--from file '{name}' is not UTF-8 text ({_LIST_HELP})") from None


def _missing_columns(name: str) -> ConfigError:
    return ConfigError(f"--from file '{name}' has no 'path' and 'label' columns ({_LIST_HELP})")


def _row_start(text: str, after: int) -> int:
    """The line a CSV row that follows line *after* starts on: csv skips empty lines."""
    for number, line in enumerate(io.StringIO(text, newline=""), start=1):
        if number > after and line.rstrip("\r\n"):
            return number
    return after + 1


def _rows(name: str, text: str) -> Iterator[tuple[int, Any, Any]]:
    """(line number, path, label) of each row of a CSV or JSON Lines list."""
    is_json = name.lower().endswith((".jsonl", ".ndjson", ".json")) or text.lstrip().startswith("{")
    if not is_json:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        done = 0  # the last line of the header or row read whole
        try:
            fields = reader.fieldnames or []
            done = reader.line_num
            label_column = (
                "label" if "label" in fields else "label_1" if "label_1" in fields else None
            )
            if "path" not in fields or label_column is None:
                raise _missing_columns(name)
            for row in reader:
                done = reader.line_num
                yield done, row.get("path"), row.get(label_column)
        except csv.Error as exc:  # a field over csv's limit
            # Said at the line its row starts on, as the rows read are.
            raise ConfigError(
                f"--from file '{name}' line {_row_start(text, done)} is not CSV "
                f"({exc}; {_LIST_HELP})"
            ) from None
        return
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = parse_json(line)
        except ValueError:  # not JSON, nested too deeply, or NaN
            item = None
        if not isinstance(item, dict):
            raise ConfigError(
                f"--from file '{name}' line {number} is not a JSON object ({_LIST_HELP})"
            )
        if "error" in item and "label" not in item:
            continue  # a classify record of an image that failed: nothing to learn
        label = item.get("label")
        if label is None:  # a classify record: its top-1 label, as a person reviewed it
            predictions = item.get("predictions")
            if isinstance(predictions, list) and predictions and isinstance(predictions[0], dict):
                label = predictions[0].get("label")
        if "path" not in item or label is None:
            raise ConfigError(
                f"--from file '{name}' line {number} has no 'path' and 'label' ({_LIST_HELP})"
            )
        yield number, item["path"], label


def examples_from_list(name: str) -> list[Example]:
    """The examples a --from CSV or JSON Lines file lists; relative paths are taken from
    the file's folder. Every path must be an existing file."""
    text = _read_list(name)
    base = Path(name).parent
    examples: list[Example] = []
    labels: list[str] = []
    for number, raw_path, raw_label in _rows(name, text):
        where = f"--from file '{name}' line {number}"
        if not isinstance(raw_path, str) or not raw_path:
            raise ConfigError(f"{where} has no path (give every line a path)")
        if raw_label is None:  # a CSV row with fewer fields than the header
            raise ConfigError(f"{where} has no label (give every path a class name)")
        if not isinstance(raw_label, str):
            raise ConfigError(f"{where}: the label is not text (give a class name)")
        if not raw_label.strip():
            raise ConfigError(f"{where} has an empty label (give every path a class name)")
        path = Path(raw_path)
        if not path.is_absolute():
            path = base / path
        try:
            ok, there = path.is_file(), path.exists()
        except (OSError, ValueError):
            ok = there = False
        if there and not ok:
            raise ConfigError(
                f"{where}: '{printable(raw_path)}' is not a regular file (a folder, pipe or "
                "device; fix the path, or remove the line)"
            )
        if not ok:
            raise ConfigError(
                f"{where}: no such file '{printable(raw_path)}' (fix the path, or remove the line)"
            )
        if raw_label not in labels:
            labels.append(raw_label)
        examples.append(Example(raw_path, path, raw_label))
    check_classes(sorted(labels), examples, where=f"'{name}'", hint="give at least two labels")
    return examples


def check_classes(labels: list[str], examples: list[Example], *, where: str, hint: str) -> None:
    """At least two classes, no more classes than images, and an image in every class."""
    if len(labels) < 2:
        found = "none" if not labels else f"only '{shown(labels[0])}'"
        raise ConfigError(f"learning needs at least two classes; {where} has {found} ({hint})")
    if len(labels) > len(examples):
        raise ConfigError(
            f"{len(labels)} classes but only {len(examples)} images (give at least one image "
            f"per class; {FEW_IMAGES} or more is better)"
        )
    have = {e.label for e in examples}
    for label in labels:
        if label not in have:
            raise ConfigError(
                f"class '{shown(label)}' has no readable image (add images to it, or remove it)"
            )
