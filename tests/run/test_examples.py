"""run/examples.py: what `resnext learn` learns from, called in-process: class folders
(what is left out, in one line; unreadable images counted), --from lists (CSV and JSON
Lines, each refusal's exact message), the class checks, the tally and shown names."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from resnext_cli.console import Console
from resnext_cli.errors import ConfigError, InputError
from resnext_cli.run import examples as examples_module
from resnext_cli.run.examples import (
    Example,
    Tally,
    _read_list,
    _rows,
    check_classes,
    examples_from_folder,
    examples_from_list,
    shown,
)

# Written out from the specification, not imported from the module under test.
LIST_HELP = 'give a CSV with a header row naming them, or JSON Lines of {"path": ..., "label": ...}'
FIELD_LIMIT = "field larger than field limit (131072)"  # csv's own default limit
MIB_100 = 104857600


def make_console(*, color: bool = False) -> tuple[Console, io.StringIO]:
    """A console on in-memory streams; its stderr as a StringIO (colours only if asked)."""
    err = io.StringIO()
    console = Console.on(
        io.BytesIO(),
        io.StringIO(),
        err,
        width=400,
        force_terminal=color,
        color_system="standard" if color else None,
    )
    return console, err


def image(path: Path) -> Path:
    """A tiny real image (PNG or JPEG by its extension) at *path*."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), (200, 40, 10)).save(path)
    return path


def found(examples: list[Example]) -> list[tuple[str, Path, str]]:
    return [(e.input, e.path, e.label) for e in examples]


def refusal(call: Any, *args: Any) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args)
    return str(info.value)


def from_folder(root: Path) -> tuple[list[Example], Tally, str]:
    console, err = make_console()
    tally = Tally()
    got = examples_from_folder(str(root), console, tally)
    return got, tally, err.getvalue()


def folder_refusal(root: Path | str) -> tuple[str, str]:
    console, err = make_console()
    with pytest.raises(ConfigError) as info:
        examples_from_folder(str(root), console, Tally())
    return str(info.value), err.getvalue()


def listing(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def json_line(item: object) -> str:
    return json.dumps(item) + "\n"


def predictions(*labels: str) -> list[dict[str, object]]:
    return [{"label": label, "index": i, "probability": 0.5} for i, label in enumerate(labels)]


# -- shown -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("cat", "cat"),
        ("", ""),
        ("a" * 60, "a" * 60),
        ("a" * 61, "a" * 59 + "…"),
        ("b" * 200, "b" * 59 + "…"),
        ("a\x1bb", "a\\x1bb"),
        ("a" * 56 + "\x1b", "a" * 56 + "\\x1b"),  # 60 once escaped: kept whole
        ("a" * 57 + "\x1b", "a" * 57 + "\\x" + "…"),  # 61 once escaped: cut after escaping
    ],
)
def test_shown_escapes_then_cuts_after_sixty_characters(label: str, expected: str) -> None:
    assert shown(label) == expected


# -- Tally -------------------------------------------------------------------------------


def test_an_empty_tally_counts_nothing() -> None:
    tally = Tally()
    assert tally.skipped == {}
    assert tally.total == 0
    assert tally.line() == "skipped 0 images that could not be used ()"


def test_the_tally_counts_by_error_type_and_says_each_error() -> None:
    console, err = make_console()
    tally = Tally()
    tally.add(InputError("unreadable", "cannot read 'b.png': i/o error"), console)
    tally.add(InputError("not_found", "no such file: 'a.png'"), console)
    tally.add(InputError("unreadable", "permission denied: 'c.png'"), console)
    assert tally.skipped == {"unreadable": 2, "not_found": 1}
    assert tally.total == 3
    # Kinds sorted by name, whatever the order they came in.
    assert tally.line() == "skipped 3 images that could not be used (1 not_found, 2 unreadable)"
    assert err.getvalue() == (
        "error: cannot read 'b.png': i/o error\n"
        "error: no such file: 'a.png'\n"
        "error: permission denied: 'c.png'\n"
    )


def test_a_tally_error_line_is_red() -> None:
    console, err = make_console(color=True)
    Tally().add(InputError("truncated", "'x.jpg' is cut short"), console)
    assert err.getvalue() == "\x1b[31merror: 'x.jpg' is cut short\x1b[0m\n"


# -- check_classes -----------------------------------------------------------------------


def ex(label: str, name: str = "x.png") -> Example:
    return Example(name, Path(name), label)


def test_no_class_at_all_is_refused_with_none() -> None:
    assert refusal(lambda: check_classes([], [], where="'w'", hint="the hint")) == (
        "learning needs at least two classes; 'w' has none (the hint)"
    )


