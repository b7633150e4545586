"""sort/journal.py: the signed journal, refused whole when planted, torn or damaged; the
destination checks.

Every test that touches files compares the set of (relative path, sha256) before and after.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import re
import stat
import time
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
from resnext_cli.sort import journal as journal_module
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


# -- the key: where it lives, how it is made, and when it is refused ------------------------

REMEDY = (
    "(remove it: a new key is made, and sorts signed with the old one can no longer be "
    "resumed or undone)"
)


def the_key_file() -> Path:
    """Where the key must be, worked out here from the environment the fixture set."""
    return Path(os.environ["XDG_CONFIG_HOME"]) / "resnext" / "journal.key"


def private_file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("xdg", [None, ""], ids=["unset", "empty"])
def test_the_key_lives_in_dot_config_of_home_without_xdg(tmp_path: Path, monkeypatch, xdg) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    if xdg is None:
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CONFIG_HOME", xdg)
    assert sorting.key_path() == home / ".config" / "resnext" / "journal.key"


def test_the_key_lives_in_xdg_config_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert str(sorting.key_path()) == f"{tmp_path}/cfg/resnext/journal.key"


@pytest.mark.parametrize("folder_made", [False, True], ids=["new_folder", "folder_exists"])
def test_a_new_key_is_written_whole_in_a_private_folder(monkeypatch, folder_made) -> None:
    path = the_key_file()
    if folder_made:
        path.parent.mkdir(parents=True, mode=0o700)
    monkeypatch.setattr(journal_module.secrets, "token_bytes", lambda n: bytes(range(n)))
    old = os.umask(0o022)
    try:
        key = sorting.journal_key()
    finally:
        os.umask(old)
    assert key == bytes(range(32))
    assert path.read_bytes() == (
        b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_key_that_is_a_link_is_refused(tmp_path: Path) -> None:
    target = private_file(tmp_path / "elsewhere.key", b"ab" * 32 + b"\n")
    path = the_key_file()
    path.parent.mkdir(parents=True)
    path.symlink_to(target)
    with pytest.raises(SortError) as caught:
        sorting.journal_key()
    assert str(caught.value) == f"journal key '{path}' cannot be read (a symbolic link) {REMEDY}"


def test_a_key_file_over_128_bytes_is_refused_unread() -> None:
    path = private_file(the_key_file(), b"ab" * 32 + b"\n" + b" " * 75)  # 140 bytes
    with pytest.raises(SortError) as caught:
        sorting.journal_key()
    assert str(caught.value) == (
        f"journal key '{path}' cannot be read (over the 128-byte limit) {REMEDY}"
    )


def test_a_key_readable_by_others_is_refused_with_the_remedy() -> None:
    path = private_file(the_key_file(), b"ab" * 32 + b"\n")
    path.chmod(0o640)
    with pytest.raises(SortError) as caught:
        sorting.journal_key()
    assert str(caught.value) == f"journal key '{path}' can be read by other users {REMEDY}"


def test_a_key_swapped_for_a_link_after_reading_is_refused(tmp_path: Path, monkeypatch) -> None:
    path = private_file(the_key_file(), b"ab" * 32 + b"\n")
    copy = private_file(tmp_path / "copy.key", b"ab" * 32 + b"\n")
    real = journal_module.read_user_file

    def swapped(where: Path, **kwargs: object) -> bytes:
        data = real(where, **kwargs)
        path.unlink()  # another process puts a link to a private file in its place
        path.symlink_to(copy)
        return data

    monkeypatch.setattr(journal_module, "read_user_file", swapped)
    with pytest.raises(SortError) as caught:
        sorting.journal_key()
    assert str(caught.value) == f"journal key '{path}' can be read by other users {REMEDY}"


def test_a_key_of_another_user_is_refused(monkeypatch) -> None:
    path = private_file(the_key_file(), b"ab" * 32 + b"\n")
    owner = path.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    with pytest.raises(SortError) as caught:
        sorting.journal_key()
    assert str(caught.value) == (
        f"journal key '{path}' belongs to another user (uid {owner}) {REMEDY}"
    )


def race_on_the_key(monkeypatch, action) -> None:
    """Run *action* just before the key file is created, as another process could."""
    real, path = os.open, str(the_key_file())

    def fake(where, flags, *args, **kwargs):
        if os.fspath(where) == path and flags & os.O_CREAT:
            action()
        return real(where, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError(errno.EACCES, "Permission denied"), "permission denied"),
        (OSError("Odd Failure"), "odd failure"),
    ],
    ids=["strerror", "no_strerror"],
)
def test_a_key_that_cannot_be_made_says_why(monkeypatch, error, reason) -> None:
    def fail() -> None:
        raise error

    race_on_the_key(monkeypatch, fail)
    with pytest.raises(SortError) as caught:
        sorting.journal_key()
    assert str(caught.value) == (
        f"cannot make the journal key '{the_key_file()}': {reason} "
        "(set XDG_CONFIG_HOME to a folder of your own)"
    )


def test_a_key_another_sort_left_empty_is_waited_for_then_refused(monkeypatch) -> None:
    path = the_key_file()
    race_on_the_key(monkeypatch, lambda: path.write_bytes(b""))  # made, never written
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    with pytest.raises(SortError) as caught:
        sorting.journal_key()
    assert str(caught.value) == f"journal key '{path}' is empty {REMEDY}"
    assert sleeps == [0.02] * 50


def test_a_link_planted_while_the_key_is_made_is_neither_followed_nor_waited_for(
    tmp_path: Path, monkeypatch
) -> None:
    path = the_key_file()
    elsewhere = private_file(tmp_path / "elsewhere", b"")
    race_on_the_key(monkeypatch, lambda: path.symlink_to(elsewhere))
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    with pytest.raises(SortError) as caught:
        sorting.journal_key()
    assert str(caught.value) == f"journal key '{path}' cannot be read (a symbolic link) {REMEDY}"
    assert elsewhere.read_bytes() == b"" and sleeps == []


def test_a_key_removed_while_another_sort_made_it_is_one_line(monkeypatch) -> None:
    """Another sort makes the key first (this one's exclusive create fails), then the file
    is removed before this sort reads it: one line, no AssertionError."""
    real, path = os.open, the_key_file()

    def fake(where, flags, *args, **kwargs):
        if os.fspath(where) == str(path) and flags & os.O_CREAT:
            private_file(path, bytes(64))  # the other sort's key...
            try:
                return real(where, flags, *args, **kwargs)
            finally:
                path.unlink()  # ...removed right after
        return real(where, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake)
    with pytest.raises(SortError) as caught:
        sorting.journal_key()
    assert str(caught.value) == (
        f"journal key '{path}' was removed while it was made: run the sort again"
    )
    assert not path.exists()


# -- the MAC, computed here by hand ------------------------------------------------------------


def test_a_line_is_signed_over_context_real_dest_and_canonical_json(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real)
    key = bytes(range(32))
    sorting.journal_key()  # this user's key exists, and is not the one given
    item = {"op": "step", "b": "\u00e9", "a": [1, 2]}
    message = (
        b"resnext sort journal v1\x00"
        + str(real).encode()
        + b'\x00{"a":[1,2],"b":"\\u00e9","op":"step"}'
    )
    mac = hmac.new(key, message, hashlib.sha256).hexdigest()
    assert sorting.sign_line(tmp_path / "via", item, key=key) == (
        '{"op": "step", "b": "\\u00e9", "a": [1, 2], "mac": "' + mac + '"}'
    )


# -- reading: what is cut as torn, what is refused, and what a step carries -------------------


def mac_of(dest: Path, item: dict[str, object]) -> str:
    """The line's MAC with this user's key, read from the key file and computed here."""
    key = bytes.fromhex(the_key_file().read_text())
    canonical = json.dumps(item, sort_keys=True, separators=(",", ":")).encode()
    message = b"resnext sort journal v1\x00" + str(dest.resolve()).encode() + b"\x00" + canonical
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def test_an_unparsable_last_line_is_cut_even_with_its_newline(tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    data = plant(dest, {"op": "end"})
    (dest / JOURNAL_NAME).write_bytes(data + b'{"op": "und\n')  # garbage a crash left
    assert sorting.Journal(dest).read() == {}
    journal = sorting.Journal(dest)
    journal.open()
    journal.close()
    assert (dest / JOURNAL_NAME).read_bytes() == data


def test_an_empty_journal_needs_no_key(tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    dest.mkdir()
    (dest / JOURNAL_NAME).write_bytes(b"")
    private_file(the_key_file(), b"not hex\n")  # a damaged key is not even read
    assert sorting.Journal(dest).read() == {}


def not_ours(dest: Path, line: int) -> str:
    return (
        f"journal '{dest / JOURNAL_NAME}' line {line} was not written by resnext for this "
        f"folder with your key ('{the_key_file()}'): refused, nothing was touched (remove the "
        f"journal if you did not sort into '{dest}' on this machine)"
    )


def test_reading_a_journal_without_a_key_makes_none(tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    plant(dest, {"op": "end"}, sign=False)
    with pytest.raises(SortError) as caught:
        sorting.Journal(dest).read()
    assert str(caught.value) == not_ours(dest, 1)
    assert not the_key_file().parent.exists()


@pytest.mark.parametrize(
    "data",
    [b'{"op": "end"}\n', b'{"op": "end"}\n{"op": "e'],
    ids=["with_newline", "before_a_torn_line"],
)
def test_an_unsigned_line_is_refused_unless_it_is_the_unfinished_last(tmp_path, data) -> None:
    dest = tmp_path / "sorted"
    dest.mkdir()
    sorting.journal_key()
    (dest / JOURNAL_NAME).write_bytes(data)
    with pytest.raises(SortError) as caught:
        sorting.Journal(dest).read()
    assert str(caught.value) == not_ours(dest, 1)


@pytest.mark.parametrize(
    ("extra", "identity"),
    [
        ({"size": 123, "mtime_ns": 456}, (123, 456)),
        ({"size": 123}, None),
        ({"size": True, "mtime_ns": 456}, None),
        ({"size": 123, "mtime_ns": "456"}, None),
    ],
    ids=["both", "no_mtime", "bool_size", "text_mtime"],
)
def test_a_step_keeps_the_identity_its_file_must_have(photos: Path, tmp_path, extra, identity):
    dest = tmp_path / "sorted"
    begin = {"op": "begin", "mode": "copy", "dest": str(dest.resolve()), "src": [str(photos)]}
    step = {"op": "step", "n": 0, "mode": "copy", "src": str(photos / "a.jpg"), "dst": "x/a.jpg"}
    plant(dest, begin, {**step, **extra})
    assert sorting.Journal(dest).read()[0].step.identity == identity


# -- writing ---------------------------------------------------------------------------------


def test_a_whole_last_line_without_its_newline_gets_one_before_the_next(tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    data = plant(dest, {"op": "end"})
    (dest / JOURNAL_NAME).write_bytes(data[:-1])  # the newline was lost
    journal = sorting.Journal(dest)
    journal.open()
    try:
        journal.write({"op": "begin"})
    finally:
        journal.close()
    line = '{"op": "begin", "mac": "' + mac_of(dest, {"op": "begin"}) + '"}\n'
    assert (dest / JOURNAL_NAME).read_bytes() == data + line.encode()


def test_lines_are_signed_with_the_key_read_when_the_journal_was_opened(tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    journal = sorting.Journal(dest)
    journal.open()
    try:
        key = the_key_file().read_bytes()
        the_key_file().unlink()  # removed while the sort runs: not made anew
        journal.write({"op": "end"})
    finally:
        journal.close()
    assert not the_key_file().exists()
    private_file(the_key_file(), key)
    line = '{"op": "end", "mac": "' + mac_of(dest, {"op": "end"}) + '"}\n'
    assert (dest / JOURNAL_NAME).read_bytes() == line.encode()


def test_write_syncs_only_when_asked(tmp_path: Path, monkeypatch) -> None:
    dest = tmp_path / "sorted"
    journal = sorting.Journal(dest)
    journal.open()
    try:
        synced: list[int] = []
        monkeypatch.setattr(os, "fsync", synced.append)
        journal.write({"op": "end"})
        assert synced == []
        journal.write({"op": "end"}, sync=True)
        assert synced == [journal._fd]
    finally:
        journal.close()


def test_a_write_failing_without_a_reason_names_the_error(tmp_path: Path, monkeypatch) -> None:
    dest = tmp_path / "sorted"
    journal = sorting.Journal(dest)
    journal.open()

    def odd(self: sorting.Journal, data: bytes) -> None:
        raise OSError("Odd Failure")

    monkeypatch.setattr(sorting.Journal, "_append", odd)
    try:
        with pytest.raises(SortError) as caught:
            journal.write({"op": "end"})
    finally:
        journal.close()
    assert str(caught.value) == (
        f"cannot write the journal in '{dest}': odd failure (nothing more was done; free "
        f"space, then 'resnext sort --resume {dest}' or 'resnext sort --undo {dest}')"
    )
