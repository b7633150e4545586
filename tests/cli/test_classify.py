"""cli/classify.py: `resnext classify`'s output options: -f and -o, and the table."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers import expected_order


def test_json_is_one_array(checkpoint, folder, resnext) -> None:
    run = resnext("classify", folder, "--checkpoint", checkpoint, "-f", "json", "-k", "2")
    assert run.code == 0, run
    data = json.loads(run.stdout)
    assert [r["input"] for r in data] == expected_order(folder)
    assert all(len(r["predictions"]) == 2 for r in data)


def test_output_file_and_format_from_suffix(checkpoint, folder, tmp_path, resnext) -> None:
    out = tmp_path / "res.json"
    run = resnext("classify", folder, "--checkpoint", checkpoint, "-o", out)
    assert run.code == 0 and run.stdout == ""
    assert len(json.loads(out.read_text())) == 3
    again = resnext("classify", folder, "--checkpoint", checkpoint, "-o", out)
    assert again.code == 2
    assert again.stderr.strip() == (
        f"error: output file '{out}' exists (use --force to overwrite it, or --resume to "
        "continue it)"
    )


def test_table_for_one_image_and_for_many(checkpoint, folder, resnext) -> None:
    one = resnext("classify", folder / "a.png", "--checkpoint", checkpoint, "-f", "table")
    labels = [
        p["label"]
        for p in resnext("classify", folder / "a.png", "--checkpoint", checkpoint).records()[0][
            "predictions"
        ]
    ]
    assert one.code == 0
    for label in labels:
        assert label in one.stdout
    many = resnext(
        "classify", folder, "--checkpoint", checkpoint, "-f", "table", "--precision", "fp32"
    )
    lines = [ln for ln in many.stdout.splitlines() if ln.strip()]
    assert lines[0].split()[:2] == ["input", "top-1"]
    assert len(lines) == 5  # a header, one row per image, and the caption
    assert lines[-1] == f"resnext50_32x4d ({checkpoint}) on cpu, fp32"


# -- the command bodies, in-process: what classify and sort hand their runs ----------------


@pytest.fixture
def classify_run(monkeypatch) -> dict[str, Any]:
    """Stand in for run_classify and Outputs.open: record what the command hands them
    (no model loads); the run returns ``seen['status']``."""
    from resnext_cli.outputs import sinks
    from resnext_cli.run import classify as running

    seen: dict[str, Any] = {"status": 0}

    def open_outputs(request, *, stdout_is_terminal):
        seen["request"], seen["terminal"] = request, stdout_is_terminal
        return "the outputs"

    def run_classify(config, inputs, outputs, console, **options):
        seen.update(config=config, inputs=inputs, outputs=outputs, quiet=console.quiet)
        seen["options"] = options
        return seen["status"]

    monkeypatch.setattr(sinks.Outputs, "open", staticmethod(open_outputs))
    monkeypatch.setattr(running, "run_classify", run_classify)
    return seen


def test_classify_hands_its_run_the_config_inputs_and_outputs(
    classify_run, tmp_path, resnext
) -> None:
    from resnext_cli.outputs.sinks import OutputRequest

    out = tmp_path / "res.jsonl"
    classify_run["status"] = 1
    run = resnext(
        "classify",
        "a.jpg",
        "photos/",
        "-o",
        out,
        "--force",
        "-k",
        "3",
        "-m",
        "resnext101_32x8d",
        "--embeddings",
        "--quiet",
        "--min-probability",
        "0.25",
        "--precision",
        "fp32",
    )
    assert run.code == 1, run  # the run's own status
    assert classify_run["inputs"] == ("a.jpg", "photos/")
    assert classify_run["outputs"] == "the outputs"
    assert classify_run["quiet"] is True
    config = classify_run["config"]
    assert (config.model, config.topk, config.precision, config.embeddings) == (
        "resnext101_32x8d",
        3,
        "fp32",
        True,
    )
    assert classify_run["request"] == OutputRequest(
        str(out), "auto", True, False, False, None, embeddings=True
    )
    assert classify_run["terminal"] is False
    assert classify_run["options"] == {
        "engine_kind": "local",
        "min_probability": 0.25,
        "engine_options": {},
    }


def test_classify_defaults_reach_the_run(classify_run, resnext) -> None:
    from resnext_cli.outputs.sinks import OutputRequest

    run = resnext("classify", "a.jpg")
    assert run.code == 0, run
    assert classify_run["quiet"] is False
    assert classify_run["request"] == OutputRequest(None, "auto", False, False, False, None)
    assert classify_run["config"].embeddings is False
    assert classify_run["config"].topk == 5
    assert classify_run["options"] == {
        "engine_kind": "local",
        "min_probability": None,
        "engine_options": {},
    }


def test_classify_output_options_reach_the_request(classify_run, tmp_path, resnext) -> None:
    from resnext_cli.outputs.sinks import OutputRequest

    out, report = tmp_path / "res.jsonl", tmp_path / "r.html"
    out.write_text("")
    run = resnext("classify", "a.jpg", "-o", out, "--resume", "--report", report)
    assert run.code == 0, run
    assert classify_run["request"] == OutputRequest(
        str(out), "auto", False, True, False, str(report)
    )
    run = resnext("classify", "a.jpg", "-o", tmp_path / "res.csv", "-f", "csv", "--long")
    assert run.code == 0, run
    assert classify_run["request"] == OutputRequest(
        str(tmp_path / "res.csv"), "csv", False, False, True, None
    )


@pytest.mark.parametrize(
    ("address", "expected"), [(["--ray-address", "local"], "local"), ([], None)]
)
def test_classify_on_ray_passes_the_address(classify_run, resnext, address, expected) -> None:
    run = resnext("classify", "a.jpg", "--engine", "ray", *address)
    assert run.code == 0, run
    assert classify_run["options"]["engine_kind"] == "ray"
    assert classify_run["options"]["engine_options"] == {"address": expected}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--ray-address", "local"],
            "error: --ray-address is for --engine ray (add --engine ray, or drop it)",
        ),
        (
            ["--engine", "ray", "--workers", "2"],
            "error: --engine ray decodes in Ray tasks, not threads; drop --workers",
        ),
        (
            ["-f", "table", "--long"],
            "error: --long shapes csv and parquet rows, not table (give -f csv or -f parquet)",
        ),
        (["-k", "1001"], "error: --topk 1001 is more than the 1000 classes (lower --topk)"),
    ],
    ids=["ray_address_without_ray", "ray_with_workers", "long_table", "topk_over_labels"],
)
def test_classify_checks_come_before_the_run(classify_run, resnext, args, message) -> None:
    run = resnext("classify", "a.jpg", *args)
    assert (run.code, run.stderr.strip()) == (2, message)
    assert "config" not in classify_run and "request" not in classify_run


@pytest.fixture
def sort_run(monkeypatch) -> dict[str, Any]:
    """Stand in for run_sort: record the request, the config and the console's quiet."""
    from resnext_cli.run import sort as running

    seen: dict[str, Any] = {"status": 0}

    def run_sort(request, config, console):
        seen.update(request=request, config=config, quiet=console.quiet)
        return seen["status"]

    monkeypatch.setattr(running, "run_sort", run_sort)
    return seen


