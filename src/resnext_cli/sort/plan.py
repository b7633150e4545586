"""Planning a sort: where each file goes, decided before anything is touched."""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from resnext_cli.files import FileProblem, is_locked
from resnext_cli.records import RecordsProblem, read_records
from resnext_cli.results import Record
from resnext_cli.sort.journal import Entry, Journal, Step, _canonical, _inside
from resnext_cli.sort.names import (
    KEYS,
    MODES,
    SortError,
    _key,
    folder_for,
    numbered,
    safe_file_name,
)


@dataclass
class FilingPlan:
    """What a sort will do, before it touches anything."""

    dest: Path
    mode: str
    steps: list[Step] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    already: list[tuple[str, str]] = field(default_factory=list)  # (input, where in DEST)


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")  # ':/' too: Path('https://x') is 'https:/x'
_GLOB = re.compile(r"[*?[]")


def roots_for(inputs: Iterable[str]) -> list[Path]:
    """The files and folders a sort's SRC arguments name (for a glob: the folder it starts in).

    Standard input (``-``) and URLs name no root: the files they list each belong to their
    own folder.
    """
    roots = []
    for spec in inputs:
        if spec == "-" or _URL.match(spec):
            continue
        path = Path(spec)
        if not os.path.lexists(path):  # a glob: the folders before its first pattern
            fixed = []
            for part in path.parts:
                if _GLOB.search(part):
                    break
                fixed.append(part)
            path = Path(*fixed)  # Path() is '.'
        roots.append(path)
    return roots


class _Roots:
    """Which root each source belongs to, and whether --move may take it from there."""

    def __init__(self, roots: Iterable[str | Path]) -> None:
        self.named: list[tuple[Path, Path]] = []
        for root in roots:
            lexical = Path(os.path.abspath(root))
            real = Path(os.path.realpath(lexical)) if lexical.is_dir() else _canonical(lexical)
            self.named.append((lexical, real))

    def claims(self, source: Path) -> bool:
        """Whether *source* lies inside a named root (its folders' links resolved)."""
        canon = _canonical(source)
        return any(_inside(canon, res) for _, res in self.named)

    def home(self, source: Path, *, move: bool, own_folder: bool = True) -> Path | None:
        """The root of *source*; None when --move must leave it (it leads out of its root),
        or, without *own_folder*, when no named root holds it."""
        lexical, canon = Path(os.path.abspath(source)), _canonical(source)
        real = Path(os.path.realpath(source))
        claimed = [res for lex, res in self.named if _inside(lexical, lex) or _inside(canon, res)]
        for res in claimed:
            if _inside(canon, res) and (not move or _inside(real, res)):
                return res
        if (claimed and move) or not own_folder:
            return None
        own = canon.parent  # named one by one: on standard input or in a records file
        return None if move and not _inside(real, own) else own


