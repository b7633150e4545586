"""Weights: torch's hub cache, downloads from a loopback server, hash checks, offline."""

from __future__ import annotations

import errno
import hashlib
import http.server
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from resnext_cli.errors import WeightsError
from resnext_cli.model import weights
from resnext_cli.model.registry import resolve_weights
from tests.conftest import serve


def test_hub_dir_is_torchs(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert weights.hub_dir() == Path(torch.hub.get_dir())
    assert weights.checkpoints_dir() == tmp_path / "th" / "hub" / "checkpoints"
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.hub_dir() == Path(torch.hub.get_dir()) == tmp_path / "xdg" / "torch" / "hub"
    # Neither set: the README's ~/.cache/torch/hub/checkpoints.
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.hub_dir() == Path(torch.hub.get_dir()) == tmp_path / "home/.cache/torch/hub"
    assert weights.checkpoints_dir() == tmp_path / "home" / ".cache/torch/hub/checkpoints"


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
    assert path == weights.cached_path(f"{base}/{name}")
    assert path.name == name and weights.checkpoints_dir() in path.parents
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
    assert weights.mirrored("http://elsewhere.example/models/m.pth") == (
        "http://elsewhere.example/models/m.pth"
    )
    # With or without the trailing slash, the folder's own name is kept whole.
    for mirror in ("http://mirror.example/BOX", "http://mirror.example/BOX//"):
        monkeypatch.setenv("RESNEXT_WEIGHTS_MIRROR", mirror)
        assert weights.mirrored(url) == "http://mirror.example/BOX/resnext50_32x4d-1a0047aa.pth"


@pytest.mark.parametrize(
    "url", ["http://h.example/models/", "http://h.example", "http://h/a/.", "http://h/a/.."]
)
def test_a_url_without_a_file_name_is_refused(url: str) -> None:
    with pytest.raises(WeightsError) as info:
        weights.cached_path(url)
    assert str(info.value) == f"cannot tell a file name from URL '{url}' (give a URL to a file)"


def test_a_url_with_undecodable_bytes_has_a_cache_folder() -> None:
    # A URL from argv keeps bytes that are not UTF-8 as surrogates (os.fsdecode).
    raw = [b"http://h.example/\xff/model.pth", b"http://h.example/\xfe/model.pth"]
    paths = [weights.cached_path(os.fsdecode(url)) for url in raw]
    # The cache layout, kept across versions: by-url/<sha256 of the URL's bytes, 16 hex>/.
    assert paths == [
        weights.checkpoints_dir() / "by-url" / hashlib.sha256(url).hexdigest()[:16] / "model.pth"
        for url in raw
    ]
    assert paths[0] != paths[1]


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
        f"error: cached weights file '{cached}' was corrupt and has been removed (run again "
        "to download it, or 'resnext download -m resnext50_32x4d -w IMAGENET1K_V2')"
    )
    assert not cached.exists()


def test_checkpoint_url_is_cached_and_verified(checkpoint, http_server, make_image, resnext):
    base, root = http_server
    name = _serve(root, checkpoint.read_bytes(), stem="mine")
    image = make_image("a.png", seed=6)
    run = resnext("classify", image, "--checkpoint", f"{base}/{name}", "-f", "json")
    assert run.code == 0, run
    [cached] = weights.checkpoints_dir().rglob(name)
    assert cached == weights.cached_path(f"{base}/{name}")
    assert cached.read_bytes() == checkpoint.read_bytes()
    local = resnext("classify", image, "--checkpoint", checkpoint, "-f", "json")
    assert run.records()[0]["predictions"] == local.records()[0]["predictions"]


def test_urls_with_one_file_name_do_not_share_a_cache_file(http_server) -> None:
    base, root = http_server
    for folder, data in (("a", b"first"), ("b", b"second")):
        (root / folder).mkdir()
        (root / folder / "model.pth").write_bytes(data)
    first = weights.fetch(f"{base}/a/model.pth")
    second = weights.fetch(f"{base}/b/model.pth")
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")
    assert first.name == second.name == "model.pth"  # the name stays readable
    assert first != second
    assert weights.checkpoints_dir() in first.parents
    assert weights.fetch(f"{base}/a/model.pth", offline=True) == first


