"""resnext sort: safe names, no overwrites, copy/link/move, and crash-safe resume and undo.

Every test that touches files compares the set of (relative path, sha256) before and after:
a sort may add copies or move files, but never lose, change or duplicate one.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resnext_cli import sort as sorting
from resnext_cli.results import CategoryScore, Classified, Failed, FileFacts, Prediction, Record
from resnext_cli.sort import (
    JOURNAL_NAME,
    SortError,
    execute,
    folder_for,
    make_plan,
    resume,
    safe_name,
    undo,
    unfinished,
)

Tree = set[tuple[str, str]]


def tree(root: Path) -> Tree:
    """Every file below *root* (the journal aside) as (relative path, sha256)."""
    return {
        (p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in root.rglob("*")
        if p.is_file() and p.name != JOURNAL_NAME
    }


def contents(*trees: Tree) -> Counter[str]:
    return Counter(digest for t in trees for _, digest in t)


def found(root: Path) -> Tree:
    return tree(root) if root.exists() else set()


def seen(path: Path, label: str, p: float = 0.9, index: int = 1) -> Classified:
    return Classified(
        str(path), "m", "w", (Prediction(label, index, p),), path=str(path.absolute())
    )


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Files with distinct bytes (sort never decodes them), two with the same name."""
    root = tmp_path / "photos"
    for rel in ["a.jpg", "b.jpg", "c.png", "sub/a.jpg", "sub/d.jpg", "broken.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(f"bytes of {rel}\n".encode() * 50)
    return root


def labelled(photos: Path) -> list[Record]:
    return [
        seen(photos / "a.jpg", "tabby, tabby cat"),
        seen(photos / "b.jpg", "Crane"),
        seen(photos / "c.png", "crane", p=0.2),  # uncertain below 0.5
        seen(photos / "sub/a.jpg", "tabby, tabby cat"),
        seen(photos / "sub/d.jpg", "crane", index=134),
        Failed(str(photos / "broken.jpg"), "truncated", "cut", path=str(photos / "broken.jpg")),
    ]


def threshold(records: list[Record], p: float = 0.5) -> list[Record]:
    from resnext_cli.results import apply_threshold

    return [apply_threshold(r, p) for r in records]


EXPECTED = {
    "tabby, tabby cat/a.jpg": "a.jpg",
    "tabby, tabby cat/a (1).jpg": "sub/a.jpg",
    "Crane/b.jpg": "b.jpg",
    "Crane/d.jpg": "sub/d.jpg",  # 'crane' joins 'Crane': one folder on macOS and Windows
    "_uncertain/c.png": "c.png",
    "_failed/broken.jpg": "broken.jpg",
}


def placed(photos: Path, before: Tree) -> Tree:
    digest = dict(before)
    return {(dst, digest[src]) for dst, src in EXPECTED.items()}


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("tabby, tabby cat", "tabby, tabby cat"),
        ("jack-o'-lantern", "jack-o'-lantern"),
        ("a/b\\c", "a_b_c"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("..", "_"),
        ("", "_"),
        ("   ", "_"),
        (".hidden", "hidden"),
        (". .x", "x"),
        ("a\u00a0b", "a b"),
        ("\ud7fc", "_"),
        ('say "cheese"', "say _cheese_"),
        ("a<b>c:d|e?f*g", "a_b_c_d_e_f_g"),
        ("nul\x00byte\x1b[31m", "nul_byte_[31m"),
        ("trailing. . ", "trailing"),
        ("CON", "_CON"),
        ("com1.txt", "_com1.txt"),
        ("Lpt9", "_Lpt9"),
        ("CON .txt", "_CON .txt"),
        ("conX.txt", "conX.txt"),
        ("x" * 239 + ".y", "x" * 239),  # cut to 240 bytes, then the trailing dot goes
        ("x" * 238 + " .y", "x" * 238),
        ("console", "console"),
        ("\u202egpj.exe", "_gpj.exe"),
        ("cafe\u0301", "caf\u00e9"),
        ("line\nbreak", "line_break"),
    ],
)
def test_safe_name(text: str, name: str) -> None:
    assert safe_name(text) == name


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_label_is_one_name_inside_dest(text: str) -> None:
    name = safe_name(text)
    assert name and name == safe_name(name)  # idempotent
    assert not set(name) & set('/\\<>:"|?*\x00') and name.isprintable()
    assert not name.startswith(".") and not name.endswith((".", " "))
    assert len(name.encode("utf-8")) <= 240
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp).resolve()
        (dest / name).mkdir()
        assert [p.name for p in dest.iterdir()] == [name]
        assert (dest / name).resolve().parent == dest


def test_special_folders_and_keys(photos: Path) -> None:
    assert folder_for(seen(photos / "a.jpg", "_Failed")) == "_Failed (label)"
    assert folder_for(seen(photos / "a.jpg", "crane", index=134), by="index") == "134"
    assert folder_for(threshold([seen(photos / "a.jpg", "crane", p=0.1)])[0]) == "_uncertain"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("IMG_0001.jpg", "IMG_0001.jpg"),
        ("y" * 236 + ".png", "y" * 236 + ".png"),  # 240 bytes: short enough as it is
        ("y" * 237 + ".png", "y" * 120 + ".png"),  # 241: the stem is cut to 120 bytes
        ("x" * 300 + ".jpg", "x" * 120 + ".jpg"),
        ("\u00e9" * 200 + ".jpeg", "\u00e9" * 60 + ".jpeg"),  # 2 bytes a letter
        ("a" + "\u00e9" * 200 + ".jpg", "a" + "\u00e9" * 59 + ".jpg"),  # no half letter
        ("w" * 300 + ".j:g", "w" * 120 + ".j_g"),
        ("a" * 250 + "." + "b" * 15, "a" * 120 + "." + "b" * 15),  # a 16-character suffix
        ("a" * 250 + "." + "b" * 16, ("a" * 250 + "." + "b" * 16)[:240]),  # 17: not one
        ("z" * 300, "z" * 240),
        ("z" * 300 + ".", "z" * 240),
        ("\u00e9" * 300, "\u00e9" * 120),
        ("CON" + "." * 300 + ".jpg", "_CON.jpg"),
        ("." * 300 + ".jpg", "jpg"),  # leading dots go; what is left has no extension
        ("...", "image"),
        (" " * 300 + ".jpg", "image.jpg"),  # nothing left of the stem
    ],
)
def test_safe_file_name_keeps_the_extension_of_a_long_name(name: str, expected: str) -> None:
    assert sorting.safe_file_name(name) == expected


def test_clash_numbers() -> None:
    assert sorting.numbered("cat.jpg", 2) == "cat (2).jpg"
    assert sorting.numbered("Crane", 1) == "Crane (1)"
    assert sorting.numbered("a.tar.gz", 12) == "a.tar (12).gz"


# -- plans ---------------------------------------------------------------------------------


