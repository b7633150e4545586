"""Photo categories over the model's classes: 'dog 92%', not 118 dog breeds.

A category's probability is the sum of its classes' softmax probabilities. The default
mapping covers ImageNet's 1000 classes and is data: each class goes to the category of its
nearest ancestor in WordNet 3.0 (data/imagenet_hierarchy.tsv) that is an anchor in
data/imagenet_categories.tsv (ANCHORS); when none
is, to that of its nearest ancestor in FALLBACKS (broad nodes: animal, vehicle, structure);
OVERRIDES puts a class elsewhere where WordNet's tree and a person filing photos disagree.
A user's mapping (``--categories FILE``) is a TSV of ``class label or index <TAB> group``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from resnext_cli.console import printable
from resnext_cli.errors import ConfigError
from resnext_cli.files import FileProblem, read_user_file
from resnext_cli.model.labels import bundled_text, imagenet_labels
from resnext_cli.results import CategoryScore

__all__ = [
    "ANCHORS",
    "DEFAULT_NAMES",
    "FALLBACKS",
    "MAX_FILE_BYTES",
    "OTHER",
    "OVERRIDES",
    "Categories",
    "CategoryScore",
    "HierarchyRow",
    "default_category",
    "hierarchy",
    "parse_hierarchy",
    "wordnet_category",
]

OTHER = "other"
MAX_FILE_BYTES = 4 * 1024 * 1024  # a mapping of even 100k classes is far smaller
_HIERARCHY = "imagenet_hierarchy.tsv"
_FORMAT = "give a UTF-8 text file of 'class label or index<TAB>group' lines"

_CATEGORIES = "imagenet_categories.tsv"


def _tables() -> tuple[tuple[str, ...], dict[str, str], dict[str, str], dict[str, str]]:
    """Read data/imagenet_categories.tsv: the category names, anchors, fallbacks, overrides."""
    names: list[str] = []
    tables: dict[str, dict[str, str]] = {"anchor": {}, "fallback": {}, "override": {}}
    for line in bundled_text(_CATEGORIES).splitlines():
        if not line or line.startswith("#") or line.startswith("kind\t"):
            continue
        kind, synset, category, _note = line.split("\t")
        if kind == "category":
            names.append(category)
        else:
            tables[kind][synset] = category
    return tuple(names), tables["anchor"], tables["fallback"], tables["override"]


_NAMES, _ANCHORS, _FALLBACKS, _OVERRIDES = _tables()
# The default categories, in the order ties are broken and lists are shown.
DEFAULT_NAMES: tuple[str, ...] = _NAMES
# WordNet synsets whose descendants belong to a category; the nearest one wins.
ANCHORS: Mapping[str, str] = MappingProxyType(_ANCHORS)
# Used only when no ANCHORS synset is an ancestor: the nearest one wins.
FALLBACKS: Mapping[str, str] = MappingProxyType(_FALLBACKS)
# Classes (by synset) whose WordNet category is not where a person would file the photo:
# a food mushroom is a fungus, a dog's muzzle is a dog photo, a car wheel is a car photo.
OVERRIDES: Mapping[str, str] = MappingProxyType(_OVERRIDES)


@dataclass(frozen=True)
class HierarchyRow:
    """One ImageNet class and its WordNet ancestors, nearest first."""

    index: int
    synset: str
    label: str
    ancestors: tuple[str, ...]


def parse_hierarchy(text: str) -> tuple[HierarchyRow, ...]:
    """Parse the hierarchy TSV (format: the header of data/imagenet_hierarchy.tsv)."""
    rows = []
    for line in text.splitlines():
        if not line or line.startswith("#") or line.startswith("index\t"):
            continue
        index, synset, label, ancestors = line.split("\t")
        chain = tuple(token.split(":", 1)[0] for token in ancestors.split())
        rows.append(HierarchyRow(int(index), synset, label, chain))
    if [row.index for row in rows] != list(range(len(rows))):
        raise ValueError("hierarchy rows are not numbered 0, 1, 2, ... in order")
    return tuple(rows)


@functools.cache
def hierarchy() -> tuple[HierarchyRow, ...]:
    """Return the bundled ImageNet hierarchy, one row per class in index order."""
    return parse_hierarchy(bundled_text(_HIERARCHY))


def wordnet_category(row: HierarchyRow) -> str:
    """The category WordNet alone gives a class: nearest anchor, else nearest fallback."""
    for table in (ANCHORS, FALLBACKS):
        for synset in (row.synset, *row.ancestors):
            if synset in table:
                return table[synset]
    return OTHER


def default_category(row: HierarchyRow) -> str:
    """The default category of a class: its override, else its WordNet category."""
    return OVERRIDES.get(row.synset) or wordnet_category(row)


@functools.cache
def _default() -> Categories:
    index = {name: i for i, name in enumerate(DEFAULT_NAMES)}
    return Categories(
        names=DEFAULT_NAMES,
        class_to_category=tuple(index[default_category(row)] for row in hierarchy()),
    )


@dataclass(frozen=True)
class Categories:
    """Groups of classes: category names and, for each class index, its category's index."""

    names: tuple[str, ...]
    class_to_category: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names) or not all(self.names):
            raise ValueError("category names must be unique and not empty")
        if any(not 0 <= c < len(self.names) for c in self.class_to_category):
            raise ValueError("a class maps to no category")

    @classmethod
    def default(cls) -> Categories:
        """The bundled photo categories for ImageNet's 1000 classes."""
        return _default()

    @classmethod
    def for_labels(cls, spec: str | Path | None, labels: Sequence[str]) -> Categories:
        """The mapping to use with *labels*: *spec* None or 'default' is the bundled one."""
        if spec is None or str(spec) == "default":
            if tuple(labels) != imagenet_labels():
                raise ConfigError(
                    "the default categories are for imagenet's 1000 classes, not these "
                    f"{len(labels)} labels (pass your own mapping: --categories FILE)"
                )
            return cls.default()
        return cls.from_file(spec, labels)

    @classmethod
    def from_file(cls, path: str | Path, labels: Sequence[str]) -> Categories:
        """Read a user's 'class label or index <TAB> group' file; left-out classes: 'other'."""
        text = _read_mapping(Path(path))
        by_label: dict[str, int] = {}
        for i, label in enumerate(labels):
            by_label.setdefault(label, i)  # a repeated label is reachable by index only
        names: list[str] = []
        chosen: dict[int, tuple[int, int]] = {}  # class -> (category, line)
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"categories file '{path}', line {number}"
            fields = [field.strip() for field in raw.split("\t")]
            if len(fields) != 2 or not fields[0] or not fields[1]:
                raise ConfigError(
                    f"{where}: expected 'class<TAB>group', got {_show(line)} "
                    "(separate the class and its group with one tab)"
                )
            name, group = fields
            index = by_label.get(name)
            if index is None and name.isdigit() and int(name) < len(labels):
                index = int(name)
            if index is None:
                raise ConfigError(
                    f"{where}: unknown class {_show(name)} "
                    f"(give a label from the labels or an index 0..{len(labels) - 1})"
                )
            if index in chosen:
                category, first = chosen[index]
                raise ConfigError(
                    f"{where}: class {_show(labels[index])} ({index}) is already in group "
                    f"{_show(names[category])} on line {first} (map each class once)"
                )
            if group in (".", "..") or any(c in "/\\" or not c.isprintable() for c in group):
                raise ConfigError(
                    f"{where}: group {_show(group)} cannot be a folder name "
                    "(no '/', '\\', control characters, '.' or '..')"
                )
            if group not in names:
                names.append(group)
            chosen[index] = (names.index(group), number)
        if not chosen:
            raise ConfigError(f"categories file '{path}' maps no classes ({_FORMAT})")
        if len(chosen) < len(labels) and OTHER not in names:
            names.append(OTHER)
        other = names.index(OTHER) if OTHER in names else -1
        mapping = tuple(chosen[i][0] if i in chosen else other for i in range(len(labels)))
        return cls(names=tuple(names), class_to_category=mapping)

    def name_of(self, class_index: int) -> str:
        """The category of one class."""
        return self.names[self.class_to_category[class_index]]

    def all_scores(self, probabilities: Sequence[float] | Any) -> tuple[CategoryScore, ...]:
        """Every category's probability (the sum of its classes'), in category order."""
        values = _floats(probabilities)
        if len(values) != len(self.class_to_category):
            raise ValueError(
                f"{len(values)} probabilities for a mapping of {len(self.class_to_category)} "
                "classes"
            )
        sums = [0.0] * len(self.names)
        for p, category in zip(values, self.class_to_category, strict=True):
            sums[category] += p
        return tuple(CategoryScore(name, s) for name, s in zip(self.names, sums, strict=True))

    def scores(self, probabilities: Sequence[float] | Any, k: int) -> tuple[CategoryScore, ...]:
        """The *k* most probable categories, most probable first; ties in category order."""
        ranked = sorted(enumerate(self.all_scores(probabilities)), key=lambda e: -e[1].probability)
        return tuple(score for _, score in ranked[: max(k, 0)])


