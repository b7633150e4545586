"""cli/checks.py: the checks made from the arguments alone, before a model loads."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from resnext_cli.cli.checks import (
    check_checkpoint,
    check_classify_outputs,
    check_engine,
    check_model_options,
    check_quantize,
    check_sort,
)
from resnext_cli.errors import CheckpointError, ConfigError, OutputError, ResnextError
from resnext_cli.outputs.writers import resolve_format
from resnext_cli.run.config import Config


@pytest.mark.parametrize(
    ("fmt", "output", "resume", "written_as"),
    [
        ("csv", "out.txt", False, "csv"),  # -f names the format: any file name goes
        ("jsonl", "results", False, "jsonl"),
        ("auto", "mine.dat", True, "jsonl"),  # --resume continues JSON Lines, any name
        ("auto", "OUT.CSV", False, "csv"),
        ("auto", "-", False, "jsonl"),  # stdout, a pipe
    ],
)
def test_an_output_name_the_tool_does_not_know_needs_a_format(
    fmt: str, output: str, resume: bool, written_as: str, tmp_path: Path
) -> None:
    check_classify_outputs(
        output=output,
        fmt=fmt,
        force=False,
        resume=resume,
        long=False,
        report=None,
        stdout_is_terminal=False,
    )
    assert resolve_format(fmt, is_terminal=False, output_name=output) == written_as


# -- check_model_options: the model options, checked before torch is imported -------------


def _labels_file(tmp_path: Path, count: int) -> str:
    path = tmp_path / "labels.txt"
    path.write_text("".join(f"class {i}\n" for i in range(count)), encoding="utf-8")
    return str(path)


def _refusal(config: Config) -> str:
    with pytest.raises(ResnextError) as caught:
        check_model_options(config)
    return str(caught.value)


def test_the_model_options_refuse_a_pair_that_cannot_work() -> None:
    assert _refusal(Config(exact=True, quantized=True)) == (
        "--exact is the fp32 reference and --quantized is INT8; give one"
    )


def test_the_model_options_refuse_weights_the_model_does_not_have(tmp_path: Path) -> None:
    assert _refusal(Config(weights="IMAGENET1K_V9")) == (
        "unknown weights 'IMAGENET1K_V9' for resnext50_32x4d "
        "(choose from: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2)"
    )
    # torchvision publishes no INT8 weights of resnext50; a checkpoint brings its own.
    assert _refusal(Config(quantized=True)).startswith(
        "resnext50_32x4d has no published INT8 weights (make them from your own photos"
    )
    checkpoint = tmp_path / "mine-int8.pth"
    checkpoint.write_bytes(b"not read here")
    check_model_options(Config(quantized=True, checkpoint=str(checkpoint)))


@pytest.mark.parametrize(("topk", "refused"), [(3, False), (4, True)])
def test_topk_past_the_labels_is_refused(tmp_path: Path, topk: int, refused: bool) -> None:
    config = Config(labels=_labels_file(tmp_path, 3), topk=topk)
    if refused:
        assert _refusal(config) == "--topk 4 is more than the 3 classes (lower --topk)"
    else:
        check_model_options(config)


@pytest.mark.parametrize(("topk", "refused"), [(1000, False), (1001, True)])
def test_topk_past_imagenets_classes_is_refused(topk: int, refused: bool) -> None:
    if refused:
        assert _refusal(Config(topk=topk)) == (
            "--topk 1001 is more than the 1000 classes (lower --topk)"
        )
    else:
        check_model_options(Config(topk=topk))


def test_topk_is_left_to_the_checkpoint_when_labels_and_checkpoint_are_both_given(
    tmp_path: Path,
) -> None:
    # The checkpoint may keep its own class names: which list -k is measured against is
    # known once it is read.
    checkpoint = tmp_path / "mine.pth"
    checkpoint.write_bytes(b"not read here")
    check_model_options(Config(labels=_labels_file(tmp_path, 3), checkpoint=str(checkpoint)))
    # A checkpoint alone: the labels are ImageNet's, and -k is measured against them.
    assert _refusal(Config(checkpoint=str(checkpoint), topk=1001)) == (
        "--topk 1001 is more than the 1000 classes (lower --topk)"
    )


def test_the_categories_are_checked_against_the_labels(tmp_path: Path) -> None:
    labels = _labels_file(tmp_path, 3)
    assert _refusal(Config(labels=labels, topk=3, categories="default")) == (
        "the default categories are for imagenet's 1000 classes, not these 3 labels "
        "(pass your own mapping: --categories FILE)"
    )
    mapping = tmp_path / "groups.tsv"
    mapping.write_text("class 1\tsome\nclass 9\tother\n", encoding="utf-8")
    assert _refusal(Config(labels=labels, topk=1, categories=str(mapping))) == (
        f"categories file '{mapping}', line 2: unknown class 'class 9' "
        "(give a label from the labels or an index 0..2)"
    )
    mapping.write_text("class 1\tsome\n", encoding="utf-8")
    check_model_options(Config(labels=labels, topk=1, categories=str(mapping)))


def test_the_model_options_refuse_a_missing_checkpoint(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pth"
    assert _refusal(Config(checkpoint=str(missing))) == (
        f"checkpoint '{missing}' does not exist (give a file)"
    )


# -- check_checkpoint ---------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "http://127.0.0.1:9/a.pth", "https://example.test/a.pth"])
def test_a_checkpoint_url_is_left_to_the_download(name: str | None) -> None:
    check_checkpoint(name)


def test_a_checkpoint_must_be_a_file(tmp_path: Path) -> None:
    (tmp_path / "mine.pth").write_bytes(b"x")
    check_checkpoint(str(tmp_path / "mine.pth"))
    for name in (str(tmp_path), str(tmp_path / "gone.pth"), "ftp.pth"):
        with pytest.raises(CheckpointError) as caught:
            check_checkpoint(name)
        assert str(caught.value) == f"checkpoint '{name}' does not exist (give a file)"


# -- check_classify_outputs ---------------------------------------------------------------


def _outputs(
    *,
    output: str | None = None,
    fmt: str = "auto",
    force: bool = False,
    resume: bool = False,
    long: bool = False,
    report: str | None = None,
    terminal: bool = False,
) -> str | None:
    """The refusal of these output options, or None."""
    try:
        check_classify_outputs(
            output=output,
            fmt=fmt,
            force=force,
            resume=resume,
            long=long,
            report=report,
            stdout_is_terminal=terminal,
        )
    except (ConfigError, OutputError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


FORCE_NEEDS_A_FILE = "ConfigError: --force overwrites the -o or --report file: give one of them"


def test_force_and_resume_are_refused_together(tmp_path: Path) -> None:
    assert _outputs(output=str(tmp_path / "a.jsonl"), force=True, resume=True) == (
        "ConfigError: give --force (write the -o file anew) or --resume (continue it), not both"
    )


def test_force_needs_a_file_to_overwrite(tmp_path: Path) -> None:
    assert _outputs(force=True) == FORCE_NEEDS_A_FILE
    assert _outputs(output="-", force=True) == FORCE_NEEDS_A_FILE
    assert _outputs(output=str(tmp_path / "a.jsonl"), force=True) is None
    assert _outputs(output="-", force=True, report=str(tmp_path / "r.html")) is None
    assert _outputs(force=True, report=str(tmp_path / "r.html")) is None


def test_an_unknown_output_name_is_refused_unless_it_is_a_folder_or_a_stream(
    tmp_path: Path,
) -> None:
    name = str(tmp_path / "results.dat")
    assert _outputs(output=name) == (
        f"ConfigError: cannot tell the format of '{name}' from its name (give -f jsonl, "
        "json, csv, parquet or table, or name it .jsonl, .json, .csv or .parquet)"
    )
    assert _outputs(output=name, fmt="csv") is None
    assert _outputs(output=name, resume=True) is None
    folder = tmp_path / "shards"
    folder.mkdir()
    assert _outputs(output=str(folder)) is None
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert _outputs(output=str(fifo)) is None
    if os.geteuid() == 0:  # a private character device (mknod needs root)
        device = tmp_path / "tty"
        os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        assert _outputs(output=str(device)) is None
    plain = tmp_path / "plain"
    plain.write_text("", encoding="utf-8")
    assert _outputs(output=str(plain)) is not None


@pytest.mark.parametrize(
    ("output", "fmt", "terminal", "chosen"),
    [
        ("out.jsonl", "auto", False, "jsonl"),
        ("out.json", "auto", False, "json"),
        (None, "auto", True, "table"),
        ("-", "auto", True, "table"),
        (None, "auto", False, "jsonl"),
        ("-", "auto", False, "jsonl"),
        ("out.csv", "json", False, "json"),
        (None, "table", False, "table"),
    ],
)
def test_long_rows_are_for_csv_and_parquet(
    output: str | None, fmt: str, terminal: bool, chosen: str
) -> None:
    assert _outputs(output=output, fmt=fmt, long=True, terminal=terminal) == (
        f"ConfigError: --long shapes csv and parquet rows, not {chosen} (give -f csv or -f parquet)"
    )


def test_long_rows_into_a_stream_or_a_resumed_file_without_a_suffix_are_jsonl(
    tmp_path: Path,
) -> None:
    """-o with no known suffix (a FIFO, or a resumed file) is written as JSON Lines."""
    refusal = (
        "ConfigError: --long shapes csv and parquet rows, not jsonl (give -f csv or -f parquet)"
    )
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert _outputs(output=str(fifo), long=True) == refusal
    assert _outputs(output=str(tmp_path / "results.dat"), resume=True, long=True) == refusal


@pytest.mark.parametrize(
    ("output", "fmt", "terminal"),
    [
        ("out.csv", "auto", False),
        ("out.parquet", "auto", False),
        ("out.jsonl", "csv", False),
        (None, "csv", True),
        ("-", "parquet", False),
    ],
)
def test_long_rows_in_csv_or_parquet_are_let_through(
    output: str | None, fmt: str, terminal: bool
) -> None:
    assert _outputs(output=output, fmt=fmt, long=True, terminal=terminal) is None


def test_an_existing_report_is_refused_unless_forced_or_resumed(tmp_path: Path) -> None:
    report = tmp_path / "review.html"
    report.write_text("<p>an earlier run</p>", encoding="utf-8")
    out = str(tmp_path / "out.jsonl")
    assert _outputs(report=str(report)) == (
        f"OutputError: report file '{report}' exists (use --force to overwrite it)"
    )
    assert _outputs(output="-", report=str(report)) == (
        f"OutputError: report file '{report}' exists (use --force to overwrite it)"
    )
    assert _outputs(output=out, report=str(report)) == (
        f"OutputError: report file '{report}' exists (use --force to overwrite it, "
        "or --resume to continue the run)"
    )
    assert _outputs(output=out, report=str(report), force=True) is None
    assert _outputs(output=out, report=str(report), resume=True) is None
    assert _outputs(report=str(report), force=True) is None
    # The -o file itself as the report: the output's own checks say what happens to it.
    assert _outputs(output=str(report), fmt="jsonl", report=str(report)) is None
    alias = tmp_path / "alias.html"
    alias.symlink_to(report)
    assert _outputs(output=str(alias), fmt="jsonl", report=str(report)) is None
    # Not there yet, or a folder (which the report's writer refuses by name).
    assert _outputs(output=out, report=str(tmp_path / "new.html")) is None
    assert _outputs(output=out, report=str(tmp_path)) is None


# -- check_quantize ----------------------------------------------------------------------


def _photo(folder: Path, name: str = "a.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return path


def test_quantize_refuses_an_output_that_exists_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "int8.pth"
    out.write_bytes(b"earlier")
    photos = [str(_photo(tmp_path / "photos"))]
    with pytest.raises(OutputError) as caught:
        check_quantize(output=str(out), force=False, photos=photos)
    assert str(caught.value) == f"output file '{out}' exists (use --force to overwrite it)"
    check_quantize(output=str(out), force=True, photos=photos)
    assert out.read_bytes() == b"earlier"  # checked, not touched


def test_quantize_refuses_an_output_in_a_missing_folder(tmp_path: Path) -> None:
    out = tmp_path / "gone" / "int8.pth"
    with pytest.raises(OutputError) as caught:
        check_quantize(output=str(out), force=True, photos=[str(_photo(tmp_path / "p"))])
    assert str(caught.value) == (
        f"cannot write '{out}': folder '{tmp_path / 'gone'}' does not exist"
    )


def test_quantize_needs_one_photo_that_is_there(tmp_path: Path) -> None:
    out = str(tmp_path / "int8.pth")
    empty = tmp_path / "empty"
    empty.mkdir()
    for photos in ([], [str(empty)], [str(tmp_path / "gone.jpg")]):
        with pytest.raises(ConfigError) as caught:
            check_quantize(output=out, force=False, photos=photos)
        assert str(caught.value) == (
            "no photo to calibrate with (give --calibrate with a folder of your photos)"
        )
    # One good photo among missing ones is enough.
    check_quantize(
        output=out, force=False, photos=[str(tmp_path / "gone.jpg"), str(_photo(tmp_path / "p"))]
    )


# -- check_engine -------------------------------------------------------------------------


def _engine(engine: str, ray_address: str | None = None, **options: object) -> str | None:
    try:
        check_engine(engine, ray_address=ray_address, **options)
    except ConfigError as exc:
        return str(exc)
    return None


def test_the_ray_options_are_for_the_ray_engine() -> None:
    assert _engine("local", "ray://127.0.0.1:10001") == (
        "--ray-address is for --engine ray (add --engine ray, or drop it)"
    )
    assert _engine("local", workers=4, decode="gpu", device="mps") is None
    assert _engine("ray", "ray://127.0.0.1:10001") is None


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"workers": 0}, "--engine ray decodes in Ray tasks, not threads; drop --workers"),
        ({"workers": 4}, "--engine ray decodes in Ray tasks, not threads; drop --workers"),
        ({"decode": "gpu"}, "--engine ray decodes in CPU tasks; drop --decode gpu"),
        (
            {"device": "mps"},
            "--engine ray places models itself: use --device auto, cpu or cuda, not 'mps'",
        ),
        (
            {"device": "cuda:1"},
            "--engine ray places models itself: use --device auto, cpu or cuda, not 'cuda:1'",
        ),
        ({"workers": None, "decode": "cpu", "device": "auto"}, None),
        ({"decode": "auto", "device": "cpu"}, None),
        ({"device": "cuda"}, None),
        ({}, None),
    ],
)
def test_the_ray_engine_refuses_what_it_does_itself(
    options: dict[str, Any], refusal: str | None
) -> None:
    assert _engine("ray", **options) == refusal


# -- check_sort ---------------------------------------------------------------------------


def _sort(
    given: list[str], *, records: str | None = None, resume: bool = False, undo: bool = False
) -> str | None:
    try:
        check_sort(iter(given), records=records, resume=resume, undo=undo)
    except ConfigError as exc:
        return str(exc)
    return None


def test_resume_and_undo_take_only_dest() -> None:
    journal_only = ["--dry-run", "--quiet", "--debug", "--resume", "--undo"]
    assert _sort(journal_only, resume=True) is None
    assert _sort(journal_only, undo=True) is None
    assert _sort(["--resume", "--move", "--model", "--dry-run"], resume=True) == (
        "--resume follows DEST's journal and takes only DEST; drop --move, --model"
    )
    assert _sort(["--undo", "--from"], undo=True) == (
        "--undo follows DEST's journal and takes only DEST; drop --from"
    )
    assert _sort(["--from"], records="r.jsonl", resume=True, undo=True) == (
        "--undo follows DEST's journal and takes only DEST; drop --from"
    )


MODEL_OPTIONS = [
    "--model", "--weights", "--checkpoint", "--labels", "--topk", "--batch-size", "--device",
    "--precision", "--exact", "--quantized", "--decode", "--categories", "--workers",
    "--timeout", "--max-pixels", "--allow-truncated", "--offline",
]  # fmt: skip


@pytest.mark.parametrize("option", MODEL_OPTIONS)
def test_sort_from_records_refuses_each_model_option(option: str) -> None:
    assert _sort(["--from", option, "--move"], records="r.jsonl") == (
        f"--from files by the records' labels without a model; drop {option}"
    )
    assert _sort(["--from", option, "--move"]) is None  # a sort that runs the model


def test_sort_from_records_takes_its_filing_options() -> None:
    filing = ["--from", "--move", "--by", "--min-prob", "--dry-run", "--quiet", "--debug"]
    assert _sort(filing, records="r.jsonl") is None
    assert _sort(["--exact", "--model", "--from"], records="r.jsonl") == (
        "--from files by the records' labels without a model; drop --exact, --model"
    )
