"""sort/journal.py: the signed journal, refused whole when planted, torn or damaged; the
destination checks.

Every test that touches files compares the set of (relative path, sha256) before and after.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
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
    Crash,
    crash_on,
    found,
    journal_lines,
    labelled,
    plant,
    planted_journals,
    refused,
    seen,
    threshold,
    tree,
)


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


def test_a_journal_of_ordinary_names_is_accepted(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    execute(make_plan([seen(photos / "a.jpg", "Xylophone: XX")], dest, mode="move"))
    assert tree(dest) == {("Xylophone_ XX/a.jpg", dict(before)["a.jpg"])}
    assert undo(dest).problems == [] and tree(photos) == before


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


def test_the_key_is_private_and_kept_outside_dest(world) -> None:
    key = sorting.journal_key()
    path = sorting.key_path()
    assert len(key) == 32 and (path.stat().st_mode & 0o777) == 0o600
    assert sorting.journal_key() == key  # made once
    path.chmod(0o644)
    with pytest.raises(SortError, match="can be read by other users"):
        sorting.journal_key()


def test_a_damaged_key_says_how_to_get_a_new_one(world) -> None:
    path = sorting.key_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not hex\n")
    path.chmod(0o600)
    with pytest.raises(SortError) as caught:
        sorting.journal_key()
    assert str(caught.value) == (
        f"journal key '{path}' is damaged (remove it: a new key is made, and sorts signed "
        "with the old one can no longer be resumed or undone)"
    )


def test_the_write_probe_is_a_hidden_file_of_ours(tmp_path: Path, monkeypatch) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    crash_on(monkeypatch, os, "unlink", 1)  # a crash between making and removing the probe
    with pytest.raises(Crash):
        sorting.check_dest(parent / "new")
    assert [re.fullmatch(r"\.resnext-probe-\w+", n) is not None for n in os.listdir(parent)] == [
        True
    ]


def test_a_probe_failing_without_a_reason_names_the_error(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    def no_temp(*_args: object, **_kw: object) -> None:
        raise OSError("Odd Failure")

    monkeypatch.setattr(tempfile, "mkstemp", no_temp)
    with pytest.raises(SortError) as caught:
        sorting.check_dest(tmp_path / "new")
    assert str(caught.value) == (
        f"cannot create destination '{tmp_path / 'new'}' in '{tmp_path}' (odd failure) "
        "(give a folder you can write to)"
    )


def test_note_neither_syncs_nor_fails_on_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    dest = tmp_path / "sorted"
    dest.mkdir()
    journal = sorting.Journal(dest)
    journal.open()
    try:
        real_fsync, synced = os.fsync, []
        monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
        assert journal.note({"op": "end"}) is True
        assert synced == []  # progress lines are not worth a sync: DEST tells the same
        size = (dest / JOURNAL_NAME).stat().st_size

        def full_disk(self: sorting.Journal, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(sorting.Journal, "_append", full_disk)
        assert journal.note({"op": "end"}) is False
        assert (dest / JOURNAL_NAME).stat().st_size == size
    finally:
        journal.close()
    assert [line["op"] for line in journal_lines(dest)][-1:] == ["end"]