def test_torchvision_urls_keep_torch_hubs_names() -> None:
    info = resolve_weights("resnext101_32x8d", "IMAGENET1K_V2")
    # torch.hub.load_state_dict_from_url caches a URL's file under its plain name.
    assert weights.cached_path(info.url) == Path(torch.hub.get_dir()) / "checkpoints" / (
        "resnext101_32x8d-110c445d.pth"
    )


def test_discard_removes_a_cached_file_and_only_that(http_server, tmp_path) -> None:
    base, root = http_server
    (root / "model.pth").write_bytes(b"bad")
    path = weights.fetch(f"{base}/model.pth")
    outside = tmp_path / "mine.pth"
    outside.write_bytes(b"keep")
    assert weights.discard(outside) is False
    assert outside.read_bytes() == b"keep"
    assert weights.discard(path) is True
    assert not path.exists() and not path.parent.exists()
    assert weights.discard(path) is False
    assert weights.discard(weights.checkpoints_dir() / ("x" * 300 + ".pth")) is False  # too long
    (root / "model.pth").write_bytes(b"good")
    assert weights.fetch(f"{base}/model.pth").read_bytes() == b"good"  # fetched again


def test_the_partial_download_lives_in_the_cache_folder(http_server, monkeypatch, tmp_path):
    # With the temp folder on another file system, only a partial file made beside its
    # destination can be renamed into place; stand in for that with a rename that
    # refuses to cross folders, as os.replace refuses to cross file systems.
    base, root = http_server
    data = bytes(range(256)) * 8192
    name = _serve(root, data)
    elsewhere = tmp_path / "other-fs"
    elsewhere.mkdir()
    monkeypatch.setenv("TMPDIR", str(elsewhere))
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(src).parent != Path(dst).parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    partials: list[list[str]] = []

    def progress(done: int, total: int | None) -> None:
        cache = weights.cached_path(f"{base}/{name}").parent
        partials.append(sorted(p.name for p in cache.iterdir() if p.suffix == ".partial"))
        assert not any(elsewhere.iterdir())

    path = weights.fetch(f"{base}/{name}", progress=progress)
    assert path.read_bytes() == data
    assert partials and all(len(names) == 1 and names[0].startswith(name) for names in partials)
    assert [p.name for p in path.parent.iterdir()] == [name]


