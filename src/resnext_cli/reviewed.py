"""Reviewed records: the lines a report's review exports (``NAME.reviewed.jsonl``).

One JSON object per classified image: the record's ``input``, ``path``, ``size`` and
``mtime_ns``, the model's top-1 (``model_label``), the person's ``label`` and ``reviewed``:
``"accepted"`` (the top-1 is right), ``"corrected"`` (another label, of the top-k or not),
``"skipped"`` (``label`` null), or null: not reviewed yet (``label`` null too). A sort files
a reviewed image by its ``label``, a skipped one into ``_skipped/``, and an unreviewed one
not at all unless asked to file it by the model's top-1 (``--unreviewed model``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from resnext_cli.results import Classified, FileFacts, Prediction, Record, head_problem

SKIPPED_FOLDER = "_skipped"
REVIEWS = ("accepted", "corrected", "skipped")
UNREVIEWED = ("refuse", "model")


@dataclass(frozen=True)
class Reviewed(Classified):
    """A classified image as a person reviewed it.

    Its one prediction is the label it is filed by: the person's, or the model's top-1
    while ``review`` is None (not reviewed yet). Never uncertain: a person decided.
    """

    review: str | None = None
    model_label: str = ""

    @property
    def skipped(self) -> bool:
        """Whether the person skipped this image."""
        return self.review == "skipped"


def is_reviewed_line(data: Any) -> bool:
    """Whether a line of a records file is a reviewed record: a ``reviewed`` key, and no
    ``predictions`` or ``error`` (those are a classify run's records, extra keys kept)."""
    return (
        isinstance(data, dict)
        and "reviewed" in data
        and "predictions" not in data
        and "error" not in data
    )


def review_problem(data: dict[str, Any]) -> str | None:
    """What keeps *data* from being a reviewed record, if anything."""
    problem = head_problem(data)
    if problem is not None:
        return problem
    review = data["reviewed"]
    if review is not None and review not in REVIEWS:
        return f"'reviewed' is not one of {', '.join(REVIEWS)} or null"
    if not isinstance(data.get("model_label"), str):
        return "no 'model_label'"
    label = data.get("label")
    if review in (None, "skipped"):
        if label is not None:
            return f"a {'skipped' if review else 'not reviewed'} image has a 'label'"
    elif not (isinstance(label, str) and label.strip()):
        return f"an {review} image has no 'label'"
    return None


def reviewed_from_dict(data: dict[str, Any]) -> Reviewed:
    """A reviewed record from a line :func:`review_problem` found nothing wrong with."""
    review = data["reviewed"]
    label = data["label"] if review in ("accepted", "corrected") else data["model_label"]
    size, mtime = data.get("size"), data.get("mtime_ns")
    return Reviewed(
        input=data["input"],
        model="",
        weights="",
        # index -1: a person's label need not be one of the model's classes
        predictions=(Prediction(label, -1, 1.0),),
        path=data.get("path"),
        uncertain=False,
        file=FileFacts(size, mtime) if size is not None and mtime is not None else None,
        review=review,
        model_label=data["model_label"],
    )


def unreviewed(records: Iterable[Record]) -> list[Record] | None:
    """The classified records without a review; None when none of *records* is reviewed.

    A records file with no reviewed record is a classify run's, filed as ever. Failed
    records need no review: they go to ``_failed/``.
    """
    records = list(records)
    if not any(isinstance(r, Reviewed) for r in records):
        return None
    return [
        r
        for r in records
        if isinstance(r, Classified) and not (isinstance(r, Reviewed) and r.review is not None)
    ]
