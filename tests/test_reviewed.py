"""reviewed.py: a line of the report's export holds a person's decision; the rest is unreviewed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from resnext_cli import sort as sorting
from resnext_cli.results import Classified, Failed, FileFacts, Prediction
from resnext_cli.reviewed import (
    SKIPPED_FOLDER,
    Reviewed,
    is_reviewed_line,
    reviewed_from_dict,
    unreviewed,
)
from tests.helpers import (
    reviewed_line,
    reviewed_photos,  # noqa: F401  (the photos fixture)
)


def test_unreviewed_and_the_skipped_folder(photos) -> None:
    def line(review: str | None, label: str | None) -> dict[str, Any]:
        return json.loads(reviewed_line(photos[0], review, label))

    rows = [reviewed_from_dict(line(r, lab)) for r, lab in
            (("accepted", "tabby"), ("skipped", None), (None, None))]  # fmt: skip
    assert all(isinstance(r, Reviewed) for r in rows)
    failed = Failed("bad.jpg", "truncated", "'bad.jpg' is truncated")
    plain = Classified("c.jpg", "m", "w", rows[0].predictions)  # type: ignore[union-attr]
    assert unreviewed([*rows, failed, plain]) == [rows[2], plain]
    assert unreviewed([failed, plain]) is None  # a classify run's: nothing to review
    assert [sorting.folder_for(r) for r in rows] == ["tabby", SKIPPED_FOLDER, "tabby"]


def test_only_a_line_with_reviewed_and_no_classify_keys_is_a_review(photos) -> None:
    good = json.loads(reviewed_line(photos[0], "accepted", "tabby"))
    assert is_reviewed_line(good)
    assert is_reviewed_line({**good, "note": "extra keys are kept"})
    predictions = [{"label": "gong", "index": 577, "probability": 0.9}]
    assert not is_reviewed_line({**good, "predictions": predictions})  # a classify record
    assert not is_reviewed_line({**good, "error": {"type": "truncated", "message": "cut"}})
    assert not is_reviewed_line({k: v for k, v in good.items() if k != "reviewed"})
    assert not is_reviewed_line({"input": "photos/IMG_0.jpg"})
    assert not is_reviewed_line(["reviewed"])  # not an object at all


@pytest.mark.parametrize(
    ("review", "label", "filed_by"),
    [
        # The person's label decides, even where it is not the model's top-1 ("tabby").
        ("accepted", "tiger cat", "tiger cat"),
        ("corrected", "lynx", "lynx"),
        ("skipped", None, "tabby"),
        (None, None, "tabby"),  # not reviewed yet: the model's top-1
    ],
)
def test_a_reviewed_record_holds_the_persons_decision(
    photos, review: str | None, label: str | None, filed_by: str
) -> None:
    st = photos[0].stat()
    record = reviewed_from_dict(json.loads(reviewed_line(photos[0], review, label)))
    assert isinstance(record, Reviewed)
    assert (record.input, record.path) == ("photos/IMG_0.jpg", str(photos[0]))
    assert record.file == FileFacts(st.st_size, st.st_mtime_ns)
    assert (record.review, record.model_label) == (review, "tabby")
    # One prediction, certain: index -1 (a person's label need not be a model class).
    assert record.predictions == (Prediction(filed_by, -1, 1.0),)
    assert record.uncertain is False  # never uncertain: a person decided
    assert (record.model, record.weights) == ("", "")  # the export names no model
