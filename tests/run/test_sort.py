"""run/sort.py: `resnext sort` run in-process, its dry run, usage, undo report and refusals."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from resnext_cli.sort import (
    JOURNAL_NAME,
    execute,
    make_plan,
    safe_name,
    undo,
    unfinished,
)
from tests.helpers import found, labelled, plant, planted_journals, refused, threshold, tree
from tests.sort import conftest as sort_fixtures

# The sort tests' fixtures, not the root conftest's photos: pytest takes them from here.
photos = sort_fixtures.photos
shared = sort_fixtures.shared


def test_a_planted_journal_through_the_command(shared, resnext) -> None:
    photos, dest, other = shared
    lines, line, why = planted_journals(photos, dest, other)[1]
    plant(dest, *lines)
    for flag in ("--undo", "--resume"):
        run = resnext("sort", flag, dest)
        assert (run.code, run.stderr.strip()) == (2, f"error: {refused(dest, line, why)}"), run
    assert not (other / "new.txt").exists() and tree(dest) == {
        ("x/payload.txt", hashlib.sha256(b"planted content").hexdigest())
    }


# -- undo after changes in DEST --------------------------------------------------------------


def test_undo_reports_what_was_renamed_or_deleted_and_keeps_it(
    photos: Path, tmp_path: Path, resnext
) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    execute(make_plan(threshold(labelled(photos)), dest, mode="move"))
    (dest / "Crane" / "b.jpg").rename(dest / "Crane" / "renamed.jpg")
    kept = (dest / "_uncertain" / "c.png").read_bytes()
    (dest / "_uncertain" / "c.png").unlink()
    outcome = undo(dest)
    gone = "is no longer in '{}' (renamed or deleted there?); cannot put it back"
    assert sorted((s.target, r) for s, r in outcome.problems) == [
        ("Crane/b.jpg", f"'Crane/b.jpg' {gone.format(dest.resolve())}"),
        ("_uncertain/c.png", f"'_uncertain/c.png' {gone.format(dest.resolve())}"),
    ]
    assert len(outcome.done) == len(outcome.restored) == 4 and outcome.mode == "move"
    assert tree(photos) == {(rel, d) for rel, d in before if rel not in ("b.jpg", "c.png")}
    assert len(unfinished(dest)) == 0 and (dest / JOURNAL_NAME).exists()
    # A second undo still finds both; the command says so and exits 1.
    run = resnext("sort", "--undo", dest)
    assert run.code == 1 and "'Crane/b.jpg'" in run.stderr, run
    assert "'_uncertain/c.png'" in run.stderr and (dest / JOURNAL_NAME).exists()
    # Put back by hand under their old names, the undo completes and the journal goes.
    (dest / "Crane" / "renamed.jpg").rename(dest / "Crane" / "b.jpg")
    (dest / "_uncertain" / "c.png").write_bytes(kept)
    outcome = undo(dest)
    assert outcome.problems == [] and len(outcome.done) == len(outcome.restored) == 2
    assert tree(photos) == before and found(dest) == set()


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
    # 9 new links in index folders; broken.jpg is in _failed/ already, so not filed twice.
    assert again.code == 1 and len(tree(dest)) == 19 and tree(folder) == before
    added = set(os.listdir(dest)) - folders - {JOURNAL_NAME}
    assert added and all(name.isdigit() for name in added)
    assert {int(name) for name in added} <= set(range(len(UNSAFE_LABELS)))


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
