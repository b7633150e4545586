"""Everyday use: progress that tells the truth, loading, stdin hints, pipes, the Python API."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console as RichConsole

from resnext_cli.cli.main import main
from resnext_cli.console import Console
from tests.helpers import expected_order


def run_on_terminal(*args: str | Path, stdin: bytes = b"", stdin_tty: bool = False):
    """Run main with a console whose stderr is a terminal 100 columns wide."""
    err = io.StringIO()
    out = io.StringIO()
    console = Console(
        stdin=io.BytesIO(stdin),
        stdout=out,
        err=RichConsole(file=err, force_terminal=True, width=100, highlight=False),
        stdin_is_terminal=stdin_tty,
    )
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args], console=console)
    return exit_.value.code, out.getvalue(), err.getvalue()


def test_progress_has_a_total_and_loading_names_the_model(checkpoint, photos) -> None:
    code, out, err = run_on_terminal(
        "classify", photos, "--checkpoint", checkpoint, "-f", "jsonl", "--workers", "0"
    )
    assert code == 0
    assert len(out.splitlines()) == 3
    assert f"loading resnext50_32x4d from {checkpoint}…" in err
    assert "downloading weights" not in err  # nothing was downloaded
    assert "3/3" in err  # the bar knew the total: folders are counted while it runs


def test_stdin_on_a_terminal_says_what_it_reads(checkpoint, photos) -> None:
    listing = "\n".join(str(p) for p in sorted(photos.iterdir())).encode()
    code, out, err = run_on_terminal(
        "classify", "-", "--checkpoint", checkpoint, "-f", "jsonl", stdin=listing, stdin_tty=True
    )
    assert code == 0 and len(out.splitlines()) == 3
    assert "reading paths, URLs or image bytes from standard input (end with Ctrl-D)" in err


def test_nothing_matched_is_found_before_the_model_loads(
    checkpoint, tmp_path, resnext, monkeypatch
) -> None:
    import resnext_cli.run.engine

    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(resnext_cli.run.engine, "load_model", no_model)
    out = tmp_path / "r.jsonl"
    run = resnext("classify", str(tmp_path / "*.jpg"), "--checkpoint", checkpoint, "-o", out)
    assert run.code == 2
    assert run.stderr.splitlines()[-1] == (
        "error: no input matched (give image files, folders, globs or URLs)"
    )
    assert not out.exists()  # no empty file left to trip the next run


def test_output_to_dev_null_is_allowed(checkpoint, photos, resnext) -> None:
    run = resnext("classify", photos, "--checkpoint", checkpoint, "-o", os.devnull, "-q")
    assert run.code == 0, run


def test_a_reader_that_goes_away_ends_the_run_quietly(checkpoint, photos) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "resnext_cli", "classify", str(photos), str(photos),
         "--checkpoint", str(checkpoint), "-b", "1", "--workers", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGPIPE, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert json.loads(first)["input"].endswith("0.jpg")
    assert code == 0, err
    assert "Traceback" not in err and "error" not in err


def test_resume_summary_counts_what_was_done_before(checkpoint, photos, tmp_path, resnext) -> None:
    out = tmp_path / "r.jsonl"
    first = sorted(photos.iterdir())[0]
    assert resnext("classify", first, "--checkpoint", checkpoint, "-o", out).code == 0
    run = resnext("classify", photos, "--checkpoint", checkpoint, "-o", out, "--resume")
    assert run.code == 0, run
    assert run.stderr.startswith("classified 2 of 2 inputs in "), run
    assert "; 1 done before (--resume)" in run.stderr.splitlines()[0]
    assert len(out.read_text().splitlines()) == 3


def test_models_lists_file_names_and_cache_state(resnext) -> None:
    run = resnext("models")
    lines = run.stdout.splitlines()
    row = next(line for line in lines if line.startswith("resnext50_32x4d") and "V2" in line)
    assert row.split()[-2:] == ["no", "resnext50_32x4d-1a0047aa.pth"]
    listed = {w["file"]: w for w in json.loads(resnext("models", "-f", "json").stdout)}
    # The file names torchvision's own metadata gives.
    import torchvision

    for enum in (
        torchvision.models.ResNeXt50_32X4D_Weights,
        torchvision.models.ResNeXt101_64X4D_Weights,
    ):
        for w in enum:
            assert listed[w.url.rsplit("/", 1)[-1]]["cached"] is False


def test_download_offline_says_what_and_where(resnext, isolated_env) -> None:
    run = resnext("download", "-m", "50", "--offline")
    assert run.code == 2
    dest = isolated_env / "hub" / "checkpoints" / "resnext50_32x4d-1a0047aa.pth"
    assert run.stderr == (
        "error: weights file 'resnext50_32x4d-1a0047aa.pth' is not cached and the network is "
        "off (download https://download.pytorch.org/models/resnext50_32x4d-1a0047aa.pth to "
        f"'{dest}', or run without --offline)\n"
    )


def test_conflicting_sort_modes_are_a_usage_error(checkpoint, photos, tmp_path, resnext) -> None:
    for first, second in (("--move", "--link"), ("--link", "--move"), ("--copy", "--move")):
        run = resnext("sort", photos, tmp_path / "dest", first, second, "--checkpoint", checkpoint)
        assert (run.code, run.stdout) == (2, ""), run
        modes = sorted([first, second], key=["--copy", "--link", "--move"].index)
        pair = f"{modes[0][2:]} and {modes[1][2:]}"
        # One line, like every other refusal.
        assert run.stderr == f"error: give one of --copy, --link, --move, not {pair}\n"
        assert not (tmp_path / "dest").exists()


def test_undoing_a_copy_sort_says_the_copies_were_removed(
    checkpoint, photos, tmp_path, resnext
) -> None:
    dest = tmp_path / "dest"
    assert resnext("sort", photos, dest, "--checkpoint", checkpoint, "-q").code == 0
    before = sorted(p.name for p in photos.iterdir())
    run = resnext("sort", "--undo", dest)
    assert run.code == 0, run
    assert run.stderr.strip() == f"removed 3 copies from '{dest}'"
    assert sorted(p.name for p in photos.iterdir()) == before  # the originals stay


def test_ctrl_c_while_sort_classifies_says_nothing_was_filed(
    checkpoint, photos, tmp_path, resnext, monkeypatch
) -> None:
    import resnext_cli.run.engine

    def interrupted(self, sources):
        raise KeyboardInterrupt
        yield  # a generator, as the real one

    monkeypatch.setattr(resnext_cli.run.engine.LocalEngine, "classify_sources", interrupted)
    dest = tmp_path / "dest"
    run = resnext("sort", photos, dest, "--checkpoint", checkpoint)
    assert run.code == 130
    assert run.stderr.strip().splitlines()[-1] == (
        "interrupted while classifying: nothing was filed yet"
    )
    assert not dest.exists() or not any(dest.iterdir())


def test_sorting_the_same_records_twice_says_they_are_there(
    checkpoint, photos, tmp_path, resnext
) -> None:
    out, dest = tmp_path / "r.jsonl", tmp_path / "sorted"
    assert resnext("classify", photos, "--checkpoint", checkpoint, "-o", out, "-q").code == 0
    first = resnext("sort", "--from", out, dest)
    assert first.code == 0 and first.stderr.startswith("copied 3 files into "), first
    again = resnext("sort", "--from", out, dest)
    assert (again.code, again.stderr) == (0, f"3 files already in '{dest}' (skipped)\n")
    assert sum(1 for p in dest.rglob("*.jpg")) == 3


def test_installed_command_runs_as_a_pipeline(checkpoint, folder) -> None:
    """A real process: `find ... | resnext classify - | jq`-style use."""
    listing = "\n".join(expected_order(folder)) + "\n"
    run = subprocess.run(
        [sys.executable, "-m", "resnext_cli", "classify", "-", "--checkpoint", str(checkpoint)],
        input=listing,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["input"] for r in records] == expected_order(folder)
