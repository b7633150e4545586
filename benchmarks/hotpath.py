"""Per-image Python on the GPU path, measured on the CPU with everything heavy faked.

    PYTHONPATH=src python3 benchmarks/hotpath.py            # ~20 s
    PYTHONPATH=src python3 benchmarks/hotpath.py --profile  # and the top functions
    python3 benchmarks/hotpath.py --compare OLD/src         # this tree against another,
                                                            # rounds alternated

The GPU does the decoding, resizing and the model; what stays on the host per image is
Python: read the file, parse its header, check it whole, stack, top-k, build the record.
That is the ceiling of the GPU path (at 260 µs per image, 3,900 img/s even with perfect
overlap). Here torchvision's decode_jpeg and resize, and the model, are replaced by
instant fakes of the right shapes, so what is timed is the package's own Python, from
files on disk to records, through the same functions as `resnext classify --decode gpu`
(one thread, no overlap, so the figure is the sum of every stage's Python).

Runs against any checkout that has pipeline.probabilities and tensor_decode (so the figure
before a change can be taken from the older tree with PYTHONPATH pointing at it).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import pstats
import sys
import tempfile
import time
import warnings
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:  # run from a checkout without installing
    sys.path.append(str(SRC))

warnings.filterwarnings("ignore", category=DeprecationWarning)


def make_files(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """JPEGs (quality 90) with photo-like noise, a few distinct pictures repeated."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    datas = []
    for _ in range(8):
        grid = rng.integers(0, 256, (max(2, h // 10), max(2, w // 10), 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC))
        noisy = base.astype(np.int16) + rng.normal(0, 10, base.shape).astype(np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        datas.append(buf.getvalue())
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(datas[i % len(datas)])
        paths.append(path)
    return paths


def fake_everything_heavy() -> None:
    """Instant stand-ins for nvJPEG, the GPU resize and the model, of the right shapes."""
    import torch
    import torchvision.io
    from torchvision.transforms.v2 import functional as F

    import resnext_cli.run.pipeline as pipeline

    zero = torch.zeros((1, 1, 1, 1), dtype=torch.uint8)

    def decode_jpeg(datas: list[torch.Tensor], **kwargs: object) -> list[torch.Tensor]:
        out = []
        for d in datas:
            raw = bytes(d[:2000].numpy())
            at = raw.index(b"\xff\xc0")
            h = int.from_bytes(raw[at + 5 : at + 7], "big")
            w = int.from_bytes(raw[at + 7 : at + 9], "big")
            out.append(zero[0].expand(3, h, w))  # no memory: a view of one zero
        return out

    crops = torch.zeros((1024, 3, 224, 224), dtype=torch.uint8)  # made once, reused

    def resize(images: torch.Tensor, size: list[int], **kwargs: object) -> torch.Tensor:
        return crops[: len(images)]

    def center_crop(images: torch.Tensor, size: list[int]) -> torch.Tensor:
        return images

    probs = torch.softmax(torch.randn(1024, 1000, generator=torch.Generator().manual_seed(0)), 1)
    # The softmax step's name: public now, private in trees from before run/network.py.
    step = "probabilities" if hasattr(pipeline, "probabilities") else "_softmax"

    def softmax(model: object, batch: torch.Tensor, precision: str) -> torch.Tensor:
        return probs[: len(batch)].clone()

    torchvision.io.decode_jpeg = decode_jpeg
    F.resize = resize
    F.center_crop = center_crop
    setattr(pipeline, step, softmax)


def engine(batch: int) -> object:
    import torch

    from resnext_cli.run.config import Config
    from resnext_cli.run.engine import LocalEngine
    from resnext_cli.run.plan import MachineFacts, resolve

    try:
        from resnext_cli.run.network import Model, transform_for
    except ImportError:  # a checkout from before run/network.py
        from resnext_cli.run.pipeline import Model, transform_for  # type: ignore[attr-defined,no-redef]

    plan = resolve(Config(batch_size=batch, workers=0, precision="fp32"), MachineFacts(cpu_count=2))
    plan = dataclasses.replace(plan, decode_on="gpu")
    model = Model(plan, torch.nn.Identity(), transform_for(plan), "fake")
    try:
        return LocalEngine(model, overlap=False)  # type: ignore[call-arg]
    except TypeError:  # a checkout from before the overlapped engine
        return LocalEngine(model)


def run(files: list[Path], batch: int) -> tuple[int, float]:
    from resnext_cli.inputs.sources import Source

    eng = engine(batch)
    start = time.perf_counter()
    done = sum(r.ok for r in eng.classify_sources(Source(str(p), path=p) for p in files))  # type: ignore[attr-defined]
    return done, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--size",
        default="64x48",
        help="pixels of the JPEGs (small: the faked decoder's tensors are views, but the "
        "host still stacks the batch, which the GPU does on the device)",
    )
    parser.add_argument("--profile", action="store_true", help="print the top functions")
    parser.add_argument(
        "--compare",
        metavar="SRC",
        help="another checkout's src/ folder: both trees measured in fresh processes, "
        "rounds alternated, on the same files (one torch thread each)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --compare")
    args = parser.parse_args()
    if args.compare:
        compare(Path(args.compare), args)
        return
    import resnext_cli

    fake_everything_heavy()
    with tempfile.TemporaryDirectory(prefix="resnext-hotpath-") as tmp:
        w, h = (int(v) for v in args.size.split("x"))
        files = make_files(Path(tmp), args.images, (w, h))
        run(files[: args.batch], args.batch)  # warm up: imports, first batch
        best = min(run(files, args.batch)[1] for _ in range(3))
        print(
            f"{resnext_cli.__file__}: {args.images} images of {args.size} "
            f"({files[0].stat().st_size:,} bytes), batch {args.batch}: "
            f"{1e6 * best / args.images:.0f} µs of Python per image (best of 3), "
            f"a ceiling of {args.images / best:,.0f} img/s"
        )
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            run(files, args.batch)
            profiler.disable()
            stats = pstats.Stats(profiler, stream=sys.stdout)
            # Tensor operations (stack, sort, isfinite, ...) run on the device on a GPU:
            # what is left is the host's share, the ceiling of the GPU path.
            entries = stats.stats.items()  # type: ignore[attr-defined]
            total = sum(t for _, (_, _, t, _, _) in entries)
            device = sum(
                t for (_, _, name), (_, _, t, _, _) in entries
                if "torch" in name and name.startswith(("<built-in method", "<method"))
            )  # fmt: skip
            print(
                f"under the profiler: {1e6 * total / args.images:.0f} µs per image in all, "
                f"{1e6 * (total - device) / args.images:.0f} µs without tensor operations "
                "(device work on a GPU)"
            )
            stats.sort_stats("tottime").print_stats(15)


def compare(other: Path, args: argparse.Namespace) -> None:
    """This tree and *other* side by side: a fresh process per tree per round, alternated,
    so a busy machine slows both alike; the best round of each and their ratio."""
    import os
    import re
    import statistics
    import subprocess

    trees = {"this tree": SRC, "other": other.resolve()}
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for i in range(args.rounds):
        for name, src in trees.items() if i % 2 == 0 else reversed(trees.items()):
            env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
            out = subprocess.run(
                [sys.executable, __file__, "--images", str(args.images), "--batch",
                 str(args.batch), "--size", args.size, "--profile"],
                env=env, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            assert str(src) in out.splitlines()[0], out.splitlines()[0]  # the tree we meant
            plain = float(re.search(r"(\d+) µs of Python per image", out)[1])  # type: ignore[index]
            host = float(re.search(r"(\d+) µs without tensor", out)[1])  # type: ignore[index]
            figures[name].append((plain, host))
            print(f"round {i + 1} {name}: {plain:.0f} µs per image, {host:.0f} without tensor ops")
    print(f"\n{args.images} images of {args.size}, batch {args.batch}, {args.rounds} rounds:")
    for name, src in trees.items():
        plain, host = (min(f[k] for f in figures[name]) for k in (0, 1))
        median = statistics.median(f[1] for f in figures[name])
        print(f"  {name} ({src}): best {plain:.0f} µs per image; without tensor operations "
              f"best {host:.0f}, median {median:.0f}")  # fmt: skip
    this, that = (min(f[1] for f in figures[n]) for n in trees)
    print(f"  host Python per image, this tree / other: {this / that:.2f}")


if __name__ == "__main__":
    main()
