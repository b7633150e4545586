"""Weights: torch's hub cache, downloads from a loopback server, hash checks, offline."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from resnext_cli import weights
from resnext_cli.errors import WeightsError
from resnext_cli.registry import resolve_weights


def test_hub_dir_is_torchs(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert weights.hub_dir() == Path(torch.hub.get_dir())
    assert weights.checkpoints_dir() == tmp_path / "th" / "hub" / "checkpoints"
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.hub_dir() == Path(torch.hub.get_dir()) == tmp_path / "xdg" / "torch" / "hub"


def _serve(root: Path, data: bytes, stem: str = "ckpt") -> str:
    name = f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (root / name).write_bytes(data)
    return name


def test_download_verifies_and_renames_atomically(http_server) -> None:
    base, root = http_server
    data = bytes(range(256)) * 4096
    name = _serve(root, data)
    seen: list[tuple[int, int | None]] = []
    path = weights.fetch(f"{base}/{name}", progress=lambda d, t: seen.append((d, t)))
    assert path == weights.checkpoints_dir() / name
    assert path.read_bytes() == data
    assert seen[-1] == (len(data), len(data))
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temp file left
    # A second fetch is served from the cache, even offline.
    assert weights.fetch(f"{base}/{name}", offline=True) == path


def test_hash_mismatch_leaves_nothing(http_server) -> None:
    base, root = http_server
    (root / "ckpt-deadbeef.pth").write_bytes(b"not what the name promises")
    with pytest.raises(WeightsError) as info:
        weights.fetch(f"{base}/ckpt-deadbeef.pth")
    assert "hash mismatch for 'ckpt-deadbeef.pth'" in str(info.value)
    assert not any(weights.checkpoints_dir().iterdir())


def test_http_error_is_a_weights_error(http_server) -> None:
    base, _ = http_server
    with pytest.raises(WeightsError) as info:
        weights.fetch(f"{base}/missing-0123abcd.pth")
    assert "HTTP 404" in str(info.value)
    assert not any(weights.checkpoints_dir().iterdir())


def test_mirror_replaces_the_default_host(monkeypatch) -> None:
    url = resolve_weights("resnext50_32x4d").url
    assert weights.mirrored(url) == url
    monkeypatch.setenv("RESNEXT_WEIGHTS_MIRROR", "http://mirror.example/models/")
    assert weights.mirrored(url) == "http://mirror.example/models/resnext50_32x4d-1a0047aa.pth"


def test_cli_download_hash_mismatch_through_mirror(http_server, monkeypatch, resnext) -> None:
    base, root = http_server
    (root / "resnext50_32x4d-1a0047aa.pth").write_bytes(b"tampered")
    monkeypatch.setenv("RESNEXT_WEIGHTS_MIRROR", base)
    run = resnext("download", "-m", "50")
    assert run.code == 2, run
    assert run.stderr.startswith("error: hash mismatch for 'resnext50_32x4d-1a0047aa.pth'")
    assert len(run.stderr.strip().splitlines()) == 1
    assert not (weights.checkpoints_dir() / "resnext50_32x4d-1a0047aa.pth").exists()


def test_offline_names_the_file_and_where_to_put_it(make_image, resnext) -> None:
    run = resnext("classify", make_image("a.png"), "--offline")
    expected = weights.checkpoints_dir() / "resnext50_32x4d-1a0047aa.pth"
    assert run.code == 2, run
    assert run.stderr.strip() == (
        "error: weights file 'resnext50_32x4d-1a0047aa.pth' is not cached and the network is "
        "off (download https://download.pytorch.org/models/resnext50_32x4d-1a0047aa.pth to "
        f"'{expected}', or run without --offline)"
    )


def test_offline_from_environment(make_image, resnext, monkeypatch) -> None:
    monkeypatch.setenv("RESNEXT_OFFLINE", "1")
    run = resnext("classify", make_image("a.png"))
    assert run.code == 2 and "the network is off" in run.stderr


def test_cached_weights_are_used_without_network(checkpoint, make_image, resnext) -> None:
    # Files torchvision already cached are reused: put one where torch.hub keeps it.
    info = resolve_weights("resnext50_32x4d", "IMAGENET1K_V1")
    cached = weights.checkpoints_dir() / info.filename
    cached.parent.mkdir(parents=True)
    shutil.copy(checkpoint, cached)
    image = make_image("a.png", seed=4)
    from_cache = resnext("classify", image, "-w", "IMAGENET1K_V1", "--offline", "-f", "json")
    explicit = resnext(
        "classify", image, "-w", "IMAGENET1K_V1", "--checkpoint", checkpoint, "-f", "json"
    )
    assert from_cache.code == 0, from_cache
    assert from_cache.records()[0]["predictions"] == explicit.records()[0]["predictions"]


def test_corrupt_cached_file_says_how_to_refetch(make_image, resnext) -> None:
    cached = weights.checkpoints_dir() / "resnext50_32x4d-1a0047aa.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\x00garbage")
    run = resnext("classify", make_image("a.png"))
    assert run.code == 2
    assert run.stderr.strip() == (
        f"error: cached weights file '{cached}' is corrupt (delete it and run "
        "'resnext download -m resnext50_32x4d -w IMAGENET1K_V2')"
    )


def test_checkpoint_url_is_cached_and_verified(checkpoint, http_server, make_image, resnext):
    base, root = http_server
    name = _serve(root, checkpoint.read_bytes(), stem="mine")
    image = make_image("a.png", seed=6)
    run = resnext("classify", image, "--checkpoint", f"{base}/{name}", "-f", "json")
    assert run.code == 0, run
    assert (weights.checkpoints_dir() / name).read_bytes() == checkpoint.read_bytes()
    local = resnext("classify", image, "--checkpoint", checkpoint, "-f", "json")
    assert run.records()[0]["predictions"] == local.records()[0]["predictions"]
