"""Awkward, broken and hostile inputs: each ends as a result or a typed error, never a crash.

The folder test runs the CLI once over every awkward file generated at test time. Each
class of hostile input has its section, to extend with the next case of that class: any
name, any file type, any tree, any server, any stdin, labels files. The pixel-level cases
(modes, EXIF, broken files, memory per input) are decode()'s unit tests, in
test_preprocess.py; those of expanding and opening inputs are in test_sources.py.
"""

from __future__ import annotations

import http.server
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from resnext_cli import Classifier
from resnext_cli.errors import InputError
from resnext_cli.inputs.sources import Source, iter_sources, open_source
from resnext_cli.results import Classified, Failed
from tests.conftest import EPS, PDF, SVG, natural_image, oriented_png, png_with_header
from tests.helpers import encode, latin1_file, run_within

# Hostile files make Pillow warn (odd TIFF tags, bad EXIF, huge headers); expected here.
pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning:PIL", "ignore::PIL.Image.DecompressionBombWarning"
)


EXIF_ORIENTATION = 0x0112


# -- EXIF orientation: what a person sees is what is classified ---------------------


def test_orientation_changes_what_is_classified(checkpoint: Path, tmp_path: Path) -> None:
    upright = natural_image(5, (96, 64))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    paths = {
        "upright": tmp_path / "upright.png",
        "tagged": tmp_path / "tagged.png",
        "stored": tmp_path / "stored.png",
    }
    upright.save(paths["upright"])
    paths["tagged"].write_bytes(oriented_png(stored, 6))
    stored.save(paths["stored"])
    inputs = [str(p) for p in paths.values()]

    def top5(**options: Any) -> dict[str, list[tuple[int, float]]]:
        clf = Classifier(checkpoint=str(checkpoint), batch_size=3, workers=0, **options)
        out = {}
        for name, record in zip(paths, clf.classify(inputs), strict=True):
            assert isinstance(record, Classified)
            out[name] = [(p.index, p.probability) for p in record.predictions]
        return out

    def same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
        return [i for i, _ in a] == [i for i, _ in b] and all(
            abs(p - q) < 1e-5 for (_, p), (_, q) in zip(a, b, strict=True)
        )

    seen = top5()
    assert same(seen["tagged"], seen["upright"])
    assert not same(seen["tagged"], seen["stored"])
    exact = top5(exact=True)
    assert same(exact["tagged"], exact["stored"])  # --exact: no transpose, as torchvision
    assert not same(exact["tagged"], exact["upright"])