def test_sort_hands_its_run_every_option(sort_run, tmp_path, resnext) -> None:
    from resnext_cli.run.sort import SortRequest

    sort_run["status"] = 1
    run = resnext(
        "sort",
        "in",
        "more",
        "dest",
        "--move",
        "--by",
        "index",
        "-n",
        "--min-probability",
        "0.5",
        "--report",
        tmp_path / "r.html",
        "-q",
        "-k",
        "2",
    )
    assert run.code == 1, run
    assert sort_run["request"] == SortRequest(
        paths=("in", "more", "dest"),
        mode="move",
        by="index",
        dry_run=True,
        min_probability=0.5,
        report=str(tmp_path / "r.html"),
    )
    assert sort_run["quiet"] is True
    assert (sort_run["config"].topk, sort_run["config"].categories) == (2, None)


@pytest.mark.parametrize(
    ("flags", "mode"), [([], "copy"), (["--copy"], "copy"), (["--link"], "link")]
)
def test_sort_mode(sort_run, resnext, flags, mode) -> None:
    run = resnext("sort", "in", "dest", *flags)
    assert run.code == 0, run
    assert sort_run["request"].mode == mode
    assert sort_run["quiet"] is False
    assert sort_run["request"].dry_run is False


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--copy", "--move"], "copy and move"),
        (["--link", "--move"], "link and move"),
        (["--move", "--link", "--copy"], "copy and link and move"),
    ],
    ids=["copy_move", "link_move", "all_three"],
)
def test_sort_takes_one_mode(sort_run, resnext, flags, named) -> None:
    run = resnext("sort", "in", "dest", *flags)
    assert run.code == 2
    assert run.stderr.strip() == f"error: give one of --copy, --link, --move, not {named}"
    assert "request" not in sort_run


