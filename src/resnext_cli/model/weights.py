"""Weights files: torch's hub cache, download with progress, hash check, atomic rename."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from resnext_cli.errors import WeightsError
from resnext_cli.inputs.http import Progress

DEFAULT_HOST = "https://download.pytorch.org/models/"
MIRROR_ENV = "RESNEXT_WEIGHTS_MIRROR"
OFFLINE_ENV = "RESNEXT_OFFLINE"
# Where files from URLs other than torchvision's are cached, below checkpoints_dir().
URL_FOLDER = "by-url"
_URL_HASH_CHARS = 16
# torch.hub's convention: the file name carries a prefix of its sha256 after a dash.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")

# No weights file torchvision publishes comes near this (resnext101_32x8d: 340 MB).
MAX_WEIGHTS_BYTES = 4 << 30


def hub_dir() -> Path:
    """Return torch.hub.get_dir() without importing torch: $TORCH_HOME/hub and so on."""
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        torch_home = os.path.join(cache, "torch")
    return Path(os.path.expanduser(torch_home)) / "hub"


def checkpoints_dir() -> Path:
    """Return the folder torch.hub keeps downloaded state dicts in."""
    return hub_dir() / "checkpoints"


def filename_of(url: str) -> str:
    """Return the file name a URL is cached under."""
    name = os.path.basename(urlsplit(url).path)
    if not name or name in (".", ".."):
        raise WeightsError(f"cannot tell a file name from URL '{url}' (give a URL to a file)")
    return name


def mirrored(url: str) -> str:
    """Point a download.pytorch.org URL at $RESNEXT_WEIGHTS_MIRROR when it is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror and url.startswith(DEFAULT_HOST):
        return mirror.rstrip("/") + "/" + url[len(DEFAULT_HOST) :]
    return url


def cached_path(url: str) -> Path:
    """Return where the file for *url* lives in the cache, present or not.

    torchvision's own files keep torch.hub's names, so its cache is shared; any other
    URL gets a folder named by a hash of the whole URL, so two URLs that end in the
    same file name never share a file.
    """
    name = filename_of(url)
    if url.startswith(DEFAULT_HOST):
        return checkpoints_dir() / name
    digest = hashlib.sha256(url.encode(errors="surrogateescape")).hexdigest()
    return checkpoints_dir() / URL_FOLDER / digest[:_URL_HASH_CHARS] / name


def discard(path: Path) -> bool:
    """Remove a cached file that failed to load, so the next run fetches it again.

    Only files inside the cache folder are removed; returns whether one was.
    """
    cache = checkpoints_dir().resolve()
    try:
        if not path.resolve().is_relative_to(cache) or not path.is_file():
            return False
        path.unlink()
    except OSError:
        return False
    _prune(path.parent)
    return True


def _prune(folder: Path) -> None:
    """Remove a URL's cache folder, and the folder of URL folders, if left empty."""
    if folder.parent.name != URL_FOLDER:
        return
    for empty in (folder, folder.parent):
        with contextlib.suppress(OSError):  # still holds files, or already gone
            empty.rmdir()


def expected_hash_prefix(name: str) -> str | None:
    """Return the sha256 prefix carried in a file name, as torch.hub reads it."""
    match = _HASH_IN_NAME.search(name)
    return match.group(1) if match and match.group(1) else None


def _download(
    url: str, dest: Path, *, progress: Progress | None, timeout: float, max_bytes: int
) -> None:
    from resnext_cli.inputs.http import DownloadError, fetch

    dest.parent.mkdir(parents=True, exist_ok=True)
    prefix = expected_hash_prefix(dest.name)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".partial", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        sha = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:

            def write(chunk: bytes) -> None:
                out.write(chunk)
                sha.update(chunk)

            try:
                # A stall deadline: a large file on a slow line still arrives, a server
                # that stops sending is given up after *timeout* seconds.
                fetch(
                    url, write, timeout=timeout, max_bytes=max_bytes, stall=True, progress=progress
                )
            except DownloadError as exc:
                if exc.status is not None:
                    raise WeightsError(
                        f"cannot download '{url}': {exc.why} "
                        f"(put the file at '{dest}' by hand, or set {MIRROR_ENV})"
                    ) from None
                raise WeightsError(
                    f"cannot download '{url}': {exc.why} "
                    f"(check the network, use {MIRROR_ENV}, or put the file at '{dest}')"
                ) from None
        digest = sha.hexdigest()
        if prefix is not None and not digest.startswith(prefix):
            raise WeightsError(
                f"hash mismatch for '{dest.name}' from '{url}': expected sha256 starting "
                f"{prefix}, got {digest[: len(prefix)]} (nothing was saved; try again)"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
        _prune(dest.parent)  # a failed download leaves no empty folder behind


def fetch(
    url: str,
    *,
    offline: bool = False,
    progress: Progress | None = None,
    timeout: float = 30.0,
    max_bytes: int = MAX_WEIGHTS_BYTES,
) -> Path:
    """Return the cached file for *url*, downloading it first unless *offline*."""
    dest = cached_path(url)
    if dest.is_file():
        return dest
    if offline:
        raise WeightsError(
            f"weights file '{dest.name}' is not cached and the network is off "
            f"(download {url} to '{dest}', or run without --offline)"
        )
    _download(mirrored(url), dest, progress=progress, timeout=timeout, max_bytes=max_bytes)
    return dest
