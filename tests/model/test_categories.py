"""Photo categories: the bundled hierarchy, the default mapping, scores and users' mappings."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from resnext_cli.errors import ConfigError
from resnext_cli.model.categories import (
    ANCHORS,
    DEFAULT_NAMES,
    FALLBACKS,
    MAX_FILE_BYTES,
    OTHER,
    OVERRIDES,
    Categories,
    CategoryScore,
    hierarchy,
    parse_hierarchy,
)
from resnext_cli.model.labels import imagenet_labels

ROOT = Path(__file__).resolve().parents[2]
TSV = ROOT / "data" / "imagenet_hierarchy.tsv"
OTHER_BOUND = 5  # classes the default mapping may leave in "other"


def _tsv_rows() -> list[list[str]]:
    """The hierarchy file's rows, read here without the module's parser."""
    lines = TSV.read_text(encoding="utf-8").splitlines()
    body = [line for line in lines if not line.startswith("#")]
    assert body[0] == "index\tsynset\tlabel\tancestors"
    return [line.split("\t") for line in body[1:]]


def _wordnet_walk(ancestors: str, synset: str) -> str:
    """Nearest ANCHORS synset (the class itself first), else nearest FALLBACKS one."""
    chain = [synset] + [token.split(":")[0] for token in ancestors.split(" ")]
    for table in (ANCHORS, FALLBACKS):
        hits = [table[s] for s in chain if s in table]
        if hits:
            return hits[0]
    return OTHER


# -- the hierarchy file ------------------------------------------------------------------


def test_hierarchy_rows_match_torchvision_names_in_order() -> None:
    from torchvision.models import ResNeXt50_32X4D_Weights

    names = ResNeXt50_32X4D_Weights.IMAGENET1K_V2.meta["categories"]
    rows = _tsv_rows()
    assert [int(r[0]) for r in rows] == list(range(1000))
    assert [r[2] for r in rows] == list(names)
    assert [row.label for row in hierarchy()] == list(names)
    synsets = [r[1] for r in rows]
    assert all(re.fullmatch(r"n\d{8}", s) for s in synsets)
    assert len(set(synsets)) == 1000
    # The dog-breed block is WordNet's dog subtree: the ids line up with the names.
    assert rows[258][1:3] == ["n02111889", "Samoyed"]
    assert all("n02084071:dog" in r[3].split(" ") for r in rows[151:269])


def test_every_ancestor_chain_reaches_entity() -> None:
    for row in _tsv_rows():
        tokens = row[3].split(" ")
        assert all(re.fullmatch(r"n\d{8}:\S+", t) for t in tokens), row[:3]
        assert "n00001740:entity" in tokens, row[:3]
        assert row[1] not in row[3]


# -- the default mapping -----------------------------------------------------------------


def test_every_class_is_in_exactly_one_named_category() -> None:
    cats = Categories.default()
    assert cats.names == DEFAULT_NAMES
    assert 30 <= len(cats.names) - 1 <= 60
    assert len(cats.class_to_category) == 1000
    members: dict[str, list[int]] = {name: [] for name in cats.names}
    for index in range(1000):
        members[cats.name_of(index)].append(index)
    assert sorted(i for group in members.values() for i in group) == list(range(1000))
    assert all(members[name] for name in cats.names), "a category with no class"


def test_category_names_are_plain_folder_names() -> None:
    for name in DEFAULT_NAMES:
        assert re.fullmatch(r"[a-z]+( (&|[a-z]+))*", name), name


def test_other_is_small() -> None:
    cats = Categories.default()
    other = [i for i in range(1000) if cats.name_of(i) == OTHER]
    assert len(other) <= OTHER_BOUND
    assert {imagenet_labels()[i] for i in other} == {"coil", "maypole"}


def test_dog_breeds_are_dogs_and_cats_are_cats() -> None:
    cats = Categories.default()
    assert {cats.name_of(i) for i in range(151, 269)} == {"dog"}
    assert {cats.name_of(i) for i in range(281, 286)} == {"cat"}
    assert {cats.name_of(i) for i in range(286, 294)} == {"wild cat"}
    assert cats.name_of(269) == "wild animal"  # timber wolf: a canine, not a dog


# (index, label, category a person expects, what WordNet's nearest anchor says)
EXAMPLE_OVERRIDES = [
    (947, "mushroom", "fungus", "fruit & vegetable"),
    (984, "rapeseed", "flower & plant", "fruit & vegetable"),
    (988, "acorn", "flower & plant", "fruit & vegetable"),
    (958, "hay", "landscape & water", "food"),
    (676, "muzzle", "dog", OTHER),
    (479, "car wheel", "car", OTHER),
    (785, "seat belt", "car", "clothing"),
    (720, "pill bottle", "medical & lab", "drink"),
    (499, "cleaver", "kitchen item", "tool"),
    (575, "golfcart", "other vehicle", "sports gear"),
    (798, "slide rule", "tool", "electronics"),
    (437, "beacon", "bridge & landmark", "building"),
]


@pytest.mark.parametrize(("index", "label", "expected", "wordnet"), EXAMPLE_OVERRIDES)
def test_example_overrides(index: int, label: str, expected: str, wordnet: str) -> None:
    row = _tsv_rows()[index]
    assert row[2] == label
    assert OVERRIDES[row[1]] == expected
    assert _wordnet_walk(row[3], row[1]) == wordnet
    assert Categories.default().name_of(index) == expected


def test_every_override_is_a_class_and_changes_wordnets_answer() -> None:
    rows = {r[1]: r for r in _tsv_rows()}
    cats = Categories.default()
    assert set(OVERRIDES) <= set(rows)
    for synset, category in OVERRIDES.items():
        index, _, label, ancestors = rows[synset]
        assert category in DEFAULT_NAMES, label
        assert cats.name_of(int(index)) == category, label
        assert _wordnet_walk(ancestors, synset) != category, f"{label}: override not needed"


def test_classes_without_override_follow_wordnet() -> None:
    cats = Categories.default()
    for index, synset, label, ancestors in _tsv_rows():
        if synset not in OVERRIDES:
            assert cats.name_of(int(index)) == _wordnet_walk(ancestors, synset), label


def test_anchor_tables_name_known_categories() -> None:
    assert set(ANCHORS.values()) | set(FALLBACKS.values()) <= set(DEFAULT_NAMES)
    assert not set(ANCHORS) & set(FALLBACKS)


# -- scores ------------------------------------------------------------------------------


def _softmax(seed: int, scale: float, n: int = 1000) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, generator=g, dtype=torch.float64) * scale, 0)


@pytest.mark.parametrize("seed", range(8))
def test_category_probabilities_are_sums_and_add_up_to_one(seed: int) -> None:
    cats = Categories.default()
    probs = _softmax(seed, scale=[0.1, 1.0, 4.0, 12.0][seed % 4])
    reference = torch.zeros(len(cats.names), dtype=torch.float64).index_add_(
        0, torch.tensor(cats.class_to_category), probs
    )
    scores = cats.all_scores(probs.tolist())
    assert [s.name for s in scores] == list(cats.names)
    for score, expected in zip(scores, reference.tolist(), strict=True):
        assert score.probability == pytest.approx(expected, abs=1e-12)
    assert math.fsum(s.probability for s in scores) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("seed", range(8))
def test_top_category_is_at_least_its_best_class(seed: int) -> None:
    cats = Categories.default()
    probs = _softmax(seed, scale=6.0).tolist()
    best = max(range(1000), key=probs.__getitem__)
    top = cats.scores(probs, 1)[0]
    own = next(s for s in cats.all_scores(probs) if s.name == cats.name_of(best))
    assert top.probability >= own.probability >= probs[best]
    ranked = cats.scores(probs, 5)
    assert [s.probability for s in ranked] == sorted((s.probability for s in ranked), reverse=True)


def test_many_breeds_add_up_to_dog() -> None:
    cats = Categories.default()
    probs = [0.0] * 1000
    probs[258], probs[259], probs[261] = 0.45, 0.20, 0.12  # Samoyed, Pomeranian, keeshond
    probs[281] = 0.23  # tabby
    top = cats.scores(probs, 2)
    assert [s.name for s in top] == ["dog", "cat"]
    assert top[0].probability == pytest.approx(0.77)
    assert top[0].to_dict() == {"name": "dog", "probability": pytest.approx(0.77)}


def test_scores_order_ties_by_category_order_and_cut_at_k() -> None:
    cats = Categories(names=("a", "b", "c"), class_to_category=(0, 1, 2, 2))
    assert cats.scores([0.25, 0.25, 0.25, 0.25], 2) == (
        CategoryScore("c", 0.5),
        CategoryScore("a", 0.25),
    )
    assert [s.name for s in cats.scores([0.25] * 4, 10)] == ["c", "a", "b"]
    assert cats.scores([0.25] * 4, 0) == ()


def test_scores_take_a_tensor_and_refuse_the_wrong_shape() -> None:
    cats = Categories.default()
    probs = _softmax(3, scale=3.0).float()
    assert cats.scores(probs, 3) == cats.scores(probs.tolist(), 3)
    with pytest.raises(ValueError) as batch:
        cats.scores(probs[None], 3)
    assert str(batch.value) == "probabilities must be one vector, not a batch"
    with pytest.raises(ValueError, match="999 probabilities for a mapping of 1000 classes"):
        cats.scores(probs[:999], 3)


def test_mapping_refuses_a_class_without_category() -> None:
    for names, classes, message in (
        (("a",), (0, 1), "a class maps to no category"),
        (("a",), (0, -1), "a class maps to no category"),
        (("a", "a"), (0,), "category names must be unique and not empty"),
        (("a", ""), (0,), "category names must be unique and not empty"),
    ):
        with pytest.raises(ValueError) as info:
            Categories(names=names, class_to_category=classes)
        assert str(info.value) == message


def test_a_group_may_hold_any_printable_character_but_slashes(tmp_path: Path) -> None:
    path = _mapping(tmp_path, "pug\tX-rays & XX\ntabby\tcafé · ✓\n")
    cats = Categories.from_file(path, LABELS)
    assert cats.names == ("X-rays & XX", "café · ✓", OTHER)


def test_hierarchy_ancestors_are_synsets_without_their_names() -> None:
    text = (
        "# a comment\nindex\tsynset\tlabel\tancestors\n"
        "0\tn02\tpug\tn01:dog:hound n00:entity\n1\tn03\tcar\t\n"
    )
    rows = parse_hierarchy(text)
    assert [(r.index, r.synset, r.label, r.ancestors) for r in rows] == [
        (0, "n02", "pug", ("n01", "n00")),
        (1, "n03", "car", ()),
    ]
    with pytest.raises(ValueError) as info:
        parse_hierarchy("1\tn02\tpug\tn01:dog\n")
    assert str(info.value) == "hierarchy rows are not numbered 0, 1, 2, ... in order"


# -- choosing a mapping ------------------------------------------------------------------


def test_default_mapping_for_imagenet_labels_only() -> None:
    labels = imagenet_labels()
    assert Categories.for_labels(None, labels) is Categories.default()
    assert Categories.for_labels("default", labels) is Categories.default()
    with pytest.raises(ConfigError) as info:
        Categories.for_labels(None, ("cat", "dog", "bird"))
    assert str(info.value) == (
        "the default categories are for imagenet's 1000 classes, not these 3 labels "
        "(pass your own mapping: --categories FILE)"
    )


# -- a user's mapping file ---------------------------------------------------------------

LABELS = ("tabby", "Samoyed", "pug", "crane", "crane", "sports car")


def _mapping(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "groups.tsv"
    path.write_text(text, encoding="utf-8")
    return path


def test_user_mapping_by_label_and_index(tmp_path: Path) -> None:
    path = _mapping(
        tmp_path,
        "# my groups\n\nSamoyed\tpets\n0\tpets\n  pug \t pets \r\n5\tcars\n",
    )
    cats = Categories.from_file(path, LABELS)
    assert cats.names == ("pets", "cars", "other")
    assert [cats.name_of(i) for i in range(6)] == ["pets", "pets", "pets", "other", "other", "cars"]
    assert Categories.for_labels(str(path), LABELS) == cats


def test_user_mapping_that_covers_everything_has_no_other(tmp_path: Path) -> None:
    text = "".join(f"{i}\t{'a' if i % 2 else 'b'}\n" for i in range(6))
    cats = Categories.from_file(_mapping(tmp_path, text), LABELS)
    assert cats.names == ("b", "a")
    scores = cats.all_scores([0.1, 0.2, 0.3, 0.1, 0.2, 0.1])
    assert [s.probability for s in scores] == pytest.approx([0.6, 0.4])


def test_user_mapping_can_name_other_itself(tmp_path: Path) -> None:
    cats = Categories.from_file(_mapping(tmp_path, "1\tother\n2\tdogs\n"), LABELS)
    assert cats.names == ("other", "dogs")
    assert [cats.name_of(i) for i in range(6)] == [
        "other",
        "other",
        "dogs",
        "other",
        "other",
        "other",
    ]


def test_a_repeated_label_means_its_first_class(tmp_path: Path) -> None:
    cats = Categories.from_file(_mapping(tmp_path, "crane\tbirds\n4\tmachines\n"), LABELS)
    assert [cats.name_of(i) for i in (3, 4)] == ["birds", "machines"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "tabby\tcats\ncorgi\tdogs\n",
            "line 2: unknown class 'corgi' (give a label from the labels or an index 0..5)",
        ),
        (
            "6\tcars\n",
            "line 1: unknown class '6' (give a label from the labels or an index 0..5)",
        ),
        (
            "tabby\tcats\n# pets\nSamoyed\tdogs\n0\tpets\n",
            "line 4: class 'tabby' (0) is already in group 'cats' on line 1 (map each class once)",
        ),
        (
            "tabby cats\n",
            "line 1: expected 'class<TAB>group', got 'tabby cats' "
            "(separate the class and its group with one tab)",
        ),
        (
            "tabby\tcats\textra\n",
            "line 1: expected 'class<TAB>group', got 'tabby\\tcats\\textra' "
            "(separate the class and its group with one tab)",
        ),
        (
            "pug\t\n",
            "line 1: expected 'class<TAB>group', got 'pug' "
            "(separate the class and its group with one tab)",
        ),
        (
            "pug\tdogs/small\n",
            "line 1: group 'dogs/small' cannot be a folder name "
            "(no '/', '\\', control characters, '.' or '..')",
        ),
        (
            "pug\t..\n",
            "line 1: group '..' cannot be a folder name "
            "(no '/', '\\', control characters, '.' or '..')",
        ),
        (
            "pug\t.\n",
            "line 1: group '.' cannot be a folder name "
            "(no '/', '\\', control characters, '.' or '..')",
        ),
        (
            "pug\tdogs\\small\n",
            "line 1: group 'dogs\\small' cannot be a folder name "
            "(no '/', '\\', control characters, '.' or '..')",
        ),
        (
            "\tdogs\n",
            "line 1: expected 'class<TAB>group', got 'dogs' "
            "(separate the class and its group with one tab)",
        ),
        (
            "x" * 81 + "\tdogs\n",
            "line 1: unknown class '" + "x" * 80 + "…' "
            "(give a label from the labels or an index 0..5)",
        ),
        (
            "x" * 80 + "\tdogs\n",
            "line 1: unknown class '" + "x" * 80 + "' "
            "(give a label from the labels or an index 0..5)",
        ),
    ],
)
def test_user_mapping_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = _mapping(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Categories.from_file(path, LABELS)
    assert str(info.value) == f"categories file '{path}', {message}"


def test_user_mapping_with_no_lines(tmp_path: Path) -> None:
    path = _mapping(tmp_path, "# nothing yet\n\n")
    with pytest.raises(ConfigError) as info:
        Categories.from_file(path, LABELS)
    assert str(info.value) == (
        f"categories file '{path}' maps no classes "
        "(give a UTF-8 text file of 'class label or index<TAB>group' lines)"
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_user_mapping_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    with pytest.raises(ConfigError) as info:
        Categories.from_file(path, LABELS)
    assert str(info.value) == (
        f"categories file '{path}' is not a regular file "
        "(give a UTF-8 text file of 'class label or index<TAB>group' lines)"
    )


def test_user_mapping_refuses_a_directory_a_missing_file_and_binary(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^categories file '.*' is not a regular file"):
        Categories.from_file(tmp_path, LABELS)
    missing = tmp_path / "nope.tsv"
    with pytest.raises(ConfigError) as info:
        Categories.from_file(missing, LABELS)
    assert str(info.value) == (
        f"cannot read categories file '{missing}': FileNotFoundError "
        "(give a UTF-8 text file of 'class label or index<TAB>group' lines)"
    )
    binary = tmp_path / "b.tsv"
    binary.write_bytes(b"pug\t\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"^categories file '.*' is not UTF-8 text"):
        Categories.from_file(binary, LABELS)


def test_user_mapping_refuses_a_huge_file(tmp_path: Path) -> None:
    path = tmp_path / "big.tsv"
    with path.open("wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: no real 4 MB written
    with pytest.raises(ConfigError) as info:
        Categories.from_file(path, LABELS)
    assert str(info.value) == (
        f"categories file '{path}' is over the 4 MB limit (give a smaller mapping)"
    )


def test_user_mapping_quotes_control_characters_on_one_line(tmp_path: Path) -> None:
    path = _mapping(tmp_path, "pug\u001b[2J\tdogs\n")
    with pytest.raises(ConfigError) as info:
        Categories.from_file(path, LABELS)
    assert "unknown class 'pug\\x1b[2J'" in str(info.value)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


# -- building and shipping the file --------------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("timm") is None or not Path("/usr/share/wordnet/data.noun").is_file(),
    reason="needs timm and WordNet 3.0 (apt-get install wordnet-base)",
)
def test_build_script_regenerates_the_same_file(tmp_path: Path) -> None:
    out = tmp_path / "h.tsv"
    script = ROOT / "tools" / "build_hierarchy.py"
    subprocess.run([sys.executable, str(script), "--output", str(out)], check=True)
    assert out.read_bytes() == TSV.read_bytes()
    check = subprocess.run([sys.executable, str(script), "--check"], capture_output=True)
    assert check.returncode == 0, check.stdout


@pytest.mark.slow
def test_wheel_ships_the_hierarchy(tmp_path: Path) -> None:
    """An installed wheel finds the hierarchy and its licence as package data."""
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("-w", str(tmp_path), str(ROOT)),
        ],
        check=True,
    )
    [wheel] = tmp_path.glob("resnext_cli-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "site")
    assert "resnext_cli/data/imagenet_hierarchy.tsv" in names
    assert "resnext_cli/data/imagenet_hierarchy.LICENSE" in names
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import resnext_cli.model.categories as c; "
        "print(c.__file__); print(c.Categories.default().name_of(258))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "site")],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.splitlines()
    assert out[0].startswith(str(tmp_path / "site"))
    assert out[1] == "dog"
