"""sort/apply.py: copy/link/move without overwriting, and resume and undo after a crash or a change.

Every test that touches files compares the set of (relative path, sha256) before and after:
a sort may add copies or move files, but never lose, change or duplicate one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("mode", ["move", "link"])
def test_a_file_rewritten_after_planning_is_left_alone(photos, tmp_path, mode) -> None:
    dest = tmp_path / "sorted"
    plan = _strict_plan(photos, dest, mode)
    (photos / "a.jpg").write_bytes(b"rewritten after planning")
    outcome = execute(plan)
    assert [reason for _, reason in outcome.problems] == [
        f"'{photos.absolute() / 'a.jpg'}' is not the file that was classified (a symbolic "
        "link now, or changed since); left alone"
    ]
    assert outcome.done == [] and found(dest / "tabby") == set()
    assert (photos / "a.jpg").read_bytes() == b"rewritten after planning"


def test_a_file_swapped_between_check_and_link_is_unlinked_again(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest = tmp_path / "sorted"
    plan = _strict_plan(photos, dest, "link")
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


def test_an_os_error_without_a_file_name_is_reported_as_it_is(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    def broken_link(*_args: object, **_kw: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "link", broken_link)
    outcome = execute(make_plan([seen(photos / "a.jpg", "x")], tmp_path / "sorted", mode="link"))
    assert [reason for _, reason in outcome.problems] == ["[Errno 5] Input/output error"]


def test_a_link_swapped_in_as_undo_puts_a_file_back_is_not_followed(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest = tmp_path / "sorted"
    execute(make_plan([seen(photos / "a.jpg", "x")], dest, mode="move"))
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