def test_plan_names_clashes_and_skips(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    (dest / "CRANE").mkdir(parents=True)
    (dest / "CRANE" / "B.JPG").write_bytes(b"someone else's file")
    (dest / "tabby, tabby cat").write_bytes(b"a file where a folder would go")
    records = threshold(labelled(photos))
    records += [
        Classified("https://example.test/x.jpg", "m", "w", (Prediction("x", 1, 0.9),)),
        Failed(str(photos / "gone.jpg"), "not_found", "gone", path=str(photos / "gone.jpg")),
        seen(photos / "a.jpg", "again"),
        seen(dest / "CRANE" / "B.JPG", "crane"),
    ]
    plan = make_plan(records, dest)
    assert {s.target: s.source for s in plan.steps} == {
        "tabby, tabby cat (1)/a.jpg": (photos / "a.jpg").absolute(),
        "tabby, tabby cat (1)/a (1).jpg": (photos / "sub/a.jpg").absolute(),
        "CRANE/b (1).jpg": (photos / "b.jpg").absolute(),
        "CRANE/d.jpg": (photos / "sub/d.jpg").absolute(),
        "_uncertain/c.png": (photos / "c.png").absolute(),
        "_failed/broken.jpg": (photos / "broken.jpg").absolute(),
    }
    assert plan.skipped == [
        ("https://example.test/x.jpg", "not a file (a URL or standard input)"),
        (str(photos / "gone.jpg"), "no such file"),
        (str(photos / "a.jpg"), "given twice"),
        (str(dest / "CRANE" / "B.JPG"), "already inside the destination"),
    ]
    assert not (dest / "_failed").exists()  # planning touches nothing


def test_a_folder_name_taken_twice_by_files(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    dest.mkdir()
    for name in ("crane", "CRANE (1)"):
        (dest / name).write_bytes(b"a file where a folder would go")
    plan = make_plan([seen(photos / "b.jpg", "Crane")], dest)
    assert [s.target for s in plan.steps] == ["Crane (2)/b.jpg"]
    # and a file name taken twice in a folder
    other = tmp_path / "other"
    (other / "crane").mkdir(parents=True)
    (other / "crane" / "b.jpg").write_bytes(b"someone else's b.jpg")
    (other / "crane" / "B (1).JPG").write_bytes(b"and another")
    plan = make_plan([seen(photos / "b.jpg", "Crane")], other)
    assert [s.target for s in plan.steps] == ["crane/b (2).jpg"]


def test_make_plan_refuses_an_unknown_mode_or_key(photos: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        make_plan([], tmp_path, mode="teleport")
    assert str(caught.value) == "unknown mode 'teleport'"
    with pytest.raises(ValueError) as caught:
        make_plan([], tmp_path, by="colour")
    assert str(caught.value) == "unknown key 'colour'"


def test_a_skipped_record_does_not_end_the_plan(photos: Path, tmp_path: Path) -> None:
    dest, outside = tmp_path / "sorted", tmp_path / "outside"
    (dest / "x").mkdir(parents=True)
    (dest / "x" / "in.jpg").write_bytes(b"already in DEST")
    outside.mkdir()

    def records() -> Iterator[Record]:
        yield seen(dest / "x" / "in.jpg", "x")
        yield seen(photos / "a.jpg", "y")
        (dest / "Crane").symlink_to(outside)  # made in DEST while the plan is being made
        yield seen(photos / "b.jpg", "Crane")
        yield seen(photos / "c.png", "z")

    plan = make_plan(records(), dest)
    assert plan.skipped == [
        (str(dest / "x" / "in.jpg"), "already inside the destination"),
        (str(photos / "b.jpg"), "folder 'Crane' leads outside the destination"),
    ]
    assert [s.target for s in plan.steps] == ["y/a.jpg", "z/c.png"]


def test_a_file_renumbered_twice_is_found_again_through_the_journal(
    photos: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "sorted"
    plan = make_plan(threshold(labelled(photos)), dest)
    (dest / "tabby, tabby cat").mkdir(parents=True)
    (dest / "tabby, tabby cat" / "a (1).jpg").write_bytes(b"arrived meanwhile")
    execute(plan)  # sub/a.jpg, planned as 'a (1).jpg', went to 'a (1) (1).jpg'
    again = make_plan(threshold(labelled(photos)), dest)
    assert again.steps == []
    assert (str(photos / "sub/a.jpg"), "tabby, tabby cat/a (1) (1).jpg") in again.already


def test_unsafe_labels_stay_inside_dest(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "sorted").mkdir()
    (dest / "link").symlink_to(outside)  # a folder in DEST that leads out of it
    labels = ["../../escape", "/etc", "link", "CON", 'a"b', "\x00"]
    files = sorted(p for p in photos.rglob("*") if p.is_file())
    before = tree(photos)
    plan = make_plan([seen(f, label) for f, label in zip(files, labels, strict=True)], dest)
    assert sorted(s.folder for s in plan.steps) == sorted(
        ["_.._escape", "_etc", "link (1)", "_CON", "a_b", "_"]
    )
    execute(plan)
    assert list(outside.iterdir()) == []
    root = dest.resolve()
    assert all(p.resolve().is_relative_to(root) for p in dest.rglob("*") if not p.is_symlink())
    assert tree(photos) == before and contents(tree(dest)) == contents(before)


# -- copy, link, move ------------------------------------------------------------------------


def refuse_links(monkeypatch) -> None:
    """Act as if DEST were on another file system: no hard links into it."""

    def no_links(*_args: object, **_kw: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)


def test_copy_keeps_sources_and_never_overwrites(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    outcome = execute(make_plan(threshold(labelled(photos)), dest))
    assert tree(photos) == before
    assert tree(dest) == placed(photos, before)
    assert (len(outcome.done), outcome.folders, outcome.problems) == (6, 4, [])
    # Sorted again after b.jpg was edited: only b.jpg is filed again, under a new number.
    (photos / "b.jpg").write_bytes(b"b.jpg, edited")
    execute(make_plan(threshold(labelled(photos)), dest))
    edited = hashlib.sha256(b"b.jpg, edited").hexdigest()
    assert tree(dest) == placed(photos, before) | {("Crane/b (1).jpg", edited)}
    lines = journal_lines(dest)
    assert Counter(line["op"] for line in lines) == {"begin": 2, "step": 7, "done": 7, "end": 2}


def test_link_makes_hard_links_or_symlinks(photos: Path, tmp_path: Path, monkeypatch) -> None:
    before = tree(photos)
    execute(make_plan(threshold(labelled(photos)), tmp_path / "hard", mode="link"))
    assert tree(tmp_path / "hard") == placed(photos, before)
    assert os.path.samefile(tmp_path / "hard/Crane/b.jpg", photos / "b.jpg")

    refuse_links(monkeypatch)
    execute(make_plan(threshold(labelled(photos)), tmp_path / "soft", mode="link"))
    assert tree(tmp_path / "soft") == placed(photos, before) and tree(photos) == before
    link = tmp_path / "soft/Crane/b.jpg"
    assert link.is_symlink() and Path(os.readlink(link)) == (photos / "b.jpg").absolute()
    assert undo(tmp_path / "soft").problems == [] and found(tmp_path / "soft") == set()
    assert tree(photos) == before


@pytest.mark.parametrize("cross_device", [False, True])
def test_move_and_undo_restore_the_tree(
    photos: Path, tmp_path: Path, monkeypatch, cross_device
) -> None:
    if cross_device:  # no hard links: every move is a copy, then the source goes
        refuse_links(monkeypatch)
    dest = tmp_path / "sorted"
    before = tree(photos)
    outcome = execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    assert len(outcome.done) == 6 and tree(photos) == set()
    assert tree(dest) == placed(photos, before)
    assert undo(dest).problems == []
    assert tree(photos) == before
    assert list(dest.iterdir()) == []  # journal and emptied folders gone


def test_by_index(photos: Path, tmp_path: Path) -> None:
    plan = make_plan(threshold(labelled(photos))[:5], tmp_path / "s", by="index")
    assert sorted(s.target for s in plan.steps) == [
        "1/a (1).jpg",
        "1/a.jpg",
        "1/b.jpg",
        "134/d.jpg",
        "_uncertain/c.png",
    ]


def test_a_name_taken_after_planning_gets_a_number(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    plan = make_plan(threshold(labelled(photos)), dest, mode="move")
    (dest / "Crane").mkdir(parents=True)
    (dest / "Crane" / "b.jpg").write_bytes(b"arrived meanwhile")
    execute(plan)
    assert (dest / "Crane" / "b.jpg").read_bytes() == b"arrived meanwhile"
    moved = hashlib.sha256((dest / "Crane" / "b (1).jpg").read_bytes()).hexdigest()
    assert moved == dict(before)["b.jpg"]
    journal = (dest / JOURNAL_NAME).read_text()
    assert '"op": "retarget"' in journal and '"dst": "Crane/b (1).jpg"' in journal
    assert undo(dest).problems == []
    assert tree(photos) == before
    assert tree(dest) == {("Crane/b.jpg", hashlib.sha256(b"arrived meanwhile").hexdigest())}


def test_undo_keeps_both_when_the_original_place_was_taken(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    (photos / "b.jpg").write_bytes(b"a new b.jpg")
    outcome = undo(dest)
    assert [(s.target, reason.endswith("kept both")) for s, reason in outcome.problems] == [
        ("Crane/b.jpg", True)
    ]
    assert tree(dest) == {("Crane/b.jpg", dict(before)["b.jpg"])}
    assert (photos / "b.jpg").read_bytes() == b"a new b.jpg"
    assert unfinished(dest) == []  # the journal stays, so a later --undo can finish


# -- crashes ---------------------------------------------------------------------------------


class Crash(BaseException):
    """Stands in for the process dying at a chosen instant."""


def crash_on(monkeypatch, target: object, name: str, call: int, *, after: bool = False) -> None:
    """Make the *call*-th call of target.name die: before it does anything, or just after."""
    real = getattr(target, name)
    calls = 0

    def fake(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == call and not after:
            raise Crash
        result = real(*args, **kwargs)
        if calls == call:
            raise Crash
        return result

    monkeypatch.setattr(target, name, fake)


@pytest.mark.parametrize("finish", ["resume", "undo"])
def test_crash_between_link_and_unlink(
    photos: Path, tmp_path: Path, monkeypatch, finish: str
) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    crash_on(monkeypatch, os, "link", 3, after=True)  # the third move dies in both places
    with pytest.raises(Crash):
        execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    monkeypatch.undo()
    assert contents(before) <= contents(tree(photos), tree(dest))  # nothing lost
    assert len(unfinished(dest)) == 4
    with pytest.raises(SortError, match="has an unfinished sort"):
        execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    if finish == "resume":
        outcome = resume(dest)
        assert len(outcome.done) == 4 and outcome.problems == []
        assert tree(photos) == set() and tree(dest) == placed(photos, before)
        assert unfinished(dest) == []
        undo(dest)
    else:
        # Steps 0 and 1 moved, step 2 linked but its source still there: all three go back.
        outcome = undo(dest)
        assert (outcome.problems, len(outcome.restored), outcome.removed) == ([], 3, [])
    assert tree(photos) == before and found(dest) == set()


def test_crash_in_a_cross_device_copy_leaves_no_half_file(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    refuse_links(monkeypatch)
    crash_on(monkeypatch, shutil, "copyfileobj", 2)
    with pytest.raises(Crash):
        execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    # A kill -9 would leave the temporary file behind: put one there as it would be.
    step = unfinished(dest)[0]
    (dest / step.folder).mkdir(exist_ok=True)
    (dest / step.folder / f".resnext-part-{step.n}").write_bytes(b"half a fi")
    resume(dest)
    assert tree(photos) == set() and tree(dest) == placed(photos, before)
    undo(dest)
    assert tree(photos) == before


def test_journal_survives_a_torn_last_line_and_locks(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    plan = make_plan(threshold(labelled(photos)), dest, mode="move")
    execute(plan)
    with (dest / JOURNAL_NAME).open("a") as fh:
        fh.write('{"op": "und')  # the crash hit while this line was written
    assert unfinished(dest) == []
    journal = sorting.Journal(dest)
    journal.open()
    try:
        with pytest.raises(SortError, match="another sort is using"):
            undo(dest)
    finally:
        journal.close()
    plant(dest, {"op": "step"}, {"op": "end"})
    with pytest.raises(SortError, match="line 1 is damaged"):
        unfinished(dest)


# -- the journal is checked before it is trusted ---------------------------------------------


def plant(dest: Path, *lines: dict[str, object], sign: bool = True) -> bytes:
    """Write a journal by hand into *dest*, signed with this user's key (as if this tool had
    been fooled into writing it), so that the checks after the MAC's are tried too."""
    dest.mkdir(parents=True, exist_ok=True)
    data = "".join(
        (sorting.sign_line(dest, line) if sign else json.dumps(line)) + "\n" for line in lines
    ).encode()
    (dest / JOURNAL_NAME).write_bytes(data)
    return data


def journal_lines(dest: Path) -> list[dict[str, object]]:
    """The journal's lines as written, each without its MAC (checked to be there)."""
    lines = [json.loads(line) for line in (dest / JOURNAL_NAME).read_text().splitlines()]
    for line in lines:
        assert re.fullmatch(r"[0-9a-f]{64}", line.pop("mac")), line
    return lines


def refused(dest: Path, line: int, why: str) -> str:
    return (
        f"journal '{dest / JOURNAL_NAME}' line {line} {why}: refused, nothing was touched "
        f"(remove the journal if you did not sort into '{dest}')"
    )


@pytest.fixture
def shared(photos: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A shared DEST holding a file, and a folder of someone else's, outside any sort."""
    dest, other = tmp_path / "shared", tmp_path / "other"
    (dest / "x").mkdir(parents=True)
    (dest / "x" / "payload.txt").write_bytes(b"planted content")
    other.mkdir()
    (other / "secret.txt").write_bytes(b"someone's secret")
    return photos, dest, other


def planted_journals(photos: Path, dest: Path, other: Path) -> list[tuple[list[dict], int, str]]:
    """Journals that must be refused: (lines, the line to blame, why)."""
    here = str(dest.resolve())
    begin = {"op": "begin", "mode": "move", "time": "t", "dest": here, "src": [str(photos)]}

    def step(src: Path | str, dst: str = "x/payload.txt", n: int = 0) -> dict[str, object]:
        return {"op": "step", "n": n, "mode": "move", "src": str(src), "dst": dst}

    secret, new = other / "secret.txt", other / "new.txt"
    return [
        # --resume would fetch someone's file into DEST; --undo would create one elsewhere.
        ([begin, step(secret, "x/s.txt")], 2, f"takes '{secret}' from outside its source folders"),
        (
            [begin, step(new), {"op": "done", "n": 0}],
            2,
            f"takes '{new}' from outside its source folders",
        ),
        (
            [begin, step(f"{photos}/../other/new.txt")],
            2,
            f"takes '{photos}/../other/new.txt' from outside its source folders",
        ),
        ([step(secret)], 1, "has a step before any 'begin' naming its folders"),
        (
            [{"op": "begin", "mode": "move", "time": "t"}, step(secret)],
            1,
            "names no destination and source folders",
        ),
        (
            [{**begin, "src": [str(other)]} | {"dest": "/elsewhere"}, step(secret)],
            1,
            f"was made for '/elsewhere', not for '{here}'",
        ),
        (
            [{**begin, "src": [here]}, step(f"{here}/x/payload.txt")],
            1,
            "names a source folder inside the destination",
        ),
        ([{**begin, "src": ["rel/ative"]}], 1, "names a source folder that is not a plain path"),
        (
            [begin, step(photos / "a.jpg", "../escape.jpg")],
            2,
            "puts a file at '../escape.jpg', outside the destination",
        ),
        (
            [begin, step(photos / "a.jpg", "/etc/x.jpg")],
            2,
            "puts a file at '/etc/x.jpg', outside the destination",
        ),
        (
            [begin, step(photos / "a.jpg", "x/y/z.jpg")],
            2,
            "puts a file at 'x/y/z.jpg', outside the destination",
        ),
        (
            [begin, step(photos / "a.jpg", "x/a.jpg"), {"op": "retarget", "n": 0, "dst": "../a"}],
            3,
            "puts a file at '../a', outside the destination",
        ),
        (
            [begin, step(f"{photos}/a\x00.jpg", "x/a.jpg")],
            2,
            f"takes '{photos}/a\x00.jpg' from outside its source folders",
        ),
        (
            [{**begin, "src": [f"{photos}\x00"]}],
            1,
            "names a source folder that is not a plain path",
        ),
        ([begin, step(photos / "a.jpg", "x/")], 2, "puts a file at 'x/', outside the destination"),
        (
            [begin, step(photos / "a.jpg", "x/.")],
            2,
            "puts a file at 'x/.', outside the destination",
        ),
    ]


@pytest.mark.parametrize("case", range(16))
@pytest.mark.parametrize("action", ["resume", "undo", "sort", "check_dest"])
def test_a_planted_journal_is_refused_whole(shared, action: str, case: int) -> None:
    photos, dest, other = shared
    lines, line, why = planted_journals(photos, dest, other)[case]
    data = plant(dest, *lines)
    everything = (found(photos), tree(dest), tree(other))
    with pytest.raises(SortError) as caught:
        if action == "resume":
            resume(dest)
        elif action == "undo":
            undo(dest)
        elif action == "sort":
            execute(make_plan(threshold(labelled(photos)), dest, sources=[photos]))
        else:
            sorting.check_dest(dest)
    assert str(caught.value) == refused(dest, line, why)
    assert (found(photos), tree(dest), tree(other)) == everything
    assert (dest / JOURNAL_NAME).read_bytes() == data and not (other / "new.txt").exists()


def test_a_planted_journal_through_the_command(shared, resnext) -> None:
    photos, dest, other = shared
    lines, line, why = planted_journals(photos, dest, other)[1]
    plant(dest, *lines)
    for flag in ("--undo", "--resume"):
        run = resnext("sort", flag, dest)
        assert (run.code, run.stderr.strip()) == (2, f"error: {refused(dest, line, why)}"), run
    assert not (other / "new.txt").exists() and tree(dest) == {
        ("x/payload.txt", hashlib.sha256(b"planted content").hexdigest())
    }


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs chown")
def test_a_journal_of_another_user_is_refused(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    os.chown(dest / JOURNAL_NAME, 65534, 65534)
    placed_tree = tree(dest)
    for act in (undo, resume, unfinished, sorting.check_dest):
        with pytest.raises(SortError) as caught:
            act(dest)
        assert str(caught.value) == (
            f"journal '{dest / JOURNAL_NAME}' belongs to another user (uid 65534): refused, "
            "nothing was touched (sort into a folder of your own)"
        )
    assert tree(dest) == placed_tree and tree(photos) == set()


def test_a_journal_that_is_a_link_is_refused(photos: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    execute(make_plan(threshold(labelled(photos)), elsewhere, mode="move"))
    dest = tmp_path / "sorted"
    dest.mkdir()
    (dest / JOURNAL_NAME).symlink_to(elsewhere / JOURNAL_NAME)
    with pytest.raises(SortError) as caught:
        undo(dest)
    assert (
        str(caught.value)
        == f"journal '{dest / JOURNAL_NAME}' is a symbolic link: refused (remove it)"
    )
    assert tree(photos) == set()


@pytest.fixture
def outside_links(photos: Path, tmp_path: Path) -> tuple[Path, list[Record]]:
    """A file link and a folder link in SRC, both leading outside it."""
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.jpg").write_bytes(b"outside file" * 10)
    (outside / "dir" / "deep.jpg").write_bytes(b"outside folder" * 10)
    (photos / "link.jpg").symlink_to(outside / "secret.jpg")
    (photos / "linked").symlink_to(outside / "dir")
    (photos / "target.jpg").write_bytes(b"a file only a link names" * 10)
    (photos / "inner.jpg").symlink_to(photos / "target.jpg")  # a link that stays inside
    extra = [seen(photos / "link.jpg", "x"), seen(photos / "linked" / "deep.jpg", "x")]
    return outside, [*threshold(labelled(photos)), *extra, seen(photos / "inner.jpg", "y")]


LEADS_OUT = (
    "reached through a symbolic link that leads outside the folders given; "
    "not moved (--copy would file a copy)"
)


@pytest.mark.parametrize("given", ["folder", "glob"])
def test_move_leaves_files_that_links_lead_out_to(outside_links, photos, tmp_path, given) -> None:
    outside, records = outside_links
    before, elsewhere = tree(photos), tree(outside)
    dest = tmp_path / "sorted"
    sources = [photos] if given == "folder" else [f"{photos}/**/*.jpg"]
    plan = make_plan(records, dest, mode="move", sources=sources)
    assert plan.skipped == [
        (str(photos / "link.jpg"), LEADS_OUT),
        (str(photos / "linked" / "deep.jpg"), LEADS_OUT),
    ]
    assert len(plan.steps) == 7  # the six files, and the link that stays inside
    assert execute(plan).problems == []
    assert tree(outside) == elsewhere  # nothing taken from outside
    assert os.path.islink(photos / "link.jpg") and (photos / "linked" / "deep.jpg").exists()
    undo(dest)
    assert tree(photos) == before and tree(outside) == elsewhere


def test_copy_files_what_links_lead_to(outside_links, photos, tmp_path) -> None:
    outside, records = outside_links
    elsewhere = tree(outside)
    plan = make_plan(records, tmp_path / "sorted", mode="copy", sources=[photos])
    assert plan.skipped == [] and len(plan.steps) == 9
    execute(plan)
    assert tree(outside) == elsewhere
    assert contents(elsewhere) <= contents(tree(tmp_path / "sorted"))
    journal = [json.loads(line) for line in (tmp_path / "sorted" / JOURNAL_NAME).open()]
    assert journal[0]["src"] == sorted([str(photos), str(outside / "dir")])


def test_files_named_one_by_one_belong_to_their_own_folder(outside_links, photos, tmp_path) -> None:
    outside, records = outside_links  # as if listed on standard input: no SRC folder named
    plan = make_plan(records, tmp_path / "sorted", mode="move")
    assert plan.skipped == [(str(photos / "link.jpg"), LEADS_OUT)]
    # A path named as it is, through a folder link, is taken from where it leads.
    assert {s.source: s.home for s in plan.steps}[outside / "dir" / "deep.jpg"] == outside / "dir"


@pytest.mark.parametrize("finish", ["execute", "undo"])
def test_a_link_swapped_in_after_planning_is_not_followed(
    photos: Path, tmp_path: Path, finish: str
) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    for name in ("a.jpg", "d.jpg"):
        (outside / "sub" / name).write_bytes(b"not yours: " + name.encode())
    elsewhere = tree(outside)
    dest = tmp_path / "sorted"
    plan = make_plan(threshold(labelled(photos)), dest, mode="move", sources=[photos])
    if finish == "undo":
        execute(plan)
        plan = None
    sub = photos / "sub"
    for f in sub.iterdir():
        f.rename(tmp_path / f"kept-{f.name}")
    sub.rmdir()
    sub.symlink_to(outside / "sub")  # photos/sub now leads to someone else's folder
    outcome = execute(plan) if plan is not None else undo(dest)
    why = f"'{photos / 'sub'}/{{}}' now leads outside '{photos}' (a symbolic link); left alone"
    assert sorted((s.source.name, r) for s, r in outcome.problems) == [
        ("a.jpg", why.format("a.jpg")),
        ("d.jpg", why.format("d.jpg")),
    ]
    assert tree(outside) == elsewhere


def test_roots_for() -> None:
    specs = ["photos", "-", "https://x/y.jpg", str(Path("https://x/z.jpg")), "a/*/b.jpg"]
    specs += ["**/*.jpg", "c.jpg", "/abs/[ab]/x.png"]
    assert sorting.roots_for(specs) == [
        Path("photos"),
        Path("a"),
        Path("."),
        Path("c.jpg"),
        Path("/abs"),
    ]


def test_two_plans_made_before_either_ran(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    records = threshold(labelled(photos))
    first = make_plan(records[:3], dest, mode="move", sources=[photos])
    second = make_plan(records[3:], dest, mode="move", sources=[photos])
    assert [s.n for s in first.steps] == [s.n for s in second.steps] == [0, 1, 2]
    execute(first)
    execute(second)  # its 'a.jpg' was taken meanwhile: it gets a number
    entries = sorting.Journal(dest).read()
    assert sorted(entries) == list(range(6)) and all(e.done for e in entries.values())
    assert contents(tree(dest)) == contents(before) and tree(photos) == set()
    assert undo(dest).problems == [] and tree(photos) == before


# -- a torn last journal line ---------------------------------------------------------------


@pytest.mark.parametrize(
    "tail", ['{"op": "und', "\x00" * 40, '{"op": "undone", "n": 9999', '{"op": "end"}']
)
def test_a_torn_last_line_is_cut_before_the_next_one(photos: Path, tmp_path: Path, tail) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    execute(make_plan(threshold(labelled(photos))[:3], dest, mode="move"))
    with (dest / JOURNAL_NAME).open("a") as fh:
        fh.write(tail)  # a crash or a full disk cut this line
    assert unfinished(dest) == []
    execute(make_plan(threshold(labelled(photos))[3:], dest, mode="move"))
    text = (dest / JOURNAL_NAME).read_text()
    assert text.endswith("\n") and tail not in text  # unsigned, or torn: cut either way
    assert all(json.loads(line) for line in text.splitlines())
    assert tree(photos) == set() and undo(dest).problems == []
    assert tree(photos) == before and found(dest) == set()


def test_a_full_disk_cutting_a_journal_line_does_not_block_undo(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    real = sorting.Journal._append
    calls = 0

    def full_disk(self: sorting.Journal, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls >= 4:  # the plan, done 0, done 1, then half of done 2, and nothing after
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, data)

    with monkeypatch.context() as patched:
        patched.setattr(sorting.Journal, "_append", full_disk)
        outcome = execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
        assert len(outcome.done) == 6  # the files were moved; only 'done' lines were lost
        # While the disk is full, undo appends nothing before it frees: it puts back anyway.
        text = (dest / JOURNAL_NAME).read_text()
        assert text.endswith("\n")  # a torn line is cut back, never left in the middle
        assert len(unfinished(dest)) == 4  # steps 2..5: done, their lines lost
        assert undo(dest).problems == []
    assert tree(photos) == before and found(dest) == set()


def test_a_full_disk_before_the_plan_is_written_touches_nothing(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)

    def full_disk(self: sorting.Journal, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sorting.Journal, "_append", full_disk)
    with pytest.raises(SortError) as caught:
        execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    assert str(caught.value) == (
        f"cannot write the journal in '{dest}': no space left on device (nothing more was "
        f"done; free space, then 'resnext sort --resume {dest}' or 'resnext sort --undo "
        f"{dest}')"
    )
    assert tree(photos) == before and found(dest) == set()


def test_a_damaged_line_before_the_last_is_refused(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    lines = (dest / JOURNAL_NAME).read_text().splitlines(keepends=True)
    lines[3] = lines[3][:10]  # cut, and the writing went on after it
    (dest / JOURNAL_NAME).write_text("".join(lines))
    message = f"journal '{dest / JOURNAL_NAME}' line 4 is damaged (fix or remove that line)"
    for act in (undo, resume, unfinished):
        with pytest.raises(SortError) as caught:
            act(dest)
        assert str(caught.value) == message


def test_a_journal_step_that_makes_no_sense_is_damaged(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    src = str(photos.resolve() / "a.jpg")
    begin = {"op": "begin", "mode": "move", "time": "t", "dest": "", "src": [str(photos)]}
    step = {"op": "step", "n": 0, "mode": "move", "src": src, "dst": "x/a.jpg"}
    bad = [
        {**step, "n": "0"},
        {**step, "n": 0.0},
        {**step, "mode": "teleport"},
        {**step, "src": 5},
        {**step, "dst": ["x", "a.jpg"]},
    ]
    for line in bad:
        plant(dest, {**begin, "dest": str(dest.resolve())}, line)
        with pytest.raises(SortError) as caught:
            unfinished(dest)
        assert str(caught.value) == (
            f"journal '{dest / JOURNAL_NAME}' line 2 is damaged (fix or remove that line)"
        ), line
    for line in ({**step, "n": 0}, {"op": "retarget", "n": 0, "dst": 7}):
        plant(dest, {**begin, "dest": str(dest.resolve())}, step, line)
        with pytest.raises(SortError, match="line 3 is damaged"):
            unfinished(dest)
    plant(dest, {**begin, "dest": str(dest.resolve())}, step)  # no 'input': an empty one
    assert [(s.n, s.source, s.target, s.input) for s in unfinished(dest)] == [
        (0, Path(src), "x/a.jpg", "")
    ]


def test_a_journal_that_is_not_a_file_is_refused(tmp_path: Path) -> None:
    for kind in ("folder", "fifo"):
        dest = tmp_path / kind
        dest.mkdir()
        if kind == "folder":
            (dest / JOURNAL_NAME).mkdir()
        else:
            os.mkfifo(dest / JOURNAL_NAME)
        for act in (unfinished, sorting.check_dest):
            with pytest.raises(SortError) as caught:
                act(dest)
            assert str(caught.value) == (
                f"journal '{dest / JOURNAL_NAME}' is not a regular file (remove it)"
            )


def test_a_long_journal_is_read_whole(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    begin = {"op": "begin", "mode": "copy", "time": "t", "dest": "", "src": [str(photos)]}
    step = {"op": "step", "n": 0, "mode": "copy", "src": str(photos / "a.jpg"), "dst": "x/a.jpg"}
    big = "x" * (3 << 20)  # over the 1 MiB read at a time
    plant(dest, {**begin, "dest": str(dest.resolve())}, {**step, "input": big})
    assert [s.input for s in unfinished(dest)] == [big]


def test_the_journal_is_made_with_the_users_umask(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "new" / "deeper" / "sorted"  # made with its parents
    old = os.umask(0o022)
    try:
        execute(make_plan(threshold(labelled(photos))[:1], dest))
    finally:
        os.umask(old)
    assert stat.S_IMODE((dest / JOURNAL_NAME).stat().st_mode) == 0o644  # not executable


# -- undo after changes in DEST --------------------------------------------------------------


def test_undo_reports_what_was_renamed_or_deleted_and_keeps_it(
    photos: Path, tmp_path: Path, resnext
) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    (dest / "Crane" / "b.jpg").rename(dest / "Crane" / "renamed.jpg")
    kept = (dest / "_uncertain" / "c.png").read_bytes()
    (dest / "_uncertain" / "c.png").unlink()
    outcome = undo(dest)
    gone = "is no longer in '{}' (renamed or deleted there?); cannot put it back"
    assert sorted((s.target, r) for s, r in outcome.problems) == [
        ("Crane/b.jpg", f"'Crane/b.jpg' {gone.format(dest.resolve())}"),
        ("_uncertain/c.png", f"'_uncertain/c.png' {gone.format(dest.resolve())}"),
    ]
    assert len(outcome.done) == len(outcome.restored) == 4 and outcome.mode == "move"
    assert tree(photos) == {(rel, d) for rel, d in before if rel not in ("b.jpg", "c.png")}
    assert len(unfinished(dest)) == 0 and (dest / JOURNAL_NAME).exists()
    # A second undo still finds both; the command says so and exits 1.
    run = resnext("sort", "--undo", dest)
    assert run.code == 1 and "'Crane/b.jpg'" in run.stderr, run
    assert "'_uncertain/c.png'" in run.stderr and (dest / JOURNAL_NAME).exists()
    # Put back by hand under their old names, the undo completes and the journal goes.
    (dest / "Crane" / "renamed.jpg").rename(dest / "Crane" / "b.jpg")
    (dest / "_uncertain" / "c.png").write_bytes(kept)
    outcome = undo(dest)
    assert outcome.problems == [] and len(outcome.done) == len(outcome.restored) == 2
    assert tree(photos) == before and found(dest) == set()


@pytest.mark.parametrize("mode", ["copy", "link"])
def test_undoing_a_copy_or_link_sort_removes_and_puts_back_nothing(
    photos: Path, tmp_path: Path, mode: str
) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    execute(make_plan(threshold(labelled(photos)), dest, mode=mode))
    (dest / "Crane" / "b.jpg").unlink()  # a copy deleted by hand: nothing left to remove
    outcome = undo(dest)
    assert (outcome.mode, len(outcome.done), len(outcome.removed), outcome.restored) == (
        mode,
        6,
        5,
        [],
    )
    assert outcome.problems == [] and tree(photos) == before and found(dest) == set()


def test_resume_and_undo_need_a_journal(tmp_path: Path) -> None:
    for act, what in ((resume, "resume"), (undo, "undo")):
        with pytest.raises(SortError) as caught:
            act(tmp_path)
        assert str(caught.value) == f"'{tmp_path}' has no sort journal (nothing to {what})"


def test_resume_and_undo_report_each_step_in_order(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    crash_on(monkeypatch, os, "link", 3)  # steps 0 and 1 moved, then the process died
    with pytest.raises(Crash):
        execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    monkeypatch.undo()
    resumed: list[int] = []
    assert len(resume(dest, on_step=lambda step: resumed.append(step.n)).done) == 4
    assert resumed == [2, 3, 4, 5]
    ops = [json.loads(line)["op"] for line in (dest / JOURNAL_NAME).read_text().splitlines()]
    assert ops == ["begin"] + ["step"] * 6 + ["done"] * 2 + ["done"] * 4 + ["end"]
    undone: list[int] = []
    assert undo(dest, on_step=lambda step: undone.append(step.n)).problems == []
    assert undone == [5, 4, 3, 2, 1, 0]  # newest first
    assert tree(photos) == before


def test_a_source_gone_before_its_step_is_a_problem_and_undo_skips_it(
    photos: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    plan = make_plan(threshold(labelled(photos)), dest, mode="move")
    (photos / "b.jpg").unlink()
    outcome = execute(plan)
    assert [(s.target, r) for s, r in outcome.problems] == [
        ("Crane/b.jpg", f"source is gone: '{photos.resolve() / 'b.jpg'}'")
    ]
    assert len(outcome.done) == 5 and unfinished(dest) == []  # skipped is not unfinished
    lines = journal_lines(dest)
    assert {"op": "skip", "n": 1, "reason": outcome.problems[0][1]} in lines
    outcome = undo(dest)  # the skipped step is not looked for
    assert (outcome.problems, len(outcome.done)) == ([], 5)
    assert tree(photos) == {(rel, d) for rel, d in before if rel != "b.jpg"}
    assert found(dest) == set()


def test_a_full_destination_stops_the_sort_with_one_line_and_resume_finishes(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    real = shutil.copyfileobj
    calls = 0

    def full_disk(*args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(shutil, "copyfileobj", full_disk)
        with pytest.raises(SortError) as caught:
            execute(make_plan(threshold(labelled(photos)), dest))
    assert str(caught.value) == sorting.dest_full_message(dest, "no space left on device")
    assert tree(photos) == before
    assert tree(dest) == {
        (t, d) for t, d in placed(photos, before) if t == "tabby, tabby cat/a.jpg"
    }
    assert len(unfinished(dest)) == 5  # the one that met the full disk and those after it
    assert resume(dest).problems == []  # space freed: the rest is filed
    assert tree(dest) == placed(photos, before) and tree(photos) == before


def test_undo_goes_on_past_a_file_it_cannot_put_back(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    execute(make_plan(threshold(labelled(photos)), dest, mode="move", sources=[photos]))
    (photos / "sub").rmdir()
    (photos / "sub").write_bytes(b"a file where the folder was")
    outcome = undo(dest)
    assert sorted((s.target, r) for s, r in outcome.problems) == [
        ("Crane/d.jpg", f"File exists: '{photos / 'sub'}'"),
        ("tabby, tabby cat/a (1).jpg", f"File exists: '{photos / 'sub'}'"),
    ]
    assert len(outcome.done) == len(outcome.restored) == 4
    (photos / "sub").unlink()
    outcome = undo(dest)  # only the two left: the others are marked undone
    assert (outcome.problems, len(outcome.done), len(outcome.restored)) == ([], 2, 2)
    assert tree(photos) == before and found(dest) == set()


def test_undo_makes_the_folders_a_move_emptied(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "deep" / "er").mkdir(parents=True)
    (photos / "deep" / "er" / "e.jpg").write_bytes(b"deep down")
    before = tree(photos)
    dest = tmp_path / "sorted"
    execute(make_plan([seen(photos / "deep" / "er" / "e.jpg", "x")], dest, mode="move"))
    for folder in (photos / "deep" / "er", photos / "deep"):
        folder.rmdir()
    assert undo(dest).problems == [] and tree(photos) == before


def test_undo_of_symbolic_links(photos: Path, tmp_path: Path, monkeypatch) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    refuse_links(monkeypatch)
    execute(make_plan(threshold(labelled(photos)), dest, mode="link"))
    (photos / "b.jpg").unlink()  # the original deleted: its link now leads nowhere
    elsewhere = tmp_path / "elsewhere.jpg"
    elsewhere.write_bytes((photos / "c.png").read_bytes())
    (dest / "_uncertain" / "c.png").unlink()
    (dest / "_uncertain" / "c.png").symlink_to(elsewhere)  # a link to another file
    outcome = undo(dest)
    assert [(s.target, r) for s, r in outcome.problems] == [
        (
            "_uncertain/c.png",
            f"'{(photos / 'c.png').absolute()}' exists and differs from '_uncertain/c.png'; "
            "kept both",
        )
    ]
    assert (len(outcome.removed), outcome.restored) == (5, [])
    assert not os.path.lexists(photos / "b.jpg")  # nothing made where the original was
    assert tree(photos) == {(rel, d) for rel, d in before if rel != "b.jpg"}
    assert found(dest) == {("_uncertain/c.png", dict(before)["c.png"])}  # it leads elsewhere


def test_resume_of_a_link_sort_tells_its_own_link_from_anothers(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest = tmp_path / "sorted"
    refuse_links(monkeypatch)
    crash_on(monkeypatch, os, "symlink", 2, after=True)  # died before b.jpg's line
    with pytest.raises(Crash):
        execute(make_plan(threshold(labelled(photos)), dest, mode="link"))
    twin = tmp_path / "twin.jpg"
    twin.write_bytes((photos / "sub" / "a.jpg").read_bytes())
    (dest / "tabby, tabby cat" / "a (1).jpg").symlink_to(twin)  # the same bytes, not ours
    monkeypatch.undo()
    refuse_links(monkeypatch)
    assert resume(dest).problems == []
    links = {
        p.relative_to(dest).as_posix(): os.readlink(p) for p in dest.rglob("*") if p.is_symlink()
    }
    assert links == {
        "tabby, tabby cat/a.jpg": str((photos / "a.jpg").absolute()),
        "tabby, tabby cat/a (1).jpg": str(twin),
        "tabby, tabby cat/a (1) (1).jpg": str((photos / "sub" / "a.jpg").absolute()),
        "Crane/b.jpg": str((photos / "b.jpg").absolute()),
        "Crane/d.jpg": str((photos / "sub" / "d.jpg").absolute()),
        "_uncertain/c.png": str((photos / "c.png").absolute()),
        "_failed/broken.jpg": str((photos / "broken.jpg").absolute()),
    }


def test_a_name_taken_twice_after_planning(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    plan = make_plan(threshold(labelled(photos)), dest, mode="move")
    (dest / "Crane").mkdir(parents=True)
    (dest / "Crane" / "b.jpg").write_bytes(b"arrived meanwhile")
    (dest / "Crane" / "B (1).JPG").write_bytes(b"this one too")
    assert execute(plan).problems == []
    assert sorted(os.listdir(dest / "Crane")) == ["B (1).JPG", "b (2).jpg", "b.jpg", "d.jpg"]


def test_the_same_bytes_are_told_to_the_last_byte(tmp_path: Path) -> None:
    photos, dest = tmp_path / "photos", tmp_path / "sorted"
    photos.mkdir()
    big = bytearray(os.urandom(3 << 20))  # over the 1 MiB read at a time
    (photos / "big.jpg").write_bytes(big)
    execute(make_plan([seen(photos / "big.jpg", "x")], dest))
    again = make_plan([seen(photos / "big.jpg", "x")], dest)
    assert (again.steps, again.already) == ([], [(str(photos / "big.jpg"), "x/big.jpg")])
    for at in (len(big) - 1, 0):  # the same size, one byte different
        changed = big.copy()
        changed[at] ^= 1
        (photos / "big.jpg").write_bytes(changed)
        plan = make_plan([seen(photos / "big.jpg", "x")], dest)
        assert ([s.target for s in plan.steps], plan.already) == (["x/big (1).jpg"], []), at


def test_a_copy_whose_source_went_is_a_problem_even_where_its_name_is_taken(
    photos: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "sorted"
    plan = make_plan(threshold(labelled(photos)), dest)
    (photos / "b.jpg").unlink()
    (dest / "Crane").mkdir(parents=True)
    (dest / "Crane" / "b.jpg").write_bytes(b"someone else's b.jpg")
    outcome = execute(plan)
    assert [(s.target, r) for s, r in outcome.problems] == [
        ("Crane/b.jpg", f"No such file or directory: '{photos.resolve() / 'b.jpg'}'")
    ]
    assert (dest / "Crane" / "b.jpg").read_bytes() == b"someone else's b.jpg"
    assert not (dest / "Crane" / "b (1).jpg").exists()


def test_undo_never_replaces_a_file_that_appears_where_it_puts_one_back(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest = tmp_path / "sorted"
    original = photos / "b.jpg"

    def no_links(_src: object, dst: object, **_kw: object) -> None:  # as on FAT: no links
        if Path(str(dst)) == original.resolve() and not original.exists():
            original.write_bytes(b"arrived while the undo copied")  # just before the rename
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    before = tree(photos)
    execute(make_plan(threshold(labelled(photos)), dest))
    assert tree(dest) == placed(photos, before)
    original.unlink()  # gone: the undo brings the copy back
    outcome = undo(dest)
    assert [(s.target, r) for s, r in outcome.problems] == [
        ("Crane/b.jpg", f"File exists: '{original.resolve()}'")
    ]
    assert original.read_bytes() == b"arrived while the undo copied"
    assert tree(dest) == {("Crane/b.jpg", dict(before)["b.jpg"])}
    assert not any(p.name.startswith(".resnext-part") for p in photos.iterdir())


def test_a_journal_of_ordinary_names_is_accepted(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    execute(make_plan([seen(photos / "a.jpg", "Xylophone: XX")], dest, mode="move"))
    assert tree(dest) == {("Xylophone_ XX/a.jpg", dict(before)["a.jpg"])}
    assert undo(dest).problems == [] and tree(photos) == before


def test_a_folder_in_dest_swapped_for_a_link_after_planning(photos: Path, tmp_path: Path) -> None:
    dest, outside = tmp_path / "sorted", tmp_path / "outside"
    outside.mkdir()
    plan = make_plan(threshold(labelled(photos)), dest)
    dest.mkdir()
    (dest / "Crane").symlink_to(outside)  # made after planning: it leads out of DEST
    outcome = execute(plan)
    why = "'{}' now leads outside '" + str(dest.resolve()) + "'; left alone"
    assert sorted((s.target, r) for s, r in outcome.problems) == [
        ("Crane/b.jpg", why.format("Crane/b.jpg")),
        ("Crane/d.jpg", why.format("Crane/d.jpg")),
    ]
    assert list(outside.iterdir()) == [] and len(outcome.done) == 4


def test_a_file_system_that_refuses_every_name_is_given_up(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest = tmp_path / "sorted"

    def taken(*_args: object, **_kw: object) -> None:
        raise FileExistsError(errno.EEXIST, "File exists")

    monkeypatch.setattr(os, "link", taken)
    monkeypatch.setattr(os, "fsync", lambda _fd: None)  # a thousand journal lines: no waiting
    with pytest.raises(SortError, match=r"^no free name for 'Crane/b \(1\)"):
        execute(make_plan([seen(photos / "b.jpg", "Crane")], dest))
    lines = journal_lines(dest)
    assert Counter(line["op"] for line in lines) == {"begin": 1, "step": 1, "retarget": 1000}
    assert tree(dest) == set() and (dest / "Crane").is_dir()


def test_the_journal_says_what_was_done(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    plan = make_plan(threshold(labelled(photos))[:3], dest, mode="move", sources=[photos])
    placed_steps: list[int] = []
    execute(plan, on_step=lambda step: placed_steps.append(step.n))
    assert placed_steps == [0, 1, 2]
    lines = journal_lines(dest)
    begin = lines[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", begin.pop("time"))
    assert begin == {
        "op": "begin",
        "mode": "move",
        "dest": str(dest.resolve()),
        "src": [str(photos.resolve())],
    }
    src = photos.resolve()
    assert lines[1:] == [
        *(
            {"op": "step", "n": n, "mode": "move", "src": str(src / name), "dst": dst, "input": i}
            for n, (name, dst, i) in enumerate(
                [
                    ("a.jpg", "tabby, tabby cat/a.jpg", str(photos / "a.jpg")),
                    ("b.jpg", "Crane/b.jpg", str(photos / "b.jpg")),
                    ("c.png", "_uncertain/c.png", str(photos / "c.png")),
                ]
            )
        ),
        {"op": "done", "n": 0},
        {"op": "done", "n": 1},
        {"op": "done", "n": 2},
        {"op": "end"},
    ]
    assert sorting.Journal(dest).read()[1].step.input == str(photos / "b.jpg")


def test_a_plan_made_by_hand(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    source = (photos / "sub" / "d.jpg").resolve()
    step = sorting.Step(0, "copy", source, "x/d.jpg")  # no root: its own folder
    assert execute(sorting.FilingPlan(dest, "copy", [step])).problems == []
    begin = journal_lines(dest)[0]
    assert begin["src"] == [str(source.parent)]
    assert (dest / "x" / "d.jpg").read_bytes() == source.read_bytes()
    stray = replace(step, home=photos.resolve() / "elsewhere")
    with pytest.raises(ValueError) as caught:
        execute(sorting.FilingPlan(tmp_path / "other", "copy", [stray]))
    assert str(caught.value) == f"step source '{source}' is outside its root"


# -- the same sort twice ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["copy", "link"])
@pytest.mark.parametrize("journal", ["kept", "removed"])
def test_the_same_sort_twice_files_nothing_twice(
    photos: Path, tmp_path: Path, mode: str, journal: str
) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    execute(make_plan(threshold(labelled(photos)), dest, mode=mode))
    if journal == "removed":  # then the bytes of a file of the same name decide
        (dest / JOURNAL_NAME).unlink()
    again = make_plan(threshold(labelled(photos)), dest, mode=mode)
    assert again.steps == [] and again.skipped == []
    assert sorted(again.already) == sorted((str(photos / s), d) for d, s in EXPECTED.items())
    execute(again)
    assert tree(dest) == placed(photos, before) and tree(photos) == before
    # Another key is another sort: the files are filed again, in their new folders.
    by_index = make_plan(threshold(labelled(photos)), dest, mode=mode, by="index")
    assert len(by_index.steps) == 4 and len(by_index.already) == 2  # _uncertain, _failed


def test_a_file_filed_under_a_clash_number_is_found_again(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    plan = make_plan(threshold(labelled(photos)), dest)
    (dest / "Crane").mkdir(parents=True)
    (dest / "Crane" / "b.jpg").write_bytes(b"arrived meanwhile")
    execute(plan)  # b.jpg went to 'Crane/b (1).jpg'
    again = make_plan(threshold(labelled(photos)), dest)
    assert again.steps == [] and (str(photos / "b.jpg"), "Crane/b (1).jpg") in again.already


# -- records from an earlier classify --------------------------------------------------------


def facts(path: Path) -> FileFacts:
    st = path.stat()
    return FileFacts(st.st_size, st.st_mtime_ns)


def recorded(photos: Path) -> list[Record]:
    """Records as classify writes them now: with size, mtime_ns and categories."""
    records: list[Record] = []
    for record in labelled(photos):
        assert record.path is not None
        file = facts(Path(record.path))
        if isinstance(record, Classified):
            top = record.top1
            cats = (CategoryScore(f"group of {top.label}", min(1.0, top.probability + 0.05)),)
            record = replace(record, file=file, categories=cats, precision="fp32")
        else:
            record = replace(record, file=file)
        records.append(record)
    return [
        *records,
        Classified("https://example.test/x.jpg", "m", "w", (Prediction("x", 1, 0.9),)),
    ]


def write_records(records: list[Record], path: Path, form: str) -> None:
    dicts = [r.to_dict() for r in records]
    if form == "jsonl":
        text = "".join(json.dumps({**d, "future key": [1]}) + "\n" for d in dicts)
    elif form == "json":
        from resnext_cli.outputs.writers import JsonArrayWriter

        stream = io.StringIO()
        writer = JsonArrayWriter(stream)
        for record in records:
            writer.write(record)
        writer.close()
        text = stream.getvalue()
    else:  # as jq or a person would indent it
        text = json.dumps(dicts, indent=2)
    path.write_text(text)


@pytest.mark.parametrize("form", ["jsonl", "json", "indented"])
def test_records_read_back_are_the_records_written(photos, tmp_path, form) -> None:
    records = recorded(photos)
    path = tmp_path / "r.out"
    write_records(records, path, form)
    assert sorting.records_from_file(path) == (records, [])


def test_records_of_changed_or_missing_files_are_not_filed(photos, tmp_path) -> None:
    records = recorded(photos)
    write_records(records, tmp_path / "r.jsonl", "jsonl")
    (photos / "a.jpg").write_bytes(b"other bytes")  # size changed
    st = (photos / "b.jpg").stat()
    os.utime(photos / "b.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # only mtime
    (photos / "c.png").unlink()
    (photos / "sub" / "d.jpg").unlink()
    (photos / "sub" / "d.jpg").mkdir()
    kept, changed = sorting.records_from_file(tmp_path / "r.jsonl")
    again = "changed since it was classified (classify it again)"
    assert changed == [
        (str(photos / "a.jpg"), again),
        (str(photos / "b.jpg"), again),
        (str(photos / "c.png"), "no such file (moved or deleted since it was classified)"),
        (str(photos / "sub/d.jpg"), "not a regular file"),
    ]
    assert [r.input for r in kept] == [
        str(photos / "sub/a.jpg"),
        str(photos / "broken.jpg"),
        "https://example.test/x.jpg",
    ]
    # make_plan checks the same facts, for fresh records too
    (photos / "sub" / "a.jpg").write_bytes(b"changed after reading the records")
    plan = make_plan(kept, tmp_path / "sorted")
    assert plan.skipped == [
        (str(photos / "sub/a.jpg"), again),
        ("https://example.test/x.jpg", "not a file (a URL or standard input)"),
    ]
    assert [s.target for s in plan.steps] == ["_failed/broken.jpg"]


def test_records_from_a_file_are_sorted_as_fresh_ones(photos, tmp_path) -> None:
    write_records(recorded(photos), tmp_path / "r.json", "json")
    before = tree(photos)
    records, changed = sorting.records_from_file(tmp_path / "r.json")
    assert changed == []
    dest = tmp_path / "sorted"
    execute(make_plan(records, dest, mode="move", min_probability=0.5))
    assert tree(dest) == placed(photos, before) and tree(photos) == set()


ERR = '{"input": "a", "error": {"type": "t", "message": "m"}}'
PRED = (
    '"model": "m", "weights": "w", "predictions": [{"label": "x", "index": 1, "probability": 0.5}]'
)
BOM = b"\xef\xbb\xbf"

NOT_RECORDS = [
    ("input,path,label_1\nx,/x,cat\n", 1, "not JSON"),
    (b"\xff\xd8\xff\xe0 a jpeg", 1, "not JSON"),
    ('{"input": "a", "path": "/a", "predictions": []}\n', 1, "no 'predictions' and no 'error'"),
    (
        "\n\n" + '{"input": "a", "path": "rel/a.jpg", "error": {"type": "t", "message": "m"}}',
        3,
        "'path' is not an absolute path",
    ),
    ('{"input": "a", "error": {"type": "t"}}', 1, "'error' needs a 'type' and a 'message'"),
    (
        '{"input": "a", "model": "m", "weights": "w", "predictions": [{"label": "x", "index": "1",'
        ' "probability": 0.5}]}',
        1,
        "a prediction needs a 'label', an 'index' and a 'probability'",
    ),
    (
        '{"input": "a", "model": "m", "weights": "w", "predictions": [{"label": "x", "index": 1,'
        ' "probability": 0.5}], "size": "12"}',
        1,
        "'size' is not a whole number",
    ),
    (
        '{"input": "a", "predictions": [{"label": "x", "index": 1, "probability": 0.5}]}',
        1,
        "no 'model'",
    ),
    ("[5]", 1, "not a JSON object"),
    (
        '[\n  {"input": "a", "error": {"type": "t", "message": "m"}},\n  {"input": 3}\n]',
        3,
        "no 'input'",
    ),
    (
        '[\n  {"input": "a", "error": {"type": "t", "message": "m"}}\n  {"input": "b"}',
        3,
        "expected ',' or ']'",
    ),
    (
        '[\n  {"input": "a", "error": {"type": "t", "message": "m"}},\n  {"input": "b"',
        3,
        "not JSON",
    ),
    (
        '[\n  {"input": "a", "error": {"type": "t", "message": "m"}}\n] trailing',
        3,
        "the JSON array does not end with ']'",
    ),
    (
        '{"input": "a", "error": {"type": "t", "message": "m"}}\n["a list"]\n',
        2,
        "not a JSON object",
    ),
    (
        '{"input": "a", "model": "m", "weights": "w", "predictions": [{"label": "x", "index": 1,'
        ' "probability": "0.5"}]}',
        1,
        "a prediction needs a 'label', an 'index' and a 'probability'",
    ),
    (
        '{"input": "a", "model": "m", "weights": "w", "predictions": [{"label": "x", "index": 1,'
        ' "probability": true}]}',
        1,
        "a prediction needs a 'label', an 'index' and a 'probability'",
    ),
    ('{"input": "a", ' + PRED + ', "mtime_ns": "12"}', 1, "'mtime_ns' is not a whole number"),
    ('{"input": "a", ' + PRED + ', "uncertain": "yes"}', 1, "'uncertain' is not true or false"),
    (
        '{"input": "a", ' + PRED + ', "categories": [{"name": "c", "probability": "0.5"}]}',
        1,
        "a category needs a 'name' and a 'probability'",
    ),
    (
        '{"input": "a", ' + PRED + ', "categories": "c"}',
        1,
        "a category needs a 'name' and a 'probability'",
    ),
    (
        '{"input": "a", ' + PRED + ', "categories": [5]}',
        1,
        "a category needs a 'name' and a 'probability'",
    ),
    (ERR + "\n\ufeff" + ERR + "\n", 2, "not JSON"),  # a byte order mark only starts a file
    (b"\n[\n  " + ERR.encode() + b',\n  {"input": "\xff"}\n]\n', 4, "not UTF-8"),
    ("\n[\n  " + ERR + ",\n  5\n]", 4, "not a JSON object"),
    (json.dumps([json.loads(ERR), json.loads(ERR), 5], indent=2), 16, "not a JSON object"),
    ("[\n  ", 2, "the JSON array does not end with ']'"),
    ("[" + ERR, 1, "expected ',' or ']'"),
    ("[" + ERR + ",", 1, "the JSON array does not end with ']'"),
    ("[" + ERR + "]x", 1, "the JSON array does not end with ']'"),
]


@pytest.mark.parametrize(("text", "line", "why"), NOT_RECORDS)
def test_a_file_that_is_not_records_is_refused(tmp_path, text, line, why) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(SortError) as caught:
        sorting.records_from_file(path)
    assert str(caught.value) == (
        f"'{path}' line {line} is not a record of 'resnext classify' ({why}); give the "
        "JSON Lines or JSON file that 'resnext classify -o' wrote"
    )


def test_records_files_that_are_empty_missing_or_not_files(tmp_path) -> None:
    give = "(give the file 'resnext classify -o' wrote)"
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "empty.json").write_text("[]\n")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    cases = {
        "empty.jsonl": f"'{tmp_path / 'empty.jsonl'}' holds no records {give}",
        "empty.json": f"'{tmp_path / 'empty.json'}' holds no records {give}",
        "gone.jsonl": f"cannot read records file '{tmp_path / 'gone.jsonl'}' "
        f"(no such file or directory) {give}",
        "fifo": f"records file '{tmp_path / 'fifo'}' is not a regular file {give}",
        "folder": f"records file '{tmp_path / 'folder'}' is not a regular file {give}",
    }
    for name, message in cases.items():
        with pytest.raises(SortError) as caught:
            sorting.records_from_file(tmp_path / name)
        assert str(caught.value) == message


def test_records_files_in_every_layout_are_read(tmp_path: Path, monkeypatch) -> None:
    failed = Failed("a", "t", "m")
    one = json.dumps(failed.to_dict()).encode()
    layouts = {
        "bom.jsonl": BOM + one + b"\n" + one + b"\n",
        "bom.json": BOM + b"\n[\n  " + one + b",\n  " + one + b"\n]\n",
        "compact.json": b"[" + one + b"," + one + b"]",
        "spaced.json": b" " * 4095 + b"[" + one + b", " + one + b"]",
    }
    for name, data in layouts.items():
        (tmp_path / name).write_bytes(data)
        assert sorting.records_from_file(tmp_path / name) == ([failed, failed], []), name
    # A line of 16 MiB, its newline counted, is read; one byte more is refused.
    line = 16 << 20
    (tmp_path / "long.jsonl").write_bytes(b" " * (line - len(one) - 1) + one + b"\n")
    assert sorting.records_from_file(tmp_path / "long.jsonl") == ([failed], [])
    (tmp_path / "long.jsonl").write_bytes(b" " * (line - len(one)) + one + b"\n")
    with pytest.raises(SortError) as caught:
        sorting.records_from_file(tmp_path / "long.jsonl")
    assert str(caught.value) == (
        f"'{tmp_path / 'long.jsonl'}' line 1 is not a record of 'resnext classify' (the line "
        "is too long); give the JSON Lines or JSON file that 'resnext classify -o' wrote"
    )
    # A JSON array is read whole, so it has a size limit (256 MiB; 40 bytes here).
    import resnext_cli.records

    monkeypatch.setattr(resnext_cli.records, "MAX_ARRAY", 40)
    (tmp_path / "array.json").write_bytes(b"[" + json.dumps({"input": "x" * 25}).encode() + b"]")
    with pytest.raises(SortError, match=r"line 1 .*\(no 'predictions' and no 'error'\)"):
        sorting.records_from_file(tmp_path / "array.json")  # 40 bytes: read
    (tmp_path / "array.json").write_bytes(b"[" + json.dumps({"input": "x" * 26}).encode() + b"]")
    with pytest.raises(SortError) as caught:
        sorting.records_from_file(tmp_path / "array.json")
    assert str(caught.value) == (
        f"records file '{tmp_path / 'array.json'}' is too large to read as one JSON array "
        "(classify with -f jsonl)"
    )


def test_a_record_whose_path_cannot_be_looked_at(photos: Path, tmp_path: Path) -> None:
    inside_a_file = photos / "a.jpg" / "x.jpg"
    record = Failed(str(inside_a_file), "t", "m", path=str(inside_a_file))
    write_records([record], tmp_path / "r.jsonl", "jsonl")
    assert sorting.records_from_file(tmp_path / "r.jsonl") == (
        [],
        [(str(inside_a_file), "not a directory")],
    )


def test_by_category(photos: Path, tmp_path: Path) -> None:
    records = recorded(photos)
    plan = make_plan(records, tmp_path / "s", by="category")
    assert sorted(s.target for s in plan.steps) == [
        "_failed/broken.jpg",
        "group of Crane/b.jpg",
        "group of Crane/c.png",  # 'crane' joins 'Crane', as labels do
        "group of Crane/d.jpg",
        "group of tabby, tabby cat/a (1).jpg",
        "group of tabby, tabby cat/a.jpg",
    ]
    c = records[2]  # top-1 'crane' at 0.2, its category at 0.25
    assert folder_for(c, by="label", min_probability=0.24) == "_uncertain"
    assert folder_for(c, by="category", min_probability=0.24) == "group of crane"
    assert folder_for(c, by="category", min_probability=0.3) == "_uncertain"
    exactly = replace(c, categories=(CategoryScore("birds", 0.5),))
    assert folder_for(exactly, by="category", min_probability=0.5) == "birds"  # not below
    # A record's own top-1 mark does not make its category uncertain.
    assert folder_for(replace(c, uncertain=True), by="category") == "group of crane"
    assert folder_for(records[5], by="category") == "_failed"
    with pytest.raises(SortError) as caught:
        make_plan(labelled(photos), tmp_path / "s", by="category")
    assert str(caught.value) == (
        "--by category needs records with categories (classify with --categories)"
    )


# -- the destination, checked before any image is read ---------------------------------------


def test_check_dest(photos: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    sorting.check_dest(tmp_path / "new" / "deeper")  # may be made: fine, and not made yet
    assert not (tmp_path / "new").exists()
    cases = {
        tmp_path / "file": f"destination '{tmp_path / 'file'}' is not a folder (give a folder)",
        tmp_path / "file" / "sub" / "dest": f"cannot create destination "
        f"'{tmp_path / 'file/sub/dest'}': '{tmp_path / 'file'}' is not a folder "
        "(give another destination)",
        tmp_path / "dangling": f"destination '{tmp_path / 'dangling'}' is a broken symbolic "
        "link (give a folder)",
    }
    for dest, message in cases.items():
        with pytest.raises(SortError) as caught:
            sorting.check_dest(dest)
        assert str(caught.value) == message


def refusal(folder: Path) -> str | None:
    """Why a file cannot be made in *folder*, or None when it can."""
    try:
        os.close(os.open(folder / ".probe", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except OSError as exc:
        return (exc.strerror or "").lower()
    (folder / ".probe").unlink()
    return None


def test_check_dest_finds_a_read_only_destination(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    reason = refusal(locked)
    if reason is None:  # root ignores modes; sysfs refuses even root
        locked = Path("/sys/fs")
        reason = refusal(locked) if locked.is_dir() else None
        if reason is None:
            pytest.skip("no folder here refuses this user")
    with pytest.raises(SortError) as caught:
        sorting.check_dest(locked)
    assert str(caught.value) == (
        f"cannot write into destination '{locked}' ({reason}) (give a folder you can write to)"
    )
    with pytest.raises(SortError) as caught:
        sorting.check_dest(locked / "new")
    assert str(caught.value) == (
        f"cannot create destination '{locked / 'new'}' in '{locked}' ({reason}) "
        "(give a folder you can write to)"
    )


def test_check_dest_finds_an_unfinished_or_running_sort(photos, tmp_path, monkeypatch) -> None:
    dest = tmp_path / "sorted"
    with monkeypatch.context() as patched:  # undone alone: the isolated config folder stays
        crash_on(patched, os, "link", 2)
        with pytest.raises(Crash):
            execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    with pytest.raises(SortError) as caught:
        sorting.check_dest(dest)
    assert str(caught.value) == sorting.unfinished_message(dest)
    resume(dest)
    sorting.check_dest(dest)
    journal = sorting.Journal(dest)
    journal.open()
    try:
        with pytest.raises(SortError) as caught:
            sorting.check_dest(dest)
        assert str(caught.value) == f"another sort is using '{dest}' (wait for it to finish)"
    finally:
        journal.close()


# -- the command -----------------------------------------------------------------------------


UNSAFE_LABELS = [
    "a/b",
    "../up",
    "CON",
    "Crane",
    "crane",
    'say "hi"',
    "dot.",
    "_failed",
    "ok",
    "x:y",
]


@pytest.fixture
def unsafe_run(checkpoint10, make_image, tmp_path) -> tuple[Path, Path, list[str]]:
    folder = tmp_path / "photos"
    for seed in range(8):
        make_image(
            f"img{seed}.jpg", seed=seed, size=(80, 64), folder=folder / ("sub" if seed > 5 else "")
        )
    make_image("img0.jpg", seed=20, size=(64, 64), folder=folder / "again")  # a name clash
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not an image")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(UNSAFE_LABELS) + "\n")
    return folder, labels, ["--checkpoint", str(checkpoint10), "--labels", str(labels)]


def test_sort_command_dry_run_then_copy(unsafe_run, tmp_path, resnext) -> None:
    folder, _, model = unsafe_run
    reference = resnext("classify", folder, *model, "-f", "jsonl", "-q")
    records = [json.loads(line) for line in reference.stdout.splitlines()]
    p = sorted(r["predictions"][0]["probability"] for r in records if "predictions" in r)[3]
    want, spelled = {}, {}
    for r in records:
        if "error" in r:
            want[r["input"]] = "_failed"
        elif r["predictions"][0]["probability"] < p:
            want[r["input"]] = "_uncertain"
        else:
            name = safe_name(r["predictions"][0]["label"])
            name = "_failed (label)" if name == "_failed" else name
            want[r["input"]] = spelled.setdefault(name.casefold(), name)  # Crane = crane
    dest = tmp_path / "sorted"
    before = tree(folder)

    dry = resnext("sort", folder, dest, *model, "--min-probability", str(p), "--dry-run", "-q")
    assert dry.code == 1, dry  # one input failed; it is still planned into _failed
    assert not dest.exists()
    plan = {}
    for line in dry.stdout.splitlines():
        mode, rest = line.split(" ", 1)
        source, target = rest.split(" -> ")
        assert mode == "copy" and target.startswith(f"{dest}/")
        plan[source] = target[len(f"{dest}/") :]
    assert {s: t.split("/")[0] for s, t in plan.items()} == want
    assert sorted(Path(t).name for t in plan.values() if Path(t).name.startswith("img0")) in (
        ["img0.jpg"] * 2,
        ["img0 (1).jpg", "img0.jpg"],
    )
    folders = set(want.values())
    assert folders <= {"_failed", "_uncertain", "a_b", "_.._up", "_CON", "Crane", "crane"} | {
        "say _hi_",
        "dot",
        "_failed (label)",
        "ok",
        "x_y",
    }

    run = resnext("sort", folder, dest, *model, "--min-probability", str(p))
    assert run.code == 1, run
    assert tree(folder) == before
    digest = dict(before)
    assert tree(dest) == {
        (t, digest[Path(s).relative_to(folder).as_posix()]) for s, t in plan.items()
    }
    assert f"copied 10 files into {len(folders)} folders in '{dest}'" in run.stderr.splitlines()
    again = resnext("sort", folder, dest, *model, "--by", "index", "--link", "-q")
    # 9 new links in index folders; broken.jpg is in _failed/ already, so not filed twice.
    assert again.code == 1 and len(tree(dest)) == 19 and tree(folder) == before
    added = set(os.listdir(dest)) - folders - {JOURNAL_NAME}
    assert added and all(name.isdigit() for name in added)
    assert {int(name) for name in added} <= set(range(len(UNSAFE_LABELS)))


# The real command, with a pause after each file placed, so the test can kill it midway.
SLOW_SORT = """
import sys, time
import resnext_cli.sort as sort
real = sort.execute
sort.execute = lambda plan, on_step=None: real(plan, on_step=lambda _step: time.sleep(2))
from resnext_cli.cli.main import main
main(sys.argv[1:])
"""


def test_sort_move_killed_midway_then_resumed_and_undone(
    checkpoint, make_image, tmp_path, resnext
) -> None:
    """A real process killed (SIGKILL) after its second file, then finished, then undone."""
    folder = tmp_path / "photos"
    for seed in range(6):
        make_image(f"{seed}.jpg", seed=seed, size=(72, 64), folder=folder)
    before = tree(folder)
    dest = tmp_path / "sorted"
    journal = dest / JOURNAL_NAME
    args = ["sort", str(folder), str(dest), "--move", "--checkpoint", str(checkpoint), "-q"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SORT, *args])
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_text().count('"op": "done"') >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the sort ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(unfinished(dest)) == 4
    assert contents(before) <= contents(tree(folder), tree(dest))  # nothing lost
    assert len(tree(folder)) + len(tree(dest)) == 6  # nothing doubled

    refused = resnext(*args)
    assert (refused.code, refused.stderr.strip()) == (
        2,
        f"error: '{dest}' has an unfinished sort (run 'resnext sort --resume {dest}' to finish "
        f"it, or 'resnext sort --undo {dest}' to put the files back)",
    )
    finished = resnext("sort", "--resume", dest)
    assert finished.code == 0, finished
    assert tree(folder) == set() and contents(tree(dest)) == contents(before)
    moved = tree(dest)
    assert {Path(rel).name for rel, _ in moved} == {f"{i}.jpg" for i in range(6)}
    back = resnext("sort", "--undo", dest)
    assert back.code == 0 and back.stderr.strip() == f"put back 6 files from '{dest}'"
    assert tree(folder) == before and list(dest.iterdir()) == []


def test_sort_command_usage(tmp_path, resnext) -> None:
    dest = tmp_path / "sorted"
    assert resnext("sort", dest).code == 2
    assert resnext("sort", "--undo", dest).stderr.strip() == (
        f"error: '{dest}' has no sort journal (nothing to undo)"
    )
    both = resnext("sort", "--undo", "--resume", dest)
    assert both.code == 2 and "give --resume or --undo, not both" in both.stderr
    (tmp_path / "file").write_text("x")
    notdir = resnext("sort", tmp_path, tmp_path / "file")
    assert (
        notdir.stderr.strip()
        == f"error: destination '{tmp_path / 'file'}' is not a folder (give a folder)"
    )
