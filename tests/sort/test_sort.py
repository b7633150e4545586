"""The sort package's promise, end to end in-process: plan, journal and apply together never
overwrite and never lose a file, through crashes, repeats and plans made side by side.

Every test that touches files compares the set of (relative path, sha256) before and after:
a sort may add copies or move files, but never lose, change or duplicate one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from resnext_cli import sort as sorting
from resnext_cli.sort import (
    JOURNAL_NAME,
    SortError,
    execute,
    make_plan,
    resume,
    undo,
    unfinished,
)
from tests.helpers import (
    EXPECTED,
    Crash,
    contents,
    crash_on,
    found,
    journal_lines,
    labelled,
    placed,
    refuse_links,
    seen,
    threshold,
    tree,
)


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
