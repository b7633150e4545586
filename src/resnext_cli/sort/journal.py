"""The journal of a destination's sorts: every step on disk before a file is touched.

See the package docstring for what the journal holds and why it is trusted only when it
proves itself: each line carries a MAC keyed by a per-user secret kept outside DEST
(:func:`journal_key`), over the line and the real path of the DEST it lies in.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from resnext_cli.files import FileProblem, read_user_file
from resnext_cli.sort.names import JOURNAL_NAME, MODES, SortError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted as the journal must not hang us


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
    # (size, mtime_ns) the file must still have, opened without following a link: a file
    # named by a records file must be the one that was classified.
    identity: tuple[int, int] | None = None

    @property
    def folder(self) -> str:
        """The folder in DEST the file goes to."""
        return self.target.split("/")[0]


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


# -- the key that proves a journal is this tool's ------------------------------------------

KEY_BYTES = 32
_MAC_CONTEXT = b"resnext sort journal v1\x00"


def key_path() -> Path:
    """Where the journal key lives: the user's config folder, never inside a DEST."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "resnext" / "journal.key"


def _key_problem(path: Path, why: str) -> SortError:
    return SortError(
        f"journal key '{path}' {why} (remove it: a new key is made, and sorts signed with the "
        "old one can no longer be resumed or undone)"
    )


def journal_key(*, create: bool = True) -> bytes | None:
    """This user's journal key (made on first use when *create*; else None when absent)."""
    path = key_path()
    try:
        data = read_user_file(path, max_bytes=4 * KEY_BYTES, follow_links=False)
    except FileProblem as exc:
        if exc.kind != "missing":
            raise _key_problem(path, f"cannot be read ({exc.reason})") from None
        if not create:
            return None
        return _make_key(path)
    st = os.stat(path, follow_symlinks=False)
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise _key_problem(path, f"belongs to another user (uid {st.st_uid})")
    if st.st_mode & 0o077:
        raise _key_problem(path, "can be read by other users")
    try:
        key = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise _key_problem(path, "is damaged")
    return key


def _make_key(path: Path) -> bytes:
    key = secrets.token_bytes(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        pass  # made meanwhile by another sort: that one is the key
    except OSError as exc:
        raise SortError(
            f"cannot make the journal key '{path}': {(exc.strerror or str(exc)).lower()} "
            "(set XDG_CONFIG_HOME to a folder of your own)"
        ) from None
    else:
        try:
            os.write(fd, key.hex().encode("ascii") + b"\n")  # one write: whole or nothing
            os.fsync(fd)
        finally:
            os.close(fd)
    for _ in range(50):  # another sort may be between making its key and writing it
        try:
            found = journal_key(create=False)
        except SortError:
            if os.stat(path, follow_symlinks=False).st_size:
                raise
            time.sleep(0.02)
            continue
        if found is None:  # removed since another sort made it
            raise SortError(
                f"journal key '{path}' was removed while it was made: run the sort again"
            )
        return found
    raise _key_problem(path, "is empty")


def _canonical_line(item: dict[str, Any]) -> bytes:
    return json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _mac(key: bytes, dest: Path, item: dict[str, Any]) -> str:
    message = _MAC_CONTEXT + os.fsencode(str(dest)) + b"\x00" + _canonical_line(item)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign_line(dest: Path, item: dict[str, Any], *, key: bytes | None = None) -> str:
    """One journal line for *item* in *dest*'s journal, with its MAC (no newline)."""
    here = Path(os.path.realpath(dest))
    mac = _mac(key if key is not None else _require_key(), here, item)
    return json.dumps({**item, "mac": mac})


def _require_key() -> bytes:
    key = journal_key()
    assert key is not None
    return key


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
        self._key: bytes | None = None
        self._newline = False

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
        key = journal_key(create=False) if data.strip() else None
        offset = 0
        for number, raw in enumerate(pieces[:count], start=1):
            try:
                item = json.loads(raw.decode())
            except (ValueError, RecursionError):
                if number == count:
                    return entries, offset  # cut off by a crash or a full disk
                raise self._damaged(number) from None
            offset += len(raw) + 1
            if not self._signed(item, key, here):
                if number == count and not data.endswith(b"\n"):
                    return entries, offset - len(raw) - 1  # an unfinished last line: cut
                raise self._not_ours(number)
            try:
                roots = self._apply(item, number, here, entries, roots)
            except (KeyError, TypeError, ValueError, AttributeError):
                raise self._damaged(number) from None
        return entries, len(data)

    @staticmethod
    def _signed(item: Any, key: bytes | None, here: Path) -> bool:
        """Whether *item* carries a MAC this user's key made for this DEST (it is removed)."""
        if not isinstance(item, dict) or not isinstance(item.get("mac"), str) or key is None:
            return False
        mac = item.pop("mac")
        return hmac.compare_digest(mac, _mac(key, here, item))

    def _not_ours(self, line: int) -> SortError:
        return SortError(
            f"journal '{self.path}' line {line} was not written by resnext for this folder "
            f"with your key ('{key_path()}'): refused, nothing was touched (remove the "
            f"journal if you did not sort into '{self.dest}' on this machine)"
        )

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
            size, mtime = item.get("size"), item.get("mtime_ns")
            identity = (size, mtime) if type(size) is int and type(mtime) is int else None
            step = Step(n, mode, source, dst, str(item.get("input", "")), home, identity)
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
                os.ftruncate(self._fd, whole)  # frees space: never fails for a full disk
            elif data and not data.endswith(b"\n"):
                # The last line is whole but lost its newline: the next write starts with
                # one (nothing is appended before anything is freed, for a full DEST).
                self._newline = True
            self._key = journal_key()
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

    def _lines(self, items: tuple[dict[str, Any], ...]) -> bytes:
        assert self._key is not None
        here = Path(os.path.realpath(self.dest))
        text = "".join(sign_line(here, item, key=self._key) + "\n" for item in items)
        return (b"\n" if self._newline else b"") + text.encode()

    def write(self, *items: dict[str, Any], sync: bool = False) -> None:
        """Append lines; with sync, make sure they are on disk before returning.

        A failure (a full disk) cuts the journal back to its last whole line and raises
        SortError: the lines that must be on disk before a file is touched were not.
        """
        try:
            self._write(items, sync=sync)
        except OSError as exc:
            raise SortError(
                f"cannot write the journal in '{self.dest}': "
                f"{(exc.strerror or str(exc)).lower()} (nothing more was done; free space, "
                f"then 'resnext sort --resume {self.dest}' or 'resnext sort --undo "
                f"{self.dest}')"
            ) from None

    def note(self, *items: dict[str, Any]) -> bool:
        """Append progress lines (done, skip, undone) that the file system can also tell.

        On a full disk they are left out (the journal cut back to its last whole line) and
        False is returned: a resume or undo finds the state of each step in DEST itself.
        """
        try:
            self._write(items, sync=False)
        except OSError:
            return False
        return True

    def _write(self, items: tuple[dict[str, Any], ...], *, sync: bool) -> None:
        assert self._fd is not None
        data = self._lines(items)
        size = os.fstat(self._fd).st_size
        try:
            self._append(data)
            if sync:
                os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)  # no torn line left in the middle
            raise
        self._newline = False

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


def unfinished_message(dest: Path) -> str:
    return (
        f"'{dest}' has an unfinished sort (run 'resnext sort --resume {dest}' to finish it, "
        f"or 'resnext sort --undo {dest}' to put the files back)"
    )


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
