"""The feature cache: keyed by file identity and model setup, whole entries or none."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from resnext_cli.model.feature_cache import (
    Entry,
    FeatureCache,
    Identity,
    cache_root,
    clear,
    setup_key,
)


def test_entries_round_trip_and_live_beside_the_weights(tmp_path: Path, isolated_env: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"pixels")
    cache = FeatureCache(setup_key({"model": "m", "precision": "fp32"}))
    assert cache.folder.parent == isolated_env / "hub" / "resnext-features" == cache_root()
    identity = Identity.of(image)
    assert cache.get(identity) is None
    vector = torch.linspace(-1, 1, 2048)
    assert cache.put(identity, Entry(b"d" * 32, vector))
    entry = cache.get(identity)
    assert entry is not None and entry.digest == b"d" * 32
    assert torch.equal(entry.feature, vector)
    assert (cache.stats.hits, cache.stats.computed) == (1, 1)
    # No temporary file is left beside the entry.
    assert [p.name.endswith(".feat") for p in cache.folder.rglob("*") if p.is_file()] == [True]


def test_a_changed_file_or_setup_misses(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"pixels")
    cache = FeatureCache(setup_key({"precision": "fp32"}))
    cache.put(Identity.of(image), Entry(b"d" * 32, torch.ones(4)))
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    assert cache.get(Identity.of(image)) is None
    other = FeatureCache(setup_key({"precision": "bf16"}))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert other.get(Identity.of(image)) is None
    assert cache.get(Identity.of(image)) is not None


def test_a_damaged_entry_is_removed_and_missed(tmp_path: Path) -> None:
    cache = FeatureCache("s")
    identity = Identity(str(tmp_path / "x.png"), 1, 2)
    cache.put(identity, Entry(b"d" * 32, torch.ones(8)))
    (entry,) = cache.folder.rglob("*.feat")
    entry.write_bytes(entry.read_bytes()[:-3])  # a torn write
    assert cache.get(identity) is None
    assert not entry.exists()


def test_concurrent_writers_leave_one_whole_entry(tmp_path: Path) -> None:
    identity = Identity(str(tmp_path / "x.png"), 10, 20)
    vector = torch.arange(2048, dtype=torch.float32)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(20):
                FeatureCache("s").put(identity, Entry(b"d" * 32, vector))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    entry = FeatureCache("s").get(identity)
    assert entry is not None and torch.equal(entry.feature, vector)
    assert len([p for p in FeatureCache("s").folder.rglob("*") if p.is_file()]) == 1


def test_clear_removes_everything(tmp_path: Path) -> None:
    for setup in ("a", "b"):
        FeatureCache(setup).put(Identity("/p", 1, 1), Entry(b"d" * 32, torch.ones(2)))
    assert clear() == (2, 2 * (40 + 8))
    assert not cache_root().exists()
    assert clear() == (0, 0)
