"""Names in DEST: untrusted text made into portable file and folder names, and the folder
each record belongs in."""

from __future__ import annotations

import os
import unicodedata

from resnext_cli import reviewed
from resnext_cli.errors import ResnextError
from resnext_cli.results import Classified, Failed, Record

JOURNAL_NAME = ".resnext-sort-journal.jsonl"
FAILED_FOLDER = "_failed"
UNCERTAIN_FOLDER = "_uncertain"
MODES = ("copy", "link", "move")
KEYS = ("label", "index", "category")

_FORBIDDEN = frozenset('/\\<>:"|?*')
# Bidirectional controls can make 'gpj.exe' look like 'exe.jpg' in a listing.
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{stem}{d}" for stem in ("COM", "LPT") for d in "0123456789¹²³"]
)
_MAX_NAME_BYTES = 240  # below the 255 of common file systems, leaving room for " (12)"
_SPECIAL = frozenset({FAILED_FOLDER, UNCERTAIN_FOLDER, reviewed.SKIPPED_FOLDER})


class SortError(ResnextError):
    """The destination cannot be sorted into as asked."""


def _truncate(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")  # a letter cut in two goes


def safe_name(text: str, *, fallback: str = "_") -> str:
    """Turn untrusted text (a label, a file name) into one portable file or folder name.

    Path separators, NUL and every other unprintable character (controls, bidirectional
    overrides, unassigned code points), and the characters Windows forbids (``<>:"|?*``)
    become ``_``; leading dots and spaces (hidden files, ``..``) and trailing dots and
    spaces go; Windows device names (``CON``, ``com1.txt``) get a ``_`` prefix;
    the result is NFC-normalised and at most 240 UTF-8 bytes. Apostrophes, commas and
    spaces inside stay: every file system takes them.
    """
    text = unicodedata.normalize("NFC", text)
    chars = []
    for ch in text:
        if ch in _FORBIDDEN or ch in _BIDI:
            chars.append("_")
        elif ch.isprintable():
            chars.append(ch)
        else:  # controls, format and unassigned characters, odd spaces, lone surrogates
            chars.append(" " if unicodedata.category(ch) == "Zs" else "_")
    name = "".join(chars).lstrip(". ")  # trailing dots and spaces go after truncating
    if name.split(".")[0].rstrip().upper() in _RESERVED:  # ' ' is the only space left
        name = "_" + name
    name = _truncate(name, _MAX_NAME_BYTES).rstrip(". ")
    return name or fallback


def safe_file_name(name: str) -> str:
    """A safe name for a file, keeping its extension when the name must be shortened."""
    cleaned = safe_name(name, fallback="image")
    stem, suffix = os.path.splitext(name)
    extension = safe_name(suffix[1:], fallback="")  # safe_name would drop the leading dot
    if len(name.encode("utf-8")) > _MAX_NAME_BYTES and extension and len(suffix) <= 16:
        short = _truncate(safe_name(stem, fallback="image"), _MAX_NAME_BYTES // 2)
        cleaned = f"{short}.{extension}"
    return cleaned


def numbered(name: str, number: int) -> str:
    """'cat.jpg', 2 -> 'cat (2).jpg'; folders and dot-less names get the number at the end."""
    stem, suffix = os.path.splitext(name)
    return f"{stem} ({number}){suffix}"


def _key(name: str) -> str:
    # How case-insensitive file systems (macOS, Windows) compare names, near enough.
    return unicodedata.normalize("NFC", name).casefold()


def folder_for(record: Record, *, by: str = "label", min_probability: float | None = None) -> str:
    """The folder (already a safe name) a record belongs in.

    With *min_probability*, a record is uncertain when the probability of what it is filed
    by (its top-1 class, or its top category with ``by="category"``) is below it; without,
    a record's own ``uncertain`` mark decides for labels and indices, and categories are
    never uncertain (that mark is about the top-1 class).
    """
    if isinstance(record, Failed):
        return FAILED_FOLDER
    assert isinstance(record, Classified)
    if isinstance(record, reviewed.Reviewed) and record.skipped:
        return reviewed.SKIPPED_FOLDER
    if by == "category":
        if not record.categories:
            raise SortError(
                "--by category needs records with categories (classify with --categories)"
            )
        top = record.categories[0]
        if min_probability is not None and top.probability < min_probability:
            return UNCERTAIN_FOLDER
        name = top.name
    else:
        if min_probability is None:
            uncertain = bool(record.uncertain)
        else:
            uncertain = record.top1.probability < min_probability
        if uncertain:
            return UNCERTAIN_FOLDER
        if by == "index":
            return str(record.top1.index)
        name = record.top1.label
    folder = safe_name(name)
    # A label spelled like a special folder must not land among the failed files.
    return f"{folder} (label)" if _key(folder) in _SPECIAL else folder