def test_a_single_class_is_refused_naming_it() -> None:
    call = lambda: check_classes(["x"], [ex("x"), ex("x")], where="'here'", hint="h")  # noqa: E731
    assert refusal(call) == "learning needs at least two classes; 'here' has only 'x' (h)"


def test_a_single_class_is_named_escaped_and_cut() -> None:
    label = "c\x1b" + "a" * 70
    call = lambda: check_classes([label], [ex(label)], where="'w'", hint="h")  # noqa: E731
    assert refusal(call) == (
        "learning needs at least two classes; 'w' has only 'c\\x1b" + "a" * 54 + "…' (h)"
    )


def test_two_classes_with_an_image_each_pass() -> None:
    assert check_classes(["a", "b"], [ex("b"), ex("a")], where="'w'", hint="h") is None


def test_more_classes_than_images_is_refused() -> None:
    call = lambda: check_classes(["a", "b", "c"], [ex("a"), ex("b")], where="'w'", hint="h")  # noqa: E731
    assert refusal(call) == (
        "3 classes but only 2 images (give at least one image per class; 5 or more is better)"
    )


def test_as_many_classes_as_images_pass() -> None:
    assert (
        check_classes(["a", "b", "c"], [ex("c"), ex("b"), ex("a")], where="'w'", hint="h") is None
    )


def test_the_first_class_without_an_image_is_named() -> None:
    examples = [ex("a"), ex("a"), ex("a"), ex("d")]
    call = lambda: check_classes(["a", "b", "c", "d"], examples, where="'w'", hint="h")  # noqa: E731
    assert refusal(call) == "class 'b' has no readable image (add images to it, or remove it)"


def test_a_class_without_an_image_is_named_escaped() -> None:
    examples = [ex("a"), ex("a"), ex("a")]
    call = lambda: check_classes(["a", "b\x07"], examples, where="'w'", hint="h")  # noqa: E731
    assert refusal(call) == "class 'b\\x07' has no readable image (add images to it, or remove it)"


# -- class folders ------------------------------------------------------------------------


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "nope"
    assert folder_refusal(root) == (
        f"folder '{root}' does not exist (give a folder with one subfolder per class)",
        "",
    )


def test_a_file_given_as_the_folder_is_refused(tmp_path: Path) -> None:
    root = image(tmp_path / "one.png")
    assert folder_refusal(root) == (
        f"'{root}' is a file, not a folder (give a folder with one subfolder per class, "
        "or --from FILE with a path,label list)",
        "",
    )


