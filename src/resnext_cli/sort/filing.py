"""Sort classified images into folders: plan, journal, execute; resume and undo.

A sort never overwrites and never loses a file. The whole plan goes into a journal,
``DEST/.resnext-sort-journal.jsonl`` (JSON Lines), and is flushed to disk before the first
file is touched; each finished step then appends a ``done`` line. Every step publishes its
target atomically and without replacing anything (a hard link, or a copy made under a
temporary name and then linked), and a move removes its source only once the target is
complete. So after a crash the file system itself tells where each step stands, and
:func:`resume` finishes the plan while :func:`undo` puts every file back.

Journal lines, by ``op``: ``begin`` (a run: mode, time, ``dest``: DEST resolved, ``src``:
the source roots, resolved), ``step`` (n, mode, src absolute, dst relative to DEST),
``retarget`` (n, new dst, when a name was taken meanwhile), ``done`` (n), ``skip`` (n,
reason: the step left nothing behind), ``undone`` (n), ``end``.

The journal is not trusted as it stands. Before anything acts on it, it must be a regular
file of the user running the sort, every ``begin`` must name the DEST it lies in, and every
step must take a file from inside its ``begin``'s source roots and put it at
``folder/name`` inside DEST. A journal that fails one check is refused whole (SortError,
exit 2, naming the line) and nothing is touched, so a journal planted in a shared DEST can
neither fetch files from elsewhere (``--resume``) nor create them elsewhere (``--undo``).
The last line may be torn by a crash or a full disk: it is ignored, and cut away before
the next line is appended; a damaged line anywhere else is refused.

Each source belongs to a root: the file or folder the user named that holds it (``sources``
of :func:`make_plan`), else, for files named one by one (standard input, a records file),
its own folder. ``--move`` takes a file only when its real location, symbolic links
followed, is inside its root: a file reached through a link that leads out is skipped
with a reason, neither moved nor copied (``--copy`` files it).

Sorting the same files into the same DEST again does not duplicate them: a file DEST's
journal says was filed from the same source into the same folder, still holding the same
bytes (or, without a journal entry, a file of the same name there with the same bytes), is
not filed again but listed in :attr:`Plan.already`. Records read back from an earlier
classify (:func:`records_from_file`) are filed like fresh ones, except that a file whose
size or modification time changed since it was classified is skipped, not filed.

Exit status: a sort in which some inputs could not be classified still files them into
``_failed/``, and exits 1 as classify does: 1 means some inputs failed, filed or not.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal

from resnext_cli.errors import ResnextError
from resnext_cli.results import Classified, Failed, Record, record_from_dict
from resnext_cli.sort import reviewed

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
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted as the journal must not hang us


class SortError(ResnextError):
    """The destination cannot be sorted into as asked."""


# -- names -----------------------------------------------------------------------------


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


# -- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One file to place: source (absolute) to target (relative to DEST)."""

    n: int
    mode: str
    source: Path
    target: str
    input: str = ""
    # The source root the file belongs to: the step may only take from, or put back in, it.
    home: Path | None = None

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
    already: list[tuple[str, str]] = field(default_factory=list)  # (input, where in DEST)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def _canonical(path: Path) -> Path:
    """*path* made absolute, its folder's symbolic links resolved but not its own name."""
    path = Path(os.path.abspath(path))
    return Path(os.path.realpath(path.parent)) / path.name


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

    def home(self, source: Path, *, move: bool) -> Path | None:
        """The root of *source*; None when --move must leave it (it leads out of its root)."""
        lexical, canon = Path(os.path.abspath(source)), _canonical(source)
        real = Path(os.path.realpath(source))
        claimed = [res for lex, res in self.named if _inside(lexical, lex) or _inside(canon, res)]
        for res in claimed:
            if _inside(canon, res) and (not move or _inside(real, res)):
                return res
        if claimed and move:
            return None
        own = canon.parent  # named one by one: on standard input or in a records file
        return None if move and not _inside(real, own) else own


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


