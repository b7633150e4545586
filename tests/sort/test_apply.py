"""sort/apply.py: copy/link/move without overwriting, and resume and undo after a crash or a change.

Every test that touches files compares the set of (relative path, sha256) before and after:
a sort may add copies or move files, but never lose, change or duplicate one.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

import resnext_cli.sort.apply as apply_module
from resnext_cli import sort as sorting
from resnext_cli.results import Classified, FileFacts, Prediction
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
    LEADS_OUT,
    Crash,
    contents,
    crash_on,
    everything,
    found,
    journal_lines,
    labelled,
    placed,
    refuse_links,
    seen,
    threshold,
    tree,
)


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


def test_a_swap_after_planning_is_caught_when_the_file_is_opened(world) -> None:
    photos, project = world["photos"], world["project"]
    secret = project / "secret.txt"
    secret.write_bytes(b"s" * (photos / "a.jpg").stat().st_size)
    st = (photos / "a.jpg").stat()
    os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns))
    rec = Classified(
        str(photos / "a.jpg"), "m", "w", (Prediction("tabby", 1, 0.9),),
        path=str(photos / "a.jpg"), file=FileFacts(st.st_size, st.st_mtime_ns),
    )  # fmt: skip
    for mode in ("copy", "move", "link"):
        dest = project / f"sorted-{mode}"
        plan = make_plan([rec], dest, mode=mode, sources=[photos], strict=True)
        assert [s.identity for s in plan.steps] == [(st.st_size, st.st_mtime_ns)]
        os.rename(photos / "a.jpg", project / "kept.jpg")
        (photos / "a.jpg").symlink_to(secret)
        outcome = execute(plan)
        assert [reason for _, reason in outcome.problems] == [
            f"'{photos / 'a.jpg'}' is not the file that was classified (a symbolic link now, "
            "or changed since); left alone"
        ], mode
        assert everything(dest / "tabby") == {} if (dest / "tabby").exists() else True
        (photos / "a.jpg").unlink()
        os.rename(project / "kept.jpg", photos / "a.jpg")
    assert secret.read_bytes().startswith(b"s")


def test_previews_need_a_journal(tmp_path: Path) -> None:
    for preview, what in ((sorting.preview_resume, "resume"), (sorting.preview_undo, "undo")):
        with pytest.raises(SortError) as caught:
            preview(tmp_path)
        assert str(caught.value) == f"'{tmp_path}' has no sort journal (nothing to {what})"


def test_preview_undo_of_a_copy_sort_lists_newest_first(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    execute(make_plan(threshold(labelled(photos)), dest, mode="copy"))
    (photos / "b.jpg").unlink()  # its copy is the only one left: undo puts it back
    (dest / "_uncertain" / "c.png").unlink()  # nothing left to undo for it
    before = (tree(photos), tree(dest))
    root, src = dest.resolve(), photos.absolute()
    assert sorting.preview_undo(dest) == [
        ("remove", root / "_failed/broken.jpg", src / "broken.jpg"),
        ("remove", root / "Crane/d.jpg", src / "sub/d.jpg"),
        ("remove", root / "tabby, tabby cat/a (1).jpg", src / "sub/a.jpg"),
        ("put back", root / "Crane/b.jpg", src / "b.jpg"),
        ("remove", root / "tabby, tabby cat/a.jpg", src / "a.jpg"),
    ]
    assert (tree(photos), tree(dest)) == before  # a preview touches nothing


def test_preview_undo_of_a_move_sort_skips_what_was_skipped(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    plan = make_plan(threshold(labelled(photos)), dest, mode="move")
    (photos / "b.jpg").rename(tmp_path / "aside.jpg")
    assert [s.target for s, _ in execute(plan).problems] == ["Crane/b.jpg"]
    (tmp_path / "aside.jpg").rename(photos / "b.jpg")
    # A second sort files b.jpg under the name the skipped step had planned.
    execute(make_plan([seen(photos / "b.jpg", "Crane")], dest, mode="move"))
    (photos / "a.jpg").write_bytes(b"a new a.jpg where the moved one was")
    root, src = dest.resolve(), photos.absolute()
    assert sorting.preview_undo(dest) == [
        ("put back", root / "Crane/b.jpg", src / "b.jpg"),
        ("put back", root / "_failed/broken.jpg", src / "broken.jpg"),
        ("put back", root / "Crane/d.jpg", src / "sub/d.jpg"),
        ("put back", root / "tabby, tabby cat/a (1).jpg", src / "sub/a.jpg"),
        ("put back", root / "_uncertain/c.png", src / "c.png"),
        ("put back", root / "tabby, tabby cat/a.jpg", src / "a.jpg"),
    ]


def test_undo_of_a_move_whose_file_was_deleted_in_dest(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    (dest / "Crane" / "b.jpg").unlink()
    outcome = undo(dest)
    assert [(s.target, reason) for s, reason in outcome.problems] == [
        (
            "Crane/b.jpg",
            f"'Crane/b.jpg' is no longer in '{dest.resolve()}' (renamed or deleted there?); "
            "cannot put it back",
        )
    ]
    assert len(outcome.restored) == 5 and (dest / JOURNAL_NAME).is_file()


def _strict_plan(photos: Path, dest: Path, mode: str) -> sorting.FilingPlan:
    st = (photos / "a.jpg").stat()
    rec = replace(seen(photos / "a.jpg", "tabby"), file=FileFacts(st.st_size, st.st_mtime_ns))
    return make_plan([rec], dest, mode=mode, sources=[photos], strict=True)


@pytest.mark.parametrize("mode", ["copy", "move", "link"])
def test_a_file_rewritten_after_planning_is_left_alone(photos, tmp_path, mode) -> None:
    dest = tmp_path / "sorted"
    plan = _strict_plan(photos, dest, mode)
    (photos / "a.jpg").write_bytes(b"rewritten after planning")
    outcome = execute(plan)
    why = (
        f"'{photos.absolute() / 'a.jpg'}' is not the file that was classified (a symbolic "
        "link now, or changed since); left alone"
    )
    assert [reason for _, reason in outcome.problems] == [why]
    assert outcome.done == [] and found(dest / "tabby") == set()
    assert (photos / "a.jpg").read_bytes() == b"rewritten after planning"
    assert {"op": "skip", "n": 0, "reason": why} in journal_lines(dest)
    assert unfinished(dest) == []  # skipped, not left for --resume


@pytest.mark.parametrize("mode", ["link", "move"])
def test_a_file_swapped_between_check_and_link_is_unlinked_again(
    photos: Path, tmp_path: Path, monkeypatch, mode: str
) -> None:
    dest = tmp_path / "sorted"
    plan = _strict_plan(photos, dest, mode)
    real_link = os.link

    def swap_then_link(src, dst, *args, **kwargs):
        os.rename(src, tmp_path / "kept.jpg")
        Path(src).write_bytes(b"swapped in")
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", swap_then_link)
    outcome = execute(plan)
    target = dest.resolve() / "tabby" / "a.jpg"
    assert [reason for _, reason in outcome.problems] == [
        f"'{target}' is not the file that was classified; left alone"
    ]
    assert not os.path.lexists(target)
    assert (photos / "a.jpg").read_bytes() == b"swapped in"  # a move takes nothing either


def test_an_os_error_without_a_file_name_is_reported_as_it_is(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    def broken_link(*_args: object, **_kw: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "link", broken_link)
    outcome = execute(make_plan([seen(photos / "a.jpg", "x")], tmp_path / "sorted", mode="link"))
    assert [reason for _, reason in outcome.problems] == ["[Errno 5] Input/output error"]


@pytest.mark.parametrize("link", ["os", "documented"])
def test_a_link_swapped_in_as_undo_puts_a_file_back_is_not_followed(
    photos: Path, tmp_path: Path, monkeypatch, link: str
) -> None:
    dest = tmp_path / "sorted"
    execute(make_plan([seen(photos / "a.jpg", "x")], dest, mode="move"))
    if link == "documented":
        links_as_documented(monkeypatch)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"someone else's file")
    placed_file = dest / "x" / "a.jpg"
    placed_file.unlink()
    placed_file.symlink_to(secret)
    real_is_symlink = Path.is_symlink

    def too_late(self: Path) -> bool:  # the swap lands just after undo looked
        return False if self == dest.resolve() / "x" / "a.jpg" else real_is_symlink(self)

    monkeypatch.setattr(Path, "is_symlink", too_late)
    assert undo(dest).problems == []
    back = photos / "a.jpg"
    assert os.path.islink(back) and os.readlink(back) == str(secret)
    assert secret.stat().st_nlink == 1 and secret.read_bytes() == b"someone else's file"


def links_as_documented(monkeypatch) -> None:
    """Make os.link follow a symbolic link unless told not to, as its documentation says and as
    it does on macOS and, from Python 3.14, on Linux (where link(2) itself never follows)."""
    real = os.link

    def link(src, dst, *, follow_symlinks: bool = True) -> None:
        real(os.path.realpath(src) if follow_symlinks else src, dst, follow_symlinks=False)

    monkeypatch.setattr(os, "link", link)


def test_link_files_a_symbolic_link_as_the_link_itself(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest = tmp_path / "sorted"
    (photos / "target.jpg").write_bytes(b"a file only a link names")
    (photos / "inner.jpg").symlink_to(photos / "target.jpg")
    links_as_documented(monkeypatch)
    outcome = execute(make_plan([seen(photos / "inner.jpg", "y")], dest, mode="link"))
    assert outcome.problems == []
    filed = dest / "y" / "inner.jpg"
    assert filed.is_symlink() and os.readlink(filed) == str(photos / "target.jpg")
    assert (photos / "target.jpg").stat().st_nlink == 1


def test_a_move_never_hard_links_what_a_link_swapped_in_leads_to(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest, secret = tmp_path / "sorted", tmp_path / "secret.txt"
    secret.write_bytes(b"someone else's file")
    plan = make_plan([seen(photos / "a.jpg", "x")], dest, mode="move")
    links_as_documented(monkeypatch)
    documented = os.link

    def swap_then_link(src, dst, **kwargs) -> None:  # lands after the move looked at it
        os.rename(src, tmp_path / "kept.jpg")
        Path(src).symlink_to(secret)
        documented(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", swap_then_link)
    assert execute(plan).problems == []
    filed = dest / "x" / "a.jpg"
    assert filed.is_symlink() and os.readlink(filed) == str(secret)  # the link itself moved
    assert secret.stat().st_nlink == 1 and secret.read_bytes() == b"someone else's file"


def _fd_facts(src: object, out: object) -> tuple[bool, int]:
    """Whether the source is read non-blocking, and the mode of the copy being written.

    (Close-on-exec is not looked at: Python's os.open sets it on every descriptor.)
    """
    src_fd, out_fd = src.fileno(), out.fileno()  # type: ignore[attr-defined]
    return (
        bool(fcntl.fcntl(src_fd, fcntl.F_GETFL) & os.O_NONBLOCK),
        stat.S_IMODE(os.fstat(out_fd).st_mode),
    )


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("strict", [False, True], ids=["fresh", "strict"])
@pytest.mark.parametrize("mode", ["copy", "move"])
def test_a_copy_is_written_privately_then_given_the_originals_time_and_mode(
    photos: Path, tmp_path: Path, monkeypatch, umask_022, mode: str, strict: bool
) -> None:
    dest, source = tmp_path / "sorted", photos / "a.jpg"
    source.chmod(0o640)
    os.utime(source, ns=(1_500_000_000_123_456_789, 1_400_000_000_987_654_321))
    record = seen(source, "x")
    if strict:
        record = replace(record, file=FileFacts(750, 1_400_000_000_987_654_321))
    plan = make_plan([record], dest, mode=mode, sources=[photos], strict=strict)
    refuse_links(monkeypatch)  # a move copies, then removes the original
    facts = []
    real_copy = shutil.copyfileobj

    def copy(src, out, *args: object) -> None:
        facts.append(_fd_facts(src, out))
        real_copy(src, out, *args)

    monkeypatch.setattr(shutil, "copyfileobj", copy)
    outcome = execute(plan)
    assert outcome.problems == []
    # Never blocked by a FIFO swapped in; nobody else's to read while it is written.
    assert facts == [(True, 0o600)]
    filed = (dest / "x" / "a.jpg").stat()
    assert (stat.S_IMODE(filed.st_mode), filed.st_mtime_ns) == (0o640, 1_400_000_000_987_654_321)
    assert (dest / "x" / "a.jpg").read_bytes() == b"bytes of a.jpg\n" * 50
    assert os.path.exists(source) == (mode == "copy")


def test_a_link_planted_at_the_partial_copys_name_is_removed_not_followed(
    photos: Path, tmp_path: Path, monkeypatch, umask_022
) -> None:
    dest, secret = tmp_path / "sorted", tmp_path / "secret.txt"
    secret.write_bytes(b"someone else's file")
    plan = make_plan([seen(photos / "a.jpg", "x")], dest)
    real_open_source = apply_module._open_source

    def open_then_plant(step: sorting.Step, source: Path) -> int:  # after leftovers went
        (dest / "x" / ".resnext-part-0").symlink_to(secret)
        return real_open_source(step, source)

    monkeypatch.setattr(apply_module, "_open_source", open_then_plant)
    facts = []
    real_copy = shutil.copyfileobj

    def copy(src, out, *args: object) -> None:
        facts.append(_fd_facts(src, out)[1])
        real_copy(src, out, *args)

    monkeypatch.setattr(shutil, "copyfileobj", copy)
    assert execute(plan).problems == []
    assert facts == [0o600]
    assert secret.read_bytes() == b"someone else's file" and secret.stat().st_nlink == 1
    assert os.listdir(dest / "x") == ["a.jpg"]
    assert not (dest / "x" / "a.jpg").is_symlink()
    assert (dest / "x" / "a.jpg").read_bytes() == b"bytes of a.jpg\n" * 50


def test_a_partial_copy_swapped_for_a_link_gives_its_times_to_the_link_alone(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest, secret = tmp_path / "sorted", tmp_path / "secret.txt"
    secret.write_bytes(b"someone else's file")
    os.utime(secret, ns=(1_300_000_000_000_000_001, 1_200_000_000_000_000_002))
    plan = make_plan([seen(photos / "a.jpg", "x")], dest)
    real_copy = shutil.copyfileobj

    def copy_then_swap(src, out, *args: object) -> None:
        real_copy(src, out, *args)
        partial = dest / "x" / ".resnext-part-0"
        partial.rename(tmp_path / "aside")
        partial.symlink_to(secret)

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_swap)
    execute(plan)
    assert secret.stat().st_mtime_ns == 1_200_000_000_000_000_002
    assert secret.read_bytes() == b"someone else's file"


def test_a_file_swapped_for_a_link_after_its_check_is_not_moved(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest = tmp_path / "sorted"
    plan = _strict_plan(photos, dest, "move")
    real_check = apply_module._check_identity

    def check_then_swap(step: sorting.Step, source: Path) -> os.stat_result | None:
        checked = real_check(step, source)
        os.rename(source, tmp_path / "kept.jpg")
        source.symlink_to(tmp_path / "kept.jpg")
        return checked

    monkeypatch.setattr(apply_module, "_check_identity", check_then_swap)
    outcome = execute(plan)
    assert [reason for _, reason in outcome.problems] == [
        f"'{photos.absolute() / 'a.jpg'}' is not the file that was classified (a symbolic "
        "link now, or changed since); left alone"
    ]
    assert outcome.done == [] and found(dest / "tabby") == set()
    assert os.readlink(photos / "a.jpg") == str(tmp_path / "kept.jpg")


def test_a_full_quota_without_a_message_is_named_by_its_number(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest = tmp_path / "sorted"

    def over_quota(*_args: object, **_kw: object) -> None:
        raise OSError(errno.EDQUOT, "")

    monkeypatch.setattr(shutil, "copyfileobj", over_quota)
    with pytest.raises(SortError) as caught:
        execute(make_plan([seen(photos / "a.jpg", "x")], dest))
    assert str(caught.value) == (
        f"destination '{dest}' is full ([errno {errno.EDQUOT}] ): the files not filed yet stay "
        f"where they are (free space, then 'resnext sort --resume {dest}', or 'resnext sort "
        f"--undo {dest}' to put back what was filed)"
    )
    assert len(unfinished(dest)) == 1


def test_the_plan_and_each_new_name_are_on_disk_before_a_file_is_placed(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest = tmp_path / "sorted"
    plan = make_plan([seen(photos / "b.jpg", "Crane")], dest, mode="move")
    (dest / "Crane").mkdir(parents=True)
    (dest / "Crane" / "b.jpg").write_bytes(b"arrived meanwhile")
    journal = dest / JOURNAL_NAME
    events: list[list[str]] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        real_fsync(fd)
        if journal.exists() and os.path.samestat(os.fstat(fd), journal.stat()):
            events.append(["synced", *(json.loads(line)["op"] for line in journal.open())])

    def link(src, dst, **kwargs) -> None:
        events.append(["link", os.path.basename(dst)])
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    assert execute(plan).problems == []
    assert events == [
        ["synced", "begin", "step"],
        ["synced", "begin", "step", "retarget"],  # 'b.jpg' was taken since planning
        ["link", "b (1).jpg"],
    ]


def test_a_strict_steps_identity_is_journaled_and_checked_again_on_resume(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest = tmp_path / "sorted"
    records, lines = [], []
    for n, name in enumerate(["a.jpg", "b.jpg"]):
        st = (photos / name).stat()
        records.append(replace(seen(photos / name, "x"), file=FileFacts(750, st.st_mtime_ns)))
        src = str(photos.resolve() / name)
        lines.append(
            {"op": "step", "n": n, "mode": "move", "src": src, "dst": f"x/{name}"}
            | {"input": str(photos / name), "size": 750, "mtime_ns": st.st_mtime_ns}
        )
    plan = make_plan(records, dest, mode="move", sources=[photos], strict=True)
    crash_on(monkeypatch, apply_module, "_run_step", 1)  # died before the first file
    with pytest.raises(Crash):
        execute(plan)
    monkeypatch.undo()
    assert [line for line in journal_lines(dest) if line["op"] == "step"] == lines
    (photos / "a.jpg").write_bytes(b"rewritten before the resume")
    outcome = resume(dest)
    assert [(s.target, reason) for s, reason in outcome.problems] == [
        (
            "x/a.jpg",
            f"'{photos.resolve() / 'a.jpg'}' is not the file that was classified (a symbolic "
            "link now, or changed since); left alone",
        )
    ]
    assert [s.target for s in outcome.done] == ["x/b.jpg"]
    assert (photos / "a.jpg").read_bytes() == b"rewritten before the resume"
    assert (dest / "x" / "b.jpg").read_bytes() == b"bytes of b.jpg\n" * 50


def test_the_errors_a_step_raises_carry_their_errno(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    taken = tmp_path / "taken.jpg"
    taken.write_bytes(b"already there")
    refuse_links(monkeypatch)  # published by a rename, after a look at the name
    with pytest.raises(FileExistsError) as caught:
        apply_module._publish_copy(photos / "a.jpg", taken, 7)
    exc = caught.value
    assert (exc.errno, exc.strerror, exc.filename) == (errno.EEXIST, "File exists", str(taken))
    assert taken.read_bytes() == b"already there"
    assert not os.path.lexists(tmp_path / ".resnext-part-7")
    # A move whose file went before it was placed.
    root = (tmp_path / "sorted").resolve()
    gone = photos.resolve() / "gone.jpg"
    step = sorting.Step(0, "move", gone, "x/gone.jpg", home=photos.resolve())
    with pytest.raises(FileNotFoundError) as caught:
        apply_module._run_step(sorting.Journal(tmp_path / "sorted"), root, step)
    exc = caught.value
    assert (exc.errno, exc.strerror, exc.filename) == (errno.ENOENT, "source is gone", str(gone))


@pytest.mark.parametrize("links", [True, False], ids=["hard_links", "no_hard_links"])
def test_a_partial_copy_swapped_for_a_link_changes_nothing_outside_and_is_not_filed(
    photos: Path, tmp_path: Path, monkeypatch, links: bool
) -> None:
    """Someone who can write in DEST puts a link to their victim at the partial copy's
    name while it is written: the victim's mode and times stay, and the link is not filed."""
    dest, victim = tmp_path / "sorted", tmp_path / "victim.txt"
    victim.write_bytes(b"not the sort's")
    victim.chmod(0o600)
    os.utime(victim, ns=(1_000_000_000, 2_000_000_000))
    (photos / "a.jpg").chmod(0o666)
    plan = make_plan([seen(photos / "a.jpg", "x")], dest)
    if not links:
        refuse_links(monkeypatch)
    real_copy = shutil.copyfileobj

    def copy_then_swap(src, out, *args: object) -> None:
        real_copy(src, out, *args)
        partial = dest / "x" / ".resnext-part-0"
        partial.unlink()
        partial.symlink_to(victim)

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_swap)
    outcome = execute(plan)
    assert [reason for _, reason in outcome.problems] == [
        f"the copy being written at '{dest / 'x' / '.resnext-part-0'}' was replaced by someone "
        "else; nothing was filed"
    ]
    after = victim.stat()
    assert (stat.S_IMODE(after.st_mode), after.st_atime_ns, after.st_mtime_ns) == (
        0o600,
        1_000_000_000,
        2_000_000_000,
    )
    assert victim.read_bytes() == b"not the sort's"
    assert sorted(os.listdir(dest / "x")) == [] and outcome.done == []
    assert (photos / "a.jpg").read_bytes() == b"bytes of a.jpg\n" * 50


@pytest.mark.parametrize("mode", ["copy", "move", "link"])
def test_a_fifo_swapped_in_after_planning_is_left_alone(
    photos: Path, tmp_path: Path, mode: str
) -> None:
    """A file of a fresh classify run (no size or time to compare) that is a FIFO by the
    time it is filed: neither an empty copy nor the FIFO itself goes into DEST."""
    dest, source = tmp_path / "sorted", photos / "a.jpg"
    plan = make_plan([seen(source, "x")], dest, mode=mode)
    source.unlink()
    os.mkfifo(source)
    outcome = execute(plan)
    assert [reason for _, reason in outcome.problems] == [
        f"'{source.absolute()}' is not the file that was classified (a symbolic link now, or "
        "changed since); left alone"
    ]
    assert outcome.done == [] and not os.path.lexists(dest / "x" / "a.jpg")
    assert stat.S_ISFIFO(os.lstat(source).st_mode)
