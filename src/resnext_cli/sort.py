"""Sort classified images into folders: plan, journal, execute; resume and undo.

A sort never overwrites and never loses a file. The whole plan goes into a journal,
``DEST/.resnext-sort-journal.jsonl`` (JSON Lines), and is flushed to disk before the first
file is touched; each finished step then appends a ``done`` line. Every step publishes its
target atomically and without replacing anything (a hard link, or a copy made under a
temporary name and then linked), and a move removes its source only once the target is
complete. So after a crash the file system itself tells where each step stands, and
:func:`resume` finishes the plan while :func:`undo` puts every file back.

Journal lines, by ``op``: ``begin`` (a run: mode, time), ``step`` (n, mode, src absolute,
dst relative to DEST), ``retarget`` (n, new dst, when a name was taken meanwhile), ``done``
(n), ``skip`` (n, reason: the step left nothing behind), ``undone`` (n), ``end``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from .errors import ResnextError
from .results import Classified, Failed, Record

JOURNAL_NAME = ".resnext-sort-journal.jsonl"
FAILED_FOLDER = "_failed"
UNCERTAIN_FOLDER = "_uncertain"
MODES = ("copy", "link", "move")
KEYS = ("label", "index")

_FORBIDDEN = frozenset('/\\<>:"|?*')
# Bidirectional controls can make 'gpj.exe' look like 'exe.jpg' in a listing.
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{stem}{d}" for stem in ("COM", "LPT") for d in "0123456789¹²³"]
)
_MAX_NAME_BYTES = 240  # below the 255 of common file systems, leaving room for " (12)"
_SPECIAL = frozenset({FAILED_FOLDER, UNCERTAIN_FOLDER})


class SortError(ResnextError):
    """The destination cannot be sorted into as asked."""


# -- names -----------------------------------------------------------------------------


def _truncate(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


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
    name = "".join(chars).lstrip(". ").rstrip(". ")
    if name.split(".")[0].rstrip(" ").upper() in _RESERVED:
        name = "_" + name
    name = _truncate(name, _MAX_NAME_BYTES).rstrip(". ")
    return name or fallback


def safe_file_name(name: str) -> str:
    """A safe name for a file, keeping its extension when the name must be shortened."""
    cleaned = safe_name(name, fallback="image")
    stem, suffix = os.path.splitext(name)
    if len(name.encode("utf-8")) > _MAX_NAME_BYTES and suffix and len(suffix) <= 16:
        short = _truncate(safe_name(stem, fallback="image"), _MAX_NAME_BYTES // 2)
        cleaned = short + safe_name(suffix)
    return cleaned


def numbered(name: str, number: int) -> str:
    """'cat.jpg', 2 -> 'cat (2).jpg'; folders and dot-less names get the number at the end."""
    stem, suffix = os.path.splitext(name)
    return f"{stem} ({number}){suffix}"


def _key(name: str) -> str:
    # How case-insensitive file systems (macOS, Windows) compare names, near enough.
    return unicodedata.normalize("NFC", name).casefold()


def folder_for(record: Record, *, by: str = "label") -> str:
    """The folder (already a safe name) a record belongs in."""
    if isinstance(record, Failed):
        return FAILED_FOLDER
    assert isinstance(record, Classified)
    if record.uncertain:
        return UNCERTAIN_FOLDER
    if by == "index":
        return str(record.top1.index)
    folder = safe_name(record.top1.label)
    # A label spelled like a special folder must not land among the failed files.
    return f"{folder} (label)" if _key(folder) in _SPECIAL else folder


# -- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One file to place: source (absolute) to target (relative to DEST)."""

    n: int
    mode: str
    source: Path
    target: str
    input: str = ""

    @property
    def folder(self) -> str:
        """The folder in DEST the file goes to."""
        return self.target.split("/")[0]


@dataclass
class Plan:
    """What a sort will do, before it touches anything."""

    dest: Path
    mode: str
    steps: list[Step] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


