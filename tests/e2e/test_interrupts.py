"""Interrupted and repeated runs: whole lines only, exit 130/143, and --resume completes.

These start the real command as a subprocess and signal it mid-run.
"""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from resnext_cli.sort import (
    JOURNAL_NAME,
    unfinished,
)
from tests.conftest import natural_image, serve
from tests.helpers import contents, tree

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "resnext_cli", "classify", *map(str, args)]


def start(*args: str | Path) -> subprocess.Popen[str]:
    # SIGINT may be ignored by whatever started pytest (a shell's background job); a
    # terminal's Ctrl-C reaches a process that has the default handler, so restore it.
    return subprocess.Popen(
        command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


# How long a signalled or resumed run may take to end: a ceiling for "it ends", far above
# what it needs (about a second), so a slow machine never fails it; speed is benchmarks'.
ENDS_WITHIN = 90.0


def ended(proc: subprocess.Popen[str], what: str) -> str:
    """Wait for *proc* to exit; return its stderr, or kill it and fail saying *what* hung."""
    try:
        _, stderr = proc.communicate(timeout=ENDS_WITHIN)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(f"still running {ENDS_WITHIN:g}s after {what}:\n{stderr}")
    return stderr


def finish(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the command to its end, failing (not hanging) if it does not end."""
    try:
        return subprocess.run(command(*args), capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"a run of {len(args)} arguments did not end within 240s: {exc.stderr!r}")


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} too soon:\n{proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"nothing to interrupt after {seconds}s")
        time.sleep(0.05)


def parsed(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON Lines file as a record; a half-written line fails here."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), "the file ends in a half-written line"
    records = [json.loads(line) for line in text.splitlines()]
    for record in records:
        assert "predictions" in record or "error" in record, record
    return records


def interrupted_line(stderr: str, count: int, out: Path) -> None:
    assert "Traceback" not in stderr, stderr
    # click adds a newline after Ctrl-C (so a terminal's ^C ends its line): skip blanks.
    assert [line for line in stderr.splitlines() if line][-1] == (
        f"interrupted: {count} records written to '{out}' (--resume continues)"
    ), stderr


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(10):
        natural_image(100 + i, (96, 72)).save(folder / f"{i:02d}.png")
    return folder


def test_sigterm_mid_run_then_resume(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    everything = sorted(str(p) for p in photos.iterdir())
    options = ("--checkpoint", checkpoint, "-o", out, "-b", "1", "--workers", "1", "-k", "3")
    proc = start(photos, *options)
    wait_for(lambda: len(lines_of(out)) >= 1, proc, 120)
    proc.send_signal(signal.SIGTERM)
    stderr = ended(proc, "SIGTERM")
    assert proc.returncode == 143, stderr
    first = parsed(out)
    assert 1 <= len(first) < len(everything), "the run was not stopped mid-way"
    interrupted_line(stderr, len(first), out)
    kept = out.read_text(encoding="utf-8")

    done = finish(photos, *options, "--resume")
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8").startswith(kept)  # appended, not rewritten
    inputs = [r["input"] for r in parsed(out)]
    assert sorted(inputs) == everything  # each input exactly once: no gaps, no repeats
    assert inputs[: len(first)] == [r["input"] for r in first]


# The stalled download outlasts ENDS_WITHIN by far, and so does the run's --timeout: a run
# that waited for the download could not end in time.
STALL = 600.0


class _Stall(http.server.BaseHTTPRequestHandler):
    """The first request hangs until released; later ones get the image."""

    image = b""
    hanging = threading.Event()
    released = threading.Event()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if not self.released.is_set():
            type(self).hanging.set()
            self.released.wait(STALL)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.image)))
        self.end_headers()
        self.wfile.write(self.image)


@pytest.fixture
def stalling_url(tmp_path: Path) -> Iterator[tuple[str, threading.Event, threading.Event]]:
    """A loopback URL that stalls its first request; yields (url, hanging, released)."""
    natural_image(7, (64, 48)).save(tmp_path / "served.png")
    handler = type(
        "Handler",
        (_Stall,),
        {
            "image": (tmp_path / "served.png").read_bytes(),
            "hanging": threading.Event(),
            "released": threading.Event(),
        },
    )
    try:
        with serve(handler) as base:
            yield f"{base}/photo.png", handler.hanging, handler.released
    finally:
        handler.released.set()


def test_ctrl_c_while_a_download_stalls_then_resume(
    checkpoint: Path,
    photos: Path,
    tmp_path: Path,
    stalling_url: tuple[str, threading.Event, threading.Event],
) -> None:
    url, hanging, released = stalling_url
    first_half = sorted(photos.iterdir())[:3]
    second_half = sorted(photos.iterdir())[3:6]
    inputs = [*map(str, first_half), url, *map(str, second_half)]
    out = tmp_path / "results.jsonl"
    options = ("--checkpoint", checkpoint, "-o", out, "-b", "1", "--workers", "1", "-k", "3")
    # The run waits on a download that stalls for ten minutes, with as long a --timeout.
    proc = start(*inputs, *options, "--timeout", f"{STALL:g}")
    wait_for(lambda: hanging.is_set() and len(lines_of(out)) == 3, proc, 120)
    proc.send_signal(signal.SIGINT)
    stderr = ended(proc, "SIGINT while a download stalls (did it wait for the download?)")
    assert proc.returncode == 130, stderr
    first = parsed(out)
    assert [r["input"] for r in first] == inputs[:3]
    interrupted_line(stderr, 3, out)

    released.set()
    done = finish(*inputs, *options, "--resume")
    assert done.returncode == 0, done.stderr
    records = parsed(out)
    assert [r["input"] for r in records] == inputs  # in order, each exactly once
    assert all("predictions" in r for r in records)


def test_resume_drops_a_half_written_line(
    checkpoint: Path, photos: Path, tmp_path: Path, resnext: Callable[..., Any]
) -> None:
    images = sorted(str(p) for p in photos.iterdir())[:3]
    out = tmp_path / "results.jsonl"
    run = resnext("classify", images[0], "--checkpoint", checkpoint, "-o", out, "-k", "2")
    assert run.code == 0, run
    whole = out.read_text(encoding="utf-8")
    with out.open("a", encoding="utf-8") as fh:  # as if killed mid-write (SIGKILL, power)
        fh.write('{"input": "' + images[1] + '", "predic')
    again = resnext(
        "classify", *images, "--checkpoint", checkpoint, "-o", out, "-k", "2", "--resume"
    )
    assert again.code == 0, again
    text = out.read_text(encoding="utf-8")
    assert text.startswith(whole)
    assert [r["input"] for r in parsed(out)] == images


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
