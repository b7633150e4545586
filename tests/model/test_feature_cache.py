"""The feature cache: keyed by file identity and model setup, whole entries or none."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

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
    vector = np.linspace(-1, 1, 2048, dtype=np.float32)
    assert cache.put(identity, Entry(b"d" * 32, vector))
    entry = cache.get(identity)
    assert entry is not None and entry.digest == b"d" * 32
    assert np.array_equal(entry.feature, vector)
    assert (cache.stats.hits, cache.stats.computed) == (1, 1)
    # No temporary file is left beside the entry.
    assert [p.name.endswith(".feat") for p in cache.folder.rglob("*") if p.is_file()] == [True]


def test_a_changed_file_or_setup_misses(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"pixels")
    cache = FeatureCache(setup_key({"precision": "fp32"}))
    cache.put(Identity.of(image), Entry(b"d" * 32, np.ones(4, np.float32)))
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
    cache.put(identity, Entry(b"d" * 32, np.ones(8, np.float32)))
    (entry,) = cache.folder.rglob("*.feat")
    entry.write_bytes(entry.read_bytes()[:-3])  # a torn write
    assert cache.get(identity) is None
    assert not entry.exists()


def test_concurrent_writers_leave_one_whole_entry(tmp_path: Path) -> None:
    identity = Identity(str(tmp_path / "x.png"), 10, 20)
    vector = np.arange(2048, dtype=np.float32)
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
    assert entry is not None and np.array_equal(entry.feature, vector)
    assert len([p for p in FeatureCache("s").folder.rglob("*") if p.is_file()]) == 1


def test_clear_removes_everything(tmp_path: Path) -> None:
    for setup in ("a", "b"):
        FeatureCache(setup).put(Identity("/p", 1, 1), Entry(b"d" * 32, np.ones(2, np.float32)))
    assert clear() == (2, 2 * (40 + 8))
    assert not cache_root().exists()
    assert clear() == (0, 0)


def test_files_alike_but_for_their_path_have_their_own_entries(tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for path in (a, b):
        path.write_bytes(b"same size")
        os.utime(path, ns=(10**18, 10**18))
    assert Identity.of(a).path == str(a) and Identity.of(a).size == 9
    assert Identity.of(a).key() != Identity.of(b).key()
    cache = FeatureCache("s")
    cache.put(Identity.of(a), Entry(b"a" * 32, np.ones(2, np.float32)))
    assert cache.get(Identity.of(b)) is None


def test_a_name_that_is_not_utf8_has_an_entry(tmp_path: Path) -> None:
    # Byte 0xff in a name reads back as the lone surrogate U+DCFF: no UTF-8 spells it.
    image = Path(os.fsdecode(os.fsencode(tmp_path) + b"/\xff.png"))
    image.write_bytes(b"pixels")
    identity = Identity.of(image)
    assert len(identity.key()) == 32 and identity.key() != Identity.of(tmp_path).key()
    cache = FeatureCache(setup_key({"checkpoint": str(image)}))
    assert cache.put(identity, Entry(b"d" * 32, np.ones(3, np.float32)))
    assert cache.get(identity) is not None


def test_a_setup_is_named_by_its_values_not_their_order_or_type(tmp_path: Path) -> None:
    one = setup_key({"model": "m", "precision": "fp32", "checkpoint": str(tmp_path / "c.pth")})
    assert one == setup_key({"checkpoint": tmp_path / "c.pth", "precision": "fp32", "model": "m"})
    assert one != setup_key({"model": "m", "precision": "bf16", "checkpoint": str(tmp_path)})
    assert len(one) == 32 and all(c in "0123456789abcdef" for c in one)


def test_features_are_stored_as_float32_whatever_they_were(tmp_path: Path) -> None:
    cache = FeatureCache("s")
    for n, dtype in enumerate((np.float64, np.float16, ">f4")):
        identity = Identity(str(tmp_path / f"{n}.png"), 1, 2)
        vector = np.array([0.5, -1.25, 3.0], dtype=dtype)
        assert cache.put(identity, Entry(b"d" * 32, vector))
        entry = cache.get(identity)
        assert entry is not None and entry.feature.dtype == np.float32
        assert entry.feature.tolist() == [0.5, -1.25, 3.0]
    # Stored little-endian whatever the machine: 0.5 is 00 00 00 3f.
    stored = [p.read_bytes()[40:44] for p in cache.folder.rglob("*.feat")]
    assert stored == [b"\x00\x00\x00\x3f"] * 3
    # An entry of no feature is damaged: missed and removed, so the image's feature is
    # computed again.
    empty = Identity(str(tmp_path / "empty.png"), 1, 2)
    assert cache.put(empty, Entry(b"e" * 32, np.zeros(0, np.float32)))
    (stored,) = [p for p in cache.folder.rglob("*.feat") if p.stat().st_size == 40]
    assert cache.get(empty) is None and not stored.exists()


def test_counts_and_a_folder_written_twice(tmp_path: Path) -> None:
    cache = FeatureCache("s")
    identity = Identity(str(tmp_path / "a.png"), 1, 2)
    for _ in range(3):  # the entry's folder exists from the second time on
        assert cache.put(identity, Entry(b"d" * 32, np.ones(2, np.float32)))
    for _ in range(2):
        assert cache.get(identity) is not None
    assert (cache.stats.computed, cache.stats.hits, cache.stats.write_errors) == (3, 2, 0)


def test_an_entry_is_written_beside_itself_then_renamed(tmp_path: Path, monkeypatch) -> None:
    renamed: list[tuple[Path, Path]] = []
    replace = os.replace

    def watched(src: str, dst: str) -> None:
        renamed.append((Path(src), Path(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", watched)
    cache = FeatureCache("s", root=tmp_path / "cache")
    assert cache.put(
        Identity(str(tmp_path / "a.png"), 1, 2), Entry(b"d" * 32, np.ones(2, np.float32))
    )
    ((temporary, entry),) = renamed
    assert temporary.parent == entry.parent and entry.parent.parent == tmp_path / "cache" / "s"
    assert temporary.name.startswith(".partial-") and entry.suffix == ".feat"


def test_a_cache_that_cannot_be_written_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    identity = Identity(str(tmp_path / "a.png"), 1, 2)
    blocked = FeatureCache("s", root=tmp_path / "file")
    (tmp_path / "file").write_bytes(b"not a folder")  # its folders cannot be made
    assert not blocked.put(identity, Entry(b"d" * 32, np.ones(2, np.float32)))
    assert not blocked.put(identity, Entry(b"d" * 32, np.ones(2, np.float32)))
    assert (blocked.stats.computed, blocked.stats.write_errors) == (2, 2)
    cache = FeatureCache("s", root=tmp_path / "cache")
    cache.put(identity, Entry(b"d" * 32, np.ones(2, np.float32)))
    (entry,) = cache.folder.rglob("*.feat")
    entry.unlink()
    (entry / "x").mkdir(parents=True)  # the entry's name is a folder: the rename fails
    assert not cache.put(identity, Entry(b"d" * 32, np.ones(2, np.float32)))
    assert not cache.put(identity, Entry(b"d" * 32, np.ones(2, np.float32)))
    assert cache.stats.write_errors == 2
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]  # no temporary


def test_clear_leaves_a_linked_cache_folder_alone(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    FeatureCache("s", root=elsewhere).put(
        Identity("/p", 1, 1), Entry(b"d" * 32, np.ones(2, np.float32))
    )
    cache_root().parent.mkdir(parents=True, exist_ok=True)
    cache_root().symlink_to(elsewhere)
    assert clear() == (0, 0)
    assert len(list(elsewhere.rglob("*.feat"))) == 1


def test_clear_goes_on_past_an_entry_it_cannot_remove(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another run's file system or a read-only entry: clear removes the rest, never raises.
    cache = FeatureCache("s")
    for n in range(3):
        cache.put(Identity(f"/p{n}", 1, 1), Entry(b"d" * 32, np.ones(2, np.float32)))
    stuck = Identity("/p1", 1, 1).key() + ".feat"
    unlink = os.unlink

    def refuse(path: str | bytes | os.PathLike[str], *args: object, **kwargs: object) -> None:
        if os.fsdecode(path).endswith(stuck):
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", refuse)
    assert clear() == (3, 3 * (40 + 8))
    assert sorted(p.name for p in cache_root().rglob("*.feat")) == [stuck]
