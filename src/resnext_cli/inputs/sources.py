"""Expand files, folders, globs, URLs and stdin into a lazy stream of inputs, and open them."""

from __future__ import annotations

import errno
import fnmatch
import io
import itertools
import os
import re
import stat
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from resnext_cli.errors import InputError
from resnext_cli.inputs.http import read_url
from resnext_cli.results import FileFacts

# Extensions taken when walking a folder or expanding a glob; explicit files are
# taken whatever their name, and extension-less files are sniffed.
IMAGE_EXTENSIONS = frozenset(
    [
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".apng",
        ".gif",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".ico",
        ".tga",
        ".jp2",
        ".j2k",
        ".jpx",
        ".avif",
        ".pcx",
        ".sgi",
        ".ras",
        ".psd",
        ".qoi",
        ".dds",
        ".icns",
    ]
)

# The most image bytes read from standard input, as for a URL (Config.max_download_bytes).
MAX_STDIN_BYTES = 100 << 20

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_GLOB_CHARS = re.compile(r"[*?\[]")
_PNM = re.compile(rb"^P[1-7]\s+(#[^\n]*\n\s*)*\d+\s+\d+\s")
# How much of a file or of standard input is read to tell what it holds: enough for a
# PNM header with a comment line ("# CREATOR: GIMP PNM Filter Version 1.1").
_HEAD_BYTES = 64
# Bytes no list of names holds: NUL and the other C0 controls but whitespace, and DEL.
_CONTROL = frozenset(range(32)) - frozenset(b"\t\n\v\f\r") | {0x7F}
# O_NONBLOCK: opening a FIFO that replaced a checked file between stat and open must
# not wait for a writer. (os.open adds O_CLOEXEC itself.)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Source:
    """One input: a file, a URL or bytes; or an error found while expanding it."""

    input: str
    path: Path | None = None
    url: str | None = None
    data: bytes | None = None
    error: InputError | None = None


@dataclass
class _Seen:
    """Folders and files already met in one expansion, by (st_dev, st_ino)."""

    folders: set[tuple[int, int]] = field(default_factory=set)
    files: set[tuple[int, int]] = field(default_factory=set)


def _is_image_magic(head: bytes) -> bool:
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a")):
        return True
    if head.startswith((b"II*\x00", b"MM\x00*", b"\x00\x00\x01\x00", b"qoif", b"8BPS")):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    if head[4:12] in (b"ftypavif", b"ftypavis", b"ftypheic", b"ftypmif1"):
        return True
    if head.startswith(b"\x00\x00\x00\x0cjP  ") or head.startswith(b"\xff\x4f\xff\x51"):
        return True
    if _PNM.match(head):  # "P6 640 480 255": text at first, then raw pixels
        return True
    # BMP: "BM", file size, then four reserved zero bytes.
    return head[:2] == b"BM" and head[6:10] == b"\x00\x00\x00\x00"


def _looks_binary(head: bytes) -> bool:
    """Whether the start of standard input is data rather than a list of names.

    Names may be in any encoding (old archives hold Latin-1 ones), so text is not told
    by UTF-8 validity: data holds NUL or control bytes, which lists of names do not.
    """
    return any(byte in _CONTROL for byte in head)


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]


def _why(exc: OSError) -> str:
    """The reason an OSError gives ('permission denied'), or its kind if it gives none."""
    return _lower(exc.strerror or exc.__class__.__name__)


def _os_error(name: str, path: Path | str, exc: OSError) -> InputError:
    """Type an OSError met while looking at or opening a local input."""
    if isinstance(exc, FileNotFoundError):
        kind = "broken symbolic link" if os.path.islink(path) else "no such file"
        return InputError("not_found", f"{kind}: '{name}'")
    if isinstance(exc, NotADirectoryError):
        return InputError("not_found", f"no such file: '{name}'")
    if isinstance(exc, PermissionError):
        return InputError("unreadable", f"permission denied: '{name}'")
    return InputError("unreadable", f"cannot read '{name}': {_why(exc)}")


def _not_regular(name: str) -> InputError:
    return InputError("unreadable", f"'{name}' is not a regular file (a pipe, socket or device)")


def _stat(path: Path | str) -> os.stat_result:
    """os.stat, with a name holding NUL (possible on stdin) as an OSError like the rest."""
    try:
        return os.stat(path)
    except ValueError:
        raise OSError(errno.EINVAL, "Invalid argument: the name holds a NUL byte") from None


def _sniff(path: Path) -> bool:
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError):
        return False
    with os.fdopen(fd, "rb") as fh:
        try:
            return _is_image_magic(fh.read(_HEAD_BYTES))
        except OSError:
            return False