def _changed(record: Record, source: Path) -> str | None:
    """Why *source* is no longer the file *record* was made from, if it is not."""
    facts = record.file
    if facts is None:
        return None
    st = source.stat()
    if (st.st_size, st.st_mtime_ns) != (facts.size, facts.mtime_ns):
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
) -> Plan:
    """Decide where each file goes; touches nothing (reads DEST to avoid its names).

    *sources* are the SRC arguments as the user gave them (files, folders, globs, ``-``):
    the roots the files belong to (:func:`roots_for`). *min_probability* goes to
    :func:`folder_for`. A record whose file changed since it was classified (its size and
    mtime_ns) is skipped.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    if by not in KEYS:
        raise ValueError(f"unknown key {by!r}")
    root = dest.resolve()
    names = _Names(root)
    homes = _Roots(roots_for(str(s) for s in sources or ()))
    plan = Plan(dest=dest, mode=mode)
    seen: set[str] = set()
    entries = Journal(dest).read()
    filed = _filed_before(entries)
    listing = _Listing(root)
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
        why = _changed(record, source)
        if why is not None:
            plan.skipped.append((record.input, why))
            continue
        home = homes.home(source, move=mode == "move")
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
        plan.steps.append(Step(n, mode, canon, f"{folder}/{name}", record.input, home))
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
        self.folders: dict[str, dict[str, list[str]]] = {}

    def like(self, folder: str, name: str) -> list[str]:
        """Files in *folder* named *name*, or *name* with a clash number."""
        if folder not in self.folders:
            index: dict[str, list[str]] = {}
            with contextlib.suppress(OSError):
                for entry in sorted(os.listdir(self.root / folder)):
                    index.setdefault(_base_key(entry), []).append(entry)
            self.folders[folder] = index
        return self.folders[folder].get(_base_key(name), [])


def _already(
    root: Path, source: Path, folder: str, targets: list[str], listing: _Listing
) -> str | None:
    """Where in *folder* of DEST *source* already is, with the same bytes; else None.

    First where the journal says earlier sorts put it, then files of its name.
    """
    wanted = [t for t in targets if _key(t.split("/")[0]) == _key(folder)]
    wanted += [f"{folder}/{n}" for n in listing.like(folder, safe_file_name(source.name))]
    for target in wanted:
        path = root / target
        if path.is_file() and _inside(path.parent.resolve(), root) and _same_content(source, path):
            return target
    return None


# -- the journal ---------------------------------------------------------------------------


@dataclass
class Entry:
    """A step as the journal tells it."""

    step: Step
    done: bool = False
    skipped: bool = False
    undone: bool = False


def _clean_absolute(text: str) -> bool:
    return os.path.isabs(text) and os.path.normpath(text) == text and "\x00" not in text


def _clean_target(text: str) -> bool:
    """Whether *text* is 'folder/name' as a plan writes it: nothing that could lead out."""
    parts = text.split("/")
    return len(parts) == 2 and all(
        part not in ("", ".", "..") and not set(part) & set("\\:\x00") for part in parts
    )


class Journal:
    """The append-only record of a destination's sorts, locked while in use."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.path = dest / JOURNAL_NAME
        self._fd: int | None = None

    # reading and checking

    def _refused(self, line: int, why: str) -> SortError:
        return SortError(
            f"journal '{self.path}' line {line} {why}: refused, nothing was touched "
            f"(remove the journal if you did not sort into '{self.dest}')"
        )

    def _damaged(self, line: int) -> SortError:
        return SortError(f"journal '{self.path}' line {line} is damaged (fix or remove that line)")

    def _check_file(self, fd: int) -> None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SortError(f"journal '{self.path}' is not a regular file (remove it)")
        if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            raise SortError(
                f"journal '{self.path}' belongs to another user (uid {st.st_uid}): refused, "
                "nothing was touched (sort into a folder of your own)"
            )

    def _open_fd(self, flags: int) -> int:
        try:
            fd = os.open(self.path, flags | _NOFOLLOW | _NONBLOCK, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SortError(
                    f"journal '{self.path}' is a symbolic link: refused (remove it)"
                ) from None
            raise
        try:
            self._check_file(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _content(fd: int) -> bytes:
        os.lseek(fd, 0, os.SEEK_SET)  # appends still go to the end (O_APPEND)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)

    def read(self) -> dict[int, Entry]:
        """Every step recorded so far, by number, once the whole journal passed its checks."""
        try:
            fd = self._open_fd(os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        try:
            return self._parse(self._content(fd))[0]
        finally:
            os.close(fd)

    def _parse(self, data: bytes) -> tuple[dict[int, Entry], int]:
        """The entries, and how many bytes of *data* hold whole lines (a torn last one not)."""
        entries: dict[int, Entry] = {}
        pieces = data.split(b"\n")
        count = len(pieces) - 1 if pieces[-1] == b"" else len(pieces)
        roots: tuple[Path, ...] | None = None
        here = Path(os.path.realpath(self.dest))
        offset = 0
        for number, raw in enumerate(pieces[:count], start=1):
            try:
                item = json.loads(raw.decode())
            except ValueError:
                if number == count:
                    return entries, offset  # cut off by a crash or a full disk
                raise self._damaged(number) from None
            offset += len(raw) + 1
            try:
                roots = self._apply(item, number, here, entries, roots)
            except (KeyError, TypeError, ValueError, AttributeError):
                raise self._damaged(number) from None
        return entries, len(data)

    def _apply(
        self,
        item: dict[str, Any],
        number: int,
        here: Path,
        entries: dict[int, Entry],
        roots: tuple[Path, ...] | None,
    ) -> tuple[Path, ...] | None:
        """Take one journal line into *entries*; return the source roots now in force."""
        op = item["op"]
        if op == "begin":
            dest, src = item.get("dest"), item.get("src")
            if not isinstance(dest, str) or not isinstance(src, list):
                raise self._refused(number, "names no destination and source folders")
            if dest != str(here):
                raise self._refused(number, f"was made for '{dest}', not for '{here}'")
            if not all(isinstance(s, str) and _clean_absolute(s) for s in src):
                raise self._refused(number, "names a source folder that is not a plain path")
            found = tuple(Path(s) for s in src)
            if any(_inside(r, here) for r in found):
                raise self._refused(number, "names a source folder inside the destination")
            return found
        if op == "step":
            n, mode, src, dst = item["n"], item["mode"], item["src"], item["dst"]
            if type(n) is not int or mode not in MODES or n in entries:
                raise ValueError  # damaged; a src or dst that is not text fails below, as damaged
            if roots is None:
                raise self._refused(number, "has a step before any 'begin' naming its folders")
            source = Path(src)
            home = next((r for r in roots if _inside(source, r)), None)
            if not _clean_absolute(src) or home is None or _inside(source, here):
                raise self._refused(number, f"takes '{src}' from outside its source folders")
            if not _clean_target(dst):
                raise self._refused(number, f"puts a file at '{dst}', outside the destination")
            step = Step(n, mode, source, dst, str(item.get("input", "")), home)
            entries[n] = Entry(step)
        elif op == "retarget":
            entry, dst = entries[item["n"]], item["dst"]
            if not _clean_target(dst):  # AttributeError, damaged, when dst is not text
                raise self._refused(number, f"puts a file at '{dst}', outside the destination")
            entry.step = replace(entry.step, target=dst)
        elif op in ("done", "skip", "undone"):
            setattr(entries[item["n"]], {"skip": "skipped"}.get(op, op), True)
        return roots

    # writing

    def open(self) -> dict[int, Entry]:
        """Lock against a second sort into the same folder, check, and ready for appending.

        Returns the entries so far. A torn last line is cut away here, so the next line
        starts on a line of its own.
        """
        self.dest.mkdir(parents=True, exist_ok=True)
        self._fd = self._open_fd(os.O_RDWR | os.O_CREAT | os.O_APPEND)
        try:
            self._lock()
            data = self._content(self._fd)
            entries, whole = self._parse(data)
            if whole < len(data):
                os.ftruncate(self._fd, whole)
            elif data and not data.endswith(b"\n"):
                self._append(b"\n")  # the last line is whole but lost its newline
        except BaseException:
            self.close()
            raise
        return entries

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one sort at a time is up to you
            return
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SortError(
                f"another sort is using '{self.dest}' (wait for it to finish)"
            ) from None

    def probe_lock(self) -> None:
        """Refuse now, rather than after classifying, when another sort holds the journal."""
        try:
            import fcntl
        except ImportError:
            return
        try:
            fd = self._open_fd(os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            # Shared, so that two probes never make each other's sort fail.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            raise SortError(
                f"another sort is using '{self.dest}' (wait for it to finish)"
            ) from None
        finally:
            os.close(fd)

    def _append(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def write(self, *items: dict[str, Any], sync: bool = False) -> None:
        """Append lines; with sync, make sure they are on disk before returning."""
        self._append("".join(json.dumps(item) + "\n" for item in items).encode())
        if sync:
            assert self._fd is not None
            os.fsync(self._fd)

    def close(self) -> None:
        """Release the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def unfinished(dest: Path) -> list[Step]:
    """Steps an interrupted sort into *dest* left neither done nor skipped."""
    return _pending(Journal(dest).read())


def _pending(entries: dict[int, Entry]) -> list[Step]:
    return [e.step for e in entries.values() if not (e.done or e.skipped or e.undone)]


def check_dest(dest: Path) -> None:
    """Refuse, before any image is read, a DEST that cannot be sorted into.

    DEST must be a folder, or a path where one can be made, and writable; its journal, if
    any, must pass its checks, have no unfinished sort and not be in use.
    """
    if os.path.lexists(dest) and not dest.exists():
        raise SortError(f"destination '{dest}' is a broken symbolic link (give a folder)")
    if not dest.exists():
        parent = Path(os.path.abspath(dest)).parent
        while not os.path.lexists(parent):
            parent = parent.parent
        if not parent.is_dir():
            raise SortError(
                f"cannot create destination '{dest}': '{parent}' is not a folder "
                "(give another destination)"
            )
        _probe(parent, f"cannot create destination '{dest}' in '{parent}'")
        return
    if not dest.is_dir():
        raise SortError(f"destination '{dest}' is not a folder (give a folder)")
    journal = Journal(dest)
    if _pending(journal.read()):
        raise SortError(unfinished_message(dest))
    journal.probe_lock()
    _probe(dest, f"cannot write into destination '{dest}'")


def _probe(folder: Path, what: str) -> None:
    """Create and remove a file in *folder*: the one test of writability root cannot skip."""
    try:
        fd, name = tempfile.mkstemp(prefix=".resnext-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise SortError(f"{what} ({reason}) (give a folder you can write to)") from None


# -- doing it ----------------------------------------------------------------------------

OnStep = Callable[[Step], None]


@dataclass
class Outcome:
    """What a sort, resume or undo did.

    ``mode`` tells a copy or link sort from a move. For an undo, ``done`` holds every
    step undone; of them, ``restored`` are files put back
    where they were (a move undone, or a copy's original that was gone) and ``removed`` are
    copies and links deleted from DEST while their originals stayed.
    """

    done: list[Step] = field(default_factory=list)
    problems: list[tuple[Step, str]] = field(default_factory=list)
    restored: list[Step] = field(default_factory=list)
    removed: list[Step] = field(default_factory=list)

    @property
    def mode(self) -> str:
        """'copy', 'link' or 'move' when every step handled had it, 'mixed', or '' (none)."""
        modes = {step.mode for step in self.done} | {step.mode for step, _ in self.problems}
        return modes.pop() if len(modes) == 1 else "mixed" if modes else ""

    @property
    def folders(self) -> int:
        """How many folders received files."""
        return len({_key(step.folder) for step in self.done})


class _Refused(Exception):
    """A step the file system no longer lets us do safely; left as it is."""


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
            shutil.copyfileobj(src, out)
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
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
        os.rename(temp, target)
    else:
        temp.unlink()


def _place(step: Step, source: Path, target: Path) -> None:
    """Put *source* at *target* as the step's mode says; raise FileExistsError on a clash."""
    target.parent.mkdir(exist_ok=True)  # in DEST, which holds the journal
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
    """Whether *target*, which exists, already is this step's result (after a crash)."""
    if step.mode == "link" and target.is_symlink():
        return os.readlink(target) == str(source)
    return _same_content(source, target)


def _free_name(root: Path, target: str) -> str:
    folder, _, name = target.partition("/")
    taken = {_key(n) for n in os.listdir(root / folder)}  # it holds the name just taken
    number = 1
    while _key(numbered(name, number)) in taken:
        number += 1
    return f"{folder}/{numbered(name, number)}"


def _check_places(step: Step, root: Path) -> None:
    """Refuse a step whose source or target now leads out of its root (a link changed)."""
    home = step.home if step.home is not None else _canonical(step.source).parent
    if not _inside(_canonical(step.source), home):
        raise _Refused(f"'{step.source}' now leads outside '{home}' (a symbolic link); left alone")
    if not _inside((root / step.target).parent.resolve(), root):
        raise _Refused(f"'{step.target}' now leads outside '{root}'; left alone")


def _run_step(journal: Journal, root: Path, step: Step) -> Step:
    """Do one step, or finish it after a crash; return it with its final target."""
    _check_places(step, root)
    with contextlib.suppress(FileNotFoundError):
        _partial(root / step.target, step.n).unlink()  # a copy cut short by a crash
    for _ in range(1000):
        target = root / step.target
        _check_places(step, root)
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


def _reason(exc: OSError) -> str:
    return f"{exc.strerror or exc}: '{exc.filename}'" if exc.filename else str(exc)


def _execute(
    journal: Journal, root: Path, steps: Iterable[Step], on_step: OnStep | None
) -> Outcome:
    outcome = Outcome()
    for step in steps:
        try:
            final = _run_step(journal, root, step)
        except (OSError, _Refused) as exc:
            reason = _reason(exc) if isinstance(exc, OSError) else str(exc)
            journal.write({"op": "skip", "n": step.n, "reason": reason})
            outcome.problems.append((step, reason))
        else:
            journal.write({"op": "done", "n": step.n})
            outcome.done.append(final)
        if on_step is not None:
            on_step(step)
    return outcome


@contextlib.contextmanager
def _journal(dest: Path) -> Iterator[tuple[Journal, dict[int, Entry]]]:
    journal = Journal(dest)
    entries = journal.open()
    try:
        yield journal, entries
    finally:
        journal.close()


def execute(plan: Plan, *, on_step: OnStep | None = None) -> Outcome:
    """Carry out a plan: journal every step (on disk first), then do them in order."""
    with _journal(plan.dest) as (journal, entries):
        if _pending(entries):
            raise SortError(unfinished_message(plan.dest))
        root = plan.dest.resolve()
        # Numbered after the journal as it is now: another sort may have run since planning.
        first = max(entries) + 1 if entries else 0
        steps = [
            replace(s, n=first + i, home=s.home or _canonical(s.source).parent)
            for i, s in enumerate(plan.steps)
        ]
        for step in steps:
            if step.home is None or not _inside(step.source, step.home):
                raise ValueError(f"step source '{step.source}' is outside its root")
        journal.write(
            {
                "op": "begin",
                "mode": plan.mode,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "dest": str(root),
                "src": sorted({str(s.home) for s in steps}),
            },
            *(
                {
                    "op": "step",
                    "n": s.n,
                    "mode": s.mode,
                    "src": str(s.source),
                    "dst": s.target,
                    "input": s.input,
                }
                for s in steps
            ),
            sync=True,
        )
        outcome = _execute(journal, root, steps, on_step)
        journal.write({"op": "end"})
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
    with _journal(dest) as (journal, entries):
        outcome = _execute(journal, dest.resolve(), _pending(entries), on_step)
        journal.write({"op": "end"})
    return outcome


def _put_back(step: Step, root: Path) -> Literal["restored", "removed", "absent"]:
    """Undo one step: 'restored', 'removed' or 'absent'; raise _Refused when it cannot."""
    _check_places(step, root)
    source, target = step.source, root / step.target
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # no folder, no partial
        _partial(source, step.n).unlink()
    there = os.path.lexists(target)
    back = os.path.lexists(source)
    if not there:
        if step.mode == "move" and not back:
            raise _Refused(
                f"'{step.target}' is no longer in '{root}' (renamed or deleted there?); "
                "cannot put it back"
            )
        return "absent"  # never placed, already put back, or a copy deleted since
    kept = f"'{source}' exists and differs from '{step.target}'; kept both"
    if step.mode == "link" and target.is_symlink():
        if os.readlink(target) != str(source):
            raise _Refused(kept)
        target.unlink()  # a symbolic link holds no data: removing it loses nothing
        return "removed"
    if back:
        if not _placed(step, source, target):
            raise _Refused(kept)
        target.unlink()
        return "restored" if step.mode == "move" else "removed"
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
    return "restored"


def undo(dest: Path, *, on_step: OnStep | None = None) -> Outcome:
    """Put every file the journal placed in *dest* back where it came from, newest first.

    Copies and links are removed (when the original is still there and the same), moved
    files go back. A file that cannot be put back (renamed or deleted in DEST, or its old
    place taken) is a problem and keeps its journal entry; when everything is back the
    journal is removed, and so are folders the sort made that are now empty.
    """
    if not (dest / JOURNAL_NAME).is_file():
        raise SortError(f"'{dest}' has no sort journal (nothing to undo)")
    root = dest.resolve()
    outcome = Outcome()
    with _journal(dest) as (journal, entries):
        todo = [e for e in entries.values() if not (e.undone or e.skipped)]
        for entry in sorted(todo, key=lambda e: e.step.n, reverse=True):
            step = entry.step
            try:
                action = _put_back(step, root)
            except OSError as exc:
                outcome.problems.append((step, _reason(exc)))
                continue
            except _Refused as exc:
                outcome.problems.append((step, str(exc)))
                continue
            journal.write({"op": "undone", "n": step.n})
            outcome.done.append(step)
            if action == "restored":
                outcome.restored.append(step)
            elif action == "removed":
                outcome.removed.append(step)
            if on_step is not None:
                on_step(step)
        if not outcome.problems:
            journal.path.unlink()
            for folder in sorted({s.folder for s in outcome.done}):
                with contextlib.suppress(OSError):
                    (root / folder).rmdir()
    return outcome


# -- records from an earlier classify ------------------------------------------------------

_MAX_LINE = 16 << 20  # far above any record (1,000 predictions take about 60 KB)
_MAX_ARRAY = 1 << 30
_BOM = b"\xef\xbb\xbf"


def _record_problem(data: Any) -> str | None:
    """What keeps *data* from being a record this tool wrote, if anything."""

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not isinstance(data, dict):
        return "not a JSON object"
    if not isinstance(data.get("input"), str):
        return "no 'input'"
    path = data.get("path")
    if path is not None and not (isinstance(path, str) and os.path.isabs(path)):
        return "'path' is not an absolute path"
    for key in ("size", "mtime_ns"):
        if key in data and not (type(data[key]) is int or data[key] is None):
            return f"'{key}' is not a whole number"
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
            and number(p.get("probability"))
        ):
            return "a prediction needs a 'label', an 'index' and a 'probability'"
    if data.get("uncertain") is not None and not isinstance(data["uncertain"], bool):
        return "'uncertain' is not true or false"
    categories = data.get("categories")
    if categories is not None and not (
        isinstance(categories, list)
        and all(
            isinstance(c, dict) and isinstance(c.get("name"), str) and number(c.get("probability"))
            for c in categories
        )
    ):
        return "a category needs a 'name' and a 'probability'"
    return None


def _not_records(path: Path, line: int, detail: str) -> SortError:
    return SortError(
        f"'{path}' line {line} is not a record of 'resnext classify' ({detail}); give the "
        "JSON Lines or JSON file that 'resnext classify -o' wrote"
    )


def _to_record(data: Any, path: Path, line: int) -> Record:
    if reviewed.is_reviewed_line(data):
        problem = reviewed.review_problem(data)
        if problem is None:
            return reviewed.reviewed_from_dict(data)
        raise SortError(
            f"'{path}' line {line} is not a reviewed record ({problem}); give the file the "
            "report's 'export decisions' wrote"
        )
    problem = _record_problem(data)
    if problem is None:
        try:
            return record_from_dict(data)
        except ValueError as exc:
            problem = str(exc)
    raise _not_records(path, line, problem)


def records_from_file(path: Path) -> tuple[list[Record], list[tuple[str, str]]]:
    """Read the records a classify run wrote: JSON Lines, or a JSON array (``-f json``).

    Returns the records to file and, as (input, reason), those whose file is gone or
    changed since (by the records' size and mtime_ns). Unknown keys are ignored; records
    without a path (URLs, standard input) are returned for :func:`make_plan` to skip.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise SortError(
            f"cannot read records file '{path}' ({reason}) (give the file 'resnext classify -o' "
            "wrote)"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise SortError(
            f"records file '{path}' is not a regular file (give the file 'resnext classify -o' "
            "wrote)"
        )
    with path.open("rb") as fh:
        head = fh.read(4096).removeprefix(_BOM).lstrip()
        fh.seek(0)
        if head.startswith(b"["):
            if st.st_size > _MAX_ARRAY:
                raise SortError(
                    f"records file '{path}' is too large to read as one JSON array "
                    "(classify with -f jsonl)"
                )
            records = _from_array(fh.read(), path)  # read from its first '[': a BOM is passed over
        else:
            records = _from_lines(fh, path)
    if not records:
        raise SortError(f"'{path}' holds no records (give the file 'resnext classify -o' wrote)")
    kept: list[Record] = []
    changed: list[tuple[str, str]] = []
    for record in records:
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


def _from_lines(fh: BinaryIO, path: Path) -> list[Record]:
    records: list[Record] = []
    line = 0
    while raw := fh.readline(_MAX_LINE + 1):
        line += 1
        if len(raw) > _MAX_LINE:
            raise _not_records(path, line, "the line is too long")
        text = (raw.removeprefix(_BOM) if line == 1 else raw).strip()
        if not text:
            continue
        try:
            data = json.loads(text.decode())
        except ValueError:
            raise _not_records(path, line, "not JSON") from None
        records.append(_to_record(data, path, line))
    return records


def _from_array(data: bytes, path: Path) -> list[Record]:
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise _not_records(path, data.count(b"\n", 0, exc.start) + 1, "not UTF-8") from None
    decoder = json.JSONDecoder()
    records: list[Record] = []
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
        except ValueError:
            raise _not_records(path, line_at(pos), "not JSON") from None
        records.append(_to_record(item, path, line_at(pos)))
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos >= len(text) or text[pos] != "]":
            raise _not_records(path, line_at(pos), "expected ',' or ']'")
    if pos >= len(text) or text[skip(pos + 1) :]:
        raise _not_records(path, line_at(pos), "the JSON array does not end with ']'")
    return records