def _floats(probabilities: Sequence[float] | Any) -> list[float]:
    # A torch or numpy vector has tolist(); plain sequences are used as they are.
    values = probabilities.tolist() if hasattr(probabilities, "tolist") else probabilities
    if any(isinstance(v, list) for v in values[:1]):
        raise ValueError("probabilities must be one vector, not a batch")
    return [float(v) for v in values]


def _show(text: str, limit: int = 80) -> str:
    """Quote untrusted text on one line: controls escaped, long text cut."""
    short = text if len(text) <= limit else text[:limit] + "…"
    return "'" + printable(short) + "'"


def _read_mapping(path: Path) -> str:
    # The one safe opener: never blocks on a FIFO, refuses what is not a regular file.
    try:
        data = read_user_file(path, max_bytes=MAX_FILE_BYTES)
    except FileProblem as exc:
        if exc.kind in ("folder", "not_regular"):
            raise ConfigError(
                f"categories file '{path}' is not a regular file ({_FORMAT})"
            ) from None
        if exc.kind == "too_large":
            raise ConfigError(
                f"categories file '{path}' is over the {MAX_FILE_BYTES // (1024 * 1024)} MB "
                "limit (give a smaller mapping)"
            ) from None
        raise ConfigError(
            f"cannot read categories file '{path}': {exc.cause} ({_FORMAT})"
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"categories file '{path}' is not UTF-8 text ({_FORMAT})") from exc
