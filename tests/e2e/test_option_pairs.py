"""Every pair of options that interact, command by command: each is either accepted, with
its effect checked (here or in the test named), or refused with its one line before
anything happens (no model, no torch, no file touched).

The audit, per command (options not listed here act alone):

classify  -f/-o/--force/--resume/--long/--report, --engine/--ray-address/--workers/
          --decode/--device, --exact/--quantized/--precision/--decode, --labels/
          --categories/-k/--checkpoint
sort      --copy/--link/--move, --from with model options or --report, --resume/--undo
          with anything but DEST (-n with them: issue 23), --by category/--categories
models    -f alone
download  --quantized with -m and -w
quantize  -o/--force (and the agreement check, test_quantize_agreement.py),
          --checkpoint/-w/--labels
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import natural_image
from tests.helpers import run_all

MODES = "give one of --copy, --link, --move"
NOT_BOTH = "give --force (write the -o file anew) or --resume (continue it), not both"
INT8_50 = (
    "resnext50_32x4d has no published INT8 weights (make them from your own photos with "
    "'resnext quantize -m resnext50_32x4d --calibrate PHOTOS -o my50-int8.pth', then use "
    "--checkpoint my50-int8.pth --quantized)"
)

# (command line after 'resnext', with {t} for the test's folder) -> the one line refused.
REFUSED: dict[str, str] = {
    # classify: where the records go
    "classify {t}/cat.jpg -f parquet": (
        "parquet cannot go to a terminal or a pipe (give -o FILE.parquet)"
    ),
    "classify {t}/cat.jpg --force --resume -o {t}/x.jsonl": NOT_BOTH,
    "classify {t}/cat.jpg --force": "--force overwrites the -o or --report file: give one of them",
    "classify {t}/cat.jpg --resume": "--resume needs -o FILE (the file to continue)",
    "classify {t}/cat.jpg --resume -f csv -o {t}/x.csv": (
        "--resume works with jsonl output, not csv (use -f jsonl)"
    ),
    "classify {t}/cat.jpg --long -f json": (
        "--long shapes csv and parquet rows, not json (give -f csv or -f parquet)"
    ),
    "classify {t}/cat.jpg --long -o {t}/x.jsonl": (
        "--long shapes csv and parquet rows, not jsonl (give -f csv or -f parquet)"
    ),
    "classify {t}/cat.jpg --long": (  # stdout is not a terminal here: JSON Lines
        "--long shapes csv and parquet rows, not jsonl (give -f csv or -f parquet)"
    ),
    "classify {t}/cat.jpg -o {t}/x.txt": (
        "cannot tell the format of '{t}/x.txt' from its name (give -f jsonl, json, csv, "
        "parquet or table, or name it .jsonl, .json, .csv or .parquet)"
    ),
    "classify {t}/cat.jpg -o {t}/r.jsonl --report {t}/r.jsonl": (
        "the report and the results would both be '{t}/r.jsonl' (give --report another file)"
    ),
    "classify {t}/cat.jpg -o {t}/new.jsonl --report {t}/old.html": (
        "report file '{t}/old.html' exists (use --force to overwrite it, or --resume to "
        "continue the run)"
    ),
    "classify {t}/cat.jpg --report {t}/old.html": (
        "report file '{t}/old.html' exists (use --force to overwrite it)"
    ),
    # classify: engines
    "classify {t}/cat.jpg --ray-address local": (
        "--ray-address is for --engine ray (add --engine ray, or drop it)"
    ),
    "classify {t}/cat.jpg --engine ray --workers 2": (
        "--engine ray decodes in Ray tasks, not threads; drop --workers"
    ),
    "classify {t}/cat.jpg --engine ray --decode gpu": (
        "--engine ray decodes in CPU tasks; drop --decode gpu"
    ),
    "classify {t}/cat.jpg --engine ray --device mps": (
        "--engine ray places models itself: use --device auto, cpu or cuda, not 'mps'"
    ),
    # classify (and sort): how the model runs, and what it reports
    "classify {t}/cat.jpg --exact --quantized": (
        "--exact is the fp32 reference and --quantized is INT8; give one"
    ),
    "classify {t}/cat.jpg --exact --precision bf16": (
        "--exact runs in fp32; drop --precision bf16 or --exact"
    ),
    "classify {t}/cat.jpg -m 101 --quantized --precision fp16": (
        "--quantized runs in int8; drop --precision fp16 or --quantized"
    ),
    "classify {t}/cat.jpg --exact --decode gpu": (
        "--exact decodes with Pillow, as the reference; drop --decode gpu"
    ),
    "classify {t}/cat.jpg --quantized -m 50": INT8_50,
    "classify {t}/cat.jpg --labels {t}/labels3.txt -k 4": (
        "--topk 4 is more than the 3 classes (lower --topk)"
    ),
    "classify {t}/cat.jpg --categories --labels {t}/labels3.txt -k 1": (
        "the default categories are for imagenet's 1000 classes, not these 3 labels (pass "
        "your own mapping: --categories FILE)"
    ),
    # sort
    "sort {t}/cat.jpg {t}/dest --copy --move": f"{MODES}, not copy and move",
    "sort {t}/cat.jpg {t}/dest --link --move": f"{MODES}, not link and move",
    "sort --from {t}/r.jsonl {t}/dest -m 101 -k 3": (
        "--from files by the records' labels without a model; drop --model, --topk"
    ),
    "sort --from {t}/r.jsonl {t}/dest --checkpoint {t}/c.pth --categories": (
        "--from files by the records' labels without a model; drop --checkpoint, --categories"
    ),
    "sort --from {t}/r.jsonl {t}/dest --report {t}/x.html": (
        "--report is written while classifying; with --from, use the classify run's"
    ),
    "sort --undo {t}/dest --move": "--undo follows DEST's journal and takes only DEST; drop --move",
    "sort --resume {t}/dest --by category": (
        "--resume follows DEST's journal and takes only DEST; drop --by"
    ),
    "sort --resume {t}/dest --min-probability 0.5": (
        "--resume follows DEST's journal and takes only DEST; drop --min-probability"
    ),
    "sort --resume --undo {t}/dest": "give --resume or --undo, not both",
    # download
    "download --quantized -m 50": INT8_50,
    "download --quantized -m 101 -w IMAGENET1K_V1": (
        "unknown quantized weights 'IMAGENET1K_V1' for resnext101_32x8d (choose from: "
        "DEFAULT, IMAGENET1K_FBGEMM_V1, IMAGENET1K_FBGEMM_V2)"
    ),
    # quantize
    "quantize --calibrate {t}/photos -o {t}/old.pth": (
        "output file '{t}/old.pth' exists (use --force to overwrite it)"
    ),
}

# Accepted pairs whose effect another test checks (module::test).
ACCEPTED_ELSEWHERE = {
    "classify --long -o x.csv: one row per prediction": (
        "outputs/test_writers.py::test_cli_csv_and_parquet_match_the_json_records"
    ),
    "classify --resume --report: the report covers the whole run": (
        "outputs/test_sinks.py::test_resume_with_report_covers_the_whole_run"
    ),
    "classify -o existing --force: written anew": (
        "cli/test_options.py::test_an_existing_output_file_is_not_overwritten"
    ),
    "sort --from --by category: by the records' categories": (
        "e2e/test_categories_cli.py::test_sort_by_category"
    ),
    "classify --categories FILE: the user's groups": (
        "e2e/test_categories_cli.py::test_user_mapping_and_its_errors"
    ),
    "sort --by category without --categories: the default categories": (
        "e2e/test_option_pairs.py::test_sort_by_category_implies_the_default_categories"
    ),
    "quantize --force under 90% agreement: saved anyway": (
        "e2e/test_quantize_agreement.py::test_low_agreement_saves_nothing_unless_forced"
    ),
}


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    t = tmp_path_factory.mktemp("pairs")
    natural_image(1, (64, 48)).save(t / "cat.jpg")
    (t / "photos").mkdir()
    natural_image(2, (64, 48)).save(t / "photos" / "a.jpg")
    (t / "labels3.txt").write_text("a\nb\nc\n")
    (t / "old.html").write_text("<html>an earlier report</html>")
    (t / "old.pth").write_bytes(b"an earlier file")
    (t / "r.jsonl").write_text("")
    (t / "dest").mkdir()
    return t


@pytest.fixture
def photos(make_photos: Callable[..., Path]) -> Path:
    return make_photos(4)  # conftest's photos, one more


def listing(t: Path) -> dict[str, bytes]:
    return {str(p.relative_to(t)): p.read_bytes() for p in sorted(t.rglob("*")) if p.is_file()}


def test_each_refused_pair_is_one_line_before_anything_happens(place: Path) -> None:
    before = listing(place)
    argvs = [line.format(t=place).split() for line in REFUSED]
    results, imported = run_all(argvs)
    for (line, message), (code, stdout, stderr) in zip(REFUSED.items(), results, strict=True):
        assert (code, stdout, stderr) == (2, "", f"error: {message.format(t=place)}\n"), line
    assert imported == []  # no model, no torch
    assert listing(place) == before  # nothing made, nothing changed


def test_accepted_elsewhere_names_real_tests() -> None:
    here = Path(__file__).parents[1]  # tests/
    for what, where in ACCEPTED_ELSEWHERE.items():
        module, name = where.split("::")
        assert f"def {name}(" in (here / module).read_text(), what


def test_sort_by_category_implies_the_default_categories(
    checkpoint: Path, photos: Path, tmp_path: Path, resnext
) -> None:
    dest = tmp_path / "sorted"
    sort = resnext("sort", photos, dest, "--by", "category", "--checkpoint", checkpoint, "-q")
    assert sort.code == 0, sort
    # The same photos classified on their own, with the categories asked for.
    run = resnext("classify", photos, "--checkpoint", checkpoint, "--categories", "-f", "jsonl")
    assert run.code == 0, run
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert records
    for record in records:
        name = Path(record["input"]).name
        assert (dest / record["categories"][0]["name"] / name).is_file(), record["input"]
