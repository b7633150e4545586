"""resnext sort: safe names, no overwrites, copy/link/move, and crash-safe resume and undo.

Every test that touches files compares the set of (relative path, sha256) before and after:
a sort may add copies or move files, but never lose, change or duplicate one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resnext_cli import sort as sorting
from resnext_cli.results import Classified, Failed, Prediction, Record
from resnext_cli.sort import (
    JOURNAL_NAME,
    SortError,
    execute,
    folder_for,
    make_plan,
    resume,
    safe_name,
    undo,
    unfinished,
)

Tree = set[tuple[str, str]]


def tree(root: Path) -> Tree:
    """Every file below *root* (the journal aside) as (relative path, sha256)."""
    return {
        (p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in root.rglob("*")
        if p.is_file() and p.name != JOURNAL_NAME
    }


def contents(*trees: Tree) -> Counter[str]:
    return Counter(digest for t in trees for _, digest in t)


def found(root: Path) -> Tree:
    return tree(root) if root.exists() else set()


def seen(path: Path, label: str, p: float = 0.9, index: int = 1) -> Classified:
    return Classified(
        str(path), "m", "w", (Prediction(label, index, p),), path=str(path.absolute())
    )


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Files with distinct bytes (sort never decodes them), two with the same name."""
    root = tmp_path / "photos"
    for rel in ["a.jpg", "b.jpg", "c.png", "sub/a.jpg", "sub/d.jpg", "broken.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(f"bytes of {rel}\n".encode() * 50)
    return root


def labelled(photos: Path) -> list[Record]:
    return [
        seen(photos / "a.jpg", "tabby, tabby cat"),
        seen(photos / "b.jpg", "Crane"),
        seen(photos / "c.png", "crane", p=0.2),  # uncertain below 0.5
        seen(photos / "sub/a.jpg", "tabby, tabby cat"),
        seen(photos / "sub/d.jpg", "crane", index=134),
        Failed(str(photos / "broken.jpg"), "truncated", "cut", path=str(photos / "broken.jpg")),
    ]


def threshold(records: list[Record], p: float = 0.5) -> list[Record]:
    from resnext_cli.results import apply_threshold

    return [apply_threshold(r, p) for r in records]


EXPECTED = {
    "tabby, tabby cat/a.jpg": "a.jpg",
    "tabby, tabby cat/a (1).jpg": "sub/a.jpg",
    "Crane/b.jpg": "b.jpg",
    "Crane/d.jpg": "sub/d.jpg",  # 'crane' joins 'Crane': one folder on macOS and Windows
    "_uncertain/c.png": "c.png",
    "_failed/broken.jpg": "broken.jpg",
}


def placed(photos: Path, before: Tree) -> Tree:
    digest = dict(before)
    return {(dst, digest[src]) for dst, src in EXPECTED.items()}


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("tabby, tabby cat", "tabby, tabby cat"),
        ("jack-o'-lantern", "jack-o'-lantern"),
        ("a/b\\c", "a_b_c"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("..", "_"),
        ("", "_"),
        ("   ", "_"),
        (".hidden", "hidden"),
        (". .x", "x"),
        ("a\u00a0b", "a b"),
        ("\ud7fc", "_"),
        ('say "cheese"', "say _cheese_"),
        ("a<b>c:d|e?f*g", "a_b_c_d_e_f_g"),
        ("nul\x00byte\x1b[31m", "nul_byte_[31m"),
        ("trailing. . ", "trailing"),
        ("CON", "_CON"),
        ("com1.txt", "_com1.txt"),
        ("Lpt9", "_Lpt9"),
        ("console", "console"),
        ("\u202egpj.exe", "_gpj.exe"),
        ("cafe\u0301", "caf\u00e9"),
        ("line\nbreak", "line_break"),
    ],
)
def test_safe_name(text: str, name: str) -> None:
    assert safe_name(text) == name


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_label_is_one_name_inside_dest(text: str) -> None:
    name = safe_name(text)
    assert name and name == safe_name(name)  # idempotent
    assert not set(name) & set('/\\<>:"|?*\x00') and name.isprintable()
    assert not name.startswith(".") and not name.endswith((".", " "))
    assert len(name.encode("utf-8")) <= 240
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp).resolve()
        (dest / name).mkdir()
        assert [p.name for p in dest.iterdir()] == [name]
        assert (dest / name).resolve().parent == dest