class _Names:
    """The names already used in DEST, compared as a case-insensitive file system would."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.folders: dict[str, str] = {}
        self.files: dict[str, set[str]] = {}
        self.next: dict[tuple[str, str], int] = {}
        self.not_folders: set[str] = set()
        with contextlib.suppress(OSError):
            for entry in os.scandir(dest):
                if entry.is_dir(follow_symlinks=False):
                    self.folders.setdefault(_key(entry.name), entry.name)
                else:
                    self.not_folders.add(_key(entry.name))

    def folder(self, wanted: str) -> str:
        """The spelling to use for *wanted*: one already there or planned, else a new one."""
        key = _key(wanted)
        if key in self.folders:
            return self.folders[key]
        name, number = wanted, 1
        while _key(name) in self.not_folders or _key(name) in self.folders:
            name, number = numbered(wanted, number), number + 1
        self.folders[key] = self.folders[_key(name)] = name
        return name

    def _taken(self, folder: str) -> set[str]:
        if folder not in self.files:
            taken: set[str] = set()
            with contextlib.suppress(OSError):
                taken = {_key(name) for name in os.listdir(self.dest / folder)}
            self.files[folder] = taken
        return self.files[folder]

    def file(self, folder: str, wanted: str) -> str:
        """A name for a new file in *folder* that clashes with nothing there or planned.

        The next clash number to try is remembered for each name, so filing n files of one
        name takes n steps, not n * n / 2.
        """
        taken = self._taken(folder)
        slot = (folder, _key(wanted))
        name, number = wanted, self.next.get(slot, 1)
        if number > 1:
            name = numbered(wanted, number - 1)
        while _key(name) in taken:
            name, number = numbered(wanted, number), number + 1
        self.next[slot] = number
        taken.add(_key(name))
        return name


def _changed(record: Record, source: Path) -> str | None:
    """Why *source* is no longer the file *record* was made from, if it is not."""
    facts = record.file
    if facts is None:
        return None
    st = source.stat()
    if (st.st_size, st.st_mtime_ns) != (facts.size, facts.mtime_ns):
        return "changed since it was classified (classify it again)"
    return None


def _not_identified(record: Record, source: Path) -> str | None:
    """Why the file a record names is not known to be the one classified, if it is not."""
    if record.file is None:
        return "the record has no 'size' and 'mtime_ns' to know its file by (classify it again)"
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        return "no such file (moved or deleted since it was classified)"
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link now, not the file that was classified"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if (st.st_size, st.st_mtime_ns) != (record.file.size, record.file.mtime_ns):
        return "changed since it was classified (classify it again)"
    return None


def _filed_before(entries: dict[int, Entry]) -> dict[str, list[str]]:
    """Where earlier sorts into DEST filed each source (still there, not undone)."""
    filed: dict[str, list[str]] = {}
    for entry in entries.values():
        if entry.done and not entry.undone:
            filed.setdefault(str(entry.step.source), []).append(entry.step.target)
    return filed


def make_plan(
    records: Iterable[Record],
    dest: Path,
    *,
    mode: str = "copy",
    by: str = "label",
    sources: Iterable[str | Path] | None = None,
    min_probability: float | None = None,
    strict: bool = False,
) -> FilingPlan:
    """Decide where each file goes; touches nothing (reads DEST to avoid its names).

    *sources* are the SRC arguments as the user gave them (files, folders, globs, ``-``):
    the roots the files belong to (:func:`roots_for`). *min_probability* goes to
    :func:`folder_for`. A record whose file changed since it was classified (its size and
    mtime_ns) is skipped.

    *strict* is for records read from a file (a stranger's request): a record is filed
    only when its file lies inside *sources* (no folder of its own counts), it carries
    ``size`` and ``mtime_ns``, and the file at its path is a regular file (not a link)
    that still has them; each step then checks that again as it opens the file.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    if by not in KEYS:
        raise ValueError(f"unknown key {by!r}")
    root = dest.resolve()
    names = _Names(root)
    homes = _Roots(roots_for(str(s) for s in sources or ()))
    plan = FilingPlan(dest=dest, mode=mode)
    seen: set[str] = set()
    entries = Journal(dest).read()
    filed = _filed_before(entries)
    listing = _Listing(root)
    for record in records:
        if record.path is None:
            plan.skipped.append((record.input, "not a file (a URL or standard input)"))
            continue
        source = Path(record.path)
        if strict:
            why = _not_identified(record, source)
            if why is not None:
                plan.skipped.append((record.input, why))
                continue
        if not source.is_file():
            plan.skipped.append((record.input, "no such file"))
            continue
        real = os.path.realpath(source)
        if _inside(Path(real), root):
            plan.skipped.append((record.input, "already inside the destination"))
            continue
        if real in seen:
            plan.skipped.append((record.input, "given twice"))
            continue
        seen.add(real)
        why = _changed(record, source)
        if why is not None:
            plan.skipped.append((record.input, why))
            continue
        home = homes.home(source, move=mode == "move", own_folder=not strict)
        if home is None and strict and not homes.claims(source):
            plan.skipped.append(
                (record.input, "outside the folders given (add --root FOLDER to file from there)")
            )
            continue
        if home is None:
            plan.skipped.append(
                (
                    record.input,
                    "reached through a symbolic link that leads outside the folders given; "
                    "not moved (--copy would file a copy)",
                )
            )
            continue
        canon = _canonical(source)
        folder = names.folder(folder_for(record, by=by, min_probability=min_probability))
        if not _inside((root / folder).resolve(), root):
            plan.skipped.append((record.input, f"folder '{folder}' leads outside the destination"))
            continue
        there = _already(root, canon, folder, filed.get(str(canon), []), listing)
        if there is not None:
            plan.already.append((record.input, there))
            continue
        name = names.file(folder, safe_file_name(source.name))
        # Numbered in the plan; execute numbers them again after the journal as it is then.
        n = len(plan.steps)
        identity = (record.file.size, record.file.mtime_ns) if strict and record.file else None
        plan.steps.append(Step(n, mode, canon, f"{folder}/{name}", record.input, home, identity))
    return plan


_NUMBERED = re.compile(r"^(.*) \(\d+\)$")


def _base_key(name: str) -> str:
    """'cat (2).jpg' -> the key of 'cat.jpg': the name a clash number was added to."""
    stem, suffix = os.path.splitext(name)
    match = _NUMBERED.match(stem)
    return _key((match.group(1) if match else stem) + suffix)


class _Listing:
    """The files in each folder of DEST, by the name they had before a clash number."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folders: dict[str, dict[tuple[str, int], list[str]]] = {}

    def like(self, folder: str, name: str, size: int) -> list[str]:
        """Regular files of *size* bytes in *folder* named *name*, or *name* with a clash
        number (indexed by name and size once per folder: no file is compared twice)."""
        if folder not in self.folders:
            index: dict[tuple[str, int], list[str]] = {}
            with contextlib.suppress(OSError), os.scandir(self.root / folder) as found:
                for entry in sorted(found, key=lambda e: e.name):
                    with contextlib.suppress(OSError):
                        if entry.is_file(follow_symlinks=False):
                            key = (_base_key(entry.name), entry.stat(follow_symlinks=False).st_size)
                            index.setdefault(key, []).append(entry.name)
            self.folders[folder] = index
        return self.folders[folder].get((_base_key(name), size), [])


def _already(
    root: Path, source: Path, folder: str, targets: list[str], listing: _Listing
) -> str | None:
    """Where in *folder* of DEST *source* already is, with the same bytes; else None.

    First where the journal says earlier sorts put it, then files of its name.
    """
    wanted = [t for t in targets if _key(t.split("/")[0]) == _key(folder)]
    try:
        size = os.stat(source).st_size
    except OSError:
        return None
    wanted += [f"{folder}/{n}" for n in listing.like(folder, safe_file_name(source.name), size)]
    for target in wanted:
        path = root / target
        if path.is_file() and _inside(path.parent.resolve(), root) and _same_content(source, path):
            return target
    return None


def _same_content(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
        if a.stat().st_size != b.stat().st_size:
            return False
        with a.open("rb") as fa, b.open("rb") as fb:
            while True:
                chunk = fa.read(1 << 20)
                if chunk != fb.read(1 << 20):
                    return False
                if not chunk:
                    return True
    except OSError:
        return False


# -- records from an earlier classify ------------------------------------------------------


def _not_records(path: Path, line: int, detail: str) -> SortError:
    return SortError(
        f"'{path}' line {line} is not a record of 'resnext classify' ({detail}); give the "
        "JSON Lines or JSON file that 'resnext classify -o' wrote"
    )


def records_from_file(path: Path) -> tuple[list[Record], list[tuple[str, str]]]:
    """Read the records a classify run wrote: JSON Lines, or a JSON array (``-f json``).

    Read by the one strict reader (records.py). Returns the records to file and, as
    (input, reason), those whose file is gone or changed since (by the records' size and
    mtime_ns). Records without a path (URLs, standard input) are returned for
    :func:`make_plan` to skip. A file another run is still writing (it holds the lock of
    ``classify -o``) is refused: its last records are not there yet.
    """
    give = "(give the file 'resnext classify -o' wrote)"
    if is_locked(path):
        raise SortError(
            f"records file '{path}' is being written by another resnext run (wait for it to "
            "finish, then sort)"
        )
    try:
        found = read_records(path)
    except FileProblem as exc:
        if exc.kind in ("folder", "not_regular"):
            raise SortError(f"records file '{path}' is not a regular file {give}") from None
        raise SortError(f"cannot read records file '{path}' ({exc.reason}) {give}") from None
    except RecordsProblem as exc:
        if exc.line == 0:
            raise SortError(f"records file '{path}' is {exc.detail}") from None
        if exc.detail.startswith("not a reviewed record"):
            raise SortError(
                f"'{path}' line {exc.line} is {exc.detail}; give the file the report's "
                "'export decisions' wrote"
            ) from None
        raise _not_records(path, exc.line, exc.detail) from None
    if not found.entries:
        raise SortError(f"'{path}' holds no records {give}")
    kept: list[Record] = []
    changed: list[tuple[str, str]] = []
    for entry in found.entries:
        record = entry.record
        why = _still_there(record)
        if why is None:
            kept.append(record)
        else:
            changed.append((record.input, why))
    return kept, changed


def _still_there(record: Record) -> str | None:
    """Why the file of *record* cannot be filed any more, if it cannot."""
    if record.path is None:
        return None
    try:
        mode = os.stat(record.path).st_mode
    except FileNotFoundError:
        return "no such file (moved or deleted since it was classified)"
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return _changed(record, Path(record.path))