def test_classes_are_the_subfolders_sorted_by_name_with_nested_images(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    for name in ("zebra/z.png", "apple/a.png", "apple/sub/deeper/b.jpg", "Mango/m.png"):
        image(root / name)
    for name in ("kiwi", "fig", "pear", "lime"):
        image(root / name / f"{name}.png")
    got, tally, stderr = from_folder(root)
    expected = [
        ("Mango", "m.png"),
        ("apple", "a.png"),
        ("apple", "sub/deeper/b.jpg"),
        ("fig", "fig.png"),
        ("kiwi", "kiwi.png"),
        ("lime", "lime.png"),
        ("pear", "pear.png"),
        ("zebra", "z.png"),
    ]
    assert found(got) == [
        (f"{root}/{label}/{name}", root / label / name, label) for label, name in expected
    ]
    assert all(e.identity is None and e.digest is None and e.feature is None for e in got)
    assert tally.skipped == {}
    assert stderr == ""  # nothing left out: nothing said


def test_non_image_files_in_a_class_are_not_examples(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    image(root / "cats" / "a.png")
    (root / "cats" / "notes.txt").write_text("not a photo")
    image(root / "dogs" / "b.jpg")
    got, _, stderr = from_folder(root)
    assert found(got) == [
        (f"{root}/cats/a.png", root / "cats" / "a.png", "cats"),
        (f"{root}/dogs/b.jpg", root / "dogs" / "b.jpg", "dogs"),
    ]
    assert stderr == ""


def test_sorts_own_folders_hidden_entries_and_loose_files_are_left_out_in_one_line(
    tmp_path: Path,
) -> None:
    root = tmp_path / "sorted"
    image(root / "cats" / "c.png")
    image(root / "dogs" / "d.png")
    image(root / "_uncertain" / "u.png")
    image(root / ".git" / "g.png")
    (root / "_failed").mkdir()
    (root / ".resnext-sort-journal.jsonl").write_text("{}\n")
    (root / "notes.txt").write_text("x")
    got, _, stderr = from_folder(root)
    assert found(got) == [
        (f"{root}/cats/c.png", root / "cats" / "c.png", "cats"),
        (f"{root}/dogs/d.png", root / "dogs" / "d.png", "dogs"),
    ]
    assert stderr == (
        f"left out of '{root}': '.git/', '.resnext-sort-journal.jsonl', '_failed/', "
        "'_uncertain/', 'notes.txt' (not class folders)\n"
    )


def test_a_skipped_name_that_is_a_file_has_no_slash(tmp_path: Path) -> None:
    root = tmp_path / "sorted"
    image(root / "cats" / "c.png")
    image(root / "dogs" / "d.png")
    (root / "_uncertain").write_text("a file, not sort's folder")
    image(root / "loose.png")
    _, _, stderr = from_folder(root)
    assert stderr == f"left out of '{root}': '_uncertain', 'loose.png' (not class folders)\n"


@pytest.mark.parametrize(
    ("extra", "tail"),
    [
        (5, "'f1.txt', 'f2.txt', 'f3.txt', 'f4.txt', 'f5.txt' (not class folders)"),
        (6, "'f1.txt', 'f2.txt', 'f3.txt', 'f4.txt', 'f5.txt' and 1 more (not class folders)"),
        (7, "'f1.txt', 'f2.txt', 'f3.txt', 'f4.txt', 'f5.txt' and 2 more (not class folders)"),
    ],
)
def test_the_left_out_line_names_five_and_counts_the_rest(
    tmp_path: Path, extra: int, tail: str
) -> None:
    root = tmp_path / "many"
    image(root / "cats" / "c.png")
    image(root / "dogs" / "d.png")
    for i in range(1, extra + 1):
        (root / f"f{i}.txt").write_text("x")
    _, _, stderr = from_folder(root)
    assert stderr == f"left out of '{root}': {tail}\n"


def test_names_in_the_left_out_line_and_the_folder_are_escaped(tmp_path: Path) -> None:
    root = tmp_path / "ro\x1bot"
    image(root / "cats" / "c.png")
    image(root / "dogs" / "d.png")
    (root / ".a\x07b").mkdir()
    (root / "n\tb.txt").write_text("x")
    _, _, stderr = from_folder(root)
    assert stderr == (
        f"left out of '{tmp_path}/ro\\x1bot': '.a\\x07b/', 'n\\tb.txt' (not class folders)\n"
    )


def test_a_class_name_is_kept_as_it_is(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    image(root / "ca\x1bts" / "c.png")
    image(root / "dogs" / "d.png")
    got, _, stderr = from_folder(root)
    assert found(got) == [
        (f"{root}/ca\x1bts/c.png", root / "ca\x1bts" / "c.png", "ca\x1bts"),
        (f"{root}/dogs/d.png", root / "dogs" / "d.png", "dogs"),
    ]
    assert stderr == ""


def test_a_folder_with_one_class_is_refused_naming_it_escaped(tmp_path: Path) -> None:
    root = tmp_path / "o\x1bne"
    image(root / "ca\x1bts" / "c.png")
    image(root / "ca\x1bts" / "d.png")
    assert folder_refusal(root) == (
        f"learning needs at least two classes; '{tmp_path}/o\\x1bne' has only 'ca\\x1bts' "
        "(make one subfolder of images per class)",
        "",
    )


def test_a_folder_with_no_class_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    image(root / "_uncertain" / "u.png")
    message, stderr = folder_refusal(root)
    assert message == (
        f"learning needs at least two classes; '{root}' has none "
        "(make one subfolder of images per class)"
    )
    assert stderr == f"left out of '{root}': '_uncertain/' (not class folders)\n"


def test_a_class_without_images_is_refused_without_a_no_images_warning(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    image(root / "cats" / "c.png")
    image(root / "cats" / "e.png")
    image(root / "dogs" / "d.png")
    (root / "birds").mkdir()
    (root / "birds" / "notes.txt").write_text("not an image")
    assert folder_refusal(root) == (
        "class 'birds' has no readable image (add images to it, or remove it)",
        "",
    )


def test_more_class_folders_than_images_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    image(root / "a" / "1.png")
    (root / "b").mkdir()
    (root / "c").mkdir()
    assert folder_refusal(root) == (
        "3 classes but only 1 images (give at least one image per class; 5 or more is better)",
        "",
    )


def test_other_warnings_of_the_walk_are_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "classes"
    image(root / "cats" / "c.png")
    image(root / "cats" / "locked" / "hidden.png")
    image(root / "dogs" / "d.png")
    locked = root / "cats" / "locked"
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    got, tally, stderr = from_folder(root)
    assert found(got) == [
        (f"{root}/cats/c.png", root / "cats" / "c.png", "cats"),
        (f"{root}/dogs/d.png", root / "dogs" / "d.png", "dogs"),
    ]
    assert tally.skipped == {}
    assert stderr == f"warning: cannot list folder '{locked}': permission denied\n"


def test_unreadable_images_are_counted_by_type_and_said(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    cats, dogs = root / "cats", root / "dogs"
    cats.mkdir(parents=True)
    os.mkfifo(cats / "a.png")  # before a good image of the same class: the walk goes on
    image(cats / "b.png")
    (cats / "c.png").symlink_to(tmp_path / "gone.png")
    image(cats / "d.png")
    dogs.mkdir()
    os.mkfifo(dogs / "e.png")
    image(dogs / "f.png")
    got, tally, stderr = from_folder(root)
    assert found(got) == [
        (f"{cats}/b.png", cats / "b.png", "cats"),
        (f"{cats}/d.png", cats / "d.png", "cats"),
        (f"{dogs}/f.png", dogs / "f.png", "dogs"),
    ]
    assert tally.skipped == {"unreadable": 2, "not_found": 1}
    assert tally.total == 3
    assert tally.line() == "skipped 3 images that could not be used (1 not_found, 2 unreadable)"
    assert stderr == (
        f"error: '{cats}/a.png' is not a regular file (a pipe, socket or device)\n"
        f"error: broken symbolic link: '{cats}/c.png'\n"
        f"error: '{dogs}/e.png' is not a regular file (a pipe, socket or device)\n"
    )


def test_a_folder_that_cannot_be_listed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "classes"
    image(root / "cats" / "c.png")
    image(root / "dogs" / "d.png")
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        if Path(path) == root:  # as a user without read permission on it would see
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    message, _ = folder_refusal(root)
    assert message == f"cannot read folder '{root}': Permission denied"


def test_a_folder_name_too_long_for_the_system_is_refused(tmp_path: Path) -> None:
    root = tmp_path / ("a" * 300)
    message, _ = folder_refusal(root)
    assert message == f"cannot read folder '{root}': File name too long"


# -- the --from file itself ----------------------------------------------------------------


def test_a_missing_list_is_refused(tmp_path: Path) -> None:
    name = str(tmp_path / "gone.csv")
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' does not exist ({LIST_HELP})"
    )


def test_a_folder_as_the_list_is_refused(tmp_path: Path) -> None:
    assert refusal(examples_from_list, str(tmp_path)) == (
        f"--from '{tmp_path}' is a folder ({LIST_HELP})"
    )


def test_a_fifo_as_the_list_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "list.fifo"
    os.mkfifo(fifo)
    assert refusal(examples_from_list, str(fifo)) == (
        f"--from '{fifo}' is not a regular file ({LIST_HELP})"
    )


def test_a_device_as_the_list_is_refused(device_node: Any) -> None:
    device = device_node("zero", "list.dev")
    assert refusal(examples_from_list, str(device)) == (
        f"--from '{device}' is not a regular file ({LIST_HELP})"
    )


def test_a_list_that_cannot_be_opened_says_why(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text("path,label\n")
    name = str(tmp_path / "list.csv" / "inner.csv")  # a file taken for a folder
    assert refusal(examples_from_list, name) == (
        f"cannot read --from file '{name}': not a directory"
    )


def test_a_list_over_the_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(examples_module, "MAX_LIST_BYTES", 16)
    at = tmp_path / "at.csv"
    at.write_bytes(b"path,label\na,b\n\n")  # 16 bytes: taken
    assert _read_list(str(at)) == "path,label\na,b\n\n"
    over = tmp_path / "over.csv"
    over.write_bytes(b"path,label\na,bc\n\n")  # 17 bytes
    assert refusal(examples_from_list, str(over)) == (
        f"--from file '{over}' is over the 16-byte limit"
    )


def test_the_list_limit_is_100_mib(tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    with open(big, "wb") as fh:
        fh.truncate(MIB_100 + 1)  # sparse: refused by its size, never read
    assert refusal(examples_from_list, str(big)) == (
        f"--from file '{big}' is over the {MIB_100}-byte limit"
    )


def test_a_list_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"path,label\ncaf\xe9.png,x\n")
    assert refusal(examples_from_list, str(latin)) == (
        f"--from file '{latin}' is not UTF-8 text ({LIST_HELP})"
    )


def test_a_utf8_byte_order_mark_is_taken(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffpath,label\na.png,cat\nb.png,dog\n".encode())
    assert _read_list(str(bom)) == "path,label\na.png,cat\nb.png,dog\n"
    assert found(examples_from_list(str(bom))) == [
        ("a.png", tmp_path / "a.png", "cat"),
        ("b.png", tmp_path / "b.png", "dog"),
    ]


# -- CSV -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "file,class\na.png,x\n",
        "path,class\na.png,x\n",
        "file,label\na.png,x\n",
        "file,label_1\na.png,x\n",
        "Path,Label\na.png,x\n",
        "",
        "\n",
    ],
)
def test_a_csv_without_path_and_label_columns_is_refused(tmp_path: Path, text: str) -> None:
    name = listing(tmp_path / "cols.csv", text)
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' has no 'path' and 'label' columns ({LIST_HELP})"
    )


def test_a_csv_lists_examples_in_order_with_relative_paths_from_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lists = tmp_path / "lists"
    image(lists / "imgs" / "a.png")
    image(lists / "imgs" / "b.jpg")
    other = image(tmp_path / "elsewhere" / "c.png")
    name = listing(
        lists / "train.csv",
        f"path,label\nimgs/b.jpg,dog\nimgs/a.png,cat\n{other},dog\n",
    )
    monkeypatch.chdir(tmp_path)  # not the list's folder: relative paths are not from here
    assert found(examples_from_list(name)) == [
        ("imgs/b.jpg", lists / "imgs" / "b.jpg", "dog"),
        ("imgs/a.png", lists / "imgs" / "a.png", "cat"),
        (str(other), other, "dog"),
    ]


def test_a_list_named_relative_to_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image(tmp_path / "sub" / "a.png")
    image(tmp_path / "sub" / "b.png")
    listing(tmp_path / "sub" / "l.csv", "path,label\na.png,x\nb.png,y\n")
    monkeypatch.chdir(tmp_path)
    assert found(examples_from_list("sub/l.csv")) == [
        ("a.png", Path("sub/a.png"), "x"),
        ("b.png", Path("sub/b.png"), "y"),
    ]


def test_label_1_is_the_label_when_there_is_no_label_column(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    name = listing(tmp_path / "top.csv", "path,label_1,label_2\na.png,cat,dog\nb.png,dog,cat\n")
    assert found(examples_from_list(name)) == [
        ("a.png", tmp_path / "a.png", "cat"),
        ("b.png", tmp_path / "b.png", "dog"),
    ]


def test_label_is_preferred_to_label_1(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    name = listing(tmp_path / "both.csv", "label_1,path,label\nno,a.png,cat\nno,b.png,dog\n")
    assert found(examples_from_list(name)) == [
        ("a.png", tmp_path / "a.png", "cat"),
        ("b.png", tmp_path / "b.png", "dog"),
    ]


def test_a_quoted_path_keeps_its_carriage_return(tmp_path: Path) -> None:
    image(tmp_path / "a\rb.png")
    image(tmp_path / "c.png")
    name = listing(tmp_path / "cr.csv", 'path,label\n"a\rb.png",x\nc.png,y\n')
    assert found(examples_from_list(name)) == [
        ("a\rb.png", tmp_path / "a\rb.png", "x"),
        ("c.png", tmp_path / "c.png", "y"),
    ]


@pytest.mark.parametrize("end", ["\r", "\r\n", "\n"])
def test_a_csv_with_any_line_end_is_read(tmp_path: Path, end: str) -> None:
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    name = listing(tmp_path / "l.csv", f"path,label{end}a.png,x{end}b.png,y{end}")
    assert found(examples_from_list(name)) == [
        ("a.png", tmp_path / "a.png", "x"),
        ("b.png", tmp_path / "b.png", "y"),
    ]
    assert list(_rows("l.csv", f"path,label{end}a.png,x{end}b.png,y{end}")) == [
        (2, "a.png", "x"),
        (3, "b.png", "y"),
    ]


def test_a_csv_field_over_the_limit_is_refused_with_its_line(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    name = listing(tmp_path / "wide.csv", f"path,label\na.png,x\n{'y' * 200_000},z\n")
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' line 3 is not CSV ({FIELD_LIMIT}; {LIST_HELP})"
    )


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (f"{'p' * 200_000},label\n", 1),  # the header itself
        (f"path,label\n{'y' * 200_000},z\n", 2),
        (f"path,label\na,x\nb,y\nc,z\n{'y' * 200_000},z\n", 5),
        (f'path,label\n"two\nlines",x\n{"y" * 200_000},z\n', 4),
        (f'path,label\na,x\n"starts here\n{"y" * 200_000}",z\n', 3),  # the row's first line
    ],
)
def test_the_line_of_a_csv_field_over_the_limit(text: str, line: int) -> None:
    with pytest.raises(ConfigError) as info:
        list(_rows("w.csv", text))
    assert (
        str(info.value)
        == f"--from file 'w.csv' line {line} is not CSV ({FIELD_LIMIT}; {LIST_HELP})"
    )


def test_the_line_of_a_csv_field_over_the_limit_after_blank_lines() -> None:
    text = f"path,label\na,x\n\n\n{'y' * 200_000},z\n"
    with pytest.raises(ConfigError) as info:
        list(_rows("w.csv", text))
    assert str(info.value) == f"--from file 'w.csv' line 5 is not CSV ({FIELD_LIMIT}; {LIST_HELP})"


def test_csv_rows_with_their_line_numbers() -> None:
    text = 'path,label,other\na.png,x,1\n\n"b\nc.png",y,2\nd.png,z\n'
    assert list(_rows("l.csv", text)) == [
        (2, "a.png", "x"),
        (5, "b\nc.png", "y"),  # the line the row ends on
        (6, "d.png", "z"),
    ]


def test_label_1_rows() -> None:
    assert list(_rows("l.csv", "path,label_1\na.png,x\n")) == [(2, "a.png", "x")]


def test_a_csv_row_with_an_empty_path_is_refused(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    name = listing(tmp_path / "l.csv", "path,label\na.png,x\n,y\n")
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' line 3 has no path (give every line a path)"
    )


@pytest.mark.parametrize("label", ["", "   ", "\t"])
def test_a_csv_row_with_an_empty_label_is_refused(tmp_path: Path, label: str) -> None:
    image(tmp_path / "a.png")
    name = listing(tmp_path / "l.csv", f"path,label\na.png,x\na.png,{label}\n")
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' line 3 has an empty label (give every path a class name)"
    )


def test_a_csv_row_without_its_label_field_is_refused(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    name = listing(tmp_path / "l.csv", "path,label\na.png\n")
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' line 2 has no label (give every path a class name)"
    )


def test_a_missing_file_in_the_list_is_refused_with_its_line(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    name = listing(tmp_path / "l.csv", "path,label\na.png,x\nmissing.png,y\n")
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' line 3: no such file 'missing.png' (fix the path, or remove "
        "the line)"
    )


def test_a_missing_file_is_named_escaped(tmp_path: Path) -> None:
    name = listing(tmp_path / "l.csv", "path,label\nmis\x1bsing.png,y\n")
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' line 2: no such file 'mis\\x1bsing.png' (fix the path, or "
        "remove the line)"
    )


def test_a_path_too_long_for_the_system_is_a_missing_file(tmp_path: Path) -> None:
    long = "a" * 300 + ".png"
    name = listing(tmp_path / "l.csv", f"path,label\n{long},y\n")
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' line 2: no such file '{long}' (fix the path, or remove the line)"
    )


