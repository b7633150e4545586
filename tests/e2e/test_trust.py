"""Records files and journals are strangers' requests (issue 23 §1, §3; issue 24's sort items).

'System files' here are stand-ins in tmp_path: a private file outside the folders given,
a home folder with an .ssh folder. Nothing real is ever named.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnext_cli import sort as sorting
from resnext_cli.results import CategoryScore, Classified, Failed, FileFacts, Prediction
from resnext_cli.sort import SortError, execute, make_plan
from tests.helpers import everything

JOURNAL_NAME = ".resnext-sort-journal.jsonl"  # the README's name for it

SRC = str(Path(__file__).parents[2] / "src")


def record(path: Path, label: str = "tabby", *, identity: bool = True, **kw: object) -> dict:
    st = os.stat(path)
    facts = FileFacts(st.st_size, st.st_mtime_ns) if identity else None
    return Classified(
        str(path), "m", "w", (Prediction(label, 1, 0.9),), path=str(path), file=facts, **kw
    ).to_dict()


def write_records(path: Path, *items: dict) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


# -- §1 a path in a records file ---------------------------------------------------------


@pytest.mark.parametrize("identity", [False, True], ids=["no-identity", "forged-identity"])
def test_a_forged_record_never_moves_a_file_from_outside(world, resnext, identity) -> None:
    project, private = world["project"], world["private"]
    before = private.read_bytes()
    forged = record(private, identity=identity)  # its size and mtime are anyone's to read
    records = write_records(project / "r.jsonl", forged)
    dest = project / "sorted"
    run = resnext("sort", "--move", "--from", records, dest)
    assert run.code == 1, run
    reason = (
        "outside the folders given (add --root FOLDER to file from there)"
        if identity
        else "the record has no 'size' and 'mtime_ns' to know its file by (classify it again)"
    )
    assert run.stderr.splitlines() == [
        f"warning: not sorted: '{private}': {reason}",
        f"error: nothing could be filed from '{records}' (every record was skipped; see above)",
    ]
    assert private.read_bytes() == before
    assert not dest.exists() or everything(dest) == {}


def test_root_names_where_files_may_come_from(world, resnext) -> None:
    photos, tmp = world["photos"], world["tmp"]
    records = write_records(tmp / "elsewhere.jsonl", record(photos / "a.jpg"))
    dest = tmp / "sorted"
    filed = resnext("sort", "--from", records, dest)  # default root: tmp, the records' folder
    assert filed.code == 0, filed
    (tmp / "other").mkdir()
    moved = write_records(tmp / "other" / "r.jsonl", record(photos / "b.jpg"))
    outside = resnext("sort", "--from", moved, tmp / "sorted2")
    assert outside.code == 1 and "add --root FOLDER" in outside.stderr
    inside = resnext("sort", "--from", moved, "--root", photos, tmp / "sorted2")
    assert inside.code == 0, inside
    assert (tmp / "sorted2" / "tabby" / "b.jpg").read_bytes() == (photos / "b.jpg").read_bytes()
    assert "--root FOLDER" in resnext("sort", "--help").stdout


def test_a_photo_swapped_for_a_link_to_a_private_file_is_not_filed(world, resnext) -> None:
    photos, private, project = world["photos"], world["private"], world["project"]
    # The attacker's file has the photo's size and mtime: only the link gives it away.
    secret = project / "secret.txt"
    secret.write_bytes(b"s" * (photos / "a.jpg").stat().st_size)
    st = (photos / "a.jpg").stat()
    os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns))
    records = write_records(project / "r.jsonl", record(photos / "a.jpg"))
    (photos / "a.jpg").unlink()
    (photos / "a.jpg").symlink_to(secret)
    run = resnext("sort", "--from", records, project / "sorted")
    assert run.code == 1
    assert "a symbolic link now, not the file that was classified" in run.stderr
    assert not (project / "sorted" / "tabby").exists()
    assert private.exists()


# -- §1 a journal ----------------------------------------------------------------------------


def test_a_journal_not_written_by_this_tool_is_refused_with_one_line(world, resnext) -> None:
    tmp = world["tmp"]
    home = tmp / "home"
    (home / ".ssh").mkdir(parents=True)
    dest = tmp / "from-an-archive"
    (dest / "x").mkdir(parents=True)
    (dest / "x" / "keys").write_bytes(b"ssh-ed25519 AAAA attacker")
    begin = {"op": "begin", "mode": "move", "time": "t", "dest": str(dest), "src": [str(home)]}
    step = {"op": "step", "n": 0, "mode": "move", "src": str(home / ".ssh" / "authorized_keys"),
            "dst": "x/keys", "input": "k"}  # fmt: skip
    journal = dest / JOURNAL_NAME
    journal.write_text(json.dumps(begin) + "\n" + json.dumps(step) + "\n")
    before = everything(tmp)
    for flag in ("--undo", "--resume"):
        run = resnext("sort", flag, dest)
        assert (run.code, run.stdout) == (2, ""), run
        assert run.stderr == (
            f"error: journal '{journal}' line 1 was not written by resnext for this folder "
            f"with your key ('{sorting.key_path()}'): refused, nothing was touched (remove the "
            f"journal if you did not sort into '{dest}' on this machine)\n"
        )
    assert everything(tmp) == before
    assert not (home / ".ssh" / "authorized_keys").exists()


def test_a_journal_signed_for_another_folder_or_with_another_key(world, monkeypatch) -> None:
    photos, tmp = world["photos"], world["tmp"]
    first = tmp / "first"
    one = Classified(
        str(photos / "a.jpg"), "m", "w", (Prediction("t", 1, 0.9),), path=str(photos / "a.jpg")
    )
    execute(make_plan([one], first, sources=[photos]))
    second = tmp / "second"
    second.mkdir()
    (second / JOURNAL_NAME).write_bytes((first / JOURNAL_NAME).read_bytes())  # a copy
    with pytest.raises(SortError, match="line 1 was not written by resnext for this folder"):
        sorting.undo(second)
    assert sorting.Journal(first).read()  # the original still proves itself
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp / "another-machine"))
    with pytest.raises(SortError, match="line 1 was not written by resnext for this folder"):
        sorting.undo(first)
    assert (first / "t" / "a.jpg").exists()


# -- §3 nothing held back ---------------------------------------------------------------------


_WRITER = """
import sys, time
from pathlib import Path
from resnext_cli.files import OutputTarget
out = OutputTarget.claim(Path(sys.argv[1]), force=True)
raw = out.stream()
raw.write(open(sys.argv[2], 'rb').read())
print("writing", flush=True)
time.sleep(60)
"""


def test_sort_from_refuses_records_another_run_is_still_writing(world, resnext) -> None:
    photos, project = world["photos"], world["project"]
    ready = write_records(project / "ready.jsonl", record(photos / "a.jpg"))
    records = project / "r.jsonl"
    env = {**os.environ, "PYTHONPATH": SRC}
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(records), str(ready)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"writing\n"
        run = resnext("sort", "--from", records, project / "sorted")
        assert (run.code, run.stdout) == (2, "")
        assert run.stderr == (
            f"error: records file '{records}' is being written by another resnext run (wait "
            "for it to finish, then sort)\n"
        )
        assert not (project / "sorted").exists()
    finally:
        writer.kill()
        writer.wait()


HOSTILE = {
    "nul": ('{"input": "x", "path": "/tmp/a\\u0000b", "error": {"type": "t", "message": "m"}}',
            "'path' holds a NUL or a character no file name can have"),
    "surrogate": ('{"input": "x", "path": "/tmp/\\ud800.jpg", "error": {"type": "t", '
                  '"message": "m"}}', "'path' holds a NUL or a character no file name can have"),
    "deep": ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
    "nan": ('{"input": "x", "model": "m", "weights": "w", "predictions": [{"label": "a", '
            '"index": 1, "probability": NaN}]}', "NaN is not a number"),
    "huge": (" " * (16 << 20) + "{}", "the line is too long"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_records_end_with_exit_2_naming_the_line(tmp_path, resnext, case) -> None:
    line, why = HOSTILE[case]
    ok = json.dumps(Failed("ok", "t", "m").to_dict())
    path = tmp_path / "r.jsonl"
    path.write_text(ok + "\n" + line + "\n")
    run = resnext("sort", "--from", path, tmp_path / "sorted")
    assert (run.code, run.stdout) == (2, ""), run
    assert run.stderr == (
        f"error: '{path}' line 2 is not a record of 'resnext classify' ({why}); give the JSON "
        "Lines or JSON file that 'resnext classify -o' wrote\n"
    )
    resumed = resnext("classify", tmp_path / "none.jpg", "-o", path, "--resume")
    assert (resumed.code, resumed.stdout) == (2, ""), resumed
    assert resumed.stderr == (
        f"error: '{path}' line 2 is not a result record ({why}) (cannot --resume it; give the "
        "-o file of an earlier run)\n"
    )
    assert "unexpected" not in run.stderr + resumed.stderr


# -- issue 24: sort's options -----------------------------------------------------------------


def test_dry_run_undo_and_resume_touch_nothing(world, resnext, monkeypatch) -> None:
    photos, tmp = world["photos"], world["tmp"]
    dest = tmp / "sorted"
    recs = [Classified(str(photos / n), "m", "w", (Prediction("cat", 1, 0.9),),
                       path=str(photos / n)) for n in ("a.jpg", "b.jpg")]  # fmt: skip
    plan = make_plan(recs, dest, mode="move", sources=[photos])
    import resnext_cli.sort.apply as apply

    real = apply._run_step
    calls = 0

    def crash(*args):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return real(*args)

    with monkeypatch.context() as patched:
        patched.setattr(apply, "_run_step", crash)
        with pytest.raises(KeyboardInterrupt):
            execute(plan)
    before = everything(tmp)
    resumed = resnext("sort", "--resume", dest, "-n")
    assert resumed.code == 0, resumed
    assert resumed.stdout == f"move {photos / 'b.jpg'} -> {dest.resolve() / 'cat' / 'b.jpg'}\n"
    undone = resnext("sort", "--undo", dest, "--dry-run")
    assert undone.code == 0, undone
    assert undone.stdout == f"put back {dest.resolve() / 'cat' / 'a.jpg'} -> {photos / 'a.jpg'}\n"
    assert everything(tmp) == before
    assert resnext("sort", "--resume", dest).code == 0  # and the real thing still works
    assert resnext("sort", "--undo", dest).code == 0
    assert sorted(p.name for p in photos.iterdir()) == ["a.jpg", "b.jpg"]


def test_sort_from_without_dest_says_what_is_missing(tmp_path: Path, resnext) -> None:
    run = resnext("sort", "--from", tmp_path / "r.jsonl")
    assert (run.code, run.stdout) == (2, "")
    assert run.stderr == (
        f"error: --from RECORDS needs DEST, the folder to sort into (resnext sort --from "
        f"{tmp_path / 'r.jsonl'} DEST)\n"
    )


def test_by_category_from_records_without_categories_is_refused_at_once(world, resnext) -> None:
    photos, project = world["photos"], world["project"]
    with_cats = record(photos / "a.jpg", categories=(CategoryScore("cat", 0.9),))
    without = record(photos / "b.jpg")
    records = write_records(project / "r.jsonl", with_cats, without)
    run = resnext("sort", "--from", records, "--by", "category", project / "sorted")
    assert (run.code, run.stdout) == (2, "")
    assert run.stderr == (
        f"error: --by category needs records with categories, and '{photos / 'b.jpg'}' in "
        f"'{records}' has none (classify with --categories, or sort with --by label)\n"
    )
    assert not (project / "sorted").exists()


def test_dest_inside_src_is_skipped_when_src_is_walked(make_image, checkpoint, tmp_path, resnext):
    photos = tmp_path / "photos"
    for seed in range(3):
        make_image(f"{seed}.jpg", seed=seed, size=(64, 48), folder=photos)
    dest = photos / "sorted"
    first = resnext("sort", photos, dest, "--checkpoint", checkpoint)
    assert first.code == 0, first
    again = resnext("sort", photos, dest, "--checkpoint", checkpoint)
    assert again.code == 0, again
    assert "warning" not in again.stderr
    assert "3 files already in" in again.stderr
    copies = [p for p in dest.rglob("*.jpg")]
    assert len(copies) == 3


def test_a_full_dest_ends_with_one_line_and_undo_still_works(world, resnext, monkeypatch) -> None:
    import errno

    photos, project = world["photos"], world["project"]
    records = write_records(project / "r.jsonl", record(photos / "a.jpg"), record(photos / "b.jpg"))
    dest = project / "sorted"
    before = everything(photos)

    def full(self, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:  # no room even for the journal's plan
        patched.setattr(sorting.Journal, "_append", full)
        run = resnext("sort", "--move", "--from", records, dest)
    assert (run.code, run.stdout) == (2, ""), run
    assert run.stderr.splitlines() == [
        f"error: cannot write the journal in '{dest}': no space left on device (nothing more "
        f"was done; free space, then 'resnext sort --resume {dest}' or 'resnext sort --undo "
        f"{dest}')"
    ]
    assert everything(photos) == before
    assert resnext("sort", "--move", "--from", records, dest).code == 0
    assert everything(photos) == {}
    with monkeypatch.context() as patched:  # DEST full again: undo frees before it writes
        patched.setattr(sorting.Journal, "_append", full)
        undone = resnext("sort", "--undo", dest)
        assert undone.code == 0, undone
        resumed = resnext("sort", "--resume", dest)
        assert resumed.code == 2 and "has no sort journal" in resumed.stderr
    assert everything(photos) == before


@pytest.mark.parametrize("flag", ["--undo", "--resume"])
def test_undo_and_resume_refuse_from_and_root(tmp_path: Path, resnext, flag) -> None:
    run = resnext("sort", flag, tmp_path / "sorted", "--root", tmp_path)
    assert (run.code, run.stdout) == (2, "")
    assert run.stderr == f"error: {flag} follows DEST's journal and takes only DEST; drop --root\n"
