"""Build data/imagenet_hierarchy.tsv: each ImageNet class with its WordNet 3.0 ancestors.

Sources (both needed only here; the tool reads the finished file and never builds it):

- the ImageNet synset id of each class index, in order: timm's package data
  ``timm/data/_info/imagenet_synsets.txt`` (``pip install timm``, Apache-2.0);
- WordNet 3.0's noun database, ``/usr/share/wordnet/data.noun``
  (``apt-get install wordnet-base``, WordNet 3.0 licence).

An ImageNet id such as ``n02085620`` is ``n`` plus the WordNet 3.0 noun offset. The rows
are checked against ``data/imagenet_classes.txt`` (torchvision's names, same order).
Rebuild after changing either source, from the repository root:

    python tools/build_hierarchy.py            # writes data/imagenet_hierarchy.tsv
    python tools/build_hierarchy.py --check    # exit 1 if the file is out of date

The licence notices of both sources are in data/imagenet_hierarchy.LICENSE.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDNET_DIR = Path("/usr/share/wordnet")
CLASSES = ROOT / "data" / "imagenet_classes.txt"
OUTPUT = ROOT / "data" / "imagenet_hierarchy.tsv"
ROOT_SYNSET = "n00001740"  # entity

HEADER = """\
# ImageNet-1k classes and their WordNet 3.0 ancestors; built by tools/build_hierarchy.py.
# Do not edit: rebuild with `python tools/build_hierarchy.py` (sources and licences:
# imagenet_hierarchy.LICENSE). Lines starting with '#' are comments; then one header row.
# Columns, tab-separated:
#   index      class index, 0..999, the model's output order
#   synset     ImageNet/WordNet id: 'n' + the WordNet 3.0 noun offset
#   label      torchvision's class name (data/imagenet_classes.txt)
#   ancestors  every hypernym of the synset, space-separated 'synset:lemma' tokens
#              (the lemma is WordNet's first word for it, spaces as '_'), nearest first:
#              breadth-first over hypernym ('@') and instance-hypernym ('@i') pointers,
#              ties in WordNet's pointer order; the class itself is not listed.
#              Where WordNet gives two parents, both lines of ancestors are interleaved by
#              distance; entity (n00001740) is always among them.
"""


@dataclass(frozen=True)
class Synset:
    """One WordNet noun synset: its first lemma and its parents, in pointer order."""

    lemma: str
    parents: tuple[str, ...]


def read_nouns(path: Path) -> dict[str, Synset]:
    """Parse WordNet's data.noun into {'n' + offset: Synset}."""
    nouns: dict[str, Synset] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("  "):  # the licence preamble
                continue
            fields = line.split(" | ", 1)[0].split()
            offset, word_count = fields[0], int(fields[3], 16)
            lemma = fields[4]
            at = 4 + 2 * word_count
            pointer_count = int(fields[at])
            parents = []
            for i in range(pointer_count):
                symbol, target, pos = fields[at + 1 + 4 * i : at + 4 + 4 * i]
                if symbol in ("@", "@i") and pos == "n":
                    parents.append("n" + target)
            nouns["n" + offset] = Synset(lemma=lemma, parents=tuple(parents))
    return nouns


def ancestors(synset: str, nouns: Mapping[str, Synset]) -> list[str]:
    """Every hypernym of *synset*, nearest first (breadth-first, pointer order)."""
    seen = {synset}
    order: list[str] = []
    queue = deque(nouns[synset].parents)
    while queue:
        node = queue.popleft()
        if node in seen:
            continue
        seen.add(node)
        order.append(node)
        queue.extend(nouns[node].parents)
    return order


def _words(text: str) -> set[str]:
    return {w for w in text.lower().replace("_", " ").replace("-", " ").split() if len(w) > 1}


def build(synsets: Sequence[str], labels: Sequence[str], nouns: Mapping[str, Synset]) -> str:
    """The TSV text for classes *synsets* named *labels*; raise ValueError if they disagree."""
    if len(synsets) != 1000 or len(labels) != 1000:
        raise ValueError(f"expected 1000 synsets and labels, got {len(synsets)} and {len(labels)}")
    if len(set(synsets)) != len(synsets):
        raise ValueError("the synset list has duplicates")
    missing = [s for s in synsets if s not in nouns]
    if missing:
        raise ValueError(f"not WordNet 3.0 nouns: {missing[:5]}")
    # torchvision's names are not WordNet's lemmas ('crane' twice, shortened names), but
    # nearly every one shares a word with its synset's lemma: a shifted list would not.
    shared = sum(
        bool(_words(label) & _words(nouns[s].lemma))
        for s, label in zip(synsets, labels, strict=True)
    )
    if shared < 990:
        raise ValueError(f"only {shared} of 1000 labels match their synset: is the order right?")
    rows = ["index\tsynset\tlabel\tancestors"]
    for index, (synset, label) in enumerate(zip(synsets, labels, strict=True)):
        chain = ancestors(synset, nouns)
        if ROOT_SYNSET not in chain:
            raise ValueError(f"{synset} does not reach entity")
        tokens = " ".join(f"{a}:{nouns[a].lemma}" for a in chain)
        rows.append(f"{index}\t{synset}\t{label}\t{tokens}")
    return HEADER + "\n".join(rows) + "\n"


def timm_synsets() -> Path:
    """Where the installed timm keeps the ImageNet-1k synset list."""
    import timm  # type: ignore[import-not-found,unused-ignore]

    return Path(timm.__file__).parent / "data" / "_info" / "imagenet_synsets.txt"


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet", type=Path, default=WORDNET_DIR, help="WordNet dict dir")
    parser.add_argument("--synsets", type=Path, default=None, help="default: timm's list")
    parser.add_argument("--classes", type=Path, default=CLASSES)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)

    nouns = read_nouns(args.wordnet / "data.noun")
    synsets = _lines(args.synsets or timm_synsets())
    text = build(synsets, _lines(args.classes), nouns)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} is out of date: run python tools/build_hierarchy.py")
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({len(synsets)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
