"""Photo categories over the model's classes: 'dog 92%', not 118 dog breeds.

A category's probability is the sum of its classes' softmax probabilities. The default
mapping covers ImageNet's 1000 classes and is data: each class goes to the category of its
nearest ancestor in WordNet 3.0 (data/imagenet_hierarchy.tsv) that is in ANCHORS; when none
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

# The default categories, in the order ties are broken and lists are shown.
DEFAULT_NAMES: tuple[str, ...] = (
    "dog",
    "cat",
    "wild cat",
    "wild animal",
    "monkey & ape",
    "farm animal",
    "rabbit & rodent",
    "bird",
    "fish",
    "reptile & amphibian",
    "insect & spider",
    "sea life",
    "other animal",
    "person",
    "car",
    "truck",
    "bus",
    "train",
    "bicycle & motorbike",
    "aircraft",
    "boat",
    "other vehicle",
    "food",
    "fruit & vegetable",
    "drink",
    "flower & plant",
    "fungus",
    "landscape & water",
    "building",
    "bridge & landmark",
    "street & sign",
    "garden & yard",
    "musical instrument",
    "clothing",
    "bag & accessory",
    "furniture",
    "kitchen item",
    "household item",
    "medical & lab",
    "electronics",
    "tool",
    "container",
    "sports gear",
    "toy & game",
    "weapon & armor",
    "clock & watch",
    "book & stationery",
    "other",
)

# WordNet synsets whose descendants belong to a category; the nearest one wins.
ANCHORS: Mapping[str, str] = MappingProxyType(
    {
        "n02084071": "dog",  # dog
        "n02121808": "cat",  # domestic_cat
        "n02124623": "wild cat",  # wildcat
        "n02127808": "wild cat",  # big_cat
        "n02469914": "monkey & ape",  # primate
        "n02374451": "farm animal",  # horse
        "n02395406": "farm animal",  # hog
        "n02402425": "farm animal",  # cattle
        "n02411705": "farm animal",  # sheep
        "n02408429": "farm animal",  # water_buffalo
        "n02437136": "farm animal",  # camel
        "n02437616": "farm animal",  # llama
        "n02323902": "rabbit & rodent",  # leporid
        "n02329401": "rabbit & rodent",  # rodent
        "n01503061": "bird",  # bird
        "n02512053": "fish",  # fish
        "n01661091": "reptile & amphibian",  # reptile
        "n01627424": "reptile & amphibian",  # amphibian
        "n02159955": "insect & spider",  # insect
        "n01769347": "insect & spider",  # arachnid
        "n01784675": "insect & spider",  # centipede
        "n01974773": "sea life",  # crustacean
        "n01940736": "sea life",  # mollusk
        "n01909422": "sea life",  # coelenterate
        "n02316707": "sea life",  # echinoderm
        "n02062017": "sea life",  # aquatic_mammal
        "n00007846": "person",  # person
        "n02958343": "car",  # car
        "n04490091": "truck",  # truck
        "n02924116": "bus",  # bus
        "n04468005": "train",  # train
        "n03684823": "train",  # locomotive
        "n02959942": "train",  # car
        "n04335435": "train",  # streetcar
        "n02834778": "bicycle & motorbike",  # bicycle
        "n03790512": "bicycle & motorbike",  # motorcycle
        "n03791053": "bicycle & motorbike",  # motor_scooter
        "n04482393": "bicycle & motorbike",  # tricycle
        "n04509417": "bicycle & motorbike",  # unicycle
        "n02686568": "aircraft",  # aircraft
        "n04264914": "aircraft",  # spacecraft
        "n02688443": "aircraft",  # airfoil
        "n04530566": "boat",  # vessel
        "n03322940": "other vehicle",  # farm_machine
        "n00021265": "food",  # food
        "n07555863": "food",  # food
        "n07707451": "fruit & vegetable",  # vegetable
        "n13134947": "fruit & vegetable",  # fruit
        "n07881800": "drink",  # beverage
        "n00017222": "flower & plant",  # plant
        "n11669335": "flower & plant",  # flower
        "n12992868": "fungus",  # fungus
        "n09287968": "landscape & water",  # geological_formation
        "n09225146": "landscape & water",  # body_of_water
        "n02913152": "building",  # building
        "n03297735": "building",  # establishment
        "n03546340": "building",  # housing
        "n03385557": "building",  # fortification
        "n04105068": "building",  # roof
        "n04460130": "building",  # tower
        "n02914991": "building",  # building_complex
        "n04191595": "building",  # shelter
        "n02898711": "bridge & landmark",  # bridge
        "n03743902": "bridge & landmark",  # memorial
        "n03074380": "bridge & landmark",  # column
        "n03327234": "garden & yard",  # fence
        "n03800933": "musical instrument",  # musical_instrument
        "n03051540": "clothing",  # clothing
        "n03380867": "clothing",  # footwear
        "n03502509": "clothing",  # headdress
        "n03309808": "clothing",  # fabric
        "n02773037": "bag & accessory",  # bag
        "n03597469": "bag & accessory",  # jewelry
        "n04272054": "bag & accessory",  # spectacles
        "n03405725": "furniture",  # furniture
        "n03621049": "kitchen item",  # kitchen_utensil
        "n04381994": "kitchen item",  # tableware
        "n03620052": "kitchen item",  # kitchen_appliance
        "n03133538": "kitchen item",  # crockery
        "n03528263": "household item",  # home_appliance
        "n04447443": "household item",  # toiletry
        "n03039947": "household item",  # cleaning_implement
        "n04459362": "household item",  # towel
        "n02820210": "household item",  # bedclothes
        "n04263760": "household item",  # source_of_illumination
        "n03508101": "household item",  # heater
        "n03151077": "household item",  # curtain
        "n02851099": "household item",  # blind
        "n03366823": "household item",  # floor_cover
        "n03320046": "household item",  # fan
        "n03151500": "household item",  # cushion
        "n03739693": "medical & lab",  # medical_instrument
        "n02785648": "medical & lab",  # bandage
        "n03278248": "electronics",  # electronic_equipment
        "n03082979": "electronics",  # computer
        "n02942699": "electronics",  # camera
        "n03274561": "electronics",  # electro-acoustic_transducer
        "n03277771": "electronics",  # electronic_device
        "n04400289": "electronics",  # telecommunication_system
        "n03078287": "electronics",  # communication_system
        "n03744840": "electronics",  # memory_device
        "n03257586": "electronics",  # duplicator
        "n03614007": "electronics",  # keyboard
        "n04451818": "tool",  # tool
        "n03733925": "tool",  # measuring_instrument
        "n03323703": "tool",  # fastener
        "n03813176": "tool",  # navigational_instrument
        "n03709206": "tool",  # magnifier
        "n04285146": "sports gear",  # sports_equipment
        "n03414162": "sports gear",  # game_equipment
        "n04285622": "sports gear",  # sports_implement
        "n03964744": "toy & game",  # plaything
        "n04565375": "weapon & armor",  # weapon
        "n02739668": "weapon & armor",  # armor
        "n04187061": "weapon & armor",  # sheath
        "n04437953": "clock & watch",  # timepiece
        "n06589574": "book & stationery",  # publication
        "n04608567": "book & stationery",  # writing_implement
        "n06793231": "street & sign",  # sign
        "n06873571": "street & sign",  # visual_signal
        "n02876657": "drink",  # bottle
        "n03438257": "drink",  # glass
    }
)
# Used only when no ANCHORS synset is an ancestor: the nearest one wins.
FALLBACKS: Mapping[str, str] = MappingProxyType(
    {
        "n00015388": "other animal",  # animal
        "n01861778": "wild animal",  # mammal
        "n04524313": "other vehicle",  # vehicle
        "n03094503": "container",  # container
        "n04341686": "building",  # structure
    }
)
# Classes (by synset) whose WordNet category is not where a person would file the photo:
# a food mushroom is a fungus, a dog's muzzle is a dog photo, a car wheel is a car photo.
OVERRIDES: Mapping[str, str] = MappingProxyType(
    {
        "n03803284": "dog",  # 676 muzzle
        "n03530642": "insect & spider",  # 599 honeycomb
        "n04275548": "insect & spider",  # 815 spider web
        "n02965783": "car",  # 475 car mirror
        "n02974003": "car",  # 479 car wheel
        "n03208938": "car",  # 535 disk brake
        "n03459775": "car",  # 581 grille
        "n03843555": "car",  # 686 oil filter
        "n04162706": "car",  # 785 seat belt
        "n03873416": "boat",  # 693 paddle
        "n03874293": "boat",  # 694 paddlewheel
        "n03445924": "other vehicle",  # 575 golfcart
        "n07711569": "food",  # 935 mashed potato
        "n02877765": "drink",  # 455 bottlecap
        "n03062245": "drink",  # 503 cocktail shaker
        "n03991062": "flower & plant",  # 738 pot
        "n11879895": "flower & plant",  # 984 rapeseed
        "n12267677": "flower & plant",  # 988 acorn
        "n12620546": "flower & plant",  # 989 hip
        "n12768682": "flower & plant",  # 990 buckeye
        "n07734744": "fungus",  # 947 mushroom
        "n07802026": "landscape & water",  # 958 hay
        "n02825657": "building",  # 442 bell cote
        "n03126707": "building",  # 517 crane
        "n03240683": "building",  # 540 drilling platform
        "n04044716": "building",  # 755 radio telescope
        "n04258138": "building",  # 807 solar dish
        "n04296562": "building",  # 819 stage
        "n04418357": "building",  # 854 theater curtain
        "n04562935": "building",  # 900 water tower
        "n02814860": "bridge & landmark",  # 437 beacon
        "n02894605": "bridge & landmark",  # 460 breakwater
        "n03160309": "bridge & landmark",  # 525 dam
        "n03216828": "bridge & landmark",  # 536 dock
        "n03388043": "bridge & landmark",  # 562 fountain
        "n03903868": "bridge & landmark",  # 708 pedestal
        "n03933933": "bridge & landmark",  # 718 pier
        "n02977058": "street & sign",  # 480 cash machine
        "n03355925": "street & sign",  # 557 flagpole
        "n03425413": "street & sign",  # 571 gas pump
        "n03710193": "street & sign",  # 637 mailbox
        "n03717622": "street & sign",  # 640 manhole cover
        "n03891332": "street & sign",  # 704 parking meter
        "n03902125": "street & sign",  # 707 pay-phone
        "n03976657": "street & sign",  # 733 pole
        "n04501370": "street & sign",  # 877 turnstile
        "n04525305": "street & sign",  # 886 vending machine
        "n02727426": "garden & yard",  # 410 apiary
        "n02797295": "garden & yard",  # 428 barrow
        "n02843684": "garden & yard",  # 448 birdhouse
        "n03457902": "garden & yard",  # 580 greenhouse
        "n03649909": "garden & yard",  # 621 lawn mower
        "n03733281": "garden & yard",  # 646 maze
        "n03899768": "garden & yard",  # 706 patio
        "n03250847": "musical instrument",  # 542 drumstick
        "n03929660": "musical instrument",  # 714 pick
        "n03045698": "clothing",  # 501 cloak
        "n04229816": "clothing",  # 796 ski mask
        "n02910353": "bag & accessory",  # 464 buckle
        "n03476684": "bag & accessory",  # 584 hair slide
        "n04355933": "bag & accessory",  # 836 sunglass
        "n04507155": "bag & accessory",  # 879 umbrella
        "n04548362": "bag & accessory",  # 893 wallet
        "n02951585": "kitchen item",  # 473 can opener
        "n03041632": "kitchen item",  # 499 cleaver
        "n03063599": "kitchen item",  # 504 coffee mug
        "n03109150": "kitchen item",  # 512 corkscrew
        "n03633091": "kitchen item",  # 618 ladle
        "n03733805": "kitchen item",  # 647 measuring cup
        "n03786901": "kitchen item",  # 666 mortar
        "n03950228": "kitchen item",  # 725 pitcher
        "n03961711": "kitchen item",  # 729 plate rack
        "n04131690": "kitchen item",  # 773 saltshaker
        "n04332243": "kitchen item",  # 828 strainer
        "n04476259": "kitchen item",  # 868 tray
        "n04560804": "kitchen item",  # 899 water jug
        "n02808440": "household item",  # 435 bathtub
        "n03207743": "household item",  # 533 dishrag
        "n03347037": "household item",  # 556 fire screen
        "n03483316": "household item",  # 589 hand blower
        "n03637318": "household item",  # 619 lampshade
        "n03666591": "household item",  # 626 lighter
        "n03729826": "household item",  # 644 matchstick
        "n03788365": "household item",  # 669 mosquito net
        "n03794056": "household item",  # 674 mousetrap
        "n03825788": "household item",  # 680 nipple
        "n04040759": "household item",  # 753 radiator
        "n04201297": "household item",  # 789 shoji
        "n04254120": "household item",  # 804 soap dispenser
        "n04372370": "household item",  # 844 switch
        "n04423845": "household item",  # 855 thimble
        "n04447861": "household item",  # 861 toilet seat
        "n04522168": "household item",  # 883 vase
        "n04553703": "household item",  # 896 washbasin
        "n04589890": "household item",  # 904 window screen
        "n15075141": "household item",  # 999 toilet tissue
        "n02815834": "medical & lab",  # 438 beaker
        "n03141823": "medical & lab",  # 523 crutch
        "n03814639": "medical & lab",  # 678 neck brace
        "n03868863": "medical & lab",  # 691 oxygen mask
        "n03920288": "medical & lab",  # 712 Petri dish
        "n03937543": "medical & lab",  # 720 pill bottle
        "n04336792": "medical & lab",  # 830 stretcher
        "n02978881": "electronics",  # 481 cassette
        "n03657121": "electronics",  # 622 lens cap
        "n04009552": "electronics",  # 745 projector
        "n04074963": "electronics",  # 761 remote control
        "n04264628": "electronics",  # 810 space bar
        "n04485082": "electronics",  # 872 tripod
        "n02666196": "tool",  # 398 abacus
        "n02841315": "tool",  # 447 binoculars
        "n02966687": "tool",  # 477 carpenter's kit
        "n02999410": "tool",  # 488 chain
        "n03532672": "tool",  # 600 hook
        "n03876231": "tool",  # 696 paintbrush
        "n03992509": "tool",  # 739 potter's wheel
        "n04238763": "tool",  # 798 slide rule
        "n04277352": "tool",  # 816 spindle
        "n04204347": "container",  # 791 shopping cart
        "n03379051": "sports gear",  # 560 football helmet
        "n03623198": "sports gear",  # 615 knee pad
        "n03792972": "sports gear",  # 672 mountain tent
        "n03888257": "sports gear",  # 701 parachute
        "n04019541": "sports gear",  # 746 puck
        "n04067472": "sports gear",  # 758 reel
        "n04149813": "sports gear",  # 781 scoreboard
        "n04228054": "sports gear",  # 795 ski
        "n04235860": "sports gear",  # 797 sleeping bag
        "n04251144": "sports gear",  # 801 snorkel
        "n04579432": "sports gear",  # 902 whistle
        "n02966193": "toy & game",  # 476 carousel
        "n03598930": "toy & game",  # 611 jigsaw puzzle
        "n03944341": "toy & game",  # 723 pinwheel
        "n04243546": "toy & game",  # 800 slot
        "n06785654": "toy & game",  # 918 crossword puzzle
        "n09229709": "toy & game",  # 971 bubble
        "n02895154": "weapon & armor",  # 461 breastplate
        "n03424325": "weapon & armor",  # 570 gasmask
        "n03467068": "weapon & armor",  # 583 guillotine
        "n03929855": "weapon & armor",  # 715 pickelhaube
        "n02840245": "book & stationery",  # 446 binder
        "n03291819": "book & stationery",  # 549 envelope
        "n03658185": "book & stationery",  # 623 letter opener
        "n03908618": "book & stationery",  # 709 pencil box
        "n03908714": "book & stationery",  # 710 pencil sharpener
        "n04116512": "book & stationery",  # 767 rubber eraser
        "n07248320": "book & stationery",  # 921 book jacket
        "n03065424": "other",  # 506 coil
    }
)


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
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in short) + "'"


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