class _Names:
    """The names already used in DEST, compared as a case-insensitive file system would."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.folders: dict[str, str] = {}
        self.files: dict[str, set[str]] = {}
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
        """A name for a new file in *folder* that clashes with nothing there or planned."""
        taken = self._taken(folder)
        name, number = wanted, 1
        while _key(name) in taken:
            name, number = numbered(wanted, number), number + 1
        taken.add(_key(name))
        return name


def make_plan(
    records: Iterable[Record], dest: Path, *, mode: str = "copy", by: str = "label"
) -> Plan:
    """Decide where each file goes; touches nothing (reads DEST to avoid its names)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    if by not in KEYS:
        raise ValueError(f"unknown key {by!r}")
    root = dest.resolve()
    names = _Names(root)
    plan = Plan(dest=dest, mode=mode)
    seen: set[str] = set()
    first = _next_step_number(dest)
    for record in records:
        if record.path is None:
            plan.skipped.append((record.input, "not a file (a URL or standard input)"))
            continue
        source = Path(record.path)
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
        folder = names.folder(folder_for(record, by=by))
        if not _inside((root / folder).resolve(), root):
            plan.skipped.append((record.input, f"folder '{folder}' leads outside the destination"))
            continue
        name = names.file(folder, safe_file_name(source.name))
        step = Step(first + len(plan.steps), mode, source.absolute(), f"{folder}/{name}")
        plan.steps.append(replace(step, input=record.input))
    return plan


# -- the journal ---------------------------------------------------------------------------


@dataclass
class Entry:
    """A step as the journal tells it."""

    step: Step
    done: bool = False
    skipped: bool = False
    undone: bool = False