def test_a_broken_link_in_the_list_is_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "link.png").symlink_to(tmp_path / "gone.png")
    name = listing(tmp_path / "l.csv", "path,label\nlink.png,y\n")
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' line 2: no such file 'link.png' (fix the path, or remove the line)"
    )


def not_regular(name: str, line: int, path: str) -> str:
    return (
        f"--from file '{name}' line {line}: '{path}' is not a regular file (a folder, pipe or "
        "device; fix the path, or remove the line)"
    )


def test_a_folder_named_as_a_path_is_refused(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    name = listing(tmp_path / "l.csv", "path,label\na.png,x\nsub,y\n")
    assert refusal(examples_from_list, name) == not_regular(name, 3, "sub")


def test_a_fifo_named_as_a_path_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pi\x1bpe")
    name = listing(tmp_path / "l.csv", "path,label\npi\x1bpe,y\n")
    assert refusal(examples_from_list, name) == not_regular(name, 2, "pi\\x1bpe")


def test_a_device_named_as_a_path_is_refused(tmp_path: Path, device_node: Any) -> None:
    device = device_node("zero", "zero.png")
    name = listing(tmp_path / "l.csv", f"path,label\n{device},y\n")
    assert refusal(examples_from_list, name) == not_regular(name, 2, str(device))


# -- JSON Lines --------------------------------------------------------------------------


@pytest.mark.parametrize("file", ["l.jsonl", "L.JSONL", "l.ndjson", "l.NDJson", "l.json", "l.Json"])
def test_json_lines_are_told_by_the_extension_in_any_case(tmp_path: Path, file: str) -> None:
    name = listing(tmp_path / file, '["a.png", "x"]\n')
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' line 1 is not a JSON object ({LIST_HELP})"
    )