def test_too_many_redirects_while_downloading_weights(tmp_path) -> None:
    class Loop(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve(Loop) as base, pytest.raises(WeightsError) as info:
        url = f"{base}/model.pth"
        weights.fetch(url)
    dest = weights.cached_path(url)
    assert str(info.value) == (
        f"cannot download '{url}': too many redirects (check the network, use "
        f"RESNEXT_WEIGHTS_MIRROR, or put the file at '{dest}')"
    )
    assert not dest.parent.exists() or not any(dest.parent.iterdir())


class _Scripted(http.server.BaseHTTPRequestHandler):
    """A weights server that misbehaves on cue: the first path segment says how."""

    halves = 3 << 20  # bytes of the /halves/ file
    sent = 0  # bytes of it written so far
    resume = threading.Event()  # set by the client's progress to release the second half
    resumed_by_progress = False
    release = threading.Event()  # ends a /stall/ request

    def do_GET(self) -> None:
        cls = type(self)
        how = self.path.split("/")[1]
        if how == "status-400":
            self.send_response(400)
            self.send_header("Content-Length", "11")
            self.end_headers()
            self.wfile.write(b"bad request")
        elif how == "stall":
            cls.release.wait(30)  # never answers while the client waits
        elif how == "no-length":
            self.send_response(200)  # HTTP/1.0: the body ends when the connection does
            self.end_headers()
            self.wfile.write(b"no length" * 1000)
        elif how == "halves":
            self.send_response(200)
            self.send_header("Content-Length", str(cls.halves))
            self.end_headers()
            cls.sent = half = cls.halves // 2
            self.wfile.write(bytes(half))
            self.wfile.flush()
            cls.resumed_by_progress = cls.resume.wait(15)
            cls.sent = cls.halves
            self.wfile.write(bytes(cls.halves - half))

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[str]:
    """Serve _Scripted on loopback; yields the base URL."""
    _Scripted.resume.clear()
    _Scripted.release.clear()
    _Scripted.sent, _Scripted.resumed_by_progress = 0, False
    try:
        with serve(_Scripted) as base:
            yield base
    finally:
        _Scripted.resume.set()
        _Scripted.release.set()


def test_progress_is_reported_while_the_file_arrives(scripted: str) -> None:
    # The server sends half the file and waits for the first progress report: a download
    # read whole before reporting (or in pieces larger than what arrived) never reports.
    seen: list[tuple[int, int | None]] = []

    def progress(done: int, total: int | None) -> None:
        assert done <= _Scripted.sent  # bytes received, not more
        seen.append((done, total))
        _Scripted.resume.set()

    path = weights.fetch(f"{scripted}/halves/model.pth", progress=progress)
    assert path.read_bytes() == bytes(_Scripted.halves)
    assert _Scripted.resumed_by_progress, "no progress until the whole file had arrived"
    done = [d for d, _ in seen]
    assert len(done) >= 2 and done == sorted(set(done)) and done[-1] == _Scripted.halves
    assert {t for _, t in seen} == {_Scripted.halves}


def test_a_file_without_a_declared_length(scripted: str) -> None:
    seen: list[tuple[int, int | None]] = []
    path = weights.fetch(f"{scripted}/no-length/model.pth", progress=lambda *p: seen.append(p))
    assert path.read_bytes() == b"no length" * 1000
    assert seen[-1] == (9000, None)


def test_http_400_is_a_weights_error_and_saves_nothing(scripted: str) -> None:
    url = f"{scripted}/status-400/model.pth"
    with pytest.raises(WeightsError) as info:
        weights.fetch(url)
    assert str(info.value) == (
        f"cannot download '{url}': HTTP 400 (put the file at '{weights.cached_path(url)}' by "
        "hand, or set RESNEXT_WEIGHTS_MIRROR)"
    )
    assert not weights.checkpoints_dir().exists() or not any(weights.checkpoints_dir().rglob("*"))


def test_a_stalled_server_is_given_up_after_the_timeout(scripted: str) -> None:
    url = f"{scripted}/stall/model.pth"
    with pytest.raises(WeightsError) as info:
        weights.fetch(url, timeout=0.5)
    assert str(info.value) == (
        f"cannot download '{url}': timed out after 0.5s without a byte (check the network, use "
        "RESNEXT_WEIGHTS_MIRROR, "
        f"or put the file at '{weights.cached_path(url)}')"
    )


def test_download_into_folders_that_already_exist(http_server, monkeypatch) -> None:
    # torch's cache already holds other files; a killed download left its partial behind.
    base, root = http_server
    monkeypatch.setenv("RESNEXT_WEIGHTS_MIRROR", base)
    name = _serve(root, b"torchvision's file")
    other = weights.checkpoints_dir() / "other-0123abcd.pth"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"torch's own")
    path = weights.fetch(weights.DEFAULT_HOST + name)
    assert (path, path.read_bytes()) == (other.parent / name, b"torchvision's file")
    assert other.read_bytes() == b"torch's own"
    (root / "model.pth").write_bytes(b"mine")
    url = f"{base}/model.pth"
    leftover = weights.cached_path(url).parent / "model.pth.k1ll3d.partial"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    assert weights.fetch(url).read_bytes() == b"mine"


def test_a_checkpoint_url_that_stalls_ends_the_run_with_one_line(
    make_image: Callable[..., Path], resnext: Callable[..., Any]
) -> None:
    # The one HTTP client bounds checkpoint downloads by --timeout too: headers arrive,
    # then nothing; the run ends with one line naming the timeout, exit 2, no traceback.
    release = threading.Event()

    class Stalls(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"PK")
            self.wfile.flush()
            release.wait(30)

        def log_message(self, format: str, *args: object) -> None:
            pass

    try:
        with serve(Stalls) as base:
            url = f"{base}/mine.pth"
            image = make_image("a.jpg")
            started = time.monotonic()
            out = resnext("classify", "--checkpoint", url, "--timeout", "1", image)
            elapsed = time.monotonic() - started
    finally:
        release.set()
    assert out.code == 2, out
    assert elapsed < 8, f"gave up after {elapsed:.1f}s, not about the 1s of --timeout"
    lines = out.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], out
    assert lines[-1] == (
        f"error: cannot download '{url}': timed out after 1s without a byte (check the "
        f"network, use RESNEXT_WEIGHTS_MIRROR, or put the file at '{weights.cached_path(url)}')"
    ), out
    assert "Traceback" not in out.stderr
    assert not weights.cached_path(url).exists()