def make_awkward_folder(
    root: Path, elsewhere: Path, deny_read: Callable[[Path], None]
) -> dict[str, str]:
    """Fill *root* with every awkward file; return input -> 'ok' or the expected error type."""
    expected: dict[str, str] = {}
    base = natural_image(21, (64, 48))
    gray_img = base.convert("L")
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    other = natural_image(22, (64, 48))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6

    def save(name: str, img: Image.Image, folder: Path = root, **options: Any) -> Path:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, **options)
        if folder == root:
            expected[str(path)] = "ok"
        return path

    def write(name: str, data: bytes, error: str) -> Path:
        path = root / name
        path.write_bytes(data)
        expected[str(path)] = error
        return path

    save("rgb.jpg", base)
    save("gray.png", gray_img)
    save("bilevel.png", base.convert("1"))
    save("palette.png", pal)
    save("palette_transparent.png", pal, transparency=0)
    save("palette_transparent.gif", pal, transparency=0)
    save("gray_alpha.png", base.convert("LA"))
    save("rgba.png", rgba)
    save("cmyk.jpg", base.convert("CMYK"))
    save("gray16.png", Image.fromarray(np.asarray(gray_img).astype(np.uint16) * 257))
    save("int32.tif", Image.fromarray(np.asarray(gray_img).astype(np.int32) * 1000 - 50_000))
    save("float32.tif", Image.fromarray(np.asarray(gray_img).astype(np.float32) / 255))
    save("ycbcr.tif", base.convert("YCbCr"))
    save("animated.gif", base, save_all=True, append_images=[other])
    save("multipage.tif", base, save_all=True, append_images=[other])
    save("animated.webp", base, save_all=True, append_images=[other])
    save("animated.png", base, save_all=True, append_images=[other])
    save("rotated.jpg", base.transpose(Image.Transpose.ROTATE_90), exif=exif)
    save("one_pixel.png", Image.new("RGB", (1, 1), (40, 80, 120)))
    save("wide_strip.png", natural_image(23, (4000, 2)))
    save("tall_strip.png", natural_image(24, (1, 3000)))
    save("with spaces in it.png", base)
    save("ünïcödé 写真.png", base)
    save("-leading-dash.png", base)
    save("UPPER.JPG", base, format="JPEG")
    save("sub/nested.png", base)
    extensionless = root / "no_extension"
    extensionless.write_bytes(encode(base, "PNG"))
    expected[str(extensionless)] = "ok"

    write("empty.jpg", b"", "not_an_image")
    write("random.png", random.Random(1).randbytes(3000), "not_an_image")
    write("scraped.jpg", SVG, "not_an_image")
    write("fake.png", PDF, "not_an_image")
    jpeg = encode(natural_image(25, (160, 120)), "JPEG")
    png = encode(natural_image(26, (160, 120)), "PNG")
    write("truncated.jpg", jpeg[: len(jpeg) // 2], "truncated")
    write("truncated.png", png[: len(png) // 2], "truncated")
    write("bomb.png", png_with_header(100_000, 100_000), "too_large")
    deny_read(write("locked.png", png, "unreadable"))
    (root / "broken_link.jpg").symlink_to(elsewhere / "gone.jpg")
    expected[str(root / "broken_link.jpg")] = "not_found"
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "pipe.jpg")  # opening it would wait for a writer forever
        expected[str(root / "pipe.jpg")] = "unreadable"

    # Links are followed; a loop back to the top is walked once.
    target = save("linked.png", other, folder=elsewhere)
    (root / "link_to_file.png").symlink_to(target)
    expected[str(root / "link_to_file.png")] = "ok"
    save("inside.png", other, folder=elsewhere / "album")
    (root / "linked_album").symlink_to(elsewhere / "album", target_is_directory=True)
    expected[str(root / "linked_album" / "inside.png")] = "ok"
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "self_loop.jpg").symlink_to(root / "self_loop.jpg")  # stat fails: ELOOP
    expected[str(root / "self_loop.jpg")] = "unreadable"
    os.link(root / "gray.png", root / "zz_hard_link.png")  # the same file again: no record

    # Skipped without a record: not images by name, or hidden.
    (root / "notes.txt").write_text("a text file in a camera dump")
    base.save(root / ".hidden.png")
    return expected


def test_a_folder_of_awkward_files(
    checkpoint: Path,
    tmp_path: Path,
    resnext: Callable[..., Any],
    deny_read: Callable[[Path], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, elsewhere = tmp_path / "dump", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    expected = make_awkward_folder(root, elsewhere, deny_read)
    # Given by name: formats Pillow cannot open, a missing path, a name like an option.
    loose = tmp_path / "loose"
    loose.mkdir()
    for name, data in {"drawing.svg": SVG, "doc.pdf": PDF, "figure.eps": EPS}.items():
        (loose / name).write_bytes(data)
        expected[str(loose / name)] = "not_an_image"
    expected[str(loose / "missing.jpg")] = "not_found"
    natural_image(27, (48, 48)).save(loose / "-dash.png")
    monkeypatch.chdir(loose)
    expected["-dash.png"] = "ok"
    explicit = [str(loose / n) for n in ("drawing.svg", "doc.pdf", "figure.eps", "missing.jpg")]

    run = resnext(
        "classify", "--checkpoint", checkpoint, "-b", "4", "--workers", "2",
        "-f", "jsonl", "--", root, *explicit, "-dash.png",
    )  # fmt: skip

    assert run.code == 1, run
    assert "Traceback" not in run.stderr, run
    records = run.records()
    inputs = [r["input"] for r in records]
    assert len(inputs) == len(set(inputs)), "an input got two records"
    assert sorted(inputs) == sorted(expected), run
    outcome = {r["input"]: r["error"]["type"] if "error" in r else "ok" for r in records}
    assert outcome == expected
    for record in records:
        if "error" in record:
            assert f"error: {record['error']['message']}" in run.stderr
            continue
        probs = [p["probability"] for p in record["predictions"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-6


def test_a_file_that_vanishes_after_listing(
    checkpoint: Path, make_image: Callable[..., Path]
) -> None:
    keep = make_image("a.png", seed=1, size=(64, 64))
    gone = make_image("b.png", seed=2, size=(64, 64))
    sources = list(iter_sources([str(keep.parent)]))
    gone.unlink()
    records = list(Classifier(checkpoint=str(checkpoint), workers=0).classify_sources(sources))
    assert isinstance(records[0], Classified)
    assert isinstance(records[1], Failed)
    assert (records[1].error_type, records[1].message) == (
        "not_found",
        f"no such file: '{gone}'",
    )


def test_a_name_that_is_not_utf8(
    checkpoint: Path, tmp_path: Path, resnext: Callable[..., Any]
) -> None:
    # Old archives hold Latin-1 names; the run must neither die nor lose the name.
    folder = tmp_path / "archive"
    folder.mkdir()
    try:
        raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")
        with open(raw, "wb") as fh:
            fh.write(encode(natural_image(3, (48, 48)), "PNG"))
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "out.jsonl"
    run = resnext("classify", folder, "--checkpoint", checkpoint, "-o", out)
    assert run.code == 0, run
    text = out.read_bytes().decode("utf-8")  # the file stays valid UTF-8
    [record] = [json.loads(line) for line in text.splitlines()]
    assert record["input"] == os.fsdecode(raw)
    again = resnext("classify", folder, "--checkpoint", checkpoint, "-o", out, "--resume")
    assert again.code == 0, again
    assert "nothing left to do" in again.stderr
    assert out.read_bytes().decode("utf-8") == text


def test_names_on_the_command_line_and_stdin_through_the_cli(
    checkpoint: Path, tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    # The real command in a process of its own, so a hang fails the test instead.
    good = str(make_image("good.png", seed=3, size=(48, 48)))
    long_name = str(tmp_path / ("x" * 300 + ".jpg"))
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    raw = latin1_file(tmp_path)
    listing = b"\n".join([raw, long_name.encode(), bytes(fifo), good.encode()]) + b"\n"
    args = [good, long_name, str(fifo), "-", "--checkpoint", str(checkpoint), "-f", "jsonl"]
    run = subprocess.run(
        [sys.executable, "-m", "resnext_cli", "classify", *args],
        input=listing,
        capture_output=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    got = [(r["input"], r["error"]["type"] if "error" in r else "ok") for r in records]
    assert got == [
        (good, "ok"),
        (long_name, "unreadable"),
        (str(fifo), "unreadable"),
        (os.fsdecode(raw), "ok"),
        (long_name, "unreadable"),
        (str(fifo), "unreadable"),
        (good, "ok"),
    ]


# -- standard input ------------------------------------------------------------------


def test_empty_standard_input(checkpoint: Path, resnext: Callable[..., Any]) -> None:
    run = resnext("classify", "-", "--checkpoint", checkpoint, input=b"")
    assert run.code == 2
    assert run.stderr.splitlines() == [
        "warning: standard input is empty",
        "error: no input matched (give image files, folders, globs or URLs)",
    ]


def test_a_list_on_standard_input(
    checkpoint: Path, make_image: Callable[..., Path], tmp_path: Path, resnext: Callable[..., Any]
) -> None:
    image = make_image("a b.png", seed=4, size=(64, 64))
    listing = (
        f"# from find\r\n\r\n   \r\n{image}\r\n  # indented comment\r\n{tmp_path}/nope.jpg\r\n"
    )
    run = resnext("classify", "-", "--checkpoint", checkpoint, input=listing.encode())
    assert run.code == 1, run
    records = run.records()
    assert [r["input"] for r in records] == [str(image), f"{tmp_path}/nope.jpg"]
    assert "predictions" in records[0]
    assert records[1]["error"]["type"] == "not_found"
    only_comments = resnext("classify", "-", "--checkpoint", checkpoint, input=b"# x\n\n")
    assert only_comments.code == 2
    assert only_comments.stderr.splitlines() == [
        "error: no input matched (give image files, folders, globs or URLs)"
    ]


# -- URLs ----------------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    image = b""
    released = threading.Event()
    endless_done = threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-body is what several routes test


class _Routes(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _headers(self, status: int, ctype: str, length: int | None = None, **extra: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for key, value in extra.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()

    def _trickle(self, first: bytes, then: bytes) -> None:
        """Write *first*, then *then* every 50 ms until released (15 s at most)."""
        self.wfile.write(first)
        deadline = time.monotonic() + 15
        while not self.server.released.is_set() and time.monotonic() < deadline:
            self.wfile.write(then)
            time.sleep(0.05)

    def do_GET(self) -> None:
        server, route = self.server, self.path
        if route == "/ok.png":
            self._headers(200, "image/png", len(server.image))
            self.wfile.write(server.image)
        elif route == "/missing":
            self.send_error(404)
        elif route == "/boom":
            self.send_error(500)
        elif route == "/stall":  # accepts, then never answers
            server.released.wait(30)
        elif route == "/trickle":  # answers a byte at a time, for ever
            self._headers(200, "image/png")
            deadline = time.monotonic() + 30
            while not server.released.is_set() and time.monotonic() < deadline:
                self.wfile.write(b"\x89")
                self.wfile.flush()
                time.sleep(0.05)
        elif route == "/page.html":
            body = b"<!doctype html><title>Not found</title><p>Try again."
            self._headers(200, "text/html; charset=utf-8", len(body))
            self.wfile.write(body)
        elif route == "/redirect":
            self._headers(302, "text/plain", 0, Location="/ok.png")
        elif route == "/to-file":
            self._headers(302, "text/plain", 0, Location="file:///etc/passwd")
        elif route == "/huge":
            self._headers(200, "image/jpeg", 200 << 20)
        elif route == "/slow-status":  # the status line a byte at a time
            self._trickle(b"", b"H")
        elif route == "/slow-headers":  # a header a byte at a time
            self._trickle(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Slow: ", b"a")
        elif route == "/continue":  # '100 Continue', again and again
            self._trickle(b"", b"HTTP/1.1 100 Continue\r\n\r\n")
        elif route == "/loop":
            self._headers(302, "text/plain", 0, Location="/loop")
        elif route == "/endless":  # chunked, no length, never ends
            self._headers(200, "image/png", Transfer_Encoding="chunked")
            chunk = b"%x\r\n%s\r\n" % (65536, b"\0" * 65536)
            deadline = time.monotonic() + 30
            try:
                while not server.released.is_set() and time.monotonic() < deadline:
                    self.wfile.write(chunk)
            except OSError:
                pass
            finally:
                server.endless_done.set()
        else:
            self.send_error(404)


@pytest.fixture
def web() -> Iterator[_Server]:
    """A loopback server with misbehaving routes; it releases every handler on teardown."""
    server = _Server(("127.0.0.1", 0), _Routes)
    server.released = threading.Event()
    server.endless_done = threading.Event()
    server.image = encode(natural_image(31, (64, 48)), "PNG")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()


def url(server: _Server, route: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{route}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_urls(
    checkpoint: Path, web: _Server, resnext: Callable[..., Any], deadlines: list[float]
) -> None:
    refused = f"http://127.0.0.1:{closed_port()}/photo.jpg"
    routes = ["/ok.png", "/missing", "/boom", "/stall", "/trickle", "/page.html", "/redirect"]
    routes += ["/to-file", "/huge"]
    inputs = [url(web, r) for r in routes] + [refused, "file:///etc/passwd", "ftp://h/x.jpg"]
    run = resnext(
        "classify", *inputs, "--checkpoint", checkpoint, "--timeout", "1", "--workers", "4"
    )
    assert run.code == 1, run
    assert "Traceback" not in run.stderr
    records = dict(zip([*routes, "refused", "file", "ftp"], run.records(), strict=True))
    assert [r["input"] for r in records.values()] == inputs
    errors = {
        k: (r["error"]["type"], r["error"]["message"]) for k, r in records.items() if "error" in r
    }
    timed_out = "timed out after 1s fetching '{}' (raise --timeout to wait longer)"
    assert errors == {
        "/missing": ("download_failed", f"HTTP 404 Not Found for '{url(web, '/missing')}'"),
        "/boom": ("download_failed", f"HTTP 500 Internal Server Error for '{url(web, '/boom')}'"),
        "/stall": ("download_failed", timed_out.format(url(web, "/stall"))),
        "/trickle": ("download_failed", timed_out.format(url(web, "/trickle"))),
        "/page.html": (
            "not_an_image",
            f"'{url(web, '/page.html')}' returned text/html, not an image",
        ),
        "/to-file": (
            "download_failed",
            f"'{url(web, '/to-file')}' redirects to a URL that is not http(s)",
        ),
        "/huge": (
            "too_large",
            f"'{url(web, '/huge')}' is {200 << 20} bytes, over the {100 << 20} limit",
        ),
        "refused": ("download_failed", f"cannot fetch '{refused}': connection refused"),
        "file": (
            "unreadable",
            "unsupported URL scheme 'file' in 'file:///etc/passwd' "
            "(give a local path or an http(s) URL)",
        ),
        "ftp": (
            "unreadable",
            "unsupported URL scheme 'ftp' in 'ftp://h/x.jpg' (give a local path or an http(s) URL)",
        ),
    }
    assert records["/redirect"]["predictions"] == records["/ok.png"]["predictions"]
    # It ends: each download had one deadline of --timeout on its whole exchange (the stall
    # and the trickle gave up when it fired, not when their server would have finished).
    assert deadlines == [1.0] * 10


# -- any server: --timeout bounds the whole exchange ----------------------------------


@pytest.mark.parametrize(
    "route", ["/stall", "/trickle", "/slow-status", "/slow-headers", "/continue"]
)
def test_the_timeout_bounds_the_whole_exchange(
    web: _Server, route: str, deadlines: list[float]
) -> None:
    source = Source(input=url(web, route), url=url(web, route))
    with pytest.raises(InputError) as info:
        open_source(source, timeout=1)
    assert (info.value.error_type, info.value.message) == (
        "download_failed",
        f"timed out after 1s fetching '{source.url}' (raise --timeout to wait longer)",
    )
    # One deadline of 1 s on the whole exchange, never started again by bytes that came.
    assert deadlines == [1]


def test_a_body_over_the_cap_stops_the_download(web: _Server) -> None:
    source = Source(input=url(web, "/endless"), url=url(web, "/endless"))
    with pytest.raises(InputError) as info:
        open_source(source, timeout=20, max_bytes=1 << 20)
    assert (info.value.error_type, info.value.message) == (
        "too_large",
        f"'{source.url}' is over the 1048576-byte download limit",
    )
    assert web.endless_done.wait(10), "the client kept the endless download open"


# -- batches and workers -------------------------------------------------------------


def test_a_failing_batch_is_retried_one_image_at_a_time(
    checkpoint: Path, make_image: Callable[..., Path]
) -> None:
    paths = [str(make_image(f"{i}.png", seed=i, size=(64, 64))) for i in range(3)]
    guilty = str(make_image("guilty.png", seed=9, size=(65, 64)))
    paths.insert(1, guilty)
    clf = Classifier(checkpoint=str(checkpoint), batch_size=4, workers=0)
    clean = list(clf.classify(paths))
    real = clf.loaded.transform

    def transform(img: Image.Image) -> torch.Tensor:
        tensor = real(img)
        return tensor[:1] if img.size == (65, 64) else tensor  # one channel breaks the model

    transform.normalize = real.normalize  # type: ignore[attr-defined]
    clf.loaded.transform = transform  # type: ignore[assignment]
    records = run_within(120, lambda: list(clf.classify(paths)))
    assert [r.input for r in records] == paths
    failed = records[1]
    assert isinstance(failed, Failed) and failed.error_type == "inference_failed"
    assert failed.message.startswith(f"the model failed on '{guilty}': ")
    for got, want in zip(records, clean, strict=True):
        if got.input == guilty:
            continue
        # Classified alone after the batch failed: the same as in the clean batch.
        assert isinstance(got, Classified) and isinstance(want, Classified)
        assert [p.index for p in got.predictions] == [p.index for p in want.predictions]
        for a, b in zip(got.predictions, want.predictions, strict=True):
            assert a.probability == pytest.approx(b.probability, abs=1e-4)


def test_a_decoding_thread_that_dies_costs_one_record(
    checkpoint: Path, make_image: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [str(make_image(f"{i}.png", seed=i, size=(64, 64))) for i in range(4)]
    clf = Classifier(checkpoint=str(checkpoint), batch_size=2, workers=2)
    real = clf.engine.prepare

    def dying(source: Source) -> Any:
        if source.input == paths[1]:
            raise SystemExit(3)  # not an Exception: ends a thread that does not catch it
        return real(source)

    monkeypatch.setattr(clf.engine, "prepare", dying)
    records = run_within(120, lambda: list(clf.classify(paths)))
    assert [r.input for r in records] == paths
    assert [type(r) for r in records] == [Classified, Failed, Classified, Classified]
    assert isinstance(records[1], Failed)
    assert (records[1].error_type, records[1].message) == (
        "unreadable",
        f"decoding '{paths[1]}' failed: SystemExit(3)",
    )
