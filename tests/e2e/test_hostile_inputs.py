"""Awkward, broken and hostile inputs: each ends as a result or a typed error, never a crash.

The folder test runs the CLI once over every awkward file generated at test time. Each
class of hostile input has its section, to extend with the next case of that class: any
name, any file type, any tree, any server, any stdin, labels files. The pixel-level cases
(modes, EXIF, broken files, memory per input) are decode()'s unit tests, in
test_preprocess.py; those of expanding and opening inputs are in test_sources.py.
"""

from __future__ import annotations

import errno
import glob
import http.server
import io
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
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from PIL import Image

from resnext_cli import Classifier
from resnext_cli.errors import ConfigError, InputError
from resnext_cli.imaging.preprocess import DecodeOptions, decode
from resnext_cli.inputs import sources as sources_module
from resnext_cli.inputs.sources import Source, iter_sources, open_source
from resnext_cli.model.labels import load_labels
from resnext_cli.results import Classified, Failed
from tests.conftest import EPS, PDF, SVG, natural_image, oriented_png, png_with_header

LABELS_CAP = 10 << 20  # the README: a labels file of at most 10 MB

# Hostile files make Pillow warn (odd TIFF tags, bad EXIF, huge headers); expected here.
pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning:PIL", "ignore::PIL.Image.DecompressionBombWarning"
)
T = TypeVar("T")
EXIF_ORIENTATION = 0x0112


# -- helpers -------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str, **save: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def run_within(seconds: float, work: Callable[[], T]) -> T:
    """Run *work* in a thread and fail, rather than hang, if it takes too long."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(work())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert box, f"still running after {seconds}s"
    if isinstance(box[0], BaseException):
        raise box[0]
    result: T = box[0]
    return result


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


def test_an_empty_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    [source] = iter_sources([str(path)])
    with pytest.raises(InputError) as info, open_source(source) as fp:
        decode(fp, source.input, DecodeOptions())
    assert (info.value.error_type, info.value.message) == (
        "not_an_image",
        f"'{path}' is an empty file",
    )


# -- the file system -----------------------------------------------------------------


@pytest.fixture
def deny_read(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Take read permission from a file; as root, who reads it anyway, refuse it as Unix would."""
    locked: set[Path] = set()
    real_open = os.open

    def guarded_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if isinstance(path, (str, Path)) and Path(path).absolute() in locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(os, "open", guarded_open)

    def deny(path: Path) -> None:
        path.chmod(0)
        locked.add(path.absolute())

    return deny


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


