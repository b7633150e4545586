"""Pooled features of local files, cached beside the weights so re-learning is instant.

One folder per model setup (model, weights or checkpoint, preprocessing, precision:
whatever changes the numbers), named by a hash of it; in it one small file per image,
named by a hash of the image's identity (absolute path, size, mtime in ns). An entry
holds the sha256 of the image's bytes (to find the same photo in two classes without
reading it again) and its feature vector.

Safe against concurrent runs and kills: every entry is written to a temporary file in
its folder and renamed into place, so a reader sees a whole entry or none; two runs that
compute the same entry write the same bytes. A damaged entry (a crash on a file system
that lost the data) fails its length check and is computed again. The whole cache is
one folder, `resnext learn --clear-cache` removes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnext_cli.model.weights import hub_dir

FOLDER = "resnext-features"
_MAGIC = b"RXF1"
_HEADER = struct.Struct("<4s32sI")  # magic, sha256 of the image's bytes, vector length
_NAME_CHARS = 32


def cache_root() -> Path:
    """The folder of every cached feature: beside torch's hub checkpoints."""
    return hub_dir() / FOLDER


@dataclass(frozen=True)
class Identity:
    """What tells a local file apart from its earlier self: path, size, mtime."""

    path: str  # absolute
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> Identity:
        """The identity of the file at *path* now (OSError if it cannot be looked at)."""
        st = os.stat(path)
        return cls(str(path.absolute()), st.st_size, st.st_mtime_ns)

    def key(self) -> str:
        """The entry's file name."""
        text = json.dumps([self.path, self.size, self.mtime_ns], ensure_ascii=True)
        return hashlib.sha256(text.encode()).hexdigest()[:_NAME_CHARS]


@dataclass(frozen=True)
class Entry:
    """One cached image: the sha256 of its bytes and its pooled features."""

    digest: bytes
    feature: np.ndarray[Any, Any]  # float32, one dimension


@dataclass
class CacheStats:
    """What one run asked of the cache."""

    hits: int = 0
    computed: int = 0
    write_errors: int = 0


def setup_key(parts: dict[str, object]) -> str:
    """The folder name for one model setup: a hash of everything that changes features."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:_NAME_CHARS]


class FeatureCache:
    """The entries of one model setup."""

    def __init__(self, setup: str, *, root: Path | None = None) -> None:
        self.folder = (root or cache_root()) / setup
        self.stats = CacheStats()

    def _path(self, identity: Identity) -> Path:
        key = identity.key()
        return self.folder / key[:2] / f"{key}.feat"

    def get(self, identity: Identity) -> Entry | None:
        """The entry of *identity*, or None (absent, or damaged and removed)."""
        path = self._path(identity)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        entry = _parse(data)
        if entry is None:
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        self.stats.hits += 1
        return entry

    def put(self, identity: Identity, entry: Entry) -> bool:
        """Store *entry* atomically; False if the cache folder cannot be written."""
        self.stats.computed += 1
        path = self._path(identity)
        vector = np.ascontiguousarray(entry.feature, dtype="<f4").ravel()
        data = _HEADER.pack(_MAGIC, entry.digest, vector.size) + vector.tobytes()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=path.parent)
        except OSError:
            self.stats.write_errors += 1
            return False
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except OSError:
            self.stats.write_errors += 1
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return True


def _parse(data: bytes) -> Entry | None:
    if len(data) < _HEADER.size:
        return None
    magic, digest, length = _HEADER.unpack_from(data)
    # A feature is never empty: an entry that says so is damaged.
    if magic != _MAGIC or length == 0 or len(data) != _HEADER.size + 4 * length:
        return None
    vector = np.frombuffer(data, dtype="<f4", offset=_HEADER.size).astype(np.float32)
    return Entry(digest, vector)


def clear(root: Path | None = None) -> tuple[int, int]:
    """Remove every cached feature; return (entries, bytes) removed."""
    folder = root or cache_root()
    entries = size = 0
    if not folder.is_dir() or folder.is_symlink():
        return 0, 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(dirpath, name)).st_size
                entries += name.endswith(".feat")
    shutil.rmtree(folder, ignore_errors=True)
    return entries, size
