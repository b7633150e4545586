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


def test_a_file_swapped_meanwhile_is_replaced_only_with_force(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(OutputError, match="appeared while this run"):
        out = OutputTarget.claim(target, force=False, keep=True)
        try:
            temp = out.temporary()
            temp.write(b"new")
            target.unlink()
            target.write_bytes(b"another")  # a new file (inode) under the old name
            out.publish(temp)
        finally:
            out.release()
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
    raw = out.stream(cut_at=0)
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
