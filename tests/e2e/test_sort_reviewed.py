"""`resnext sort --from NAME.reviewed.jsonl`: filed by the labels a person chose in the report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from resnext_cli.reviewed import (
    review_problem,
)
from tests.helpers import (
    reviewed_line,
    reviewed_photos,  # noqa: F401  (the photos fixture)
)


def filed(dest: Path) -> list[str]:
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*.jpg"))


def test_files_by_the_reviewed_label_and_skipped_apart(photos, tmp_path: Path, resnext) -> None:
    reviewed = tmp_path / "holiday.reviewed.jsonl"
    reviewed.write_text(
        reviewed_line(photos[0], "accepted", "tabby")
        + reviewed_line(photos[1], "corrected", "snow leopard")
        + reviewed_line(photos[2], "skipped", None)
        + reviewed_line(photos[3], "corrected", "_skipped")  # a label spelled like the folder
        + reviewed_line(photos[4], "corrected", "../../etc"),
        encoding="utf-8",
    )
    run = resnext("sort", "--from", reviewed, tmp_path / "sorted")
    assert run.code == 0, run
    assert filed(tmp_path / "sorted") == [
        "_.._etc/IMG_4.jpg",  # a label is one folder name inside DEST, never a path
        "_skipped (label)/IMG_3.jpg",
        "_skipped/IMG_2.jpg",
        "snow leopard/IMG_1.jpg",
        "tabby/IMG_0.jpg",
    ]
    assert "copied 5 files into 5 folders" in run.stderr
    # and it is ordinary JSON Lines: the reviewed label is a field like any other
    labels = [json.loads(line)["label"] for line in reviewed.read_text().splitlines()]
    assert labels == ["tabby", "snow leopard", None, "_skipped", "../../etc"]


def test_unreviewed_images_are_refused_or_filed_by_the_model(
    photos, tmp_path: Path, resnext
) -> None:
    reviewed = tmp_path / "r.reviewed.jsonl"
    reviewed.write_text(
        reviewed_line(photos[0], "corrected", "lynx")
        + reviewed_line(photos[1], None, None)
        + reviewed_line(photos[2], None, None, model_label="gong"),
        encoding="utf-8",
    )
    dest = tmp_path / "sorted"
    run = resnext("sort", "--from", reviewed, dest)
    assert run.code == 2, run
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: '{reviewed}' has 2 images not reviewed yet (the first: 'photos/IMG_1.jpg'); "
        "review them in the report and export again, or give --unreviewed model to file them "
        "by the model's top-1"
    )
    assert not dest.exists() or filed(dest) == []
    run = resnext("sort", "--from", reviewed, dest, "--unreviewed", "refuse")
    assert run.code == 2, run
    run = resnext("sort", "--from", reviewed, dest, "--unreviewed", "model")
    assert run.code == 0, run
    assert filed(dest) == ["gong/IMG_2.jpg", "lynx/IMG_0.jpg", "tabby/IMG_1.jpg"]


def test_reviewed_records_keep_the_identity_check(photos, tmp_path: Path, resnext) -> None:
    reviewed = tmp_path / "r.reviewed.jsonl"
    reviewed.write_text(
        reviewed_line(photos[0], "accepted", "tabby") + reviewed_line(photos[1], "skipped", None),
        encoding="utf-8",
    )
    st = photos[1].stat()
    os.utime(photos[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    run = resnext("sort", "--from", reviewed, tmp_path / "sorted")
    assert run.code == 0, run
    assert filed(tmp_path / "sorted") == ["tabby/IMG_0.jpg"]
    assert (
        "not sorted: 'photos/IMG_1.jpg': changed since it was classified (classify it again)"
        in run.stderr
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"reviewed": "maybe"}, "'reviewed' is not one of accepted, corrected, skipped or null"),
        ({"label": None}, "an accepted image has no 'label'"),
        ({"label": "  "}, "an accepted image has no 'label'"),
        ({"label": 3}, "an accepted image has no 'label'"),
        ({"reviewed": "skipped"}, "a skipped image has a 'label'"),
        ({"reviewed": None}, "a not reviewed image has a 'label'"),
        ({"model_label": None}, "no 'model_label'"),
        ({"path": "relative/a.jpg"}, "'path' is not an absolute path"),
        # These two ended in an "unexpected" error when the file was opened.
        ({"path": "/p/a\x00.jpg"}, "'path' holds a NUL or a character no file name can have"),
        ({"path": "/p/\ud800.jpg"}, "'path' holds a NUL or a character no file name can have"),
        ({"mtime_ns": 1.5}, "'mtime_ns' is not a whole number"),
        ({"size": 1.5}, "'size' is not a whole number"),
        ({"size": "2457120"}, "'size' is not a whole number"),
        ({"input": None}, "no 'input'"),
    ],
)
def test_a_bad_reviewed_line_is_refused_with_its_number(
    photos, tmp_path: Path, resnext, change: dict[str, Any], problem: str
) -> None:
    good = json.loads(reviewed_line(photos[0], "accepted", "tabby"))
    assert review_problem(good) is None
    reviewed = tmp_path / "r.reviewed.jsonl"
    reviewed.write_text(
        reviewed_line(photos[1], "accepted", "tabby") + json.dumps({**good, **change}) + "\n",
        encoding="utf-8",
    )
    run = resnext("sort", "--from", reviewed, tmp_path / "sorted")
    assert run.code == 2, run
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: '{reviewed}' line 2 is not a reviewed record ({problem}); give the file the "
        "report's 'export decisions' wrote"
    )
    assert not (tmp_path / "sorted").exists() or filed(tmp_path / "sorted") == []


def test_options_that_do_not_apply_to_a_reviewed_file(photos, tmp_path: Path, resnext) -> None:
    reviewed = tmp_path / "r.reviewed.jsonl"
    reviewed.write_text(reviewed_line(photos[0], "accepted", "tabby"), encoding="utf-8")
    dest = tmp_path / "sorted"
    for extra, message in (
        (["--by", "index"], "a reviewed file is filed by its labels; --by index does not apply"),
        (["--min-probability", "0.5"], "--min-probability does not apply (leave it out)"),
    ):
        run = resnext("sort", "--from", reviewed, dest, *extra)
        assert run.code == 2 and message in run.stderr, run
    run = resnext("sort", photos[0], dest, "--unreviewed", "model")
    assert run.code == 2, run
    assert "--unreviewed is for a reviewed file: give it with --from RECORDS" in run.stderr


def classify_record(photo: Path, **more: Any) -> dict[str, Any]:
    """A record as `resnext classify -o` writes it for *photo*: top-1 'gong'."""
    st = photo.stat()
    return {
        "input": "photos/IMG_0.jpg",
        "path": str(photo),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "model": "m",
        "weights": "w",
        "predictions": [{"label": "gong", "index": 577, "probability": 0.9}],
        **more,
    }


def test_a_classify_runs_records_are_filed_as_ever(photos, tmp_path: Path, resnext) -> None:
    record = classify_record(photos[0])
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(record) + "\n", encoding="utf-8")
    for extra in ([], ["--unreviewed", "model"]):  # never reviewed: no review is asked for
        dest = tmp_path / f"sorted{len(extra)}"
        run = resnext("sort", "--from", results, dest, *extra)
        assert run.code == 0, run
        assert filed(dest) == ["gong/IMG_0.jpg"]


def test_a_classify_record_with_a_reviewed_key_is_filed_by_its_prediction(
    photos, tmp_path: Path, resnext
) -> None:
    # Keys someone added to a classify record: still a classify record.
    record = classify_record(photos[0], reviewed="corrected", label="lynx")
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(record) + "\n", encoding="utf-8")
    run = resnext("sort", "--from", results, tmp_path / "sorted")
    assert run.code == 0, run
    assert filed(tmp_path / "sorted") == ["gong/IMG_0.jpg"]
