"""files.py: outputs published atomically and never through a link, locked while written;
user files opened without following links or hanging on a FIFO.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from resnext_cli.errors import OutputError
from resnext_cli.files import (
    TEMP_PREFIX,
    FileProblem,
    OutputTarget,
    is_locked,
    lock_path,
    open_user_file,
    publish_file,
    read_user_file,
    same_node,
)
from tests.helpers import char_device, listing, needs_root


def write(data: bytes):
    return lambda fh: fh.write(data)


# -- publishing --------------------------------------------------------------------------


def test_publish_onto_nothing_and_no_temporary_is_left(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    publish_file(target, write(b"new"))
    assert target.read_bytes() == b"new"
    assert listing(tmp_path) == ["out.bin"]


def test_an_existing_file_needs_force_and_is_replaced_with_it(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(OutputError) as caught:
        publish_file(target, write(b"new"))
    assert str(caught.value) == f"output file '{target}' exists (use --force to overwrite it)"
    assert target.read_bytes() == b"old"
    publish_file(target, write(b"new"), force=True)
    assert target.read_bytes() == b"new" and listing(tmp_path) == ["out.bin"]


def test_a_file_that_appeared_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "model.pth"

    def slow_write(fh) -> None:
        fh.write(b"calibrated")
        target.write_bytes(b"someone else's")  # made while the run calibrated

    with pytest.raises(OutputError) as caught:
        publish_file(target, slow_write)
    assert str(caught.value) == (
        f"'{target}' appeared while this run was writing it: not replaced (use --force to "
        "replace it, or give another name)"
    )
    assert target.read_bytes() == b"someone else's"
    assert listing(tmp_path) == ["model.pth"]  # our temporary file and lock are gone


def publish_after_a_swap(target: Path, *, force: bool, keep: bool = False) -> None:
    """Claim *target*, put a new file (inode) under its name, then publish b"new" there."""
    out = OutputTarget.claim(target, force=force, keep=keep)
    try:
        temp = out.temporary()
        temp.write(b"new")
        target.unlink()
        target.write_bytes(b"another")
        out.publish(temp)
    finally:
        out.release()


def test_a_file_swapped_meanwhile_is_replaced_only_with_force(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(OutputError, match="appeared while this run"):
        publish_after_a_swap(target, force=False, keep=True)
    assert target.read_bytes() == b"another"


@pytest.mark.parametrize("kind", ["dangling", "to-a-file"])
def test_a_link_at_the_target_is_never_followed(tmp_path: Path, kind: str) -> None:
    victim = tmp_path / "victim"
    if kind == "to-a-file":
        victim.write_bytes(b"private")
    link = tmp_path / "out.html"
    link.symlink_to(victim)
    with pytest.raises(OutputError) as caught:
        publish_file(link, write(b"x"), force=True)
    if kind == "dangling":
        assert str(caught.value) == (
            f"output '{link}' is a symbolic link to nothing (give another name; a write "
            "never creates a link's target)"
        )
        assert not victim.exists()
    else:
        assert str(caught.value) == (
            f"output '{link}' is a symbolic link (give the file itself, not a link)"
        )
        assert victim.read_bytes() == b"private"
    assert link.is_symlink()


def test_a_link_planted_at_a_temporary_name_is_not_followed(tmp_path: Path, monkeypatch) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"private")
    import resnext_cli.files as files

    names = iter(["aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: next(names))
    (tmp_path / f"{TEMP_PREFIX}out.bin-aaaaaaaa").symlink_to(victim)  # guessed name, planted
    publish_file(tmp_path / "out.bin", write(b"result"))
    assert victim.read_bytes() == b"private"
    assert (tmp_path / "out.bin").read_bytes() == b"result"
    assert (tmp_path / f"{TEMP_PREFIX}out.bin-aaaaaaaa").is_symlink()  # not ours: kept


@needs_root
def test_a_device_is_written_into_never_replaced(tmp_path: Path) -> None:
    device = char_device(tmp_path / "null")
    before = os.lstat(device)
    publish_file(device, write(b"x" * 100_000), force=True)
    after = os.lstat(device)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert after.st_ino == before.st_ino
    assert listing(tmp_path) == ["null"]


def test_a_fifo_is_written_into(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen(
        [sys.executable, "-c", f"print(len(open({str(fifo)!r},'rb').read()))"],
        stdout=subprocess.PIPE,
    )
    publish_file(fifo, write(b"y" * 5000), force=True)
    assert reader.communicate(timeout=30)[0].strip() == b"5000"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_folder_or_a_missing_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputError, match=r"is a folder \(give a file name\)"):
        publish_file(tmp_path / "dir", write(b""))
    with pytest.raises(OutputError) as caught:
        publish_file(tmp_path / "nope" / "x", write(b""))
    assert str(caught.value) == (
        f"cannot write '{tmp_path / 'nope' / 'x'}': folder '{tmp_path / 'nope'}' does not exist"
    )


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def broken(fh) -> None:
        fh.write(b"half")
        raise RuntimeError("cut")

    with pytest.raises(RuntimeError):
        publish_file(target, broken, force=True)
    assert target.read_bytes() == b"old" and listing(tmp_path) == ["out.bin"]


# -- locks -------------------------------------------------------------------------------


def test_every_location_is_locked_while_written_folders_included(tmp_path: Path) -> None:
    for target, folder in ((tmp_path / "r.jsonl", False), (tmp_path / "shards", True)):
        out = OutputTarget.claim(target, force=False, folder=folder)
        try:
            assert is_locked(target)
            with pytest.raises(OutputError) as caught:
                OutputTarget.claim(target, force=True, folder=folder)
            assert str(caught.value) == (
                f"'{target}' is being written by another resnext run (wait for it to finish, "
                "or give another -o)"
            )
        finally:
            out.release()
        assert not is_locked(target) and not lock_path(target).exists()


# -- streams written in place: nothing cut before the first record -----------------------


def test_a_stream_is_cut_only_at_its_first_write(tmp_path: Path) -> None:
    target = tmp_path / "old.jsonl"
    target.write_bytes(b"precious\n")
    out = OutputTarget.claim(target, force=True)
    raw = out.stream(cut_at=0)
    raw.close()
    out.release()
    assert target.read_bytes() == b"precious\n"  # opened, never written: untouched
    out = OutputTarget.claim(target, force=True)
    raw = out.stream()  # by default cut to nothing
    raw.write(b"new\n")
    raw.close()
    out.release()
    assert target.read_bytes() == b"new\n"


def test_a_stream_never_creates_through_a_link_planted_after_the_check(tmp_path: Path) -> None:
    target = tmp_path / "r.jsonl"
    out = OutputTarget.claim(target, force=False)
    try:
        victim = tmp_path / "victim"
        target.symlink_to(victim)  # planted between the check and the open
        with pytest.raises(OutputError, match="appeared while this run started"):
            out.stream()
        assert not victim.exists()
    finally:
        out.release()


# -- the one safe opener for small user files ---------------------------------------------


def test_the_opener_refuses_fifos_folders_links_and_big_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "big").write_bytes(b"x" * 101)
    (tmp_path / "ok").write_bytes(b"fine")
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    kinds = {}
    for name in ("fifo", "dir", "big", "missing"):
        with pytest.raises(FileProblem) as caught:
            read_user_file(tmp_path / name, max_bytes=100)
        kinds[name] = caught.value.kind
    with pytest.raises(FileProblem) as caught:
        open_user_file(tmp_path / "link", follow_links=False)
    kinds["link"] = caught.value.kind
    assert kinds == {
        "fifo": "not_regular",
        "dir": "folder",
        "big": "too_large",
        "missing": "missing",
        "link": "link",
    }
    assert read_user_file(tmp_path / "link", max_bytes=100) == b"fine"


def problem(call) -> tuple[str, str, str, str]:
    """(kind, reason, cause, str) of the FileProblem *call* raises."""
    with pytest.raises(FileProblem) as caught:
        call()
    exc = caught.value
    return exc.kind, exc.reason, exc.cause, str(exc)


def test_each_problem_is_named_with_the_systems_words(tmp_path: Path) -> None:
    """Kind, reason (lower case) and cause, exactly: callers print the reason."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"12345")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    long = tmp_path / ("n" * 300)
    under_a_file = tmp_path / "file" / "x"
    cases = {
        "missing": (
            lambda: open_user_file(tmp_path / "gone"),
            ("missing", "no such file or directory", "FileNotFoundError"),
        ),
        "folder": (lambda: open_user_file(tmp_path / "dir"), ("folder", "a folder", "")),
        "fifo": (
            lambda: open_user_file(tmp_path / "fifo"),
            ("not_regular", "not a regular file (a pipe, socket or device)", ""),
        ),
        "big": (
            lambda: open_user_file(tmp_path / "file", max_bytes=4),
            ("too_large", "over the 4-byte limit", ""),
        ),
        "link": (
            lambda: open_user_file(tmp_path / "link", follow_links=False),
            ("link", "a symbolic link", "OSError"),
        ),
        "link read": (
            lambda: read_user_file(tmp_path / "link", max_bytes=10, follow_links=False),
            ("link", "a symbolic link", "OSError"),
        ),
        # A loop followed is the system's ELOOP, not a link refused.
        "loop": (
            lambda: open_user_file(tmp_path / "loop"),
            ("os", "too many levels of symbolic links", "OSError"),
        ),
        # Other errors without following links are not called links.
        "not a folder": (
            lambda: open_user_file(under_a_file, follow_links=False),
            ("os", "not a directory", "NotADirectoryError"),
        ),
        "too long": (lambda: open_user_file(long), ("os", "file name too long", "OSError")),
    }
    for name, (call, (kind, reason, cause)) in cases.items():
        assert problem(call) == (kind, reason, cause, reason), name


