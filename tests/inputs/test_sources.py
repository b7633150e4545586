"""sources.py called directly: what each kind of input expands to, and what reading it gives.

Fast and in-process (no model), so a mutation run of sources.py can afford them. Expected
values are written out by hand from the README's rules (hidden names skipped, image
extensions or magic bytes taken in walks, names on stdin taken literally, --timeout bounding
the whole exchange) or come from Pillow encoding a picture; files live in tmp_path and URLs
on loopback servers made here.
"""

from __future__ import annotations

import errno
import glob
import io
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from resnext_cli.errors import InputError
from resnext_cli.imaging.preprocess import DecodeOptions, decode
from resnext_cli.inputs import sources as sources_module
from resnext_cli.inputs.sources import Source, file_facts, iter_sources, open_source
from resnext_cli.results import FileFacts
from tests.conftest import natural_image
from tests.helpers import PNG_SIGNATURE, encoded, latin1_file, read_error, run_within

NOT_REGULAR = "is not a regular file (a pipe, socket or device)"


def expand(
    *specs: str, stdin: bytes | None = None
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """(input, error message or None) for each source, and the warnings, in order."""
    warnings: list[str] = []
    stream = io.BytesIO(stdin) if stdin is not None else None
    sources = list(iter_sources(specs, stdin=stream, warn=warnings.append))
    return [(s.input, s.error.message if s.error else None) for s in sources], warnings


def inputs(*specs: str) -> list[str]:
    got, _ = expand(*specs)
    return [name for name, _error in got]


# -- folders: which files a walk takes ---------------------------------------------------

# The extensions a walk takes, as the README's "image extension" means them.
IMAGE_EXTENSIONS = [
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".bmp", ".dib", ".tif", ".tiff",
    ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".ico", ".tga", ".jp2", ".j2k", ".jpx", ".avif",
    ".pcx", ".sgi", ".ras", ".psd", ".qoi", ".dds", ".icns",
]  # fmt: skip


def test_a_walk_takes_every_image_extension_in_any_case(tmp_path: Path) -> None:
    # Named by extension, a file is taken without a look inside (the decoder judges it).
    names = [f"a{ext}" for ext in IMAGE_EXTENSIONS]
    names += [f"b{ext.upper()}" for ext in IMAGE_EXTENSIONS] + ["c.Jpg", "d.PnG"]
    for name in names:
        (tmp_path / name).write_bytes(b"not looked at")
    for name in ("e.txt", "f.svg", "g.pdf", "h.heic", "i.jpg.txt", "j.xjpg"):
        (tmp_path / name).write_bytes(PNG_SIGNATURE)
    assert inputs(str(tmp_path)) == sorted(str(tmp_path / n) for n in names)


def test_a_file_named_on_the_command_line_is_taken_whatever_its_name(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    [source] = iter_sources([str(notes)])
    assert source == Source(input=str(notes), path=notes)


def magic_files() -> dict[str, bytes]:
    """Extensionless files a walk must take: Pillow's own encodings, then headers by hand."""
    files = {
        "jpeg": encoded("JPEG"),
        "png": encoded("PNG"),
        "gif89": encoded("GIF", transparency=0),
        "tiff_le": encoded("TIFF"),
        "ico": encoded("ICO"),
        "bmp": encoded("BMP"),
        "ppm": encoded("PPM"),
        "pgm": encoded("PPM", "L"),
        "pbm": encoded("PPM", "1"),
        "webp": encoded("WEBP"),
        "jp2": encoded("JPEG2000"),
        "j2k": encoded("JPEG2000", no_jp2=True),
        "qoi": encoded("QOI"),
    }
    files |= {
        "gif87": b"GIF87a\x02\x00\x01\x00\x00\x00\x00;",
        "tiff_be": b"MM\x00*\x00\x00\x00\x08" + bytes(8),
        "psd": b"8BPS\x00\x01" + bytes(10),
        "avif": b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00",
        "avif_sequence": b"\x00\x00\x00\x1cftypavis\x00\x00\x00\x00",
        "heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00",
        "heif": b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00",
        "pnm_ascii": b"P3\n# a comment\n# and another\n2 1\n255\n1 2 3 4 5 6\n",
        "pnm_spaces": b"P1 3 2 1 0 1 0 1 0",
    }
    return files


NOT_IMAGES = {
    "text": b"just some notes, nothing more\n",
    "wave": b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00",
    "mp4": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00",
    "bm_text": b"BM is how this note starts\n",
    "p8": b"P8\n2 1\n255\n" + bytes(6),
    "p6_words": b"P6\nwide high\n255\n",
    "jpeg_cut": b"\xff\xd8",
    "empty": b"",
    "zip": b"PK\x03\x04\x14\x00\x00\x00",
}


def test_extensionless_files_are_taken_by_their_magic_bytes(tmp_path: Path) -> None:
    images = magic_files()
    assert images["gif89"].startswith(b"GIF89a") and images["ico"][:4] == b"\0\0\1\0"
    for name, data in (images | NOT_IMAGES).items():
        (tmp_path / name).write_bytes(data)
    assert inputs(str(tmp_path)) == sorted(str(tmp_path / name) for name in images)


def test_extensionless_files_that_cannot_be_read_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "locked").write_bytes(PNG_SIGNATURE)
    (tmp_path / "open").write_bytes(PNG_SIGNATURE)
    real_open = os.open

    def deny(path: Any, flags: int, *args: Any) -> int:
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", deny)
    assert inputs(str(tmp_path)) == [str(tmp_path / "open")]


def test_extensionless_files_that_fail_to_read_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bad_sector").write_bytes(PNG_SIGNATURE)
    (tmp_path / "fine").write_bytes(PNG_SIGNATURE)
    real_fdopen = os.fdopen

    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            raise OSError(errno.EIO, "Input/output error")

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("bad_sector"):
            os.close(fd)
            return Failing()
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)
    assert inputs(str(tmp_path)) == [str(tmp_path / "fine")]