def test_the_same_line_in_a_csv_is_csv(tmp_path: Path) -> None:
    name = listing(tmp_path / "l.jsonl.csv", '["a.png", "x"]\n')
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' has no 'path' and 'label' columns ({LIST_HELP})"
    )


def test_json_lines_are_told_by_a_first_brace_after_blanks(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    text = '\n  \n  {"path": "a.png", "label": "x"}\n\n{"path": "b.png", "label": "y"}\n\n'
    name = listing(tmp_path / "l.txt", text)
    assert found(examples_from_list(name)) == [
        ("a.png", tmp_path / "a.png", "x"),
        ("b.png", tmp_path / "b.png", "y"),
    ]


def test_json_rows_count_blank_lines() -> None:
    text = '\n{"path": "a.png", "label": "x"}\n   \n\t\n{"path": "b.png", "label": "y"}'
    assert list(_rows("l.txt", text)) == [(2, "a.png", "x"), (5, "b.png", "y")]


def test_json_rows_keep_values_as_they_are() -> None:
    text = '{"path": 5, "label": 7}\n{"path": null, "label": ""}\n'
    assert list(_rows("l.jsonl", text)) == [(1, 5, 7), (2, None, "")]


@pytest.mark.parametrize(
    "bad",
    [
        "[1, 2]",
        '"a.png"',
        "5",
        "null",
        '{"path": "a.png", "label":',
        "{'path': 'a.png'}",
        "[" * 100_000 + "]" * 100_000,  # nested too deeply to read
        '{"path": "a.png", "label": "x", "score": NaN}',
        '{"path": "a.png", "label": "x", "score": Infinity}',
    ],
)
def test_a_json_line_that_is_not_an_object_is_refused_with_its_line(
    tmp_path: Path, bad: str
) -> None:
    image(tmp_path / "a.png")
    text = '{"path": "a.png", "label": "x"}\n\n' + bad + "\n"
    name = listing(tmp_path / "l.jsonl", text)
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' line 3 is not a JSON object ({LIST_HELP})"
    )