def test_sort_by_category_asks_for_the_default_categories(sort_run, tmp_path, resnext) -> None:
    run = resnext("sort", "in", "dest", "--by", "category")
    assert run.code == 0, run
    assert sort_run["config"].categories == "default"
    assert sort_run["request"].by == "category"
    mapping = tmp_path / "groups.tsv"
    mapping.write_text("tench\tfish\n")
    run = resnext("sort", "in", "dest", "--by", "category", "--categories", mapping)
    assert run.code == 0, run
    assert sort_run["config"].categories == str(mapping)
    run = resnext("sort", "in", "dest", "--by", "label")
    assert run.code == 0, run
    assert sort_run["config"].categories is None


def test_sort_from_records_resume_and_undo_need_no_model(sort_run, tmp_path, resnext) -> None:
    from resnext_cli.run.sort import SortRequest

    records = tmp_path / "res.jsonl"
    records.write_text("")
    run = resnext(
        "sort",
        "dest",
        "--from",
        records,
        "--by",
        "category",
        "--unreviewed",
        "model",
        "--root",
        tmp_path / "a",
        "--root",
        tmp_path / "b",
    )
    assert run.code == 0, run
    assert sort_run["config"] is None
    assert sort_run["request"] == SortRequest(
        paths=("dest",),
        by="category",
        records=str(records),
        unreviewed="model",
        roots=(str(tmp_path / "a"), str(tmp_path / "b")),
    )
    for flag in ("--resume", "--undo"):
        run = resnext("sort", "dest", flag)
        assert run.code == 0, run
        assert sort_run["config"] is None
        assert sort_run["request"] == SortRequest(
            paths=("dest",), resume=flag == "--resume", undo=flag == "--undo"
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["dest", "--undo", "--by", "index"],
            "error: --undo follows DEST's journal and takes only DEST; drop --by",
        ),
        (
            ["dest", "--from", "res.jsonl", "-m", "resnext101_32x8d"],
            "error: --from files by the records' labels without a model; drop --model",
        ),
        (
            ["in", "dest", "-k", "1001"],
            "error: --topk 1001 is more than the 1000 classes (lower --topk)",
        ),
    ],
    ids=["undo_with_by", "from_with_model", "topk_over_labels"],
)
def test_sort_checks_come_before_the_run(sort_run, resnext, args, message) -> None:
    run = resnext("sort", *args)
    assert (run.code, run.stderr.strip()) == (2, message)
    assert "request" not in sort_run


def test_classify_checks_the_report_file_too(classify_run, tmp_path, resnext) -> None:
    from resnext_cli.outputs.sinks import OutputRequest

    report = tmp_path / "r.html"
    report.write_text("<html>an earlier report</html>")
    run = resnext("classify", "a.jpg", "--report", report)
    assert (run.code, run.stderr.strip()) == (
        2,
        f"error: report file '{report}' exists (use --force to overwrite it)",
    )
    assert "request" not in classify_run
    run = resnext("classify", "a.jpg", "--report", report, "--force")  # --force for the report
    assert run.code == 0, run
    assert classify_run["request"] == OutputRequest(None, "auto", True, False, False, str(report))