def test_a_walk_is_sorted_files_first_then_each_subfolder_in_turn(tmp_path: Path) -> None:
    for name in ("b/y.png", "b/a/x.png", "a/z.png", "a/b/w.png", "m.png", "c.png", "z/q.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(PNG_SIGNATURE)
    want = ["c.png", "m.png", "a/z.png", "a/b/w.png", "b/y.png", "b/a/x.png", "z/q.png"]
    sources = list(iter_sources([str(tmp_path)]))
    assert [s.input for s in sources] == [str(tmp_path / n) for n in want]
    for source in sources:  # each opens: the walk gives its path
        with open_source(source) as fp:
            assert fp.read() == PNG_SIGNATURE


def test_hidden_files_and_folders_are_skipped_in_walks_and_globs(tmp_path: Path) -> None:
    for name in (".h.png", ".d/in.png", "v/.x.png", "v/ok.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(PNG_SIGNATURE)
    assert inputs(str(tmp_path)) == [str(tmp_path / "v/ok.png")]
    assert inputs(f"{tmp_path}/**/*.png") == [str(tmp_path / "v/ok.png")]
    # A pattern part starting with '.' asks for hidden names.
    assert inputs(f"{tmp_path}/.*.png") == [str(tmp_path / ".h.png")]
    # Named, a hidden file or a file in a hidden folder is taken.
    assert inputs(str(tmp_path / ".d" / "in.png")) == [str(tmp_path / ".d" / "in.png")]


def test_broken_links_and_special_files_in_a_walk(tmp_path: Path) -> None:
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")  # no extension: not looked at
    os.mkfifo(tmp_path / "pipe.jpg")
    os.mkfifo(tmp_path / "pipe")  # no extension: never opened to sniff
    (tmp_path / "ok.png").write_bytes(PNG_SIGNATURE)
    warnings: list[str] = []
    got = [
        (s.input, s.path, s.error and (s.error.error_type, s.error.message))
        for s in iter_sources([str(tmp_path)], warn=warnings.append)
    ]
    gone, ok, pipe = (tmp_path / n for n in ("gone.png", "ok.png", "pipe.jpg"))
    # Error records keep their path: the output's "path" field is made from it.
    assert got == [
        (str(gone), gone, ("not_found", f"broken symbolic link: '{gone}'")),
        (str(ok), ok, None),
        (str(pipe), pipe, ("unreadable", f"'{pipe}' {NOT_REGULAR}")),
    ]
    assert warnings == []


def test_a_file_reached_twice_in_one_input_is_taken_once(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG_SIGNATURE)
    (tmp_path / "b").write_bytes(PNG_SIGNATURE)
    os.link(tmp_path / "a.png", tmp_path / "c.png")
    (tmp_path / "d").symlink_to(tmp_path / "b")
    assert inputs(str(tmp_path)) == [str(tmp_path / "a.png"), str(tmp_path / "b")]
    # Each input has its own record of what it met: the folder twice is walked twice.
    assert inputs(str(tmp_path), str(tmp_path)) == 2 * [
        str(tmp_path / "a.png"),
        str(tmp_path / "b"),
    ]


def test_an_empty_folder_warns_with_the_name_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert expand("empty") == ([], ["no images found in folder 'empty'"])
    (tmp_path / "empty" / "sub" / "a.png").write_bytes(PNG_SIGNATURE)
    assert expand("empty") == ([("empty/sub/a.png", None)], [])


def test_a_folder_that_cannot_be_listed_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a/x.png", "b/y.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(PNG_SIGNATURE)
    real_scandir = os.scandir
    locked = str(tmp_path / "a")

    def scandir(path: Any = ".") -> Any:
        if str(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", locked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    got, warnings = expand(str(tmp_path))
    assert got == [(str(tmp_path / "b" / "y.png"), None)]
    assert warnings == [f"cannot list folder '{locked}': permission denied"]


def test_a_folder_that_vanishes_during_the_walk_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a/x.png", "b/y.png", "c/z.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(PNG_SIGNATURE)
    walked = iter_sources([str(tmp_path)])
    assert next(walked).input == str(tmp_path / "a" / "x.png")
    (tmp_path / "b" / "y.png").unlink()
    (tmp_path / "b").rmdir()
    assert [s.input for s in walked] == [str(tmp_path / "c" / "z.png")]


def test_an_entry_whose_type_cannot_be_read_is_taken_as_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.png").write_bytes(PNG_SIGNATURE)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(PNG_SIGNATURE)
    real_scandir = os.scandir

    class Entry:
        def __init__(self, entry: os.DirEntry[str]) -> None:
            self.name, self.path, self._entry = entry.name, entry.path, entry

        def is_dir(self) -> bool:
            if self.name == "sub":
                raise OSError(errno.EIO, "Input/output error")
            return self._entry.is_dir()

    class Listing:
        def __init__(self, path: Any) -> None:
            self._listing = real_scandir(path)

        def __enter__(self) -> list[Entry]:
            return [Entry(e) for e in self._listing]

        def __exit__(self, *exc: object) -> None:
            self._listing.close()

    monkeypatch.setattr(os, "scandir", Listing)
    # 'sub' is then a file without an extension, and a folder is not an image.
    assert inputs(str(tmp_path)) == [str(tmp_path / "a.png")]
    assert inputs(f"{tmp_path}/*/b.png") == []


# -- names that fail -------------------------------------------------------------------


def test_missing_names_and_broken_links_are_records(tmp_path: Path) -> None:
    (tmp_path / "file.png").write_bytes(PNG_SIGNATURE)
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    specs = [
        str(tmp_path / "nope.jpg"),
        str(tmp_path / "dangling.png"),
        str(tmp_path / "file.png" / "inside.jpg"),
    ]
    got, warnings = expand(*specs)
    assert got == [
        (specs[0], f"no such file: '{specs[0]}'"),
        (specs[1], f"broken symbolic link: '{specs[1]}'"),
        (specs[2], f"no such file: '{specs[2]}'"),
    ]
    assert warnings == []
    for spec in specs:
        [source] = iter_sources([spec])
        assert source.path == Path(spec)
        assert read_error(source)[0] == "not_found"


def test_a_name_that_cannot_be_looked_at_is_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "locked.png"
    real_stat = os.stat

    def deny(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if Path(target) == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(target))
        return real_stat(target, *args, **kwargs)

    monkeypatch.setattr(os, "stat", deny)
    assert expand(str(path)) == ([(str(path), f"permission denied: '{path}'")], [])
    error = read_error(Source(input="given name", path=path))
    assert error == ("unreadable", "permission denied: 'given name'")


def test_an_os_error_without_a_reason_names_its_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "odd.png"

    def fail(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        raise BlockingIOError()

    monkeypatch.setattr(os, "stat", fail)
    assert expand(str(path)) == ([(str(path), f"cannot read '{path}': blockingIOError")], [])


def test_opening_a_folder_is_refused(tmp_path: Path) -> None:
    error = read_error(Source(input="album", path=tmp_path))
    assert error == ("unreadable", "'album' is a folder")


def test_the_file_descriptor_is_closed_when_a_swapped_file_is_refused(
    swapped_for_a_pipe: Path,
) -> None:
    # A regular file at stat, a FIFO at open: refused, and nothing left open.
    path = swapped_for_a_pipe
    before = sorted(os.listdir("/proc/self/fd"))
    error = read_error(Source(input=str(path), path=path))
    assert error == ("unreadable", f"'{path}' is not a regular file (a pipe, socket or device)")
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_an_opened_file_gives_its_bytes_and_facts(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(PNG_SIGNATURE * 3)
    st = os.stat(path)
    with open_source(Source(input="a.png", path=path)) as fp:
        assert file_facts(fp) == FileFacts(24, st.st_mtime_ns)
        assert fp.read() == PNG_SIGNATURE * 3
    read, write = os.pipe()
    with os.fdopen(read, "rb") as pipe, os.fdopen(write, "wb"):
        assert file_facts(pipe) is None  # not a regular file
    assert file_facts(fp) is None  # closed
    with open_source(Source(input="-", data=b"abc")) as fp:
        assert file_facts(fp) is None and fp.read() == b"abc"


def test_a_records_file_facts_are_those_of_the_file_by_path(tmp_path: Path) -> None:
    # The same facts by path, as a record takes them once the input was read.
    path = tmp_path / "a.png"
    path.write_bytes(PNG_SIGNATURE * 5)
    st = os.stat(path)
    assert file_facts(path) == FileFacts(40, st.st_mtime_ns)
    assert file_facts(tmp_path / "gone.png") is None
    assert file_facts(tmp_path) is None  # a folder is no regular file
    os.mkfifo(tmp_path / "fifo")
    assert file_facts(tmp_path / "fifo") is None  # stat only: never opened, never blocks


def test_a_source_that_failed_to_expand_raises_its_error() -> None:
    error = InputError("not_found", "no such file: 'x.jpg'")
    with pytest.raises(InputError) as info:
        open_source(Source(input="x.jpg", path=Path("x.jpg"), error=error))
    assert info.value is error


# -- globs -----------------------------------------------------------------------------


def make_tree(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(PNG_SIGNATURE)


@pytest.mark.parametrize(
    ("pattern", "want"),
    [
        ("*.png", ["a.png", "b.png"]),
        ("?.png", ["a.png", "b.png"]),
        ("[a].png", ["a.png"]),
        ("*", ["a.png", "b.png", "d/c.png", "d/e/f.png", "g/h.png"]),
        ("*/", ["d/c.png", "d/e/f.png", "g/h.png"]),
        ("d/*", ["d/c.png", "d/e/f.png"]),
        ("*/*.png", ["d/c.png", "g/h.png"]),
        ("**", ["a.png", "b.png", "d/c.png", "d/e/f.png", "g/h.png"]),
        ("d/**/*.png", ["d/c.png", "d/e/f.png"]),
        ("**/e/*.png", ["d/e/f.png"]),
        ("d/**", ["d/c.png", "d/e/f.png"]),
        ("d/e/f.pn[g]", ["d/e/f.png"]),
        ("d//e/*.png", ["d/e/f.png"]),
    ],
)
def test_glob_patterns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pattern: str, want: list[str]
) -> None:
    make_tree(tmp_path, "a.png", "b.png", "d/c.png", "d/e/f.png", "g/h.png")
    (tmp_path / "notes.txt").write_text("skipped: not an image by name")
    (tmp_path / "d" / "readme").write_text("skipped: no image magic")
    (tmp_path / "x.png").symlink_to(tmp_path / "a.png")  # the same file as a.png
    monkeypatch.chdir(tmp_path)
    assert expand(pattern) == ([(n, None) for n in want], [])
    assert expand(f"{tmp_path}/{pattern}") == ([(f"{tmp_path}/{n}", None) for n in want], [])


def test_a_glob_takes_names_that_sort_before_hidden_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # '-', '+' and ' ' sort before '.': a hidden name met first must not end the listing.
    make_tree(tmp_path, " space.png", "+plus.png", "-dash.png", ".hidden.png", "a.png")
    monkeypatch.chdir(tmp_path)
    assert inputs("*.png") == [" space.png", "+plus.png", "-dash.png", "a.png"]


def test_a_glob_ending_in_a_slash_matches_only_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path, "d/c.png", "d/e/f.png")
    monkeypatch.chdir(tmp_path)
    assert expand("*/c.png/") == ([], ["no images match '*/c.png/'"])
    assert expand("*/e/") == ([("d/e/f.png", None)], [])


def test_a_glob_with_images_is_not_warned_about_for_an_empty_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Matched: an image, then a folder with none, then a file that is not an image.
    make_tree(tmp_path, "a1.png", "a2/notes.txt")
    (tmp_path / "a3.txt").write_text("text")
    monkeypatch.chdir(tmp_path)
    assert expand("a*") == ([("a1.png", None)], [])
    make_tree(tmp_path, "b1/x.png", "b2/notes.txt")
    assert expand("b*") == ([("b1/x.png", None)], [])


def test_a_trailing_double_star_matches_its_own_folder_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As glob.glob: 'd/**/' and '/abs/**/' match the folder itself; '**/' never matches ''.
    make_tree(tmp_path, "a.png", "d/c.png", "d/e/f.png")
    monkeypatch.chdir(tmp_path)
    assert inputs("**/") == ["d/c.png", "d/e/f.png"]
    assert inputs(f"{tmp_path}/**/") == [
        f"{tmp_path}/{n}" for n in ("a.png", "d/c.png", "d/e/f.png")
    ]
    assert inputs("d/e/**/") == ["d/e/f.png"]
    assert inputs("d/e/**") == ["d/e/f.png"]


def test_a_folder_that_vanishes_during_a_glob_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path, "a/x.png", "b/y.png", "c/z.png")
    real_stat = os.stat
    gone = tmp_path / "b"

    def stat(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if Path(target) == gone:  # listed, then removed before the glob entered it
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(target))
        return real_stat(target, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    want = [str(tmp_path / n) for n in ("a/x.png", "c/z.png")]
    assert expand(f"{tmp_path}/**/*.png") == ([(n, None) for n in want], [])


def test_a_glob_matching_nothing_warns(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "file.png").write_bytes(PNG_SIGNATURE)
    (tmp_path / "empty").mkdir()
    for pattern in ("*.jpg", "nope/*.png", "file.png/*.png", "*.txt", "empty*", "[]"):
        spec = f"{tmp_path}/{pattern}"
        assert expand(spec) == ([], [f"no images match '{spec}'"]), pattern


def test_a_glob_that_is_not_a_usable_name_is_a_record(tmp_path: Path) -> None:
    spec = f"{tmp_path}/{'z' * 300}*.jpg"
    [source] = iter_sources([spec])
    assert source.path == Path(spec)
    assert source.error is not None
    assert (source.error.error_type, source.error.message) == (
        "unreadable",
        f"cannot read '{spec}': file name too long",
    )


def test_an_existing_name_with_glob_characters_is_taken_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_tree(tmp_path, "shot[1].png", "shot1.png", "what?.png", "whatX.png")
    assert inputs("shot[1].png") == ["shot[1].png"]
    assert inputs("what?.png") == ["what?.png"]
    assert inputs("shot[2].png") == []  # no such file, no match: the glob warned
    assert inputs("shot?.png") == ["shot1.png"]


# -- URLs and schemes in names -----------------------------------------------------------


def test_urls_are_taken_by_scheme_case_insensitively() -> None:
    for spec in ("http://h/a.jpg", "https://h/a.jpg", "HTTP://h/a.jpg", "HttpS://h/a.jpg"):
        assert list(iter_sources([spec])) == [Source(input=spec, url=spec)]


def test_other_schemes_are_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for scheme in ("file", "ftp", "s3", "git+ssh", "x-y.z", "Web2"):
        spec = f"{scheme}://host/a.jpg"
        [source] = iter_sources([spec])
        assert (source.path, source.url, source.data) == (None, None, None)
        assert source.error is not None
        assert (source.error.error_type, source.error.message) == (
            "unreadable",
            f"unsupported URL scheme '{scheme}' in '{spec}' (give a local path or an http(s) URL)",
        )
    # Not a scheme: a digit first, or no '//' after the colon. Local names then.
    (tmp_path / "2d:").mkdir()
    (tmp_path / "2d:" / "x.png").write_bytes(PNG_SIGNATURE)
    assert list(iter_sources(["2d://x.png"])) == [
        Source(input="2d://x.png", path=Path("2d:/x.png"))
    ]
    assert expand("a http://h/x.jpg") == (
        [("a http://h/x.jpg", "no such file: 'a http://h/x.jpg'")],
        [],
    )
    assert expand("c:/x.jpg") == ([("c:/x.jpg", "no such file: 'c:/x.jpg'")], [])


# -- standard input ------------------------------------------------------------------------


def test_dash_needs_a_stream() -> None:
    with pytest.raises(ValueError) as info:
        list(iter_sources(["-"]))
    assert str(info.value) == "'-' given but no standard input stream"


def test_empty_standard_input_warns() -> None:
    assert expand("-", stdin=b"") == ([], ["standard input is empty"])
    assert list(iter_sources(["-"], stdin=io.BytesIO(b""))) == []  # no warn given: quiet


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM"])
def test_image_bytes_on_stdin_are_one_source(fmt: str) -> None:
    data = encoded(fmt)
    assert list(iter_sources(["-"], stdin=io.BytesIO(data))) == [Source(input="-", data=data)]


@pytest.mark.parametrize("byte", [*range(9), 0x0E, 0x1B, 0x1F, 0x7F])
def test_a_control_byte_in_the_first_64_makes_stdin_data(byte: int) -> None:
    data = b"x" * 63 + bytes([byte]) + b"more"
    assert list(iter_sources(["-"], stdin=io.BytesIO(data))) == [Source(input="-", data=data)]


def test_whitespace_and_high_bytes_keep_stdin_a_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tabs, vertical tabs, form feeds, CR and spaces in names; Latin-1 and UTF-8 bytes.
    monkeypatch.chdir(tmp_path)
    names = [b"a\tb.png", b"c\x0bd.png", b"e\x0cf.png", b"caf\xe9 \x80.png", "ü ß.png".encode()]
    listing = b"\r\n".join(names) + b"\r\n"
    assert len(listing) < 64  # all in the sniffed head
    got, _ = expand("-", stdin=listing)
    decoded = [os.fsdecode(n) for n in names]
    assert got == [(name, f"no such file: '{name}'") for name in decoded]


def test_a_stdin_list_is_read_line_by_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_tree(tmp_path, "here.png")
    # The sniffed head ends inside a name; later lines end in \n, \r\n or nothing.
    first = "f" * 60 + ".png"
    lines = [
        "# made by find",
        "",
        "   ",
        f"  {first}  ",
        "  # an indented comment",
        "here.png",
        "BOX",
        "crlf.jpgX\r",
        "shot[1].png",
        "last.png",
    ]
    listing = "\n".join(lines).encode()
    got, warnings = expand("-", stdin=listing)
    missing = [first, "BOX", "crlf.jpgX", "shot[1].png", "last.png"]
    want = [(n, None if n == "here.png" else f"no such file: '{n}'") for n in missing]
    want.insert(1, ("here.png", None))
    assert got == want
    assert warnings == []


def test_names_in_any_encoding_past_the_sniffed_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    latin1 = [b"caf\xe9.png", b"cr\xe8me br\xfbl\xe9e.png"]
    try:
        for raw in latin1:
            with open(raw, "wb") as fh:
                fh.write(PNG_SIGNATURE)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    listing = b"h" * 80 + b".png\n" + b"\n".join(latin1) + b"\n"
    sources = list(iter_sources(["-"], stdin=io.BytesIO(listing)))
    assert [s.input for s in sources] == ["h" * 80 + ".png", *map(os.fsdecode, latin1)]
    for source in sources[1:]:
        assert source.error is None
        with open_source(source) as fp:
            assert fp.read() == PNG_SIGNATURE


def test_a_stdin_list_of_urls_folders_and_globs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_tree(tmp_path, "album/a.png", "album/b.png")
    listing = b"https://h/x.jpg\nalbum\nalbum/*.png\nftp://h/y.jpg\n"
    got, _ = expand("-", stdin=listing)
    assert got == [
        ("https://h/x.jpg", None),
        ("album/a.png", None),
        ("album/b.png", None),
        ("album/*.png", "no such file: 'album/*.png'"),
        (
            "ftp://h/y.jpg",
            "unsupported URL scheme 'ftp' in 'ftp://h/y.jpg' (give a local path or an http(s) URL)",
        ),
    ]


def test_a_name_holding_nul_is_a_record() -> None:
    listing = b"n" * 70 + b"\nbad\0name.jpg\n"
    got, _ = expand("-", stdin=listing)
    assert got[1] == (
        "bad\0name.jpg",
        "cannot read 'bad\0name.jpg': invalid argument: the name holds a NUL byte",
    )
    source = next(s for s in iter_sources(["-"], stdin=io.BytesIO(listing)) if "\0" in s.input)
    assert source.path == Path("bad\0name.jpg")


class CountingStream(io.RawIOBase):
    """A PNG signature, then zeros: *size* bytes in all; records each read's request."""

    def __init__(self, size: int) -> None:
        self.size, self.given, self.asked = size, 0, []  # type: tuple[int, int, list[int]]

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.asked.append(n)
        n = self.size - self.given if n < 0 else min(n, self.size - self.given)
        start, self.given = self.given, self.given + n
        return PNG_SIGNATURE[start : self.given] + bytes(n - len(PNG_SIGNATURE[start : self.given]))


@pytest.mark.parametrize(("size", "cap"), [(100, 100), (101, 100), (3 << 20, 3 << 20)])
def test_stdin_image_bytes_are_read_in_chunks_up_to_the_cap(size: int, cap: int) -> None:
    stream = CountingStream(size)
    [source] = iter_sources(["-"], stdin=stream, max_stdin_bytes=cap)
    if size <= cap:
        assert source.data is not None and len(source.data) == size
        assert source.data.startswith(PNG_SIGNATURE) and source.error is None
    else:
        assert source.error is not None and source.error.error_type == "too_large"
        assert source.error.message == (
            f"standard input is over the {cap}-byte limit for image bytes "
            "(save it to a file and give the file's name)"
        )
    assert stream.given <= cap + 1
    assert max(stream.asked) <= 1 << 20  # never a whole stream in one read


def test_stdin_image_bytes_default_to_the_100_mib_cap() -> None:
    stream = CountingStream((100 << 20) + 1)
    [source] = iter_sources(["-"], stdin=stream)
    assert source.error is not None
    assert source.error.message.startswith("standard input is over the 104857600-byte limit")
    stream = CountingStream(100 << 20)
    [source] = iter_sources(["-"], stdin=stream)
    assert source.data is not None and len(source.data) == 100 << 20


def test_specs_are_expanded_lazily_and_in_order(tmp_path: Path) -> None:
    make_tree(tmp_path, "a.png", "f/b.png")
    stream = io.BytesIO(f"{tmp_path}/a.png\n".encode())
    lazy = iter_sources([f"{tmp_path}/a.png", "-", str(tmp_path / "f")], stdin=stream)
    assert stream.tell() == 0
    assert next(lazy).input == f"{tmp_path}/a.png"
    assert stream.tell() == 0  # stdin not read until its turn
    assert [s.input for s in lazy] == [f"{tmp_path}/a.png", f"{tmp_path}/f/b.png"]


def test_a_name_holding_nul_on_stdin_is_a_record(make_image: Callable[..., Path]) -> None:
    # A first name longer than the 64 bytes sniffed to tell a list from image bytes, so
    # the NUL is met while reading the list, whatever the temporary folder's length.
    good = str(make_image("g" * 70 + ".png", size=(32, 32)))
    listing = f"{good}\nbad\0name.jpg\n{good}\n".encode()
    got, _ = expand("-", stdin=listing)
    assert got == [
        (good, None),
        (
            "bad\0name.jpg",
            "cannot read 'bad\0name.jpg': invalid argument: the name holds a NUL byte",
        ),
        (good, None),
    ]


def test_listed_names_are_not_patterns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shot1.jpg").write_bytes(b"\x89PNG\r\n\x1a\n")
    listing = b"shot[1].jpg\nshot?.jpg\n"
    got, _ = expand("-", stdin=listing)
    assert got == [
        ("shot[1].jpg", "no such file: 'shot[1].jpg'"),
        ("shot?.jpg", "no such file: 'shot?.jpg'"),
    ]
    # On the command line the same strings are globs.
    assert expand("shot[1].jpg")[0] == [("shot1.jpg", None)]


@pytest.mark.parametrize(
    "data",
    [
        b"P6\n48 48\n255\n" + b"\xc8" * 100,  # PPM: a text header, then bright pixels
        bytes(range(1, 256)) * 2,  # unknown data without NUL: control bytes
        b"\x80\x81\x82hello" + bytes(range(32)) * 3,
    ],
)
def test_stdin_data_without_magic_is_still_data(data: bytes) -> None:
    [source] = iter_sources(["-"], stdin=io.BytesIO(data))
    assert (source.input, source.data, source.error) == ("-", data, None)


class EndlessStdin(io.RawIOBase):
    """A PNG signature, then zeros for ever; counts the bytes handed out."""

    def __init__(self) -> None:
        self.given = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        head = b"\x89PNG\r\n\x1a\n"[self.given :]
        count = len(view)
        view[:count] = bytes(count)
        view[: len(head)] = head[:count]
        self.given += count
        return count


@pytest.mark.parametrize("cap", [1000, 1 << 20, None])
def test_image_bytes_on_stdin_are_capped(cap: int | None) -> None:
    stream = EndlessStdin()
    if cap is None:  # the default: 100 MiB, as for a URL
        sources = list(iter_sources(["-"], stdin=stream))  # type: ignore[arg-type]
    else:
        sources = list(iter_sources(["-"], stdin=stream, max_stdin_bytes=cap))  # type: ignore[arg-type]
    limit = 100 << 20 if cap is None else cap
    assert [(s.input, s.data, s.error.error_type if s.error else None) for s in sources] == [
        ("-", None, "too_large")
    ]
    assert sources[0].error is not None
    assert sources[0].error.message == (
        f"standard input is over the {limit}-byte limit for image bytes "
        "(save it to a file and give the file's name)"
    )
    assert stream.given == limit + 1  # read in chunks, never past the cap


def test_image_bytes_on_stdin_up_to_the_cap() -> None:
    buf = io.BytesIO()
    natural_image(2, (40, 30)).save(buf, "PNG")
    data = buf.getvalue()
    [source] = iter_sources(["-"], stdin=io.BytesIO(data), max_stdin_bytes=len(data))
    assert (source.data, source.error) == (data, None)
    [source] = iter_sources(["-"], stdin=io.BytesIO(data), max_stdin_bytes=len(data) - 1)
    assert source.error is not None and source.error.error_type == "too_large"


def test_urls_that_are_not_valid() -> None:
    for url in ("http://", "http://[::1/a.jpg", "https://h:port/a.jpg"):
        [source] = iter_sources([url])
        assert read_error(source) == ("download_failed", f"'{url}' is not a valid URL")


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


def test_a_folder_deeper_than_the_path_limit_gets_a_record(tmp_path: Path) -> None:
    from resnext_cli.inputs.sources import iter_sources

    root = tmp_path / "deep"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for _ in range(25):  # 25 x 200 bytes: past PATH_MAX (4096)
        os.mkdir("d" * 200, dir_fd=fd)
        fd, old = os.open("d" * 200, os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    photo = os.open("x.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(photo, b"\xff\xd8\xff\xe0")
    os.close(photo)
    os.close(fd)
    sources = list(iter_sources([str(root)]))
    assert len(sources) == 1 and sources[0].error is not None
    assert sources[0].error.error_type == "unreadable"
    assert "deeper than the system's path limit" in sources[0].error.message