def _file_source(path: Path, name: str, seen: _Seen) -> Source | None:
    """The source for a file met in a folder walk or a glob: None if not an image or seen."""
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS and suffix != "":
        return None
    try:
        st = _stat(path)  # follows links
    except OSError as exc:
        return Source(input=name, path=path, error=_os_error(name, path, exc)) if suffix else None
    if not stat.S_ISREG(st.st_mode):
        # Opening a FIFO, socket or device could block forever.
        return Source(input=name, path=path, error=_not_regular(name)) if suffix else None
    key = (st.st_dev, st.st_ino)
    if key in seen.files:  # reached again through a link
        return None
    seen.files.add(key)
    if suffix == "" and not _sniff(path):
        return None
    return Source(input=name, path=path)


def _walk(root: Path, warn: Warn, seen: _Seen) -> Generator[Source, None, bool]:
    """Yield image files below *root*, depth first, sorted, following links once.

    Iterative, so a tree thousands of folders deep cannot exhaust Python's stack;
    returns whether it yielded anything.
    """
    found = False
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            st = _stat(folder)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # deeper than PATH_MAX: said, not skipped
                found = True
                error = InputError(
                    "unreadable",
                    f"folder '{folder}' is deeper than the system's path limit: its photos "
                    "cannot be opened (move them to a shallower folder)",
                )
                yield Source(input=str(folder), path=folder, error=error)
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen.folders:  # a symlink loop, or a folder reached twice
            continue
        seen.folders.add(key)
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            warn(f"cannot list folder '{folder}': {_why(exc)}")
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if _is_dir(entry):
                subfolders.append(path)
            elif (source := _file_source(path, str(path), seen)) is not None:
                found = True
                yield source
        pending.extend(reversed(subfolders))
    return found


def _join(prefix: str, name: str) -> str:
    if not prefix:
        return name
    return prefix + name if prefix.endswith("/") else f"{prefix}/{name}"


def _listing(folder: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder or ".") as listing:
            return sorted(listing, key=lambda e: e.name)
    except OSError:
        return []


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _glob(pattern: str) -> list[str]:
    """The names *pattern* matches, as glob.glob(pattern, recursive=True) gives them.

    Iterative, and a folder is entered once for each part of the pattern whatever the
    links that lead to it, so symlink loops end. Wildcards skip hidden names unless the
    pattern part starts with '.', and '**' matches any number of (visible) folders.
    """
    parts = [p for p in pattern.split("/") if p]
    folders_only = pattern.endswith("/")
    matches: list[str] = []
    entered: set[tuple[int, int, int]] = set()
    pending: list[tuple[str, int]] = [("/" if pattern.startswith("/") else "", 0)]
    while pending:
        prefix, i = pending.pop()
        if i == len(parts):
            matches.append(prefix)
            continue
        part, last = parts[i], i == len(parts) - 1
        if part == "**":
            try:
                st = _stat(prefix or ".")
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino, i) in entered:
                continue
            entered.add((st.st_dev, st.st_ino, i))
            entries = [e for e in _listing(prefix) if not e.name.startswith(".")]
            below = [_join(prefix, e.name) for e in entries if _is_dir(e)]
            pending.extend((name, i) for name in reversed(below))
            if last:  # '**' at the end: the folder itself and everything in it
                if prefix:
                    matches.append(prefix)
                if not folders_only:
                    matches.extend(_join(prefix, e.name) for e in entries if not _is_dir(e))
            else:
                pending.append((prefix, i + 1))
        elif _GLOB_CHARS.search(part):
            hidden_ok = part.startswith(".")
            for entry in reversed(_listing(prefix)):
                if entry.name.startswith(".") and not hidden_ok:
                    continue
                if not fnmatch.fnmatchcase(entry.name, part):
                    continue
                if (not last or folders_only) and not _is_dir(entry):
                    continue
                pending.append((_join(prefix, entry.name), i + 1))
        else:
            name = _join(prefix, part)
            # Both answer False for a name they cannot look at, NUL included.
            exists = os.path.isdir if not last or folders_only else os.path.lexists
            if exists(name):
                pending.append((name, i + 1))
    return sorted(set(matches))


def _from_glob(spec: str, warn: Warn, failure: OSError) -> Iterator[Source]:
    seen = _Seen()
    found = False
    for name in _glob(spec):
        matched = Path(name)
        if os.path.isdir(matched):
            found |= yield from _walk(matched, warn, seen)
        elif (source := _file_source(matched, name, seen)) is not None:
            found = True
            yield source
    if found:
        return
    if failure.errno in (errno.ENOENT, errno.ENOTDIR):
        warn(f"no images match '{spec}'")
    else:  # the pattern is not even a usable name (over 255 bytes, say)
        yield Source(input=spec, path=Path(spec), error=_os_error(spec, spec, failure))