def test_unreadable_file_message(tmp_path: Path, deny_read: Callable[[Path], None]) -> None:
    path = tmp_path / "locked.png"
    path.write_bytes(b"\x89PNG")
    deny_read(path)
    with pytest.raises(InputError) as info:
        open_source(Source(input=str(path), path=path))
    assert (info.value.error_type, info.value.message) == (
        "unreadable",
        f"permission denied: '{path}'",
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


# -- any name: a name the system refuses is that input's error record ------------------


def outcome(sources: list[Source]) -> list[tuple[str, str | None]]:
    return [(s.input, s.error.message if s.error else None) for s in sources]


def test_names_over_255_bytes_are_records(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    good = str(make_image("good.png", size=(32, 32)))
    long_file = str(tmp_path / ("x" * 300 + ".jpg"))
    long_folder = str(tmp_path / ("y" * 300) / "a.jpg")
    long_glob = str(tmp_path / ("z" * 300 + "*.jpg"))
    too_long = "cannot read '{}': file name too long"
    want = [
        (good, None),
        (long_file, too_long.format(long_file)),
        (long_folder, too_long.format(long_folder)),
        (long_glob, too_long.format(long_glob)),
        (good, None),
    ]
    specs = [good, long_file, long_folder, long_glob, good]
    assert outcome(list(iter_sources(specs))) == want
    # Listed on stdin, names are literal (no glob), but fail the same way.
    listing = "\n".join(specs).encode()
    assert outcome(list(iter_sources(["-"], stdin=io.BytesIO(listing)))) == want
    for source in iter_sources([long_file]):
        with pytest.raises(InputError) as info:
            open_source(source)
        assert info.value.error_type == "unreadable"


def test_a_link_loop_is_a_record_everywhere(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    loop = folder / "loop.jpg"
    loop.symlink_to(loop)
    message = f"cannot read '{loop}': too many levels of symbolic links"
    for specs in ([str(loop)], [str(folder)], [f"{folder}/*.jpg"]):
        assert outcome(list(iter_sources(specs))) == [(str(loop), message)]
    assert outcome(list(iter_sources(["-"], stdin=io.BytesIO(bytes(loop) + b"\n")))) == [
        (str(loop), message)
    ]


def latin1_file(folder: Path) -> bytes:
    raw = os.path.join(os.fsencode(folder), b"caf\xe9 \xe0 la cr\xe8me.png")
    try:
        with open(raw, "wb") as fh:
            fh.write(encode(natural_image(3, (48, 48)), "PNG"))
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    return raw


def test_a_stdin_list_starting_with_a_latin1_name(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    raw = latin1_file(tmp_path)
    good = make_image("good.png", size=(32, 32))
    listing = raw + b"\n" + bytes(good) + b"\n"
    sources = list(iter_sources(["-"], stdin=io.BytesIO(listing)))
    assert [s.path for s in sources] == [Path(os.fsdecode(raw)), good]
    assert all(s.error is None and s.data is None for s in sources)
    with open_source(sources[0]) as fp:
        assert decode(fp, sources[0].input, DecodeOptions()).size == (48, 48)


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


# -- any file type: only regular files are opened --------------------------------------


@pytest.fixture
def special_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device_node: Callable[..., Path]
) -> Iterator[list[Path]]:
    """A FIFO, a listening Unix socket and a character device, each named like an image."""
    monkeypatch.chdir(tmp_path)  # Unix socket names are short: bind a relative one
    os.mkfifo("pipe.jpg")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("socket.png")
        sock.listen()
        yield [tmp_path / "pipe.jpg", tmp_path / "socket.png", device_node("zero", "zero.jpg")]


def test_pipes_sockets_and_devices_are_never_opened(special_files: list[Path]) -> None:
    listing = b"".join(bytes(p) + b"\n" for p in special_files)
    named = list(iter_sources([str(p) for p in special_files]))
    listed = list(iter_sources(["-"], stdin=io.BytesIO(listing)))

    def errors() -> list[tuple[str, str]]:
        out = []
        for source in named + listed:
            with pytest.raises(InputError) as info:
                open_source(source)
            out.append((info.value.error_type, info.value.message))
        return out

    want = [
        ("unreadable", f"'{p}' is not a regular file (a pipe, socket or device)")
        for p in special_files
    ]
    assert run_within(10, errors) == want * 2


def test_a_pipe_swapped_in_after_the_check_does_not_hang(swapped_for_a_pipe: Path) -> None:
    path = swapped_for_a_pipe

    def error() -> str:
        with pytest.raises(InputError) as info:
            open_source(Source(input=str(path), path=path))
        return info.value.message

    got = run_within(10, error)
    assert got == f"'{path}' is not a regular file (a pipe, socket or device)"


# -- any tree: loops end, deep trees walk, each file once -------------------------------


def looped_tree(root: Path) -> list[str]:
    """Images in a tree with symlink loops and links to files; the real files, sorted."""
    for name in ("a/x.png", "a/b/y.png", "c/z.png", "top.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "a" / "b" / "up").symlink_to(root, target_is_directory=True)
    (root / "a" / "again").symlink_to(root / "a", target_is_directory=True)
    (root / "c" / "loop").symlink_to(root / "c", target_is_directory=True)
    (root / "c" / "zz_link.png").symlink_to(root / "top.png")
    os.link(root / "c" / "z.png", root / "c" / "zz_hard.png")
    return [str(root / n) for n in ("a/b/y.png", "a/x.png", "c/z.png", "top.png")]


def test_globs_end_over_symlink_loops_and_yield_each_file_once(tmp_path: Path) -> None:
    files = looped_tree(tmp_path)
    # '**/' matches folders, each then walked; '*' matches top.png and folders a and c;
    # the last two reach top.png through c/zz_link.png.
    for pattern in ("**/*.png", "**", "**/", "*", "*/**/*.png", "**/*/*.png"):
        spec = f"{tmp_path}/{pattern}"
        got = run_within(20, lambda spec=spec: [s.input for s in iter_sources([spec])])  # type: ignore[misc]
        # Each file once, under whichever of its names comes first.
        assert sorted(os.path.realpath(name) for name in got) == files, pattern
    assert [s.input for s in iter_sources([str(tmp_path)])] == [
        str(tmp_path / n) for n in ("top.png", "a/x.png", "a/b/y.png", "c/z.png")
    ]


def test_the_glob_matcher_agrees_with_glob_glob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a tree without loops the matcher must give what glob.glob(recursive=True) gives.
    for name in (
        "p/a.jpg", "p/b.JPG", "p/.hid.jpg", "p/.hdir/c.jpg", "p/s/d.jpg", "p/s/t/e.png",
        "p/s/[x].jpg", "p/u v/f.jpg", "p/s/t/.g.jpg", "p/ab.jpg", "q.jpg",
    ):  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    patterns = [
        "p/*.jpg", "p/**/*.jpg", "p/**", "**/*.png", "p/?.jpg", "p/[ab]*.jpg", "p/.*",
        "p/.*/*.jpg", "p/*/*.jpg", "p/s/[[]x].jpg", "*", "**", "p/**/t/*", "p/u v/*",
        "p/nope/*", "p/**/.g.jpg", "p/*/", "p/**/",
    ]  # fmt: skip
    for relative in patterns:
        for pattern in (relative, f"{tmp_path}/{relative}"):
            want = sorted(m.rstrip("/") for m in glob.glob(pattern, recursive=True))
            assert sorted(m.rstrip("/") for m in sources_module._glob(pattern)) == want, pattern


def test_a_tree_1200_folders_deep(tmp_path: Path) -> None:
    levels = []
    deep = tmp_path
    for _ in range(1200):  # one by one: mkdir(parents=True) would itself recurse
        deep = deep / "d"
        deep.mkdir()
        levels.append(deep)
    try:
        (deep / "bottom.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        (tmp_path / "top.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        want = [str(tmp_path / "top.png"), str(deep / "bottom.png")]
        assert [s.input for s in iter_sources([str(tmp_path)])] == want
        assert sorted(s.input for s in iter_sources([f"{tmp_path}/**/*.png"])) == sorted(want)
    finally:
        # pytest's own clean-up of old temporary folders recurses, and would hit
        # RecursionError on this tree in a later run: take it down here, bottom up.
        (deep / "bottom.png").unlink(missing_ok=True)
        for level in reversed(levels):
            level.rmdir()


def test_walks_take_each_file_once(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "real" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    os.link(tmp_path / "a.png", tmp_path / "hard.png")
    (tmp_path / "soft.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "view").symlink_to(tmp_path / "real", target_is_directory=True)
    want = [str(tmp_path / "a.png"), str(tmp_path / "real" / "b.png")]
    assert [s.input for s in iter_sources([str(tmp_path)])] == want
    assert [s.input for s in iter_sources([f"{tmp_path}/**/*.png"])] == want
    # Named one by one, each is taken: the user asked for them.
    assert len(list(iter_sources([str(tmp_path / n) for n in ("a.png", "hard.png")]))) == 2


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


# -- labels files: --labels is read whole, so it is checked first ------------------------

GIVE = "give a UTF-8 text file with one class name per line"


def labels_error(path: str | Path) -> str:
    def attempt() -> str:
        with pytest.raises(ConfigError) as info:
            load_labels(path)
        return str(info.value)

    return run_within(10, attempt)


def test_labels_from_a_pipe_or_a_device_are_refused(tmp_path: Path, device_node) -> None:
    fifo = tmp_path / "labels.fifo"
    os.mkfifo(fifo)
    for path in (fifo, device_node("zero")):
        assert labels_error(path) == (
            f"labels file '{path}' is not a regular file (a pipe, socket or device); {GIVE}"
        )
    assert labels_error(tmp_path) == f"labels file '{tmp_path}' is a folder ({GIVE})"


def test_a_huge_labels_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    with path.open("wb") as fh:
        fh.truncate(LABELS_CAP + 1)  # sparse: no disk used
    assert labels_error(path) == (
        f"labels file '{path}' is over the {LABELS_CAP}-byte limit (give one class name per line)"
    )
    path.write_bytes(b"cat\n" * (LABELS_CAP // 4))  # exactly at the limit
    assert len(load_labels(path)) == LABELS_CAP // 4


def test_labels_split_at_line_ends_only(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    text = "\ufeffform\ffeed\r\nvertical\vtab\nline\u2028separator\nnext\x85line\r\n\n  padded  \n"
    path.write_bytes(text.encode("utf-8"))
    assert load_labels(path) == (
        "form\ffeed",
        "vertical\vtab",
        "line\u2028separator",
        "next\x85line",
        "padded",
    )
