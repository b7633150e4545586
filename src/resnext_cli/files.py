"""The user's files, read and written one way: a safe opener, a lock, and publishing.

Reading: :func:`open_user_file` opens a small file a person named (labels, categories,
records, a journal) without blocking (a FIFO planted there cannot hang the run), without
following a symbolic link where asked, and refuses what is not a regular file; it raises
:class:`FileProblem`, whose ``kind`` lets each caller say it in its own words.

Writing: :class:`OutputTarget` claims one output location (a file or a folder of shards)
before any work: it refuses a folder, a dangling or any other symbolic link, a block
device or a socket, and a file that exists without ``force``; it locks the location for
the whole run (``DIR/.resnext-lock-NAME``, and the file itself when it exists). Then
either

- :meth:`OutputTarget.stream` opens the file to be written in place (``-o`` results):
  created exclusively when absent, never through a link, and cut only when the first byte
  is written, so a run that writes nothing leaves an old file byte for byte; or
- :meth:`OutputTarget.temporary` makes a temporary file next to the target
  (``.resnext-tmp-NAME-XXXXXXXX``, created with ``O_CREAT|O_EXCL|O_NOFOLLOW``) and
  :meth:`OutputTarget.publish` fsyncs it and puts it in place: onto nothing (a hard link,
  which never replaces), onto the regular file that was there when the run started
  (``force``), or *into* a character device or FIFO (its bytes are written into it). A
  file that appeared meanwhile is not replaced without ``force``; a folder, link or
  device node at the target is never replaced. Only names this module made are removed.

:func:`publish_file` is the one-call form, for a whole file written at once (a learned
head, a quantized checkpoint).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from resnext_cli.errors import OutputError

TEMP_PREFIX = ".resnext-tmp-"
LOCK_PREFIX = ".resnext-lock-"
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# Hard links refused where a rename would work: another file system, FAT, a hardened kernel.
NO_LINK = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]


# -- reading ----------------------------------------------------------------------------


class FileProblem(Exception):
    """Why a user's file cannot be read: ``kind`` is one of 'missing', 'folder', 'link',
    'not_regular', 'too_large', 'os'; ``reason`` is the system's words, lower case."""

    def __init__(self, kind: str, reason: str, cause: str = "") -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.cause = cause  # the OSError's class name, where there was one


def _reason(exc: OSError) -> str:
    return (exc.strerror or exc.__class__.__name__).lower()


