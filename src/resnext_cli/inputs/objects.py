"""Object-store inputs (s3://, gs://): list them lazily and read objects, through pyarrow.fs.

The local engine's sources (sources.py) know nothing of these; an engine that reads object
stores expands its inputs with this module's `iter_sources`, which adds them to those.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from resnext_cli.errors import InputError
from resnext_cli.inputs.sources import IMAGE_EXTENSIONS, MAX_STDIN_BYTES, Source, Warn
from resnext_cli.inputs.sources import iter_sources as local_sources

# Object stores read through pyarrow.fs; their URIs name 'bucket/key'.
OBJECT_SCHEMES = frozenset({"s3", "gs", "gcs"})


def is_object_uri(spec: str) -> bool:
    """Whether *spec* is an object-store URI (s3://, gs://) the Ray engine reads."""
    scheme, sep, _ = spec.partition("://")
    return bool(sep) and scheme.lower() in OBJECT_SCHEMES


def _split(uri: str) -> tuple[str, str, str]:
    """Return (scheme://bucket[?query], bucket/key, ?query) for an object-store URI."""
    parts = urlsplit(uri)
    query = f"?{parts.query}" if parts.query else ""
    root = f"{parts.scheme.lower()}://{parts.netloc}{query}"
    return root, f"{parts.netloc}{parts.path}".rstrip("/"), query


@functools.lru_cache(maxsize=16)
def _filesystem(root: str) -> Any:
    """One pyarrow FileSystem per bucket: resolving S3's region costs a request."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(root)[0]


def object_sources(uri: str, warn: Warn | None = None) -> Iterator[Source]:
    """List an object URI lazily, one prefix level at a time, sorted, depth first."""
    from pyarrow import fs

    say: Warn = warn or (lambda _msg: None)
    root, key, query = _split(uri)
    scheme = root.partition("://")[0]
    try:
        filesystem = _filesystem(root)
        info = filesystem.get_file_info(key)
    except (OSError, ValueError) as exc:
        yield Source(
            input=uri, url=uri, error=InputError("unreadable", f"cannot list '{uri}': {exc}")
        )
        return
    if info.type == fs.FileType.File:
        yield Source(input=uri, url=uri)
        return
    if info.type == fs.FileType.NotFound:
        message = f"no such object or prefix: '{uri}'"
        yield Source(input=uri, url=uri, error=InputError("not_found", message))
        return
    found = False
    stack = [key]
    while stack:
        prefix = stack.pop()
        try:
            entries = filesystem.get_file_info(fs.FileSelector(prefix, allow_not_found=True))
        except (OSError, ValueError) as exc:
            say(f"cannot list '{scheme}://{prefix}': {exc}")
            continue
        subdirs = []
        for entry in sorted(entries, key=lambda e: str(e.path)):
            if entry.base_name.startswith("."):
                continue
            if entry.type == fs.FileType.Directory:
                subdirs.append(entry.path)
            elif Path(entry.base_name).suffix.lower() in IMAGE_EXTENSIONS:
                found = True
                child = f"{scheme}://{entry.path}{query}"
                yield Source(input=child, url=child)
        stack.extend(reversed(subdirs))
    if not found:
        say(f"no images found under '{uri}'")


def iter_sources(
    specs: Iterable[str],
    *,
    stdin: BinaryIO | None = None,
    warn: Warn | None = None,
    max_stdin_bytes: int = MAX_STDIN_BYTES,
) -> Iterator[Source]:
    """Expand inputs as the local engine does, plus s3:// and gs:// URIs, lazily, in order."""
    for spec in specs:
        if is_object_uri(spec):
            yield from object_sources(spec, warn)
            continue
        sources = local_sources([spec], stdin=stdin, warn=warn, max_stdin_bytes=max_stdin_bytes)
        for source in sources:
            # A URI listed on standard input comes back as an unsupported scheme.
            if source.error is not None and source.path is None and is_object_uri(source.input):
                yield from object_sources(source.input, warn)
            else:
                yield source


def read_object(uri: str, max_bytes: int) -> bytes:
    """Read one object, or raise a typed InputError."""
    import pyarrow as pa

    root, key, _ = _split(uri)
    try:
        with _filesystem(root).open_input_stream(key) as stream:
            data: bytes = stream.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError("not_found", f"no such object: '{uri}'") from None
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError("download_failed", f"cannot read '{uri}': {exc}") from None
    if len(data) > max_bytes:
        raise InputError("too_large", f"'{uri}' is over the {max_bytes}-byte download limit")
    return data
