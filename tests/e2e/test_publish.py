"""One way of writing (files.py): nothing replaced, followed or removed that should not be.

Every output (-o results, parquet shards, --report, quantize -o) goes through
files.OutputTarget. Device nodes are private ones made with mknod in tmp_path (root only);
no test touches a real system file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

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

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="mknod of a character device needs root")


def char_device(path: Path) -> Path:
    """A private character device node (1, 3: what /dev/null is) at *path*."""
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return path


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


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


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json", "parquet"])
def test_force_with_no_matching_input_leaves_old_outputs_byte_identical(
    tmp_path: Path, resnext, fmt: str
) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    old = tmp_path / f"old.{fmt}"
    old.write_bytes(b"the results of last week\n")
    report = tmp_path / "old.html"
    report.write_bytes(b"<p>last week</p>")
    digests = (sha(old), sha(report))
    run = resnext("classify", tmp_path / "none-*.jpg", "-o", old, "--force", "--report", report)
    assert run.code == 2, run
    assert (sha(old), sha(report)) == digests
    assert listing(tmp_path) == sorted([old.name, report.name])


def test_force_with_no_input_leaves_a_shard_folder_as_it_was(tmp_path: Path, resnext) -> None:
    pytest.importorskip("pyarrow")
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "part-00000.parquet").write_bytes(b"PAR1 old")
    run = resnext("classify", tmp_path / "none-*.jpg", "-f", "parquet", "-o", f"{folder}/")
    assert run.code == 2
    run = resnext(
        "classify", tmp_path / "none-*.jpg", "-f", "parquet", "-o", f"{folder}/", "--force"
    )
    # --force on shards removes them before the run only when there is work: none here.
    assert run.code == 2
    assert listing(folder) == ["part-00000.parquet"]


_HOLDER = """
import sys, time
from pathlib import Path
from resnext_cli.files import OutputTarget
out = OutputTarget.claim(Path(sys.argv[1]), force=True)
raw = out.stream()
raw.write(b"first\\n")
print("holding", flush=True)
time.sleep(60)
"""


def test_the_o_lock_is_exclusive_between_two_real_processes(tmp_path: Path, resnext) -> None:
    out = tmp_path / "r.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"holding\n"
        second = subprocess.run(
            [sys.executable, "-m", "resnext_cli", "classify", str(tmp_path / "x.jpg"), "-o",
             str(out), "--force"],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert second.returncode == 2, second
        assert second.stderr == (
            f"error: '{out}' is being written by another resnext run (wait for it to finish, "
            "or give another -o)\n"
        )
        assert out.read_bytes() == b"first\n"
    finally:
        holder.kill()
        holder.wait()


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


# -- the report --------------------------------------------------------------------------


def test_a_report_with_non_ascii_paths_and_a_long_title(
    make_image, checkpoint, tmp_path: Path, resnext
) -> None:
    folder = tmp_path / "Fotos Müller"
    make_image("café.jpg", seed=1, size=(64, 48), folder=folder)
    long_name = "ü" * 60 + ".jpg"
    make_image(long_name, seed=2, size=(64, 48), folder=folder)
    out, report = tmp_path / "r.jsonl", tmp_path / "r.html"
    run = resnext(
        "classify", folder / "café.jpg", folder / long_name, "--checkpoint", checkpoint,
        "-o", out, "--report", report,
    )  # fmt: skip
    assert run.code == 0, run
    assert "unexpected" not in run.stderr
    page = report.read_bytes()
    assert page.isascii()
    assert b"<title>resnext: " in page and b"caf&#233;.jpg" in page
    assert len(out.read_text().splitlines()) == 2
    assert listing(tmp_path) == ["Fotos Müller", "r.html", "r.jsonl"]


def test_thumbnails_hold_a_share_of_one_memory_budget(make_image, tmp_path: Path) -> None:
    import threading

    from resnext_cli.imaging.budget import MemoryBudget
    from resnext_cli.outputs.report import make_thumbnail

    big = make_image("big.png", seed=3, size=(1200, 1000))
    jpeg = make_image("big.jpg", seed=3, size=(1600, 1200))
    whole = 1200 * 1000 * 8  # decoded whole (Pillow keeps RGB at 4 bytes), then a copy
    budget = MemoryBudget(whole)
    assert make_thumbnail(str(big), budget=budget) is not None
    assert budget.used == 0 and budget.peak == whole
    reduced = MemoryBudget(whole)
    assert make_thumbnail(str(jpeg), budget=reduced) is not None
    assert reduced.peak == 400 * 300 * 8  # decoded at 1/4: still 2 x 112 a side
    small = MemoryBudget(whole - 1)  # the image alone needs more: it waits, then runs alone
    assert make_thumbnail(str(big), budget=small) is not None
    assert small.peak == whole - 1 and small.used == 0
    # Threads wait their turn: never more held than the budget.
    shared = MemoryBudget(whole + 10)
    threads = [
        threading.Thread(target=make_thumbnail, args=(str(big),), kwargs={"budget": shared})
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert shared.peak == whole and shared.used == 0


def test_results_file_written_and_report_left_when_nothing_matched(tmp_path: Path, resnext) -> None:
    run = resnext("classify", tmp_path / "none-*.jpg", "-o", tmp_path / "new.jsonl")
    assert run.code == 2
    assert listing(tmp_path) == []  # the file made for the run is gone, and its lock


def test_quantize_output_refusals_come_before_any_work(tmp_path: Path, resnext) -> None:
    link = tmp_path / "int8.pth"
    link.symlink_to(tmp_path / "nowhere")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (32, 32), "orange").save(photos / "a.jpg")  # the calibration is fine
    run = resnext("quantize", "--calibrate", photos, "-o", link, "--force")
    assert run.code == 2, run
    assert run.stderr == (
        f"error: output '{link}' is a symbolic link to nothing (give another name; a write "
        "never creates a link's target)\n"
    )
    assert not (tmp_path / "nowhere").exists()
    _ = json, time  # used by helpers above


@pytest.mark.parametrize("flag", ["-o", "--report"])
def test_classify_never_writes_through_a_dangling_link(tmp_path: Path, resnext, flag) -> None:
    link = tmp_path / ("out.jsonl" if flag == "-o" else "out.html")
    link.symlink_to(tmp_path / "created-elsewhere")
    run = resnext("classify", tmp_path / "x.jpg", flag, link, "--force")
    assert (run.code, run.stdout) == (2, ""), run
    what = "output" if flag == "-o" else "report"
    assert run.stderr == (
        f"error: {what} '{link}' is a symbolic link to nothing (give another name; a write "
        "never creates a link's target)\n"
    )
    assert not (tmp_path / "created-elsewhere").exists()


@needs_root
def test_classify_report_onto_a_device_is_refused_or_written_never_replaced(
    tmp_path: Path, resnext
) -> None:
    device = char_device(tmp_path / "full")
    run = resnext("classify", tmp_path / "none-*.jpg", "--report", device, "--force")
    assert run.code == 2  # no input: nothing written, and the node is still a device
    assert stat.S_ISCHR(os.lstat(device).st_mode)
