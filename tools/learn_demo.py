"""Make the inputs of the README's "Teach it your own classes" walkthrough, offline.

    python tools/learn_demo.py DIR

DIR/sorted/ gets three classes of 64x64 PNGs ("blue tiles", "warm walls", "green fences",
10 of each) plus two misfiled ones (IMG_0060.png, a tile, in "warm walls"; IMG_1060.png,
a wall, in "green fences"); DIR/new/ gets one fresh picture of each kind; DIR/random50.pth
is the tests' seeded random-weights resnext50_32x4d checkpoint. The pictures are drawn from
a seeded generator, so every run makes the same files.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]


def tiles(rng: random.Random) -> Image.Image:
    """A blue-and-white checkerboard."""
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    side = rng.choice([8, 16])
    blue = (rng.randint(0, 60), rng.randint(40, 120), rng.randint(180, 255))
    for y in range(0, 64, side):
        for x in range(0, 64, side):
            if (x // side + y // side) % 2:
                draw.rectangle([x, y, x + side - 1, y + side - 1], fill=blue)
    return image


def wall(rng: random.Random) -> Image.Image:
    """A solid warm colour."""
    return Image.new(
        "RGB", (64, 64), (rng.randint(190, 255), rng.randint(60, 150), rng.randint(0, 60))
    )


def fence(rng: random.Random) -> Image.Image:
    """Green vertical stripes on a light grey."""
    grey = rng.randint(200, 255)
    image = Image.new("RGB", (64, 64), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    green = (rng.randint(0, 60), rng.randint(120, 200), rng.randint(0, 60))
    width = rng.choice([3, 4, 6])
    for x in range(0, 64, 2 * width):
        draw.rectangle([x, 0, x + width - 1, 63], fill=green)
    return image


KINDS: list[tuple[str, Callable[[random.Random], Image.Image]]] = [
    ("blue tiles", tiles),
    ("warm walls", wall),
    ("green fences", fence),
]


def make(root: Path) -> None:
    rng = random.Random(7)  # noqa: S311 (pictures, not secrets)
    for name, _ in KINDS:
        (root / "sorted" / name).mkdir(parents=True, exist_ok=True)
    for k, (name, draw) in enumerate(KINDS):
        # IMG_k050 … IMG_k059 in their own folder; an eleventh tile and wall go to the next one.
        for i in range(11 if k < 2 else 10):
            folder = name if i < 10 else KINDS[k + 1][0]
            draw(rng).save(root / "sorted" / folder / f"IMG_{k * 1000 + 50 + i:04d}.png")
    (root / "new").mkdir(exist_ok=True)
    for file_name, (_, draw) in zip(("checks.png", "solid.png", "stripes.png"), KINDS, strict=True):
        draw(rng).save(root / "new" / file_name)

    sys.path.insert(0, str(ROOT))
    from tests.conftest import make_checkpoint

    make_checkpoint(root / "random50.pth")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = Path(sys.argv[1])
    if root.exists() and any(root.iterdir()):
        sys.exit(f"learn_demo: {str(root)!r} is not empty")
    make(root)
    print(f"made {root}/sorted (32 pictures, 2 misfiled), {root}/new (3), {root}/random50.pth")


if __name__ == "__main__":
    main()
