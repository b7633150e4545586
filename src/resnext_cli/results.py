"""Result records: the one place the JSON shape of a result is defined."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
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
class CategoryScore:
    """One category (a group of classes) with the sum of its classes' probabilities."""

    name: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {"name": self.name, "probability": self.probability}


@dataclass(frozen=True)
class FileFacts:
    """Size and modification time of a local input when it was read, to match it later."""

    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Classified:
    """An input that was classified: its top-k predictions, most probable first."""

    input: str
    model: str
    weights: str
    predictions: tuple[Prediction, ...]
    path: str | None = None
    checkpoint: str | None = None
    # None: no --min-probability was given; else whether top-1 fell below it.
    uncertain: bool | None = None
    precision: str | None = None
    file: FileFacts | None = None
    categories: tuple[CategoryScore, ...] | None = None
    # --embeddings: the pooled features the predictions came from (2,048 for ResNeXt).
    embedding: tuple[float, ...] | None = None
    # What ran the network: 'torch' or 'openvino'.
    runtime: str | None = None

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
        out = _head(self.input, self.path, self.file)
        out["model"] = self.model
        out["weights"] = self.weights
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint
        if self.precision is not None:
            out["precision"] = self.precision
        if self.runtime is not None:
            out["runtime"] = self.runtime
        if self.categories is not None:
            out["categories"] = [c.to_dict() for c in self.categories]
        out["predictions"] = [p.to_dict() for p in self.predictions]
        if self.uncertain is not None:
            out["uncertain"] = self.uncertain
        if self.embedding is not None:
            out["embedding"] = list(self.embedding)
        return out


@dataclass(frozen=True)
class Failed:
    """An input that could not be classified, with a typed error."""

    input: str
    error_type: str
    message: str
    path: str | None = None
    file: FileFacts | None = None

    @property
    def ok(self) -> bool:
        """Whether this input was classified."""
        return False

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        out = _head(self.input, self.path, self.file)
        out["error"] = {"type": self.error_type, "message": self.message}
        return out


Record = Classified | Failed


def _head(input: str, path: str | None, file: FileFacts | None) -> dict[str, Any]:
    out: dict[str, Any] = {"input": input}
    if path is not None:
        out["path"] = path
    if file is not None:
        out["size"] = file.size
        out["mtime_ns"] = file.mtime_ns
    return out


def head_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with the keys every record read back starts with, if anything: an
    ``input`` (text), a ``path`` (absolute, without NUL, nameable on this system) and
    ``size`` and ``mtime_ns`` (whole numbers), the last three optional."""
    if not isinstance(data.get("input"), str):
        return "no 'input'"
    path = data.get("path")
    if path is not None:
        if not isinstance(path, str) or not os.path.isabs(path):
            return "'path' is not an absolute path"
        if not _nameable(path):
            return "'path' holds a NUL or a character no file name can have"
    for key in ("size", "mtime_ns"):
        if key in data and not (type(data[key]) is int or data[key] is None):
            return f"'{key}' is not a whole number"
    return None


def _nameable(text: str) -> bool:
    try:
        os.fsencode(text)
    except (UnicodeError, ValueError):
        return False
    return "\x00" not in text


def record_from_dict(data: Any) -> Record:
    """Read back a record's JSON form (as to_dict writes it); ValueError if it is not one."""
    try:
        path = data.get("path")
        size, mtime = data.get("size"), data.get("mtime_ns")
        file = FileFacts(int(size), int(mtime)) if size is not None and mtime is not None else None
        if "error" in data:
            error = data["error"]
            return Failed(str(data["input"]), error["type"], error["message"], path, file=file)
        categories = data.get("categories")
        embedding = data.get("embedding")
        return Classified(
            input=str(data["input"]),
            model=str(data["model"]),
            weights=str(data["weights"]),
            predictions=tuple(
                Prediction(str(p["label"]), int(p["index"]), float(p["probability"]))
                for p in data["predictions"]
            ),
            path=path,
            checkpoint=data.get("checkpoint"),
            uncertain=data.get("uncertain"),
            precision=data.get("precision"),
            file=file,
            runtime=None if data.get("runtime") is None else str(data["runtime"]),
            categories=None
            if categories is None
            else tuple(CategoryScore(str(c["name"]), float(c["probability"])) for c in categories),
            embedding=None if embedding is None else tuple(float(v) for v in embedding),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a result record ({exc.__class__.__name__}: {exc})") from None


def apply_threshold(record: Record, min_probability: float | None) -> Record:
    """Mark a classified record uncertain when its top-1 probability is below the threshold.

    With no threshold the record is returned as is, and its JSON has no "uncertain" key;
    with one, every classified record's JSON has "uncertain": true or false.
    """
    if min_probability is None or not isinstance(record, Classified):
        return record
    return replace(record, uncertain=record.top1.probability < min_probability)
