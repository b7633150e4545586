"""What the Ray engine costs on one machine: `--engine local` against `--engine ray`.

    python benchmarks/ray_overhead.py              # about 10 minutes on 2 cores
    python benchmarks/ray_overhead.py --images 40 --repeats 1 --no-write   # a smoke run

Needs the ray extra (pip install -c constraints.txt -e '.[test,ray]'); no downloads:
the images are drawn with Pillow, the weights are a seeded random checkpoint.

It writes ImageNet-sized JPEGs (about 500x375) to a temp folder, then runs
`resnext classify FOLDER --checkpoint CK -o OUT.jsonl` with the same options for each
engine, each run a fresh process, alternating local, ray, local, ray..., and takes the
median of each. The ray runs start a private Ray on 127.0.0.1, as `--engine ray` does
when no cluster is running. Two figures per engine:

  wall       the whole command: imports, weights, (Ray start), classification, exit
  classify   images per second from the first input to the last record, the run
             summary's own figure (for Ray it includes starting the actors)

The table goes into BENCHMARKS.md between the bench:ray markers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from common import cpu_model, write_section

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"classified (\d+) of (\d+) inputs in ([\d.]+)s")


def test_helpers() -> ModuleType:
    """tests/conftest.py, for its seeded checkpoint and its picture generator."""
    spec = importlib.util.spec_from_file_location("resnext_conftest", ROOT / "tests/conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def make_images(folder: Path, count: int, helpers: ModuleType) -> None:
    folder.mkdir(parents=True)
    sizes = [(500, 375), (375, 500), (500, 333), (500, 400)]
    for i in range(count):
        image = helpers.natural_image(1000 + i, sizes[i % len(sizes)])
        image.save(folder / f"img{i:04d}.jpg", quality=90)


def run_once(engine: str, folder: Path, ckpt: Path, out: Path, env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-m", "resnext_cli", "classify", str(folder)]
    cmd += ["--checkpoint", str(ckpt), "-o", str(out), "--force", "--engine", engine]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    match = SUMMARY.search(proc.stderr)
    if proc.returncode != 0 or match is None:
        raise SystemExit(f"{engine} run failed ({proc.returncode}):\n{proc.stderr}")
    done, total, seconds = int(match[1]), int(match[2]), float(match[3])
    assert done == total, proc.stderr
    return {"wall": wall, "classify": seconds, "images": done}


def top1(path: Path) -> list[tuple[str, int]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["input"], r["predictions"][0]["index"]) for r in records]


def machine() -> tuple[str, int]:
    cpu = cpu_model()
    return cpu, os.cpu_count() or 1


def table(results: dict[str, list[dict]], images: int, repeats: int) -> str:
    import ray
    import torch

    cpu, cores = machine()
    rows = {}
    for engine, runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        phase = statistics.median(r["classify"] for r in runs)
        rows[engine] = (wall, images / wall, phase, images / phase)
    local, remote = rows["local"], rows["ray"]
    lines = [
        "## Local engine vs Ray engine",
        "",
        f"{images} JPEGs of about 500x375, resnext50_32x4d (seeded random weights), default",
        f"options (fp32 on CPU, batch 8), median of {repeats} runs per engine, alternated.",
        f"Machine: {cpu}, {cores} cores; torch {torch.__version__}, ray {ray.__version__}.",
        "",
        "| engine | wall s | wall img/s | classify s | classify img/s | vs local |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for engine, (wall, wall_ips, phase, phase_ips) in rows.items():
        ratio = phase_ips / local[3]
        lines.append(
            f"| {engine} | {wall:.1f} | {wall_ips:.2f} | {phase:.1f} | {phase_ips:.2f} "
            f"| {ratio:.2f}x |"
        )
    overhead = remote[0] - local[0]
    lines += [
        "",
        f"On this machine Ray costs {overhead:.0f} s more per run ({remote[0] / local[0]:.2f}x the",
        "local wall time): starting a private Ray, then worker processes that each import torch",
        "and build the model (the ray classify time includes about 15 s before the first record),",
        "and one CPU actor with one thread where the local engine runs two. Ray pays off when it",
        "adds machines, not on one.",
        "",
        "Command: `python benchmarks/ray_overhead.py`",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    helpers = test_helpers()
    with tempfile.TemporaryDirectory(prefix="resnext-ray-bench-") as tmp:
        work = Path(tmp)
        ckpt = helpers.make_checkpoint(work / "resnext50_random.pth")
        folder = work / "imagenet"
        make_images(folder, args.images, helpers)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["TORCH_HOME"] = str(work / "torch")
        results: dict[str, list[dict]] = {"local": [], "ray": []}
        for i in range(args.repeats):
            for engine in ("local", "ray") if i % 2 == 0 else ("ray", "local"):
                out = work / f"{engine}.jsonl"
                result = run_once(engine, folder, ckpt, out, env)
                results[engine].append(result)
                print(f"run {i + 1} {engine}: {result}", file=sys.stderr)
        same = top1(work / "local.jsonl") == top1(work / "ray.jsonl")
        assert same, "the engines disagree on a top-1 label"
    text = table(results, args.images, args.repeats)
    print(text)
    if not args.no_write:
        write_section("ray", text)


if __name__ == "__main__":
    main()
