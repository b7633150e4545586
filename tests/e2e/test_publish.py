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

from tests.helpers import char_device, listing, needs_root


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


# -- the report --------------------------------------------------------------------------


def test_a_report_with_non_ascii_paths_and_a_long_title(
    make_image, checkpoint, tmp_path: Path, resnext, monkeypatch
) -> None:
    folder = tmp_path / "Fotos Müller"
    make_image("café.jpg", seed=1, size=(64, 48), folder=folder)
    long_name = "ü" * 60 + ".jpg"
    make_image(long_name, seed=2, size=(64, 48), folder=folder)
    out, report = tmp_path / "r.jsonl", tmp_path / "r.html"
    # Names relative to the folder the run starts in: the title holds the inputs as given,
    # cut at 100 characters, so a long temporary folder would cut café.jpg off.
    monkeypatch.chdir(tmp_path)
    run = resnext(
        "classify", "Fotos Müller/café.jpg", f"Fotos Müller/{long_name}", "--checkpoint",
        checkpoint, "-o", out, "--report", report,
    )  # fmt: skip
    assert run.code == 0, run
    assert "unexpected" not in run.stderr
    page = report.read_bytes()
    assert page.isascii()
    title = "resnext: Fotos Müller/café.jpg Fotos Müller/" + "ü" * 60 + ".jpg"
    title = title[:99] + "…"
    escaped = "".join(c if c.isascii() else f"&#{ord(c)};" for c in title)
    assert f"<title>{escaped}</title>".encode() in page
    assert len(out.read_text().splitlines()) == 2
    assert listing(tmp_path) == ["Fotos Müller", "r.html", "r.jsonl"]


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