class Journal:
    """The append-only record of a destination's sorts, locked while in use."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.path = dest / JOURNAL_NAME
        self._file: IO[str] | None = None

    def read(self) -> dict[int, Entry]:
        """Every step recorded so far, by number; a half-written last line is ignored."""
        entries: dict[int, Entry] = {}
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return entries
        for number, line in enumerate(lines, start=1):
            try:
                item = json.loads(line)
                op = item["op"]
                if op == "step":
                    step = Step(item["n"], item["mode"], Path(item["src"]), item["dst"])
                    entries[step.n] = Entry(replace(step, input=item.get("input", "")))
                elif op == "retarget":
                    entry = entries[item["n"]]
                    entry.step = replace(entry.step, target=item["dst"])
                elif op in ("done", "skip", "undone"):
                    setattr(entries[item["n"]], {"skip": "skipped"}.get(op, op), True)
            except (ValueError, KeyError, TypeError):
                if number == len(lines):
                    break  # cut off by a crash while it was written
                raise SortError(
                    f"journal '{self.path}' line {number} is damaged (fix or remove that line)"
                ) from None
        return entries

    def open(self) -> None:
        """Open for appending, and lock it against a second sort into the same folder."""
        self.dest.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one sort at a time is up to you
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.close()
            raise SortError(
                f"another sort is using '{self.dest}' (wait for it to finish)"
            ) from None

    def write(self, *items: dict[str, Any], sync: bool = False) -> None:
        """Append lines; with sync, make sure they are on disk before returning."""
        assert self._file is not None
        self._file.write("".join(json.dumps(item) + "\n" for item in items))
        self._file.flush()
        if sync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Release the lock."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _next_step_number(dest: Path) -> int:
    entries = Journal(dest).read()
    return max(entries) + 1 if entries else 0


def unfinished(dest: Path) -> list[Step]:
    """Steps an interrupted sort into *dest* left neither done nor skipped."""
    return [e.step for e in Journal(dest).read().values() if not (e.done or e.skipped or e.undone)]


# -- doing it ----------------------------------------------------------------------------

OnStep = Callable[[Step], None]


@dataclass
class Outcome:
    """What a sort, resume or undo did."""

    done: list[Step] = field(default_factory=list)
    problems: list[tuple[Step, str]] = field(default_factory=list)

    @property
    def folders(self) -> int:
        """How many folders received files."""
        return len({_key(step.folder) for step in self.done})


# Why a hard link may be refused where a copy would work: another file system, one without
# links (FAT, some network shares), a hardened kernel (protected_hardlinks), a link limit.
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)


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


def _partial(target: Path, n: int) -> Path:
    return target.parent / f".resnext-part-{n}"


def _publish_copy(source: Path, target: Path, n: int) -> None:
    """Copy *source* to *target* so that *target* appears complete or not at all."""
    temp = _partial(target, n)
    try:
        with source.open("rb") as src, temp.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        shutil.copystat(source, temp)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    try:
        os.link(temp, target)  # fails rather than replace an existing file
    except FileExistsError:
        temp.unlink()
        raise
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            temp.unlink()
            raise
        # A file system without hard links: check, then rename (a narrow race, no link).
        if os.path.lexists(target):
            temp.unlink()
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        os.rename(temp, target)
    else:
        temp.unlink()


def _place(step: Step, source: Path, target: Path) -> None:
    """Put *source* at *target* as the step's mode says; raise FileExistsError on a clash."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if step.mode == "copy":
        _publish_copy(source, target, step.n)
        return
    if step.mode == "link":
        try:
            os.link(source, target)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            os.symlink(source, target)
        return
    # move: link the target, then drop the source; a copy where links cannot be made.
    if source.is_symlink():
        os.symlink(os.path.realpath(source), target)
    else:
        try:
            os.link(source, target, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            _publish_copy(source, target, step.n)
    try:
        source.unlink()
    except OSError:
        target.unlink()  # leave things as they were rather than hold the file twice
        raise


def _placed(step: Step, source: Path, target: Path) -> bool:
    """Whether *target* already is this step's result (after a crash)."""
    if not os.path.lexists(target):
        return False
    if step.mode == "link" and target.is_symlink():
        return os.readlink(target) == str(source)
    return _same_content(source, target)


def _free_name(root: Path, target: str) -> str:
    folder, _, name = target.partition("/")
    taken = {_key(n) for n in os.listdir(root / folder)} if (root / folder).is_dir() else set()
    number = 1
    while _key(numbered(name, number)) in taken:
        number += 1
    return f"{folder}/{numbered(name, number)}"


def _run_step(journal: Journal, root: Path, step: Step) -> Step:
    """Do one step, or finish it after a crash; return it with its final target."""
    with contextlib.suppress(FileNotFoundError):
        _partial(root / step.target, step.n).unlink()  # a copy cut short by a crash
    for _ in range(1000):
        target = root / step.target
        if not _inside(target.parent.resolve(), root):
            raise SortError(f"'{step.target}' leads outside '{root}'")
        if step.mode == "move" and not os.path.lexists(step.source):
            if os.path.lexists(target):
                return step  # moved before the crash
            raise FileNotFoundError(errno.ENOENT, "source is gone", str(step.source))
        if os.path.lexists(target):
            if _placed(step, step.source, target):
                if step.mode == "move":
                    step.source.unlink()  # the crash came between link and unlink
                return step
        else:
            try:
                _place(step, step.source, target)
                return step
            except FileExistsError:
                pass
        # Someone else took the name since it was planned: pick another, say so first.
        step = replace(step, target=_free_name(root, step.target))
        journal.write({"op": "retarget", "n": step.n, "dst": step.target}, sync=True)
    raise SortError(f"no free name for '{step.target}'")


def _execute(
    journal: Journal, root: Path, steps: Iterable[Step], on_step: OnStep | None
) -> Outcome:
    outcome = Outcome()
    for step in steps:
        try:
            final = _run_step(journal, root, step)
        except OSError as exc:
            reason = f"{exc.strerror or exc}: '{exc.filename}'" if exc.filename else str(exc)
            journal.write({"op": "skip", "n": step.n, "reason": reason})
            outcome.problems.append((step, reason))
        else:
            journal.write({"op": "done", "n": step.n})
            outcome.done.append(final)
        if on_step is not None:
            on_step(step)
    return outcome


@contextlib.contextmanager
def _journal(dest: Path) -> Iterator[Journal]:
    journal = Journal(dest)
    journal.open()
    try:
        yield journal
    finally:
        journal.close()


def execute(plan: Plan, *, on_step: OnStep | None = None) -> Outcome:
    """Carry out a plan: journal every step (on disk first), then do them in order."""
    with _journal(plan.dest) as journal:
        if unfinished(plan.dest):
            raise SortError(unfinished_message(plan.dest))
        root = plan.dest.resolve()
        journal.write(
            {"op": "begin", "mode": plan.mode, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
            *(
                {
                    "op": "step",
                    "n": s.n,
                    "mode": s.mode,
                    "src": str(s.source),
                    "dst": s.target,
                    "input": s.input,
                }
                for s in plan.steps
            ),
            sync=True,
        )
        outcome = _execute(journal, root, plan.steps, on_step)
        journal.write({"op": "end"}, sync=True)
    return outcome


def unfinished_message(dest: Path) -> str:
    return (
        f"'{dest}' has an unfinished sort (run 'resnext sort --resume {dest}' to finish it, "
        f"or 'resnext sort --undo {dest}' to put the files back)"
    )


def resume(dest: Path, *, on_step: OnStep | None = None) -> Outcome:
    """Finish the steps an interrupted sort into *dest* left undone."""
    if not (dest / JOURNAL_NAME).is_file():
        raise SortError(f"'{dest}' has no sort journal (nothing to resume)")
    with _journal(dest) as journal:
        steps = unfinished(dest)
        outcome = _execute(journal, dest.resolve(), steps, on_step)
        journal.write({"op": "end"}, sync=True)
    return outcome


def _put_back(step: Step, root: Path) -> bool:
    """Undo one step; False when something else now stands in the way."""
    source, target = step.source, root / step.target
    with contextlib.suppress(FileNotFoundError):
        _partial(source, step.n).unlink()
    if not _inside(target.parent.resolve(), root):
        raise SortError(f"'{step.target}' leads outside '{root}'")
    there = os.path.lexists(target)
    back = os.path.lexists(source)
    if not there:
        return True  # never placed, or already put back
    if step.mode == "link" and target.is_symlink():
        if os.readlink(target) != str(source):
            return False
        target.unlink()  # a symbolic link holds no data: removing it loses nothing
        return True
    if back:
        if not _placed(step, source, target):
            return False  # a different file at the target: not ours to delete
        target.unlink()
        return True
    # The source is gone (moved, or deleted since a copy): bring the file back.
    source.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        os.symlink(os.readlink(target), source)
    else:
        try:
            os.link(target, source, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            _publish_copy(target, source, step.n)
    target.unlink()
    return True


def undo(dest: Path, *, on_step: OnStep | None = None) -> Outcome:
    """Put every file the journal placed in *dest* back where it came from, newest first.

    Copies and links are removed (when the original is still there and the same), moved
    files go back. When everything is back the journal is removed, and so are folders the
    sort made that are now empty.
    """
    if not (dest / JOURNAL_NAME).is_file():
        raise SortError(f"'{dest}' has no sort journal (nothing to undo)")
    root = dest.resolve()
    outcome = Outcome()
    with _journal(dest) as journal:
        entries = [e for e in journal.read().values() if not (e.undone or e.skipped)]
        for entry in sorted(entries, key=lambda e: e.step.n, reverse=True):
            step = entry.step
            try:
                ok = _put_back(step, root)
            except OSError as exc:
                outcome.problems.append((step, f"{exc.strerror or exc}: '{exc.filename}'"))
                continue
            if not ok:
                outcome.problems.append(
                    (step, f"'{step.source}' exists and differs from '{step.target}'; kept both")
                )
                continue
            journal.write({"op": "undone", "n": step.n})
            outcome.done.append(step)
            if on_step is not None:
                on_step(step)
        if not outcome.problems:
            journal.path.unlink()
            for folder in sorted({s.folder for s in outcome.done}):
                with contextlib.suppress(OSError):
                    (root / folder).rmdir()
    return outcome