def _from_spec(spec: str, warn: Warn, *, expand_globs: bool) -> Iterator[Source]:
    match = _URL.match(spec)
    if match:
        if match.group(1).lower() in ("http", "https"):
            yield Source(input=spec, url=spec)
        else:
            message = (
                f"unsupported URL scheme '{match.group(1)}' in '{spec}' "
                "(give a local path or an http(s) URL)"
            )
            yield Source(input=spec, error=InputError("unreadable", message))
        return
    path = Path(spec)
    try:
        st = _stat(path)
    except OSError as exc:
        failure = exc
    else:
        if stat.S_ISDIR(st.st_mode):
            if not (yield from _walk(path, warn, _Seen())):
                warn(f"no images found in folder '{spec}'")
            return
        # Named files are taken whatever their type; open_source refuses pipes and devices.
        yield Source(input=spec, path=path)
        return
    if expand_globs and _GLOB_CHARS.search(spec):
        yield from _from_glob(spec, warn, failure)
        return
    yield Source(input=spec, path=path, error=_os_error(spec, path, failure))


def _stdin_lines(head: bytes, stream: BinaryIO, *, ended: bool = False) -> Iterator[str]:
    """The lines of a list on stdin, line ends left for the caller's strip(); *ended*: the
    head already met the end of the stream (a terminal's one Ctrl-D is not asked twice)."""
    if ended:
        lines: Iterable[bytes] = head.splitlines()
    else:
        # Complete the line the sniffed head ends in, then read the rest lazily.
        lines = itertools.chain((head + stream.readline()).splitlines(), stream)
    for raw in lines:
        yield raw.decode(errors="surrogateescape")


def _stdin_image(head: bytes, stream: BinaryIO, max_bytes: int, *, ended: bool = False) -> Source:
    """Image bytes from standard input, read in chunks and never past *max_bytes* + 1."""
    data = bytearray(head)
    if ended and len(data) <= max_bytes:
        return Source(input="-", data=bytes(data))
    while len(data) <= max_bytes:
        chunk = stream.read(min(1 << 20, max_bytes + 1 - len(data)))
        if not chunk:
            return Source(input="-", data=bytes(data))
        data += chunk
    message = (
        f"standard input is over the {max_bytes}-byte limit for image bytes "
        "(save it to a file and give the file's name)"
    )
    return Source(input="-", error=InputError("too_large", message))


def _from_stdin(stream: BinaryIO, warn: Warn, max_bytes: int) -> Iterator[Source]:
    head = stream.read(_HEAD_BYTES)
    if not head:
        warn("standard input is empty")
        return
    # A buffered read returns short only at the end: reading on would wait for another one.
    ended = len(head) < _HEAD_BYTES
    if _is_image_magic(head) or _looks_binary(head):
        yield _stdin_image(head, stream, max_bytes, ended=ended)
        return
    for line in _stdin_lines(head, stream, ended=ended):
        spec = line.strip()
        if not spec or spec.startswith("#"):
            continue
        # Listed names are taken literally: a '[' in a file name is not a glob.
        yield from _from_spec(spec, warn, expand_globs=False)


def iter_sources(
    specs: Iterable[str],
    *,
    stdin: BinaryIO | None = None,
    warn: Warn | None = None,
    max_stdin_bytes: int = MAX_STDIN_BYTES,
) -> Iterator[Source]:
    """Expand each input spec lazily, in order, into sources."""
    say: Warn = warn or (lambda _msg: None)
    for spec in specs:
        if spec == "-":
            if stdin is None:
                raise ValueError("'-' given but no standard input stream")
            yield from _from_stdin(stdin, say, max_stdin_bytes)
        else:
            yield from _from_spec(spec, say, expand_globs=True)


# -- opening -------------------------------------------------------------------------


def _open_file(path: Path, name: str) -> BinaryIO:
    """Open a regular file; refuse folders, pipes, sockets and devices before opening."""
    try:
        st = _stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise InputError("unreadable", f"'{name}' is a folder")
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(name)
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise _os_error(name, path, exc) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for a pipe since the stat
            raise _not_regular(name)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_source(source: Source, *, timeout: float = 10.0, max_bytes: int = 100 << 20) -> BinaryIO:
    """Return a readable binary stream for *source*, or raise a typed InputError."""
    if source.error is not None:
        raise source.error
    if source.data is not None:
        return io.BytesIO(source.data)
    if source.url is not None:
        return io.BytesIO(read_url(source.url, timeout=timeout, max_bytes=max_bytes))
    assert source.path is not None
    return _open_file(source.path, source.input)


def file_facts(of: BinaryIO | Path) -> FileFacts | None:
    """Size and mtime (ns) of a local regular file, open (by fstat) or by path, that a
    record carries to tell later whether it is still the same file; None for others."""
    try:
        st = os.stat(of) if isinstance(of, Path) else os.fstat(of.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return FileFacts(st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None