def test_special_folders_and_keys(photos: Path) -> None:
    assert folder_for(seen(photos / "a.jpg", "_Failed")) == "_Failed (label)"
    assert folder_for(seen(photos / "a.jpg", "crane", index=134), by="index") == "134"
    assert folder_for(threshold([seen(photos / "a.jpg", "crane", p=0.1)])[0]) == "_uncertain"


# -- plans ---------------------------------------------------------------------------------


def test_plan_names_clashes_and_skips(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    (dest / "CRANE").mkdir(parents=True)
    (dest / "CRANE" / "B.JPG").write_bytes(b"someone else's file")
    (dest / "tabby, tabby cat").write_bytes(b"a file where a folder would go")
    records = threshold(labelled(photos))
    records += [
        Classified("https://example.test/x.jpg", "m", "w", (Prediction("x", 1, 0.9),)),
        Failed(str(photos / "gone.jpg"), "not_found", "gone", path=str(photos / "gone.jpg")),
        seen(photos / "a.jpg", "again"),
        seen(dest / "CRANE" / "B.JPG", "crane"),
    ]
    plan = make_plan(records, dest)
    assert {s.target: s.source for s in plan.steps} == {
        "tabby, tabby cat (1)/a.jpg": (photos / "a.jpg").absolute(),
        "tabby, tabby cat (1)/a (1).jpg": (photos / "sub/a.jpg").absolute(),
        "CRANE/b (1).jpg": (photos / "b.jpg").absolute(),
        "CRANE/d.jpg": (photos / "sub/d.jpg").absolute(),
        "_uncertain/c.png": (photos / "c.png").absolute(),
        "_failed/broken.jpg": (photos / "broken.jpg").absolute(),
    }
    assert plan.skipped == [
        ("https://example.test/x.jpg", "not a file (a URL or standard input)"),
        (str(photos / "gone.jpg"), "no such file"),
        (str(photos / "a.jpg"), "given twice"),
        (str(dest / "CRANE" / "B.JPG"), "already inside the destination"),
    ]
    assert not (dest / "_failed").exists()  # planning touches nothing


def test_unsafe_labels_stay_inside_dest(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "sorted").mkdir()
    (dest / "link").symlink_to(outside)  # a folder in DEST that leads out of it
    labels = ["../../escape", "/etc", "link", "CON", 'a"b', "\x00"]
    files = sorted(p for p in photos.rglob("*") if p.is_file())
    before = tree(photos)
    plan = make_plan([seen(f, label) for f, label in zip(files, labels, strict=True)], dest)
    assert sorted(s.folder for s in plan.steps) == sorted(
        ["_.._escape", "_etc", "link (1)", "_CON", "a_b", "_"]
    )
    execute(plan)
    assert list(outside.iterdir()) == []
    root = dest.resolve()
    assert all(p.resolve().is_relative_to(root) for p in dest.rglob("*") if not p.is_symlink())
    assert tree(photos) == before and contents(tree(dest)) == contents(before)


# -- copy, link, move ------------------------------------------------------------------------


def refuse_links(monkeypatch) -> None:
    """Act as if DEST were on another file system: no hard links into it."""

    def no_links(*_args: object, **_kw: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)


def test_copy_keeps_sources_and_never_overwrites(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    outcome = execute(make_plan(threshold(labelled(photos)), dest))
    assert tree(photos) == before
    assert tree(dest) == placed(photos, before)
    assert (len(outcome.done), outcome.folders, outcome.problems) == (6, 4, [])
    # A second sort of the same files into the same place adds numbered copies only.
    execute(make_plan(threshold(labelled(photos)), dest))
    again = tree(dest)
    assert placed(photos, before) < again and len(again) == 12
    assert ("Crane/b (1).jpg", dict(before)["b.jpg"]) in again
    lines = [json.loads(line) for line in (dest / JOURNAL_NAME).read_text().splitlines()]
    assert Counter(line["op"] for line in lines) == {"begin": 2, "step": 12, "done": 12, "end": 2}


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


@pytest.mark.parametrize("cross_device", [False, True])
def test_move_and_undo_restore_the_tree(
    photos: Path, tmp_path: Path, monkeypatch, cross_device
) -> None:
    if cross_device:  # no hard links: every move is a copy, then the source goes
        refuse_links(monkeypatch)
    dest = tmp_path / "sorted"
    before = tree(photos)
    outcome = execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    assert len(outcome.done) == 6 and tree(photos) == set()
    assert tree(dest) == placed(photos, before)
    assert undo(dest).problems == []
    assert tree(photos) == before
    assert list(dest.iterdir()) == []  # journal and emptied folders gone


def test_by_index(photos: Path, tmp_path: Path) -> None:
    plan = make_plan(threshold(labelled(photos))[:5], tmp_path / "s", by="index")
    assert sorted(s.target for s in plan.steps) == [
        "1/a (1).jpg",
        "1/a.jpg",
        "1/b.jpg",
        "134/d.jpg",
        "_uncertain/c.png",
    ]


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


# -- crashes ---------------------------------------------------------------------------------


class Crash(BaseException):
    """Stands in for the process dying at a chosen instant."""


def crash_on(monkeypatch, target: object, name: str, call: int, *, after: bool = False) -> None:
    """Make the *call*-th call of target.name die: before it does anything, or just after."""
    real = getattr(target, name)
    calls = 0

    def fake(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == call and not after:
            raise Crash
        result = real(*args, **kwargs)
        if calls == call:
            raise Crash
        return result

    monkeypatch.setattr(target, name, fake)


@pytest.mark.parametrize("finish", ["resume", "undo"])
def test_crash_between_link_and_unlink(
    photos: Path, tmp_path: Path, monkeypatch, finish: str
) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    crash_on(monkeypatch, os, "link", 3, after=True)  # the third move dies in both places
    with pytest.raises(Crash):
        execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    monkeypatch.undo()
    assert contents(before) <= contents(tree(photos), tree(dest))  # nothing lost
    assert len(unfinished(dest)) == 4
    with pytest.raises(SortError, match="has an unfinished sort"):
        execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    if finish == "resume":
        outcome = resume(dest)
        assert len(outcome.done) == 4 and outcome.problems == []
        assert tree(photos) == set() and tree(dest) == placed(photos, before)
        assert unfinished(dest) == []
        undo(dest)
    else:
        assert undo(dest).problems == []
    assert tree(photos) == before and found(dest) == set()


def test_crash_in_a_cross_device_copy_leaves_no_half_file(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    refuse_links(monkeypatch)
    crash_on(monkeypatch, sorting.shutil, "copyfileobj", 2)
    with pytest.raises(Crash):
        execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    # A kill -9 would leave the temporary file behind: put one there as it would be.
    step = unfinished(dest)[0]
    (dest / step.folder).mkdir(exist_ok=True)
    (dest / step.folder / f".resnext-part-{step.n}").write_bytes(b"half a fi")
    resume(dest)
    assert tree(photos) == set() and tree(dest) == placed(photos, before)
    undo(dest)
    assert tree(photos) == before


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
    (dest / JOURNAL_NAME).write_text('{"op": "step"}\n{"op": "end"}\n')
    with pytest.raises(SortError, match="line 1 is damaged"):
        unfinished(dest)


# -- the command -----------------------------------------------------------------------------


UNSAFE_LABELS = [
    "a/b",
    "../up",
    "CON",
    "Crane",
    "crane",
    'say "hi"',
    "dot.",
    "_failed",
    "ok",
    "x:y",
]


@pytest.fixture
def unsafe_run(checkpoint10, make_image, tmp_path) -> tuple[Path, Path, list[str]]:
    folder = tmp_path / "photos"
    for seed in range(8):
        make_image(
            f"img{seed}.jpg", seed=seed, size=(80, 64), folder=folder / ("sub" if seed > 5 else "")
        )
    make_image("img0.jpg", seed=20, size=(64, 64), folder=folder / "again")  # a name clash
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not an image")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(UNSAFE_LABELS) + "\n")
    return folder, labels, ["--checkpoint", str(checkpoint10), "--labels", str(labels)]


def test_sort_command_dry_run_then_copy(unsafe_run, tmp_path, resnext) -> None:
    folder, _, model = unsafe_run
    reference = resnext("classify", folder, *model, "-f", "jsonl", "-q")
    records = [json.loads(line) for line in reference.stdout.splitlines()]
    p = sorted(r["predictions"][0]["probability"] for r in records if "predictions" in r)[3]
    want, spelled = {}, {}
    for r in records:
        if "error" in r:
            want[r["input"]] = "_failed"
        elif r["predictions"][0]["probability"] < p:
            want[r["input"]] = "_uncertain"
        else:
            name = safe_name(r["predictions"][0]["label"])
            name = "_failed (label)" if name == "_failed" else name
            want[r["input"]] = spelled.setdefault(name.casefold(), name)  # Crane = crane
    dest = tmp_path / "sorted"
    before = tree(folder)

    dry = resnext("sort", folder, dest, *model, "--min-probability", str(p), "--dry-run", "-q")
    assert dry.code == 1, dry  # one input failed; it is still planned into _failed
    assert not dest.exists()
    plan = {}
    for line in dry.stdout.splitlines():
        mode, rest = line.split(" ", 1)
        source, target = rest.split(" -> ")
        assert mode == "copy" and target.startswith(f"{dest}/")
        plan[source] = target[len(f"{dest}/") :]
    assert {s: t.split("/")[0] for s, t in plan.items()} == want
    assert sorted(Path(t).name for t in plan.values() if Path(t).name.startswith("img0")) in (
        ["img0.jpg"] * 2,
        ["img0 (1).jpg", "img0.jpg"],
    )
    folders = set(want.values())
    assert folders <= {"_failed", "_uncertain", "a_b", "_.._up", "_CON", "Crane", "crane"} | {
        "say _hi_",
        "dot",
        "_failed (label)",
        "ok",
        "x_y",
    }

    run = resnext("sort", folder, dest, *model, "--min-probability", str(p))
    assert run.code == 1, run
    assert tree(folder) == before
    digest = dict(before)
    assert tree(dest) == {
        (t, digest[Path(s).relative_to(folder).as_posix()]) for s, t in plan.items()
    }
    assert f"copied 10 files into {len(folders)} folders in '{dest}'" in run.stderr.splitlines()
    again = resnext("sort", folder, dest, *model, "--by", "index", "--link", "-q")
    assert again.code == 1 and len(tree(dest)) == 20 and tree(folder) == before
    added = set(os.listdir(dest)) - folders - {JOURNAL_NAME}
    assert added and all(name.isdigit() for name in added)
    assert {int(name) for name in added} <= set(range(len(UNSAFE_LABELS)))


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
    env = {**os.environ, "RESNEXT_TEST_SORT_STEP_DELAY": "2"}
    args = ["sort", str(folder), str(dest), "--move", "--checkpoint", str(checkpoint), "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "resnext_cli", *args], env=env)
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


def test_sort_command_usage(tmp_path, resnext) -> None:
    dest = tmp_path / "sorted"
    assert resnext("sort", dest).code == 2
    assert resnext("sort", "--undo", dest).stderr.strip() == (
        f"error: '{dest}' has no sort journal (nothing to undo)"
    )
    both = resnext("sort", "--undo", "--resume", dest)
    assert both.code == 2 and "give --resume or --undo, not both" in both.stderr
    (tmp_path / "file").write_text("x")
    notdir = resnext("sort", tmp_path, tmp_path / "file")
    assert (
        notdir.stderr.strip()
        == f"error: destination '{tmp_path / 'file'}' is not a folder (give a folder)"
    )
