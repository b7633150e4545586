"""Expand files, folders, globs, URLs and stdin into a lazy stream of inputs, and open them."""

from __future__ import annotations

import glob
import io
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import InputError

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

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_GLOB_CHARS = re.compile(r"[*?\[]")

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Source:
    """One input: a file, a URL or bytes; or an error found while expanding it."""

    input: str
    path: Path | None = None
    url: str | None = None
    data: bytes | None = None
    error: InputError | None = None


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
    # BMP: "BM", file size, then four reserved zero bytes.
    return head[:2] == b"BM" and head[6:10] == b"\x00\x00\x00\x00"


def _looks_binary(head: bytes) -> bool:
    if b"\x00" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sample is still text.
        return exc.start < len(head) - 3
    return False


def _sniff(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return _is_image_magic(fh.read(16))
    except OSError:
        return False


def _is_special(path: Path) -> bool:
    """Whether *path* is a FIFO, socket or device: opening one can block forever."""
    try:
        mode = path.stat().st_mode  # follows links; a broken one is left to open()
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _wanted(path: Path, name: str | None = None) -> Source | None:
    """The source for a file met while walking a folder or expanding a glob, if an image."""
    name = str(path) if name is None else name
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS and suffix != "":
        return None
    if _is_special(path):
        if suffix == "":
            return None
        message = f"'{name}' is not a regular file (a pipe, socket or device)"
        return Source(input=name, path=path, error=InputError("unreadable", message))
    if suffix == "" and not _sniff(path):
        return None
    return Source(input=name, path=path)


def _walk(root: Path, warn: Warn) -> Iterator[Source]:
    """Yield image files below *root*, depth first, sorted, following links once."""
    seen: set[tuple[int, int]] = set()
    found = 0

    def visit(folder: Path) -> Iterator[Source]:
        nonlocal found
        try:
            st = folder.stat()
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in seen:  # a symlink loop, or a folder reached twice
            return
        seen.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            warn(f"cannot list folder '{folder}': {exc.strerror or exc}")
            return
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(path)
            elif (source := _wanted(path)) is not None:
                found += 1
                yield source
        for sub in subdirs:
            yield from visit(sub)

    yield from visit(root)
    if found == 0:
        warn(f"no images found in folder '{root}'")


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
    if path.is_dir():
        yield from _walk(path, warn)
        return
    if os.path.lexists(path):
        yield Source(input=spec, path=path)
        return
    if expand_globs and _GLOB_CHARS.search(spec):
        matches = sorted(glob.glob(spec, recursive=True))
        count = 0
        for name in matches:
            matched = Path(name)
            if matched.is_dir():
                for source in _walk(matched, warn):
                    count += 1
                    yield source
            elif (wanted := _wanted(matched, name)) is not None:
                count += 1
                yield wanted
        if count == 0:
            warn(f"no images match '{spec}'")
        return
    yield Source(input=spec, path=path, error=InputError("not_found", f"no such file: '{spec}'"))


def _stdin_lines(head: bytes, stream: BinaryIO) -> Iterator[str]:
    # Complete the line the sniffed head ends in, then read the rest lazily.
    for raw in (head + stream.readline()).splitlines():
        yield raw.decode("utf-8", errors="surrogateescape")
    for raw in stream:
        yield raw.rstrip(b"\r\n").decode("utf-8", errors="surrogateescape")


def _from_stdin(stream: BinaryIO, warn: Warn) -> Iterator[Source]:
    head = stream.read(64)
    if not head:
        warn("standard input is empty")
        return
    if _is_image_magic(head) or _looks_binary(head):
        yield Source(input="-", data=head + stream.read())
        return
    for line in _stdin_lines(head, stream):
        spec = line.strip()
        if not spec or spec.startswith("#"):
            continue
        # Listed names are taken literally: a '[' in a file name is not a glob.
        yield from _from_spec(spec, warn, expand_globs=False)


def iter_sources(
    specs: Iterable[str], *, stdin: BinaryIO | None = None, warn: Warn | None = None
) -> Iterator[Source]:
    """Expand each input spec lazily, in order, into sources."""
    say: Warn = warn or (lambda _msg: None)
    for spec in specs:
        if spec == "-":
            if stdin is None:
                raise ValueError("'-' given but no standard input stream")
            yield from _from_stdin(stdin, say)
        else:
            yield from _from_spec(spec, say, expand_globs=True)


def _reason(exc: Exception) -> str:
    """The innermost OS reason in a requests error ('Connection refused'), or its class."""
    found = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    return found[-1].strip().lower() if found else exc.__class__.__name__


def _read_url(url: str, *, timeout: float, max_bytes: int) -> bytes:
    """Download *url*, giving up after about *timeout* seconds or past *max_bytes*."""
    import requests
    import urllib3

    timed_out = f"timed out after {timeout:g}s fetching '{url}' (raise --timeout to wait longer)"
    deadline = time.monotonic() + timeout
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            if response.status_code >= 400:
                raise InputError(
                    "download_failed",
                    f"HTTP {response.status_code} {response.reason or ''}".rstrip()
                    + f" for '{url}'",
                )
            ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype.startswith("text/"):
                raise InputError("not_an_image", f"'{url}' returned {ctype}, not an image")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise InputError(
                    "too_large", f"'{url}' is {int(declared)} bytes, over the {max_bytes} limit"
                )
            body = bytearray()
            # read1 returns what has arrived, so a server that trickles a byte at a time
            # cannot hold a download open past the deadline.
            while chunk := response.raw.read1(65536, decode_content=True):
                body += chunk
                if len(body) > max_bytes:
                    raise InputError(
                        "too_large", f"'{url}' is over the {max_bytes}-byte download limit"
                    )
                if time.monotonic() > deadline:
                    raise InputError("download_failed", timed_out)
            return bytes(body)
    except (requests.Timeout, urllib3.exceptions.TimeoutError):
        raise InputError("download_failed", timed_out) from None
    except requests.TooManyRedirects:
        raise InputError("download_failed", f"too many redirects fetching '{url}'") from None
    except requests.exceptions.InvalidSchema:  # only a redirect can lead off http(s)
        raise InputError(
            "download_failed", f"'{url}' redirects to a URL that is not http(s)"
        ) from None
    except requests.exceptions.InvalidURL:
        raise InputError("download_failed", f"'{url}' is not a valid URL") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise InputError("download_failed", f"cannot fetch '{url}': {_reason(exc)}") from None


def open_source(source: Source, *, timeout: float = 10.0, max_bytes: int = 100 << 20) -> BinaryIO:
    """Return a readable binary stream for *source*, or raise a typed InputError."""
    if source.error is not None:
        raise source.error
    if source.data is not None:
        return io.BytesIO(source.data)
    if source.url is not None:
        return io.BytesIO(_read_url(source.url, timeout=timeout, max_bytes=max_bytes))
    assert source.path is not None
    try:
        return source.path.open("rb")
    except FileNotFoundError:
        kind = "broken symbolic link" if source.path.is_symlink() else "no such file"
        raise InputError("not_found", f"{kind}: '{source.input}'") from None
    except IsADirectoryError:
        raise InputError("unreadable", f"'{source.input}' is a folder") from None
    except PermissionError:
        raise InputError("unreadable", f"permission denied: '{source.input}'") from None
    except OSError as exc:
        raise InputError("unreadable", f"cannot read '{source.input}': {exc.strerror}") from None
