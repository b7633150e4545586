"""Result records: the one place the JSON shape of a result is defined."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Prediction:
    """One class with its softmax probability."""

    label: str
    index: int
    probability: float

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {"label": self.label, "index": self.index, "probability": self.probability}


@dataclass(frozen=True)
class Classified:
    """An input that was classified: its top-k predictions, most probable first."""

    input: str
    model: str
    weights: str
    predictions: tuple[Prediction, ...]
    path: str | None = None
    checkpoint: str | None = None
    thumbnail: bytes | None = field(default=None, repr=False, compare=False)
    # None: no --min-probability was given; else whether top-1 fell below it.
    uncertain: bool | None = None

    @property
    def ok(self) -> bool:
        """Whether this input was classified."""
        return True

    @property
    def top1(self) -> Prediction:
        """The most probable class."""
        return self.predictions[0]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        out: dict[str, Any] = {"input": self.input}
        if self.path is not None:
            out["path"] = self.path
        out["model"] = self.model
        out["weights"] = self.weights
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint
        out["predictions"] = [p.to_dict() for p in self.predictions]
        if self.uncertain is not None:
            out["uncertain"] = self.uncertain
        return out


@dataclass(frozen=True)
class Failed:
    """An input that could not be classified, with a typed error."""

    input: str
    error_type: str
    message: str
    path: str | None = None
    thumbnail: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Whether this input was classified."""
        return False

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        out: dict[str, Any] = {"input": self.input}
        if self.path is not None:
            out["path"] = self.path
        out["error"] = {"type": self.error_type, "message": self.message}
        return out


Record = Classified | Failed


def apply_threshold(record: Record, min_probability: float | None) -> Record:
    """Mark a classified record uncertain when its top-1 probability is below the threshold.

    With no threshold the record is returned as is, and its JSON has no "uncertain" key;
    with one, every classified record's JSON has "uncertain": true or false.
    """
    if min_probability is None or not isinstance(record, Classified):
        return record
    return replace(record, uncertain=record.top1.probability < min_probability)