def open_user_file(
    path: str | os.PathLike[str], *, follow_links: bool = True, max_bytes: int | None = None
) -> BinaryIO:
    """Open a regular file to read, never blocking; raise FileProblem for anything else.

    With ``follow_links=False`` a symbolic link at *path* itself is refused ('link'). With
    *max_bytes*, a file larger than that is refused ('too_large') before it is read.
    """
    flags = os.O_RDONLY | NONBLOCK | CLOEXEC | (0 if follow_links else NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileProblem("missing", "no such file or directory", "FileNotFoundError") from None
    except IsADirectoryError:
        raise FileProblem("folder", "a folder", "IsADirectoryError") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:
            raise FileProblem("link", "a symbolic link", exc.__class__.__name__) from None
        raise FileProblem("os", _reason(exc), exc.__class__.__name__) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FileProblem("folder", "a folder")
        if not stat.S_ISREG(st.st_mode):
            raise FileProblem("not_regular", "not a regular file (a pipe, socket or device)")
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileProblem("too_large", f"over the {max_bytes}-byte limit")
        # Reads block as usual from here on (O_NONBLOCK only kept a FIFO from hanging open).
        if fcntl is not None:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_user_file(
    path: str | os.PathLike[str], *, max_bytes: int, follow_links: bool = True
) -> bytes:
    """The whole of a small regular file (see :func:`open_user_file`)."""
    with open_user_file(path, follow_links=follow_links, max_bytes=max_bytes) as fh:
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise FileProblem("os", _reason(exc), exc.__class__.__name__) from None
    if len(data) > max_bytes:  # it grew since fstat
        raise FileProblem("too_large", f"over the {max_bytes}-byte limit")
    return data


# -- locks ------------------------------------------------------------------------------


def lock_path(target: Path) -> Path:
    """The lock file that guards *target* (a file or a folder): beside it, in its folder."""
    return target.parent / f"{LOCK_PREFIX}{target.name}"


class Busy(Exception):
    """Another process holds the lock."""


@dataclass
class Lock:
    """An exclusive lock on an output location, held until :meth:`release`."""

    path: Path
    fd: int | None = None
    extra: list[int] = field(default_factory=list)  # the target itself, when it exists

    @classmethod
    def take(cls, target: Path) -> Lock:
        """Lock *target*'s lock file (made if needed) and *target* itself if it is a file."""
        lock = cls(lock_path(target))
        if fcntl is None:  # pragma: no cover
            return lock
        try:
            lock._take_file()
            with contextlib.suppress(OSError):
                fd = os.open(target, os.O_RDONLY | NOFOLLOW | NONBLOCK | CLOEXEC)
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    lock.extra.append(fd)
                    lock._flock(fd)
                else:
                    os.close(fd)
        except BaseException:
            lock.release()
            raise
        return lock

    @staticmethod
    def _flock(fd: int, mode: int = 0) -> None:
        mode = mode or fcntl.LOCK_EX
        for attempt in range(5):  # a reader's probe holds a shared lock for an instant
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if attempt == 4:
                    raise Busy() from None
                time.sleep(0.02)

    def _take_file(self) -> None:
        for _ in range(10):
            try:
                fd = os.open(
                    self.path, os.O_RDWR | os.O_CREAT | NOFOLLOW | NONBLOCK | CLOEXEC, 0o600
                )
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                    return  # a folder we may not write in: the file's own lock must do
                raise
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(errno.EINVAL, "the lock file is not a regular file", str(self.path))
            try:
                self._flock(fd)
            except BaseException:
                os.close(fd)
                raise
            # The holder before us may have removed the name after we opened it: retry.
            try:
                same = same_node(os.fstat(fd), os.lstat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return
            os.close(fd)
        raise Busy()

    def release(self) -> None:
        """Remove the lock file (it is still ours) and unlock."""
        for fd in self.extra:
            os.close(fd)
        self.extra = []
        if self.fd is not None:
            with contextlib.suppress(OSError):
                if same_node(os.fstat(self.fd), os.lstat(self.path)):
                    os.unlink(self.path)
            os.close(self.fd)
            self.fd = None


def is_locked(target: Path) -> bool:
    """Whether a run of this tool is writing *target* now (it holds its lock)."""
    if fcntl is None:  # pragma: no cover
        return False
    for path in (lock_path(target), target):
        try:
            fd = os.open(path, os.O_RDONLY | NOFOLLOW | NONBLOCK | CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
    return False


# -- writing ----------------------------------------------------------------------------

Kind = Literal["absent", "file", "folder", "stream"]


def _identity(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def same_node(a: os.stat_result, b: os.stat_result) -> bool:
    """Whether two stats are of one node: the same inode, and of the same kind and mode (a
    node made after another was removed can get its inode number: a link for a file)."""
    return os.path.samestat(a, b) and (a.st_mode, a.st_rdev) == (b.st_mode, b.st_rdev)


def _is_stream(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


@dataclass
class OutputTarget:
    """One output location, checked and locked for the run (see the module docstring)."""

    path: Path
    force: bool
    kind: Kind
    seen: tuple[int, int] | None = None  # the regular file there when the run started
    lock: Lock | None = None
    temps: list[Path] = field(default_factory=list)
    what: str = "output"
    created: bool = False  # stream() made the file (removed again when nothing was written)
    _names: dict[int, Path] = field(default_factory=dict)  # temporary file objects' paths

    @classmethod
    def claim(
        cls,
        path: Path,
        *,
        force: bool,
        what: str = "output",
        folder: bool = False,
        keep: bool = False,
        exists_hint: str = "use --force to overwrite it",
    ) -> OutputTarget:
        """Check *path* before any work and lock it; raise OutputError when it will not do.

        *folder*: the target is a folder of shards (made if absent). *keep*: an existing
        file is continued (--resume), so it needs no force.
        """
        kind, seen = cls._inspect(path, what=what, folder=folder)
        if kind == "file" and not (force or keep):
            raise OutputError(f"{what} file '{path}' exists ({exists_hint})")
        target = cls(path, force, kind, seen, what=what)
        if kind != "stream":
            try:
                target.lock = Lock.take(path)
            except Busy:
                raise OutputError(
                    f"'{path}' is being written by another resnext run "
                    f"(wait for it to finish, or give another {_flag(what)})"
                ) from None
            except OSError as exc:
                raise OutputError(f"cannot write '{path}': {exc.strerror or exc}") from None
            # Locked now: what is there must still be what was checked.
            if cls._inspect(path, what=what, folder=folder) != (kind, seen):
                target.release()
                raise OutputError(f"'{path}' changed while it was checked (run again)")
        return target

    @staticmethod
    def _inspect(path: Path, *, what: str, folder: bool) -> tuple[Kind, tuple[int, int] | None]:
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            parent = path.parent
            if not parent.is_dir():
                raise OutputError(
                    f"{_cannot(what, path)}: folder '{parent}' does not exist"
                ) from None
            return "absent", None
        except OSError as exc:
            raise OutputError(f"{_cannot(what, path)}: {exc.strerror or exc}") from None
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            try:
                real = os.stat(path)
            except OSError:
                raise OutputError(
                    f"{what} '{path}' is a symbolic link to nothing (give another name; "
                    "a write never creates a link's target)"
                ) from None
            if _is_stream(real.st_mode) and not folder:  # /dev/stdout and the like
                return "stream", None
            raise OutputError(
                f"{what} '{path}' is a symbolic link (give the file itself, not a link)"
            )
        if stat.S_ISDIR(mode):
            if folder:
                return "folder", _identity(st)
            raise OutputError(f"{what} '{path}' is a folder (give a file name)")
        if folder:
            raise OutputError(f"'{path}' is a file (give a folder for parquet shards, -o DIR/)")
        if _is_stream(mode):
            return "stream", None
        if not stat.S_ISREG(mode):
            raise OutputError(
                f"{what} '{path}' is not a regular file (a block device or socket; "
                "give a file name)"
            )
        return "file", _identity(st)

    # -- written in place ------------------------------------------------------------

    def stream(self, *, cut_at: int | None = 0) -> BinaryIO:
        """Open the file to write in place, at its end once cut to *cut_at* bytes.

        The cut (None: none, as for --resume with nothing torn) happens at the first write,
        so a run with nothing to write leaves an existing file as it was.
        """
        if self.kind == "stream":
            return open(self.path, "wb", buffering=0)
        if self.kind == "absent":
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC
        else:
            flags = os.O_WRONLY | NOFOLLOW | NONBLOCK | CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o666)
        except FileExistsError:
            raise OutputError(
                f"'{self.path}' appeared while this run started (give another name, or run again)"
            ) from None
        except OSError as exc:
            raise OutputError(f"cannot write '{self.path}': {exc.strerror or exc}") from None
        st = os.fstat(fd)
        if self.kind == "file" and _identity(st) != self.seen:
            os.close(fd)
            raise OutputError(f"'{self.path}' changed while it was checked (run again)")
        if self.kind == "absent":
            self.seen = _identity(st)
            self.kind = "file"
            self.created = True
            if self.lock is not None and fcntl is not None:
                dup = os.dup(fd)
                self.lock.extra.append(dup)
                with contextlib.suppress(Busy):
                    Lock._flock(dup)
        return _CutOnWrite(fd, cut_at)  # type: ignore[return-value]

    def remove_if_created(self) -> None:
        """Remove the file :meth:`stream` created, when it is still that file."""
        if not self.created or self.seen is None:
            return
        with contextlib.suppress(OSError):
            if _identity(os.lstat(self.path)) == self.seen:
                os.unlink(self.path)

    # -- published whole -------------------------------------------------------------

    def temporary(self) -> BinaryIO:
        """A new temporary file beside the target, this tool's own, open to write."""
        for _ in range(100):
            name = f"{TEMP_PREFIX}{self.path.name[:80]}-{secrets.token_hex(4)}"
            temp = self.path.parent / name
            if self.kind == "stream":  # the folder of a device is not ours to write in
                temp = Path(_private_folder()) / name
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, 0o666)
            except FileExistsError:
                continue
            except OSError as exc:
                raise OutputError(
                    f"cannot write '{self.path}': {exc.strerror or exc} (choose a writable folder)"
                ) from None
            self.temps.append(temp)
            fh = os.fdopen(fd, "wb")
            self._names[id(fh)] = temp
            return fh
        raise OutputError(f"cannot write '{self.path}': no free temporary name")

    def publish(self, temp: BinaryIO) -> None:
        """Fsync and close *temp*, then put it in place (see the module docstring)."""
        name = self._names.pop(id(temp))
        try:
            temp.flush()
            os.fsync(temp.fileno())
        finally:
            temp.close()
        try:
            self._put(name)
        finally:
            self.discard()

    def _put(self, temp: Path) -> None:
        target = self.path
        try:
            st: os.stat_result | None = os.lstat(target)
        except FileNotFoundError:
            st = None
        if st is None:
            try:
                os.link(temp, target)  # never replaces: fails when a file appeared
                return
            except FileExistsError:
                raise self._appeared() from None
            except OSError as exc:
                if exc.errno not in NO_LINK:
                    raise
            if os.path.lexists(target):  # no hard links here: check, then rename
                raise self._appeared()
            os.rename(temp, target)
            return
        if _is_stream(st.st_mode):
            seen = st

            def the_node_checked(path: str, _flags: int) -> int:
                """The device or FIFO lstat saw: no link followed, nothing made or cut."""
                try:
                    fd = os.open(path, os.O_WRONLY | NOFOLLOW | CLOEXEC)
                except OSError as exc:
                    if exc.errno != errno.ELOOP:
                        raise
                    raise self._swapped() from None
                if not same_node(seen, os.fstat(fd)):
                    os.close(fd)
                    raise self._swapped()
                return fd

            with (
                temp.open("rb") as src,
                open(target, "wb", buffering=0, opener=the_node_checked) as out,
            ):
                while chunk := src.read(1 << 20):
                    view = memoryview(chunk)
                    while view:
                        view = view[out.write(view) or 0 :]
            return
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(
                f"{self.what} '{target}' is now not a regular file: not replaced "
                f"(the result was not kept; give another name)"
            )
        if _identity(st) != self.seen and not self.force:
            raise self._appeared()
        os.replace(temp, target)

    def _swapped(self) -> OutputError:
        return OutputError(
            f"{self.what} '{self.path}' was replaced while this run wrote it: not written "
            "(the result was not kept; give another name)"
        )

    def _appeared(self) -> OutputError:
        return OutputError(
            f"'{self.path}' appeared while this run was writing it: not replaced (use --force "
            "to replace it, or give another name)"
        )

    def discard(self) -> None:
        """Remove the temporary files this target made (only those)."""
        for temp in self.temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        self.temps = []

    def release(self) -> None:
        """Remove what is left of temporaries and unlock."""
        self.discard()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _cannot(what: str, path: Path) -> str:
    return f"cannot write '{path}'" if what == "output" else f"cannot write {what} '{path}'"


def _flag(what: str) -> str:
    return "--report" if what == "report" else "-o"


def _private_folder() -> str:
    import tempfile

    return tempfile.gettempdir()


class _CutOnWrite(io.RawIOBase):
    """A file descriptor cut to a length at its first write, then appended to."""

    def __init__(self, fd: int, cut_at: int | None) -> None:
        self._fd = fd
        self._cut_at = cut_at
        self._started = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if not self._started:
            if self._cut_at is not None:
                os.ftruncate(self._fd, self._cut_at)
            os.lseek(self._fd, 0, os.SEEK_END)
            self._started = True
        return os.write(self._fd, data)

    def close(self) -> None:
        if not self.closed:
            try:
                os.close(self._fd)
            finally:
                super().close()


def publish_file(
    target: Path,
    write: Callable[[BinaryIO], None],
    *,
    force: bool = False,
    what: str = "output",
) -> None:
    """Write a whole file through *write* and publish it at *target* (claim, write, publish)."""
    with claimed(target, force=force, what=what) as out:
        temp = out.temporary()
        try:
            write(temp)
        except BaseException:
            temp.close()
            raise
        out.publish(temp)


@contextlib.contextmanager
def claimed(target: Path, *, force: bool, what: str = "output") -> Iterator[OutputTarget]:
    """:meth:`OutputTarget.claim` for a with-block: released (temporaries removed) after."""
    out = OutputTarget.claim(target, force=force, what=what)
    try:
        yield out
    finally:
        out.release()