def test_a_file_is_read_whole_up_to_the_limit_and_then_blocks_as_usual(tmp_path: Path) -> None:
    import fcntl

    (tmp_path / "file").write_bytes(b"12345")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    assert read_user_file(tmp_path / "file", max_bytes=5) == b"12345"
    with open_user_file(tmp_path / "link") as fh:  # links are followed unless asked
        assert fh.read() == b"12345"
        # O_NONBLOCK kept a FIFO from hanging the open; reads after it are ordinary.
        assert fcntl.fcntl(fh.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK == 0


def test_a_file_that_grows_or_fails_while_read(tmp_path: Path, monkeypatch) -> None:
    import io

    from resnext_cli import files

    class Failing(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise OSError(5, "Input/output error")

    opened: list[io.BytesIO] = [io.BytesIO(b"123456"), Failing()]
    monkeypatch.setattr(files, "open_user_file", lambda *a, **k: opened.pop(0))
    grown = problem(lambda: read_user_file(tmp_path / "f", max_bytes=5))  # grew since fstat
    assert grown == ("too_large", "over the 5-byte limit", "", "over the 5-byte limit")
    failed = problem(lambda: read_user_file(tmp_path / "f", max_bytes=5))
    assert failed == ("os", "input/output error", "OSError", "input/output error")


def test_a_lock_is_a_private_file_beside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    assert not is_locked(target)  # no lock file, no target: nobody writes it
    held = OutputTarget.claim(target, force=False)
    try:
        lock = lock_path(target)
        assert lock == tmp_path / ".resnext-lock-out.jsonl"
        assert stat.S_IMODE(os.lstat(lock).st_mode) == 0o600
        assert is_locked(target)
    finally:
        held.release()
    assert not lock.exists() and not is_locked(target)


def test_a_lock_name_that_is_not_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    os.mkfifo(lock_path(target))
    with pytest.raises(OutputError) as caught:
        OutputTarget.claim(target, force=False)
    assert str(caught.value) == f"cannot write '{target}': the lock file is not a regular file"
    assert not target.exists()


@pytest.fixture
def umask_022():
    """The common umask, for the modes of what is written (restored afterwards)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_what_is_written_gets_the_usual_modes(tmp_path: Path, umask_022) -> None:
    streamed = OutputTarget.claim(tmp_path / "s.jsonl", force=False)
    with streamed.stream() as out:
        out.write(b"{}\n")
    streamed.release()
    publish_file(tmp_path / "p.pth", write(b"w"), force=False)
    for name in ("s.jsonl", "p.pth"):
        assert stat.S_IMODE(os.lstat(tmp_path / name).st_mode) == 0o644, name


def test_a_file_swapped_before_the_stream_opens_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"checked")
    target = OutputTarget.claim(path, force=True)
    try:
        (tmp_path / "other").write_bytes(b"swapped in")
        os.replace(tmp_path / "other", path)
        with pytest.raises(OutputError) as caught:
            target.stream()
        assert str(caught.value) == f"'{path}' changed while it was checked (run again)"
    finally:
        target.release()
    assert path.read_bytes() == b"swapped in"


def test_a_file_the_stream_made_is_locked_itself(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    target = OutputTarget.claim(path, force=False)
    try:
        with target.stream() as out:
            out.write(b"{}\n")
            lock_path(path).unlink()  # the lock file's name gone: the file's own lock holds
            assert is_locked(path)
    finally:
        target.release()
    assert not is_locked(path)


def test_a_busy_location_names_the_option_to_change(tmp_path: Path) -> None:
    for what, flag in (("output", "-o"), ("report", "--report")):
        path = tmp_path / f"{what}.out"
        held = OutputTarget.claim(path, force=False, what=what)
        try:
            with pytest.raises(OutputError) as caught:
                OutputTarget.claim(path, force=False, what=what)
            assert str(caught.value) == (
                f"'{path}' is being written by another resnext run (wait for it to finish, "
                f"or give another {flag})"
            )
        finally:
            held.release()


def test_a_lock_held_for_an_instant_is_waited_for(tmp_path: Path, monkeypatch) -> None:
    """A reader's probe (is_locked) holds a shared lock for an instant: the claim tries
    again after 20 ms, five times in all, then says the location is busy."""
    import fcntl

    from resnext_cli import files

    path = tmp_path / "out.jsonl"
    lock_path(path).write_bytes(b"")
    probe = os.open(lock_path(path), os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH)
    slept: list[float] = []

    def sleep_then_let_go(seconds: float) -> None:
        slept.append(seconds)
        fcntl.flock(probe, fcntl.LOCK_UN)

    monkeypatch.setattr(files.time, "sleep", sleep_then_let_go)
    try:
        OutputTarget.claim(path, force=False).release()
        assert slept == [0.02]
        os.close(probe)  # the claim removed its lock file when released: a new one, held
        lock_path(path).write_bytes(b"")
        probe = os.open(lock_path(path), os.O_RDONLY)
        fcntl.flock(probe, fcntl.LOCK_SH)
        slept.clear()
        monkeypatch.setattr(files.time, "sleep", slept.append)  # held for good
        with pytest.raises(OutputError, match="is being written by another resnext run"):
            OutputTarget.claim(path, force=False)
        assert slept == [0.02] * 4
    finally:
        os.close(probe)


def test_a_fifo_at_the_lock_name_does_not_hang_a_reader(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    os.mkfifo(lock_path(path))
    assert not is_locked(path)


def test_what_cannot_be_a_target_is_named(tmp_path: Path, umask_022) -> None:
    import socket

    long = tmp_path / ("n" * 300)
    with pytest.raises(OutputError) as caught:
        OutputTarget.claim(long, force=False)
    assert str(caught.value) == f"cannot write '{long}': File name too long"
    missing = tmp_path / "no" / "r.html"
    with pytest.raises(OutputError) as caught:
        OutputTarget.claim(missing, force=False, what="report")
    assert str(caught.value) == (
        f"cannot write report '{missing}': folder '{tmp_path / 'no'}' does not exist"
    )
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(OutputError) as caught:
        OutputTarget.claim(tmp_path / "file", force=True, folder=True)
    assert str(caught.value) == (
        f"'{tmp_path / 'file'}' is a file (give a folder for parquet shards, -o DIR/)"
    )
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(tmp_path / "sock"))
        with pytest.raises(OutputError) as caught:
            OutputTarget.claim(tmp_path / "sock", force=True)
        assert str(caught.value) == (
            f"output '{tmp_path / 'sock'}' is not a regular file (a block device or socket; "
            "give a file name)"
        )
    finally:
        server.close()


@needs_root
def test_a_link_to_a_device_is_written_into(tmp_path: Path) -> None:
    device = char_device(tmp_path / "null")
    (tmp_path / "out").symlink_to(device)
    target = OutputTarget.claim(tmp_path / "out", force=False)
    try:
        assert target.kind == "stream" and target.lock is None
    finally:
        target.release()


def test_temporaries_are_named_beside_the_target(tmp_path: Path, monkeypatch) -> None:
    from resnext_cli import files

    name = "r" * 100 + ".html"
    target = OutputTarget.claim(tmp_path / name, force=False)
    try:
        target.temporary().close()
        (made,) = [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
        assert made.name[:-9] == TEMP_PREFIX + name[:80]
        assert made.name[-9] == "-" and all(c in "0123456789abcdef" for c in made.name[-8:])
        # Every name taken: after 100 tries the run says so.
        monkeypatch.setattr(files.secrets, "token_hex", lambda n: "0" * 2 * n)
        (tmp_path / f"{TEMP_PREFIX}{name[:80]}-00000000").write_bytes(b"")
        with pytest.raises(OutputError) as caught:
            target.temporary()
        assert str(caught.value) == f"cannot write '{tmp_path / name}': no free temporary name"
    finally:
        target.release()


def test_a_folder_that_took_the_targets_place_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "r.html"
    target = OutputTarget.claim(path, force=False, what="report")
    try:
        temp = target.temporary()
        temp.write(b"<html>")
        path.mkdir()
        with pytest.raises(OutputError) as caught:
            target.publish(temp)
        assert str(caught.value) == (
            f"report '{path}' is now not a regular file: not replaced (the result was not "
            "kept; give another name)"
        )
    finally:
        target.release()
    assert path.is_dir() and listing(tmp_path) == ["r.html"]


# -- errors a non-root user or a race would meet, simulated ------------------------------


@pytest.fixture
def refuse_writing_in(monkeypatch):
    """refuse_writing_in(folder): creating a name there fails with EACCES, as in a folder
    that refuses writing to a user who is not root (existing files still open)."""
    import errno

    refused: set[Path] = set()
    real_open = os.open

    def guarded(path, flags, *args, **kwargs):
        where = Path(os.fsdecode(path)).absolute()
        if flags & os.O_CREAT and where.parent in refused and not os.path.lexists(where):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded)
    return lambda folder: refused.add(Path(folder).absolute())


def test_a_folder_that_refuses_writing_is_claimed_and_named_when_written(
    tmp_path: Path, refuse_writing_in
) -> None:
    # No lock file can be made there: the claim goes on (the file's own lock must do),
    # and what cannot be written is named with the system's words.
    refuse_writing_in(tmp_path)
    absent = tmp_path / "r.html"
    out = OutputTarget.claim(absent, force=False)
    try:
        assert not lock_path(absent).exists()
        with pytest.raises(OutputError) as caught:
            out.temporary()
        assert str(caught.value) == (
            f"cannot write '{absent}': Permission denied (choose a writable folder)"
        )
        with pytest.raises(OutputError) as caught:
            out.stream()
        assert str(caught.value) == f"cannot write '{absent}': Permission denied"
    finally:
        out.release()
    assert listing(tmp_path) == []


def test_in_a_folder_that_refuses_writing_an_existing_file_is_locked_itself(
    tmp_path: Path, refuse_writing_in
) -> None:
    existing = tmp_path / "r.jsonl"
    existing.write_bytes(b"old\n")
    refuse_writing_in(tmp_path)
    out = OutputTarget.claim(existing, force=True)
    try:
        assert not lock_path(existing).exists() and is_locked(existing)
        with pytest.raises(OutputError) as caught:
            OutputTarget.claim(existing, force=True)
        assert str(caught.value) == (
            f"'{existing}' is being written by another resnext run (wait for it to finish, "
            "or give another -o)"
        )
        with out.stream() as raw:
            raw.write(b"new\n")
    finally:
        out.release()
    assert not is_locked(existing) and existing.read_bytes() == b"new\n"


def test_a_folder_at_the_lock_name_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    lock_path(target).mkdir()
    with pytest.raises(OutputError) as caught:
        OutputTarget.claim(target, force=False)
    assert str(caught.value) == f"cannot write '{target}': Is a directory"
    assert listing(tmp_path) == [".resnext-lock-out.jsonl"] and not target.exists()


def test_a_lock_file_removed_before_it_was_locked_is_made_again(
    tmp_path: Path, monkeypatch
) -> None:
    # The run before ours removed the lock file's name between our open and our lock:
    # the file we hold is no lock any more, so the claim opens the name again.
    from resnext_cli import files

    target = tmp_path / "out.jsonl"
    real = files.Lock._flock
    removed: list[Path] = []

    def remove_first(fd: int, mode: int = 0) -> None:
        if not removed:
            removed.append(lock_path(target))
            lock_path(target).unlink()
        real(fd, mode)

    monkeypatch.setattr(files.Lock, "_flock", staticmethod(remove_first))
    out = OutputTarget.claim(target, force=False)
    try:
        assert removed == [lock_path(target)]
        assert lock_path(target).exists() and is_locked(target)
    finally:
        out.release()
    assert listing(tmp_path) == [] and not is_locked(target)


def test_a_file_changed_between_the_check_and_the_lock_is_refused(
    tmp_path: Path, monkeypatch
) -> None:
    from resnext_cli import files

    target = tmp_path / "out.bin"
    target.write_bytes(b"checked")
    real = files.Lock.take.__func__

    def swap_then_take(cls, path: Path):
        (tmp_path / "new").write_bytes(b"swapped in")
        os.replace(tmp_path / "new", path)  # another file (inode) under the name
        return real(cls, path)

    monkeypatch.setattr(files.Lock, "take", classmethod(swap_then_take))
    with pytest.raises(OutputError) as caught:
        OutputTarget.claim(target, force=True)
    assert str(caught.value) == f"'{target}' changed while it was checked (run again)"
    assert listing(tmp_path) == ["out.bin"] and target.read_bytes() == b"swapped in"
    assert not is_locked(target)


def test_a_file_swapped_for_a_link_before_the_stream_opens_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"private")
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"checked")
    target = OutputTarget.claim(path, force=True)
    try:
        path.unlink()
        path.symlink_to(victim)  # planted between the check and the open
        with pytest.raises(OutputError) as caught:
            target.stream()
        assert str(caught.value) == f"cannot write '{path}': Too many levels of symbolic links"
    finally:
        target.release()
    assert victim.read_bytes() == b"private" and path.is_symlink()


@pytest.mark.parametrize("no", ["EXDEV", "EPERM"])
def test_without_hard_links_the_result_is_renamed_into_place(
    tmp_path: Path, monkeypatch, no: str
) -> None:
    import errno

    code = getattr(errno, no)

    def no_links(*_args: object, **_kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "out.bin"
    publish_file(target, write(b"renamed"))
    assert target.read_bytes() == b"renamed" and listing(tmp_path) == ["out.bin"]
    # A file that appeared meanwhile is still not replaced (checked before the rename).
    other = tmp_path / "other.bin"

    def appear(fh) -> None:
        fh.write(b"mine")
        other.write_bytes(b"theirs")

    with pytest.raises(OutputError, match="appeared while this run was writing it"):
        publish_file(other, appear)
    assert other.read_bytes() == b"theirs"
    assert listing(tmp_path) == ["other.bin", "out.bin"]


def test_a_failed_hard_link_for_another_reason_is_raised(tmp_path: Path, monkeypatch) -> None:
    import errno

    def broken(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "link", broken)
    with pytest.raises(OSError) as caught:
        publish_file(tmp_path / "out.bin", write(b"x"))
    assert (caught.value.errno, caught.value.strerror) == (errno.EIO, "Input/output error")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_stream_that_takes_part_of_each_write_gets_every_byte(
    tmp_path: Path, monkeypatch, kind: str
) -> None:
    # The writer at the target takes at most 3 bytes a call and every other call nothing
    # (None: it would block); every byte arrives once, in order.
    from resnext_cli import files

    node = tmp_path / kind
    if kind == "device":
        try:
            os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        except (PermissionError, AttributeError, OSError) as exc:
            pytest.skip(f"cannot make a private device node here ({exc.__class__.__name__})")
    else:
        os.mkfifo(node)
    private = tmp_path / "private"
    private.mkdir()
    monkeypatch.setattr(files, "_private_folder", lambda: str(private))
    received = bytearray()
    calls: list[int] = []

    class Partial:
        def __enter__(self):
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def write(self, data) -> int | None:
            calls.append(len(data))
            assert len(calls) < 1000, "the writer is not getting anywhere"
            if len(calls) % 2 == 0:
                return None
            taken = bytes(data[:3])
            received.extend(taken)
            return len(taken)

    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        if Path(path) == node:
            assert (mode, kwargs["buffering"]) == ("wb", 0)
            return Partial()
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(files, "open", fake_open, raising=False)
    publish_file(node, write(b"0123456789"), force=True)
    assert bytes(received) == b"0123456789"
    assert calls == [10, 7, 7, 4, 4, 1, 1]  # None: the same bytes offered again
    assert listing(private) == []


def test_force_replaces_a_file_swapped_meanwhile_and_keep_the_same_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    publish_after_a_swap(target, force=True)
    assert target.read_bytes() == b"new" and listing(tmp_path) == ["out.bin"]
    # Continued (--resume) without force: the very file checked is replaced.
    out = OutputTarget.claim(target, force=False, keep=True)
    try:
        temp = out.temporary()
        temp.write(b"continued")
        out.publish(temp)
    finally:
        out.release()
    assert target.read_bytes() == b"continued" and listing(tmp_path) == ["out.bin"]


def test_publish_file_names_what_it_writes(tmp_path: Path) -> None:
    target = tmp_path / "head.pt"
    target.write_bytes(b"old")
    with pytest.raises(OutputError) as caught:
        publish_file(target, write(b"new"), what="head")
    assert str(caught.value) == f"head file '{target}' exists (use --force to overwrite it)"
    missing = tmp_path / "no" / "r.html"
    with pytest.raises(OutputError) as caught:
        publish_file(missing, write(b"x"), what="report")
    assert str(caught.value) == (
        f"cannot write report '{missing}': folder '{tmp_path / 'no'}' does not exist"
    )
    assert target.read_bytes() == b"old"


@pytest.mark.parametrize("swap", ["link", "file"])
def test_a_device_swapped_before_it_is_opened_is_not_written_through(
    tmp_path: Path, monkeypatch, swap: str
) -> None:
    """Someone who can write the folder swaps the device node for a link to their victim, or
    for a file, between the check and the open: nothing is written through it or cut."""
    from resnext_cli import files

    node = tmp_path / "out"
    try:
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (PermissionError, AttributeError, OSError) as exc:
        pytest.skip(f"cannot make a private device node here ({exc.__class__.__name__})")
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    private = tmp_path / "private"
    private.mkdir()
    monkeypatch.setattr(files, "_private_folder", lambda: str(private))
    real_open = os.open
    asked: list[int] = []

    def swap_then_open(path, flags, *args, **kwargs):
        if os.fspath(path) == str(node) and not flags & os.O_CREAT:
            asked.append(flags)
            node.unlink()
            if swap == "link":
                node.symlink_to(victim)
            else:
                node.write_bytes(b"someone's file")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", swap_then_open)
    with pytest.raises(OutputError) as caught:
        publish_file(node, write(b"the result"), force=True)
    assert str(caught.value) == (
        f"output '{node}' was replaced while this run wrote it: not written (the result was "
        "not kept; give another name)"
    )
    assert victim.read_bytes() == b"keep me"
    if swap == "file":
        assert node.read_bytes() == b"someone's file"
    assert listing(private) == []
    # Opened once, for writing, never through a link (a link to a FIFO would block, one to
    # another device would open it), and neither made nor cut.
    assert len(asked) == 1 and asked[0] & os.O_ACCMODE == os.O_WRONLY
    assert asked[0] & os.O_NOFOLLOW and not asked[0] & (os.O_CREAT | os.O_TRUNC)


def _stat(kind: int, *, ino: int = 7, dev: int = 1, mode: int = 0o644, rdev: int = 0):
    fields = (kind | mode, ino, dev, 1, 0, 0, 10, 0, 0, 0)
    return os.stat_result(fields, {"st_rdev": rdev})


@pytest.mark.parametrize(
    ("other", "same"),
    [
        (_stat(stat.S_IFREG), True),
        (_stat(stat.S_IFREG, ino=8), False),
        (_stat(stat.S_IFREG, dev=2), False),
        # a number given again to a node made after the file was removed
        (_stat(stat.S_IFLNK, mode=0o777), False),
        (_stat(stat.S_IFIFO), False),
        (_stat(stat.S_IFREG, mode=0o600), False),
    ],
    ids=["itself", "other_inode", "other_device", "link", "fifo", "other_mode"],
)
def test_same_node_is_one_inode_of_one_kind_and_mode(other, same: bool) -> None:
    assert same_node(_stat(stat.S_IFREG), other) is same


def test_same_node_tells_devices_apart() -> None:
    null = _stat(stat.S_IFCHR, mode=0o600, rdev=os.makedev(1, 3))
    assert same_node(null, _stat(stat.S_IFCHR, mode=0o600, rdev=os.makedev(1, 3)))
    assert not same_node(null, _stat(stat.S_IFCHR, mode=0o600, rdev=os.makedev(1, 7)))
