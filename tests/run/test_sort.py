"""run/sort.py: `resnext sort` run in-process, its dry run, usage, undo report and refusals."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from resnext_cli.console import Console
from resnext_cli.errors import ConfigError, Terminated
from resnext_cli.outputs.summary import RunSummary
from resnext_cli.results import CategoryScore, Classified, Failed, Prediction, Record
from resnext_cli.reviewed import Reviewed
from resnext_cli.run import sort as sort_run
from resnext_cli.run.config import Config
from resnext_cli.run.sort import SortRequest, run_sort
from resnext_cli.sort import (
    JOURNAL_NAME,
    FilingPlan,
    Outcome,
    SortError,
    Step,
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


# -- run_sort in-process: each message, each refusal, what it hands the sort package ------
#
# The sort package's own functions are replaced by fakes that record their calls, so each
# test decides what the package answers and checks what run/sort.py makes of it. Every
# expected message below is written out by hand.

NO_INPUT_LINE = "error: no input matched (give image files, folders, globs or URLs)\n"


def on_streams(
    *, quiet: bool = False, color: bool = False
) -> tuple[Console, io.StringIO, io.StringIO]:
    """A real console on in-memory streams: (console, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    console = Console.on(
        io.BytesIO(),
        out,
        err,
        width=400,
        force_terminal=color,
        color_system="standard" if color else None,
    )
    console.quiet = quiet
    return console, out, err


def step(n: int, target: str, *, mode: str = "copy", source: str | None = None) -> Step:
    return Step(n, mode, Path(source or f"/src/{n}.jpg"), target, input=f"in{n}.jpg")


def seen_record(name: str, label: str = "cat", **more: Any) -> Classified:
    return Classified(name, "m", "w", (Prediction(label, 1, 0.9),), path=f"/src/{name}", **more)


def reviewed_record(name: str, review: str | None) -> Reviewed:
    return Reviewed(name, "m", "w", (Prediction("cat", 1, 0.9),), review=review)


class Fakes:
    """The sort package's functions as run/sort.py calls them, recorded; each answer set
    by the test (a function that is called without an answer fails the test)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.plan = FilingPlan(Path("unset"), "copy")
        self.outcome = Outcome()
        self.records: tuple[list[Record], list[tuple[str, str]]] = ([], [])
        self.classified: tuple[list[Record], RunSummary] | None = None
        self.preview: list[tuple[str, Path, Path]] = []
        self.raise_in_execute: BaseException | None = None

        def record(name: str, answer: Any) -> Any:
            def fake(*args: Any, **kwargs: Any) -> Any:
                self.calls.append((name, (args, kwargs)))
                got = answer()
                if isinstance(got, BaseException):
                    raise got
                return got

            return fake

        for name, answer in {
            "check_dest": lambda: None,
            "records_from_file": lambda: self.records,
            "make_plan": lambda: self.plan,
            "execute": lambda: self.raise_in_execute or self.outcome,
            "resume": lambda: self.outcome,
            "undo": lambda: self.outcome,
            "preview_resume": lambda: self.preview,
            "preview_undo": lambda: self.preview,
        }.items():
            monkeypatch.setattr(sort_run.sorting, name, record(name, answer))
        monkeypatch.setattr(
            sort_run, "classify_for_sort", record("classify", lambda: self.classified)
        )

        def summary(summary: RunSummary, console: Console, *, report: str | None) -> None:
            self.calls.append(("print_summary", ((summary,), {"report": report})))
            console.say(f"(summary of {summary.total}, report {report})")

        monkeypatch.setattr(sort_run, "print_summary", summary)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def kwargs(self, name: str) -> dict[str, Any]:
        ((args, kwargs),) = [call for n, call in self.calls if n == name]
        return {"args": args, **kwargs}


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    return Fakes(monkeypatch)


def summary_of(*records: Record) -> RunSummary:
    summary = RunSummary()
    for record in records:
        summary.add(record)
    return summary


def test_sort_request_defaults() -> None:
    r = SortRequest(("d",))
    assert (r.paths, r.mode, r.by, r.records, r.dry_run, r.resume, r.undo) == (
        ("d",),
        "copy",
        "label",
        None,
        False,
        False,
        False,
    )
    assert (r.min_probability, r.report, r.unreviewed, r.roots) == (None, None, None, ())


RESUME_OR_UNDO_REFUSALS = [
    (dict(paths=("d",), resume=True, undo=True), "give --resume or --undo, not both"),
    (dict(paths=("a", "d"), undo=True), "--undo takes only DEST"),
    (dict(paths=(), resume=True), "--resume takes only DEST"),
    (dict(paths=("a", "d"), resume=True), "--resume takes only DEST"),
    (
        dict(paths=("d",), undo=True, records="r.jsonl"),
        "--undo takes only DEST (the journal says where the files came from)",
    ),
    (
        dict(paths=("d",), resume=True, roots=("root",)),
        "--resume takes only DEST (the journal says where the files came from)",
    ),
]


@pytest.mark.parametrize(
    ("options", "message"),
    RESUME_OR_UNDO_REFUSALS,
    ids=[
        "both",
        "undo-two-paths",
        "resume-no-path",
        "resume-two-paths",
        "undo-records",
        "resume-root",
    ],
)
def test_resume_and_undo_refuse_what_they_do_not_take(fakes: Fakes, options, message) -> None:
    console, out, err = on_streams()
    with pytest.raises(ConfigError) as caught:
        run_sort(SortRequest(**options), None, console)
    assert str(caught.value) == message
    assert fakes.calls == [] and out.getvalue() == err.getvalue() == ""


def test_resume_says_what_it_finished(fakes: Fakes, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    fakes.outcome = Outcome(done=[step(1, "Cat/a.jpg"), step(2, "cat/b.jpg"), step(3, "Dog/c.jpg")])
    console, out, err = on_streams()
    assert run_sort(SortRequest((str(dest),), resume=True), None, console) == 0
    assert fakes.calls == [("resume", ((dest,), {}))]
    assert err.getvalue() == f"finished 3 files into 2 folders in '{dest}'\n"
    assert out.getvalue() == ""


def test_resume_with_problems_says_each_and_exits_1(fakes: Fakes, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    fakes.outcome = Outcome(
        done=[step(1, "Cat/a.jpg")],
        problems=[(step(2, "Dog/b.jpg", source="/src/b.jpg"), "it is gone")],
    )
    console, out, err = on_streams(quiet=True)
    assert run_sort(SortRequest((str(dest),), resume=True), None, console) == 1
    # Quiet: the problems still, the count not.
    assert err.getvalue() == "error: '/src/b.jpg': it is gone\n" and out.getvalue() == ""


@pytest.mark.parametrize(
    ("restored", "removed", "said"),
    [
        ([], [], "nothing to undo"),
        (["move", "move"], [], "put back 2 files"),
        ([], ["link"], "removed 1 links"),
        ([], ["copy", "copy", "move"], "removed 2 copies"),
        (
            ["move"],
            ["copy", "link", "link", "copy", "copy"],
            "put back 1 files, removed 3 copies, removed 2 links",
        ),
    ],
    ids=["nothing", "put-back", "links", "copies", "all"],
)
def test_undo_says_what_it_put_back_and_removed(
    fakes: Fakes, tmp_path: Path, restored, removed, said
) -> None:
    dest = tmp_path / "sorted"
    back = [step(i, "A/x.jpg", mode=m) for i, m in enumerate(restored)]
    gone = [step(10 + i, "A/y.jpg", mode=m) for i, m in enumerate(removed)]
    fakes.outcome = Outcome(done=back + gone, restored=back, removed=gone)
    console, out, err = on_streams()
    assert run_sort(SortRequest((str(dest),), undo=True), None, console) == 0
    assert fakes.calls == [("undo", ((dest,), {}))]
    assert err.getvalue() == f"{said} from '{dest}'\n" and out.getvalue() == ""


def test_undo_with_problems_says_each_and_exits_1(fakes: Fakes, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    first, second = step(1, "A/a.jpg", source="/s/a.jpg"), step(2, "B/b.jpg", source="/s/b.jpg")
    fakes.outcome = Outcome(problems=[(first, "renamed there"), (second, "no room")])
    console, _, err = on_streams()
    assert run_sort(SortRequest((str(dest),), undo=True), None, console) == 1
    assert err.getvalue() == (
        "error: '/s/a.jpg': renamed there\n"
        "error: '/s/b.jpg': no room\n"
        f"nothing to undo from '{dest}'\n"
    )


def test_undo_dry_run_lists_each_action_escaped_and_touches_nothing(
    fakes: Fakes, tmp_path: Path
) -> None:
    dest = tmp_path / "sorted"
    fakes.preview = [
        ("put back", Path("/d/Cat/a\x1b.jpg"), Path("/s/a\x07.jpg")),
        ("remove", Path("/d/Dog/b\x1b.jpg"), Path("/s/b.jpg")),
    ]
    console, out, err = on_streams()
    assert run_sort(SortRequest((str(dest),), undo=True, dry_run=True), None, console) == 0
    assert fakes.calls == [("preview_undo", ((dest,), {}))]
    assert out.getvalue() == (
        "put back /d/Cat/a\\x1b.jpg -> /s/a\\x07.jpg\nremove /d/Dog/b\\x1b.jpg\n"
    )
    assert err.getvalue() == ""


def test_resume_dry_run_lists_each_step_escaped_and_touches_nothing(
    fakes: Fakes, tmp_path: Path
) -> None:
    dest = tmp_path / "sorted"
    fakes.preview = [
        ("copy", Path("/s/a\x1b.jpg"), Path("/d/Cat/a\x07.jpg")),
        ("move", Path("/s/b.jpg"), Path("/d/Dog/b.jpg")),
    ]
    console, out, err = on_streams()
    assert run_sort(SortRequest((str(dest),), resume=True, dry_run=True), None, console) == 0
    assert fakes.calls == [("preview_resume", ((dest,), {}))]
    assert (
        out.getvalue() == "copy /s/a\\x1b.jpg -> /d/Cat/a\\x07.jpg\nmove /s/b.jpg -> /d/Dog/b.jpg\n"
    )
    assert err.getvalue() == ""


def test_a_real_undo_dry_run_then_undo(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    before = tree(photos)
    execute(make_plan(threshold(labelled(photos)), dest, mode="copy"))
    (dest / "Crane" / "b.jpg").unlink()  # a copy already gone is not listed
    console, out, err = on_streams()
    assert run_sort(SortRequest((str(dest),), undo=True, dry_run=True), None, console) == 0
    root = dest.resolve()
    assert sorted(out.getvalue().splitlines()) == sorted(
        f"remove {root / t}"
        for t in (
            "tabby, tabby cat/a.jpg",
            "tabby, tabby cat/a (1).jpg",
            "Crane/d.jpg",
            "_uncertain/c.png",
            "_failed/broken.jpg",
        )
    )
    console, out, err = on_streams()
    assert run_sort(SortRequest((str(dest),), undo=True), None, console) == 0
    assert err.getvalue() == f"removed 5 copies from '{dest}'\n"
    assert tree(photos) == before and found(dest) == set()


FROM_REFUSALS = [
    (
        dict(paths=(), records="r.jsonl"),
        "--from RECORDS needs DEST, the folder to sort into (resnext sort --from r.jsonl DEST)",
    ),
    (dict(paths=("a", "d"), records="r.jsonl"), "with --from RECORDS, give only DEST"),
    (
        dict(paths=("d",), records="r.jsonl", report="r.html"),
        "--report is written while classifying; with --from, use the classify run's",
    ),
    (
        dict(paths=("a", "d"), unreviewed="model"),
        "--unreviewed is for a reviewed file: give it with --from RECORDS",
    ),
    (
        dict(paths=("a", "d"), roots=("a",)),
        "--root goes with --from RECORDS (SRC names the folders otherwise)",
    ),
    (dict(paths=("d",)), "give the images to sort and then DEST"),
    (dict(paths=()), "give the images to sort and then DEST"),
]


@pytest.mark.parametrize(
    ("options", "message"),
    FROM_REFUSALS,
    ids=[
        "from-no-dest",
        "from-two-paths",
        "from-report",
        "unreviewed",
        "root",
        "one-path",
        "no-path",
    ],
)
def test_refusals_before_dest_is_looked_at(fakes: Fakes, options, message) -> None:
    console, out, err = on_streams()
    with pytest.raises(ConfigError) as caught:
        run_sort(SortRequest(**options), Config(), console)
    assert str(caught.value) == message
    assert fakes.calls == [] and out.getvalue() == err.getvalue() == ""


def test_sorting_src_without_model_options_is_refused_after_checking_dest(fakes: Fakes) -> None:
    console, _, _ = on_streams()
    with pytest.raises(ConfigError) as caught:
        run_sort(SortRequest(("a", "b", "d")), None, console)
    assert str(caught.value) == "sorting SRC classifies it: give the model's options"
    assert fakes.calls == [("check_dest", ((Path("d"),), {}))]


def test_no_input_matched_is_usage(fakes: Fakes) -> None:
    config = Config()
    console, out, err = on_streams(quiet=True)
    assert (
        run_sort(SortRequest(("a", "d"), report="r.html", min_probability=0.3), config, console)
        == 2
    )
    assert err.getvalue() == NO_INPUT_LINE and out.getvalue() == ""
    assert fakes.names() == ["check_dest", "classify"]
    assert fakes.kwargs("classify") == {
        "args": (config, ("a",), console),
        "min_probability": 0.3,
        "report": "r.html",
        "skip": Path("d"),
    }


@pytest.mark.parametrize(
    ("mode", "verb"), [("copy", "copied"), ("link", "linked"), ("move", "moved")]
)
def test_sorting_src_classifies_plans_files_and_says_so(fakes: Fakes, mode: str, verb: str) -> None:
    config = Config()
    records = [seen_record("a.jpg"), seen_record("b.jpg")]
    summary = summary_of(*records)
    fakes.classified = (records, summary)
    fakes.plan = FilingPlan(Path("d"), mode, steps=[step(1, "cat/a.jpg"), step(2, "cat/b.jpg")])
    fakes.outcome = Outcome(done=[step(1, "cat/a.jpg"), step(2, "cat/b.jpg")])
    console, out, err = on_streams()
    request = SortRequest(("x", "y", "d"), mode=mode, by="index", min_probability=0.4)
    assert run_sort(request, config, console) == 0
    assert fakes.names() == ["check_dest", "classify", "make_plan", "execute", "print_summary"]
    assert fakes.kwargs("classify") == {
        "args": (config, ("x", "y"), console),
        "min_probability": 0.4,
        "report": None,
        "skip": Path("d"),
    }
    assert fakes.kwargs("make_plan") == {
        "args": (records, Path("d")),
        "mode": mode,
        "by": "index",
        "sources": ["x", "y"],
        "min_probability": 0.4,
        "strict": False,
    }
    assert fakes.kwargs("execute") == {"args": (fakes.plan,)}
    assert fakes.kwargs("print_summary") == {"args": (summary,), "report": None}
    assert err.getvalue() == f"(summary of 2, report None)\n{verb} 2 files into 1 folders in 'd'\n"
    assert out.getvalue() == ""


def test_failed_inputs_make_the_sort_exit_1_even_when_every_file_was_filed(fakes: Fakes) -> None:
    records: list[Record] = [seen_record("a.jpg"), Failed("b.jpg", "truncated", "cut")]
    fakes.classified = (records, summary_of(*records))
    fakes.plan = FilingPlan(
        Path("d"), "copy", steps=[step(1, "cat/a.jpg"), step(2, "_failed/b.jpg")]
    )
    fakes.outcome = Outcome(done=[step(1, "cat/a.jpg"), step(2, "_failed/b.jpg")])
    console, _, err = on_streams()
    assert run_sort(SortRequest(("x", "d"), report="r.html"), Config(), console) == 1
    assert fakes.kwargs("print_summary")["report"] == "r.html"
    assert err.getvalue() == "(summary of 2, report r.html)\ncopied 2 files into 2 folders in 'd'\n"


def test_a_file_that_could_not_be_filed_makes_the_sort_exit_1(fakes: Fakes) -> None:
    records: list[Record] = [seen_record("a.jpg")]
    fakes.classified = (records, summary_of(*records))
    fakes.plan = FilingPlan(Path("d"), "copy", steps=[step(1, "cat/a.jpg", source="/s/a.jpg")])
    fakes.outcome = Outcome(problems=[(step(1, "cat/a.jpg", source="/s/a.jpg"), "no room")])
    console, _, err = on_streams()
    assert run_sort(SortRequest(("x", "d")), Config(), console) == 1
    assert err.getvalue() == (
        "(summary of 1, report None)\n"
        "error: '/s/a.jpg': no room\n"
        "copied 0 files into 0 folders in 'd'\n"
    )


def test_dry_run_lists_the_plan_escaped_and_files_nothing(fakes: Fakes) -> None:
    records: list[Record] = [seen_record("a.jpg"), Failed("b.jpg", "truncated", "cut")]
    fakes.classified = (records, summary_of(*records))
    fakes.plan = FilingPlan(
        Path("d"),
        "link",
        steps=[
            Step(1, "link", Path("/s/a\x1b.jpg"), "cat\x07/a.jpg", input="a\x1b.jpg"),
            Step(2, "link", Path("/s/b.jpg"), "_failed/b.jpg", input="b.jpg"),
        ],
        skipped=[("c.jpg", "not a file")],
        already=[("e.jpg", "cat/e.jpg"), ("f.jpg", "cat/f.jpg")],
    )
    console, out, err = on_streams()
    request = SortRequest(("x", "d"), mode="link", dry_run=True, report="r.html")
    assert run_sort(request, Config(), console) == 1  # b.jpg failed
    assert "execute" not in fakes.names()
    assert out.getvalue() == "link a\\x1b.jpg -> d/cat\\x07/a.jpg\nlink b.jpg -> d/_failed/b.jpg\n"
    assert err.getvalue() == (
        "warning: not sorted: 'c.jpg': not a file\n"
        "2 files already in 'd' (skipped)\n"
        "(summary of 2, report r.html)\n"
    )


def test_nothing_new_to_file_files_nothing_and_says_the_summary(fakes: Fakes) -> None:
    records: list[Record] = [seen_record("a.jpg")]
    fakes.classified = (records, summary_of(*records))
    fakes.plan = FilingPlan(Path("d"), "copy", already=[("a.jpg", "cat/a.jpg")])
    console, out, err = on_streams()
    assert run_sort(SortRequest(("x", "d")), Config(), console) == 0
    assert fakes.names() == ["check_dest", "classify", "make_plan", "print_summary"]
    assert out.getvalue() == ""
    assert err.getvalue() == "1 files already in 'd' (skipped)\n(summary of 1, report None)\n"


def test_a_plan_with_every_input_skipped_is_not_an_error_when_classifying(fakes: Fakes) -> None:
    records: list[Record] = [seen_record("a.jpg")]
    fakes.classified = (records, summary_of(*records))
    fakes.plan = FilingPlan(Path("d"), "copy", skipped=[("a.jpg", "gone")])
    console, out, err = on_streams()
    assert run_sort(SortRequest(("x", "d")), Config(), console) == 0
    assert err.getvalue() == "warning: not sorted: 'a.jpg': gone\n(summary of 1, report None)\n"
    assert out.getvalue() == "" and "execute" not in fakes.names()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, Terminated], ids=["interrupt", "terminate"])
def test_an_interrupted_sort_says_how_to_finish_or_undo(fakes: Fakes, stop) -> None:
    records: list[Record] = [seen_record("a.jpg")]
    fakes.classified = (records, summary_of(*records))
    fakes.plan = FilingPlan(Path("d"), "copy", steps=[step(1, "cat/a.jpg")])
    fakes.raise_in_execute = stop()
    console, _, err = on_streams(color=True)
    with pytest.raises(stop):
        run_sort(SortRequest(("x", "d")), Config(), console)
    assert "print_summary" not in fakes.names()
    assert err.getvalue() == (
        "\x1b[33minterrupted: 'd' has an unfinished sort (run 'resnext sort --resume d' to "
        "finish it, or 'resnext sort --undo d' to put the files back)\x1b[0m\n"
    )


# -- --from RECORDS --------------------------------------------------------------------------


def test_from_records_files_strictly_from_the_records_folder(fakes: Fakes, tmp_path: Path) -> None:
    records: list[Record] = [seen_record("a.jpg"), seen_record("b.jpg")]
    fakes.records = (records, [("c.jpg", "changed since it was classified"), ("e\x1b.jpg", "gone")])
    fakes.plan = FilingPlan(Path("d"), "move", steps=[step(1, "cat/a.jpg"), step(2, "cat/b.jpg")])
    fakes.outcome = Outcome(
        done=[step(1, "cat/a.jpg", mode="move"), step(2, "cat/b.jpg", mode="move")]
    )
    console, out, err = on_streams()
    listed = tmp_path / "run" / "r.jsonl"
    request = SortRequest(("d",), mode="move", records=str(listed))
    assert run_sort(request, None, console) == 0
    assert fakes.names() == ["check_dest", "records_from_file", "make_plan", "execute"]
    assert fakes.kwargs("check_dest") == {"args": (Path("d"),)}
    assert fakes.kwargs("records_from_file") == {"args": (listed,)}
    assert fakes.kwargs("make_plan") == {
        "args": (records, Path("d")),
        "mode": "move",
        "by": "label",
        "sources": [str(tmp_path / "run")],
        "min_probability": None,
        "strict": True,
    }
    assert err.getvalue() == (
        "warning: not sorted: 'c.jpg': changed since it was classified\n"
        "warning: not sorted: 'e\\x1b.jpg': gone\n"
        "moved 2 files into 1 folders in 'd'\n"
    )
    assert out.getvalue() == ""


def test_from_a_relative_records_path_the_root_is_its_absolute_folder(
    fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fakes.records = ([seen_record("a.jpg")], [])
    fakes.plan = FilingPlan(Path("d"), "copy", already=[("a.jpg", "cat/a.jpg")])
    console, _, err = on_streams()
    assert run_sort(SortRequest(("d",), records="r.jsonl", min_probability=0.2), None, console) == 0
    assert fakes.kwargs("make_plan")["sources"] == [str(tmp_path)]
    assert fakes.kwargs("make_plan")["min_probability"] == 0.2
    assert err.getvalue() == "1 files already in 'd' (skipped)\n"


def test_from_records_with_roots_takes_files_only_from_them(fakes: Fakes, tmp_path: Path) -> None:
    fakes.records = ([seen_record("a.jpg")], [])
    fakes.plan = FilingPlan(Path("d"), "copy", steps=[step(1, "cat/a.jpg")])
    fakes.outcome = Outcome(done=[step(1, "cat/a.jpg")])
    console, _, err = on_streams()
    request = SortRequest(("d",), records=str(tmp_path / "r.jsonl"), roots=("p", "q"))
    assert run_sort(request, None, console) == 0
    assert fakes.kwargs("make_plan")["sources"] == ["p", "q"]
    assert err.getvalue() == "copied 1 files into 1 folders in 'd'\n"


def test_from_records_with_nothing_left_to_file_is_an_error(fakes: Fakes) -> None:
    fakes.records = ([seen_record("a.jpg")], [])
    fakes.plan = FilingPlan(Path("d"), "copy", skipped=[("a.jpg", "outside the roots")])
    console, out, err = on_streams()
    assert run_sort(SortRequest(("d",), records="r.jsonl", dry_run=True), None, console) == 1
    assert "execute" not in fakes.names() and out.getvalue() == ""
    assert err.getvalue() == (
        "warning: not sorted: 'a.jpg': outside the roots\n"
        "error: nothing could be filed from 'r.jsonl' (every record was skipped; see above)\n"
    )


def test_by_category_from_records_needs_categories(fakes: Fakes) -> None:
    with_them = seen_record("a.jpg", categories=(CategoryScore("animal", 0.9),))
    records: list[Record] = [
        with_them,
        Failed("b.jpg", "truncated", "cut"),
        seen_record("c\x1b.jpg"),
    ]
    fakes.records = (records, [("z.jpg", "gone")])
    console, _, err = on_streams()
    with pytest.raises(ConfigError) as caught:
        run_sort(SortRequest(("d",), records="r.jsonl", by="category"), None, console)
    assert str(caught.value) == (
        "--by category needs records with categories, and 'c\\x1b.jpg' in 'r.jsonl' has none "
        "(classify with --categories, or sort with --by label)"
    )
    assert err.getvalue() == ""  # refused before the changed files are said
    # Every classified record with its categories (and a failed one, which has none): filed.
    fakes.records = (records[:2], [])
    fakes.plan = FilingPlan(Path("d"), "copy", already=[("a.jpg", "animal/a.jpg")])
    assert run_sort(SortRequest(("d",), records="r.jsonl", by="category"), None, console) == 0
    assert fakes.kwargs("make_plan")["by"] == "category"


def test_by_label_from_records_does_not_need_categories(fakes: Fakes) -> None:
    fakes.records = ([seen_record("a.jpg")], [])
    fakes.plan = FilingPlan(Path("d"), "copy", already=[("a.jpg", "cat/a.jpg")])
    console, _, _ = on_streams()
    assert run_sort(SortRequest(("d",), records="r.jsonl", by="index"), None, console) == 0


# -- a reviewed file -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            dict(by="index"),
            ConfigError,
            "a reviewed file is filed by its labels; --by index does not apply (leave out --by)",
        ),
        (
            dict(by="category"),
            ConfigError,
            "a reviewed file is filed by its labels; --by category does not apply (leave out --by)",
        ),
        (
            dict(min_probability=0.5),
            ConfigError,
            "a reviewed file is filed by its labels; --min-probability does not apply "
            "(leave it out)",
        ),
        (
            dict(),
            SortError,
            "'r.jsonl' has 2 images not reviewed yet (the first: 'b.jpg'); review them in the "
            "report and export again, or give --unreviewed model to file them by the model's "
            "top-1",
        ),
        (
            dict(unreviewed="skip"),
            SortError,
            "'r.jsonl' has 2 images not reviewed yet (the first: 'b.jpg'); review them in the "
            "report and export again, or give --unreviewed model to file them by the model's "
            "top-1",
        ),
    ],
    ids=["by-index", "by-category", "min-probability", "unreviewed", "unreviewed-other"],
)
def test_a_reviewed_file_refuses(fakes: Fakes, options, error, message) -> None:
    records: list[Record] = [
        reviewed_record("a.jpg", "accepted"),
        reviewed_record("b.jpg", None),
        Failed("x.jpg", "truncated", "cut"),
        reviewed_record("c.jpg", None),
    ]
    fakes.records = (records, [])
    console, _, _ = on_streams()
    with pytest.raises(error) as caught:
        run_sort(SortRequest(("d",), records="r.jsonl", **options), None, console)
    assert type(caught.value) is error and str(caught.value) == message
    assert "make_plan" not in fakes.names()


def test_a_reviewed_file_with_unreviewed_model_or_all_reviewed_is_filed(fakes: Fakes) -> None:
    records: list[Record] = [reviewed_record("a.jpg", "accepted"), reviewed_record("b.jpg", None)]
    fakes.records = (records, [])
    fakes.plan = FilingPlan(Path("d"), "copy", already=[("a.jpg", "cat/a.jpg")])
    console, _, _ = on_streams()
    assert run_sort(SortRequest(("d",), records="r.jsonl", unreviewed="model"), None, console) == 0
    fakes.records = (records[:1], [])
    assert run_sort(SortRequest(("d",), records="r.jsonl"), None, console) == 0
    assert fakes.names().count("make_plan") == 2


def test_a_classify_runs_records_take_by_and_min_probability(fakes: Fakes) -> None:
    fakes.records = ([seen_record("a.jpg")], [])
    fakes.plan = FilingPlan(Path("d"), "copy", already=[("a.jpg", "0/a.jpg")])
    console, _, _ = on_streams()
    request = SortRequest(("d",), records="r.jsonl", by="index", min_probability=0.7)
    assert run_sort(request, None, console) == 0
    assert (fakes.kwargs("make_plan")["by"], fakes.kwargs("make_plan")["min_probability"]) == (
        "index",
        0.7,
    )