def test_failed_classify_records_are_skipped(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    image(tmp_path / "c.png")
    lines = [
        {"input": "b.png", "path": "b.png", "error": {"type": "truncated", "message": "cut"}},
        {"path": "a.png", "label": "x"},
        {"error": "no path either"},
        {"path": "c.png", "label": "y"},
    ]
    name = listing(tmp_path / "l.jsonl", "".join(json_line(line) for line in lines))
    assert found(examples_from_list(name)) == [
        ("a.png", tmp_path / "a.png", "x"),
        ("c.png", tmp_path / "c.png", "y"),
    ]


def test_a_record_with_an_error_and_a_label_is_taken(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    lines = [
        {"path": "a.png", "label": "x", "error": "reviewed anyway"},
        {"path": "b.png", "label": "y"},
    ]
    name = listing(tmp_path / "l.jsonl", "".join(json_line(line) for line in lines))
    assert found(examples_from_list(name)) == [
        ("a.png", tmp_path / "a.png", "x"),
        ("b.png", tmp_path / "b.png", "y"),
    ]


def test_a_classify_record_gives_its_top_1_label(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    lines = [
        {"input": "a.png", "path": "a.png", "predictions": predictions("tabby", "tiger")},
        {"input": "b.png", "path": "b.png", "predictions": predictions("crane")},
    ]
    name = listing(tmp_path / "r.jsonl", "".join(json_line(line) for line in lines))
    assert found(examples_from_list(name)) == [
        ("a.png", tmp_path / "a.png", "tabby"),
        ("b.png", tmp_path / "b.png", "crane"),
    ]


def test_a_label_is_preferred_to_the_predictions(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    lines = [
        {"path": "a.png", "label": "dog", "predictions": predictions("tabby", "tiger")},
        {"path": "b.png", "label": "cat", "predictions": predictions("dog")},
    ]
    name = listing(tmp_path / "r.jsonl", "".join(json_line(line) for line in lines))
    assert found(examples_from_list(name)) == [
        ("a.png", tmp_path / "a.png", "dog"),
        ("b.png", tmp_path / "b.png", "cat"),
    ]


@pytest.mark.parametrize(
    "item",
    [
        {"label": "x"},
        {"input": "a.png", "label": "x"},
        {"path": "a.png"},
        {"path": "a.png", "label": None},
        {"path": "a.png", "predictions": []},
        {"path": "a.png", "predictions": {"label": "x"}},
        {"path": "a.png", "predictions": ["x"]},
        {"path": "a.png", "predictions": "x"},
        {"path": "a.png", "predictions": [{"index": 3}]},
        {"path": "a.png", "predictions": None},
        {},
    ],
)
def test_a_json_line_without_path_and_label_is_refused(
    tmp_path: Path, item: dict[str, object]
) -> None:
    image(tmp_path / "a.png")
    text = json_line({"path": "a.png", "label": "x"}) + json_line(item)
    name = listing(tmp_path / "l.jsonl", text)
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' line 2 has no 'path' and 'label' ({LIST_HELP})"
    )


@pytest.mark.parametrize("path", [None, 5, "", ["a.png"], False])
def test_a_json_line_whose_path_is_not_a_name_is_refused(tmp_path: Path, path: object) -> None:
    image(tmp_path / "a.png")
    text = json_line({"path": "a.png", "label": "x"}) + json_line({"path": path, "label": "y"})
    name = listing(tmp_path / "l.jsonl", text)
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' line 2 has no path (give every line a path)"
    )


@pytest.mark.parametrize(
    "item",
    [
        {"path": "a.png", "label": 3},
        {"path": "a.png", "label": 0},
        {"path": "a.png", "label": False},
        {"path": "a.png", "label": ["x"]},
        {"path": "a.png", "predictions": [{"label": 7}]},
    ],
)
def test_a_label_that_is_not_text_is_refused(tmp_path: Path, item: dict[str, object]) -> None:
    image(tmp_path / "a.png")
    text = json_line({"path": "a.png", "label": "x"}) + json_line(item)
    name = listing(tmp_path / "l.jsonl", text)
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' line 2: the label is not text (give a class name)"
    )


def test_a_json_line_with_an_empty_label_is_refused(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    name = listing(tmp_path / "l.jsonl", json_line({"path": "a.png", "label": " "}))
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' line 1 has an empty label (give every path a class name)"
    )


def test_a_name_with_a_nul_in_a_json_line_is_a_missing_file(tmp_path: Path) -> None:
    name = listing(tmp_path / "l.jsonl", json_line({"path": "a\x00.png", "label": "y"}))
    assert refusal(examples_from_list, name) == (
        f"--from file '{name}' line 1: no such file 'a\\x00.png' (fix the path, or remove the line)"
    )


# -- the classes of a list --------------------------------------------------------------------


def test_a_list_of_one_label_is_refused_naming_it(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    name = listing(tmp_path / "l.csv", "path,label\na.png,x\nb.png,x\n")
    assert refusal(examples_from_list, name) == (
        f"learning needs at least two classes; '{name}' has only 'x' (give at least two labels)"
    )


def test_a_list_with_nothing_to_learn_is_refused(tmp_path: Path) -> None:
    failed = {"path": "a.png", "error": {"type": "truncated", "message": "cut"}}
    name = listing(tmp_path / "l.jsonl", json_line(failed))
    assert refusal(examples_from_list, name) == (
        f"learning needs at least two classes; '{name}' has none (give at least two labels)"
    )


def test_the_labels_of_a_list_are_checked_sorted_and_once_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in "abcd":
        image(tmp_path / f"{n}.png")
    name = listing(
        tmp_path / "l.csv", "path,label\na.png,pear\nb.png,fig\nc.png,pear\nd.png,kiwi\n"
    )
    calls: list[tuple[list[str], list[tuple[str, Path, str]], str, str]] = []
    real = check_classes

    def spy(labels: list[str], examples: list[Example], *, where: str, hint: str) -> None:
        calls.append((list(labels), found(examples), where, hint))
        real(labels, examples, where=where, hint=hint)

    monkeypatch.setattr(examples_module, "check_classes", spy)
    got = examples_from_list(name)
    expected = [
        ("a.png", tmp_path / "a.png", "pear"),
        ("b.png", tmp_path / "b.png", "fig"),
        ("c.png", tmp_path / "c.png", "pear"),
        ("d.png", tmp_path / "d.png", "kiwi"),
    ]
    assert found(got) == expected
    assert calls == [(["fig", "kiwi", "pear"], expected, f"'{name}'", "give at least two labels")]


def test_the_classes_of_a_folder_are_checked_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "classes"
    for label in ("pear", "fig", "kiwi"):
        image(root / label / "1.png")
    calls: list[tuple[list[str], int, str, str]] = []
    real = check_classes

    def spy(labels: list[str], examples: list[Example], *, where: str, hint: str) -> None:
        calls.append((list(labels), len(examples), where, hint))
        real(labels, examples, where=where, hint=hint)

    monkeypatch.setattr(examples_module, "check_classes", spy)
    from_folder(root)
    assert calls == [
        (["fig", "kiwi", "pear"], 3, f"'{root}'", "make one subfolder of images per class")
    ]


def test_the_line_of_a_csv_field_over_the_limit_with_carriage_return_line_ends() -> None:
    # Lines end in a lone \r (old Mac files): counted as csv counts them, blank one included.
    text = f"path,label\ra,x\r\r{'y' * 200_000},z\r"
    with pytest.raises(ConfigError) as info:
        list(_rows("w.csv", text))
    assert str(info.value) == f"--from file 'w.csv' line 4 is not CSV ({FIELD_LIMIT}; {LIST_HELP})"


def test_a_folder_that_fails_without_a_reason_names_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "classes"
    image(root / "cats" / "c.png")

    def scandir(path: Any = ".") -> Any:
        raise OSError("no errno, no strerror")

    monkeypatch.setattr(os, "scandir", scandir)
    message, _ = folder_refusal(root)
    assert message == f"cannot read folder '{root}': OSError"
