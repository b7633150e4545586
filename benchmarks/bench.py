"""Throughput of `resnext classify` against the hub page's loop, timm, and the bare model.

    python benchmarks/bench.py            # about 10-15 minutes on 2 cores
    python benchmarks/bench.py --quick    # fewer images and repeats, for a smoke run
    python benchmarks/bench.py --learn    # only the `resnext learn` rows (no extras needed)

Needs the benchmark extras: pip install -c constraints.txt -e '.[bench]'
(timm and scikit-image; no downloads: images come from skimage.data, weights are a
seeded random checkpoint in torchvision's layout).

It makes two folders of JPEGs (ImageNet-sized, about 500x375, and phone-sized, 4032x3024),
then runs each variant in a fresh child process on the same folder, in the same order,
several times, and takes the median:

  a  the hub page's loop as written: one image at a time, fp32, its Compose
  b  timm's inference recipe: create_model, its data config and loader (2 worker
     processes), channels_last, bf16 autocast where the CPU has native bf16, else fp32
  c  resnext's Classifier with default options (--precision auto)
  f  resnext with --precision fp32
  g  resnext with --precision bf16 (emulated, slow, on a CPU without native bf16)
  d  resnext's Classifier with --exact
  e  the model alone on ready tensors, same batch size and precision as c
  q  resnext50_32x4d --quantized, from a checkpoint calibrated on the benchmark's photos
  r  resnext101_64x4d --quantized, INT8 weights calibrated from random float ones

and the runtimes side by side (the OpenVINO rows where the extra is installed; bf16 only
on a CPU with native bf16):

  t, t1, te   torch: end to end at batch 8 and 1, and the model alone at batch 8
  o, o1, oe   OpenVINO fp32: the same three
  ob          OpenVINO bf16, end to end at batch 8
  oq          resnext50 INT8 through OpenVINO, calibrated with NNCF on the same photos
  orq         resnext101_64x4d INT8 through OpenVINO, calibrated the same way

with the start-up of one photo in a fresh process (`resnext classify photo.jpg`): torch,
OpenVINO with an empty cache (the conversion) and with a warm one. `--startup` measures
only that, in rounds that alternate the three, into its own bench:startup section:

    python benchmarks/bench.py --startup --repeats 5

    python benchmarks/bench.py --smoke --only t,o,oe,oq   # 8 photos, prints only

With --learn it measures `resnext learn` instead, into its own bench:learn section: the
feature step (variant l, Classifier.iter_features) against classify (c) on the same
photos, the head's fit for 1,000 and 10,000 images x 10 and 100 classes, and a re-learn
after moving two files against the first learn.

Beside each resnext variant it reports how far its predictions agree with --exact's on
the same photos: top-1 agreement, top-5 set agreement and the largest probability change.
The weights are random, so predictions are flatter than real ones and disagree more often
than real weights would. It writes the tables into BENCHMARKS.md between the bench:local
markers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import cpu_model, write_section

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "a": "hub page loop (batch 1, fp32)",
    "b": "timm-style loader (2 workers)",
    "c": "resnext classify (defaults)",
    "f": "resnext --precision fp32",
    "g": "resnext --precision bf16",
    "d": "resnext classify --exact",
    "e": "model only, ready tensors",
    "q": "resnext50 --quantized (INT8)",
    "r": "resnext101_64x4d --quantized (INT8)",
    "t": "resnext --runtime torch",
    "o": "resnext --runtime openvino (fp32)",
    "ob": "resnext --runtime openvino --precision bf16",
    "t1": "resnext --runtime torch, batch 1",
    "o1": "resnext --runtime openvino, batch 1",
    "te": "model only, torch",
    "oe": "model only, openvino",
    "oq": "resnext50 --quantized through OpenVINO (INT8)",
    "orq": "resnext101_64x4d --quantized through OpenVINO (INT8)",
}
OPENVINO = ("o", "ob", "o1", "oe", "oq", "orq")
# Compared with --exact's predictions, photo by photo.
AGREEMENT = ("c", "f", "g", "q", "t", "o", "ob", "oq")
# Too slow to be worth it on 24 phone photos beyond the main comparison.
IMAGENET_ONLY = ("g", "q", "r", "ob", "t1", "o1", "te", "oe", "oq", "orq")


# -- data ------------------------------------------------------------------------------


def make_images(folder: Path, count: int, size: tuple[int, int], seed: int) -> None:
    """Crop, flip and resize skimage's sample photos into *count* JPEGs of *size*."""
    import numpy as np
    from PIL import Image
    from skimage import data

    names = [
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "immunohistochemistry",
        "hubble_deep_field",
        "retina",
        "cat",
        "camera",
        "coins",
        "moon",
        "page",
    ]
    photos = []
    for name in names:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        arr = np.asarray(loader())
        img = Image.fromarray(arr)
        photos.append(img.convert("RGB"))
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        src = rng.choice(photos)
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = src.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img = img.resize(size, Image.Resampling.BICUBIC)
        img.save(folder / f"img_{i:05d}.jpg", quality=90)


def make_checkpoint(path: Path, photos: Path, arch: str = "resnext50_32x4d") -> None:
    """The tests' seeded random-init checkpoint (tests/conftest.py), its fc centred on these
    photos' mean feature, so predictions are peaked and differ between photos (a plain
    random net says ~0.001 to every class, and agreement figures would compare rounding
    noise)."""
    import torch
    import torchvision
    from PIL import Image

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.conftest import make_checkpoint as tests_checkpoint

    preprocess = torchvision.models.ResNeXt50_32X4D_Weights.DEFAULT.transforms()
    batch = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in _files(photos)[:16]])
    tests_checkpoint(path, arch=arch, centre_on=batch)


def make_int8(float_ckpt: Path, photos: Path, out: Path, arch: str) -> None:
    """INT8 weights calibrated on *photos* with `resnext quantize`."""
    subprocess.run(
        [sys.executable, "-m", "resnext_cli", "quantize", "-m", arch, "--checkpoint",
         str(float_ckpt), "--calibrate", str(photos), "-o", str(out), "-q", "--force"],
        check=True,
    )  # fmt: skip


def make_openvino_int8(
    float_ckpt: Path, photos: Path, out: Path, arch: str = "resnext50_32x4d"
) -> None:
    """An OpenVINO INT8 file calibrated on *photos* with NNCF (`quantize --runtime openvino`)."""
    subprocess.run(
        [sys.executable, "-m", "resnext_cli", "quantize", "--runtime", "openvino", "-m", arch,
         "--checkpoint", str(float_ckpt), "--calibrate", str(photos), "-o", str(out), "-q",
         "--force"],
        check=True,
    )  # fmt: skip


STARTUP_KINDS = {
    "openvino, warm cache": ("--runtime", "openvino"),
    "openvino, cold cache (conversion)": ("--runtime", "openvino"),
    "torch": ("--runtime", "torch"),
}


def startup(ckpt: Path, photo: Path, work: Path, rounds: int = 1) -> dict[str, float]:
    """Median wall seconds of `resnext classify photo.jpg` in a fresh process: OpenVINO
    with a warm conversion cache, with an empty one (the conversion), and torch; the
    kinds alternate within each round, so a busy machine slows all of them alike."""
    home = work / "startup-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESNEXT_")}
    env.update(TORCH_HOME=str(home), XDG_CACHE_HOME=str(work / "xdg"))

    def wall(*options: str) -> float:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "resnext_cli", "classify", str(photo), "--checkpoint",
             str(ckpt), "-f", "jsonl", "-q", *options],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        return time.perf_counter() - start

    kinds = STARTUP_KINDS if _has_openvino() else {"torch": STARTUP_KINDS["torch"]}
    cache = home / "hub" / "checkpoints" / "openvino"
    if _has_openvino():
        wall("--runtime", "openvino")  # the first warm round finds the cache filled
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind, options in kinds.items():
            if kind.startswith("openvino, cold"):
                shutil.rmtree(cache, ignore_errors=True)
            times[kind].append(wall(*options))
            print(f"startup  {kind:34s} {times[kind][-1]:6.2f} s", file=sys.stderr)
    return {kind: statistics.median(values) for kind, values in times.items()}


def startup_rows(rounds: int) -> str:
    """--startup: one photo's start-up, each kind in fresh processes, medians."""
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="resnext-startup-") as tmp:
        work = Path(tmp)
        photos = work / "photos"
        photos.mkdir()
        rng = np.random.default_rng(7)
        ramp = np.linspace(0, 255, 500, dtype=np.float32)
        for i in range(4):  # smooth pictures with some noise: the fc is centred on them
            base = (ramp[None, :, None] * rng.uniform(0.2, 1.0, (1, 1, 3))).repeat(375, 0)
            noise = rng.normal(0, 12, (375, 500, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(photos / f"img_{i:05d}.jpg", quality=90)
        ckpt = work / "resnext50_random.pth"
        make_checkpoint(ckpt, photos)
        medians = startup(ckpt, _files(photos)[0], work, rounds)
    lines = [
        "## Start-up: one photo in a fresh process",
        "",
        f"Machine: {machine()}.",
        f"Command: `python benchmarks/bench.py --startup --repeats {rounds}`: the wall time of "
        "`resnext classify photo.jpg --checkpoint FILE -f jsonl -q` (a 500x375 JPEG, "
        "resnext50_32x4d, default precision) from process start to exit, median of "
        f"{rounds} rounds, the kinds alternating within each round.",
        "",
        "| runtime | seconds |",
        "| --- | ---: |",
    ]
    lines += [f"| {kind} | {seconds:.2f} |" for kind, seconds in medians.items()]
    return "\n".join(lines)


def _has_openvino() -> bool:
    from importlib.util import find_spec

    return find_spec("openvino") is not None


# -- variants, each run in a child process -----------------------------------------------


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".jpg")


def run_hub(folder: Path, ckpt: Path, repeats: int) -> list[float]:
    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms

    model = torchvision.models.resnext50_32x4d()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    preprocess = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    files = _files(folder)

    def one_pass(paths: list[Path]) -> None:
        for filename in paths:
            input_image = Image.open(filename).convert("RGB")
            input_batch = preprocess(input_image).unsqueeze(0)
            with torch.no_grad():
                output = model(input_batch)
            probabilities = torch.nn.functional.softmax(output[0], dim=0)
            torch.topk(probabilities, 5)

    return _timed(one_pass, files, repeats)


def run_timm(folder: Path, ckpt: Path, repeats: int) -> list[float]:
    import timm
    import torch
    from timm.data import ImageDataset, create_loader, resolve_data_config

    model = timm.create_model("resnext50_32x4d", pretrained=False)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval().to(memory_format=torch.channels_last)
    config = resolve_data_config({}, model=model)
    dataset = ImageDataset(str(folder))
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    dtype = torch.bfloat16 if native_bf16 else torch.float32
    files = _files(folder)

    loader = create_loader(
        dataset,
        input_size=config["input_size"],
        batch_size=8,
        use_prefetcher=False,
        interpolation=config["interpolation"],
        mean=config["mean"],
        std=config["std"],
        crop_pct=config["crop_pct"],
        num_workers=2,
        persistent_workers=False,
    )

    def one_pass(paths: list[Path]) -> None:
        warm_up = len(paths) < len(files)
        with (
            torch.inference_mode(),
            torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32),
        ):
            for batch, _ in loader:
                out = model(batch.contiguous(memory_format=torch.channels_last))
                out.float().softmax(-1).topk(5)
                if warm_up:
                    break

    return _timed(one_pass, files, repeats)


def _classifier(ckpt: Path, **options: object) -> object:
    from resnext_cli import Classifier

    return Classifier(checkpoint=str(ckpt), **options)


PREDICTIONS: dict[str, list[tuple[int, float]]] = {}


def run_resnext(folder: Path, ckpt: Path, repeats: int, **options: object) -> list[float]:
    clf = _classifier(ckpt, **options)
    files = _files(folder)

    def one_pass(paths: list[Path]) -> None:
        for record in clf.classify([str(p) for p in paths]):  # type: ignore[attr-defined]
            assert record.ok, record
            PREDICTIONS[record.input] = [(p.index, p.probability) for p in record.predictions]

    return _timed(one_pass, files, repeats)


def run_model_only(folder: Path, ckpt: Path, repeats: int, **options: object) -> list[float]:
    import torch

    from resnext_cli.run.pipeline import probabilities

    clf = _classifier(ckpt, **options)
    files = _files(folder)
    size = clf.plan.batch_size  # type: ignore[attr-defined]
    batch = [torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8) for _ in range(size)]

    def one_pass(paths: list[Path]) -> None:
        for start in range(0, len(paths), size):
            chunk = torch.stack(batch[: len(paths[start : start + size])])
            probabilities(clf.loaded, chunk, clf.precision)  # type: ignore[attr-defined]

    return _timed(one_pass, files, repeats)


def _timed(one_pass: Callable[[list[Path]], None], files: list[Path], repeats: int) -> list[float]:
    one_pass(files[:8])  # warm up: page the weights in, size the allocator
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        one_pass(files)
        rates.append(len(files) / (time.perf_counter() - start))
    return rates


def run_features(folder: Path, ckpt: Path, repeats: int, **options: object) -> list[float]:
    """learn's feature step: the classify pipeline up to the pooled features."""
    clf = _classifier(ckpt, **options)
    files = _files(folder)

    def one_pass(paths: list[Path]) -> None:
        for name, outcome in clf.iter_features([str(p) for p in paths]):  # type: ignore[attr-defined]
            assert not isinstance(outcome, Exception), (name, outcome)

    return _timed(one_pass, files, repeats)


def child(variant: str, folder: Path, ckpt: Path, repeats: int) -> None:
    int8 = ckpt.with_name("int8-50.pth")
    int8_101 = ckpt.with_name("int8-101-64.pth")
    ov_int8 = ckpt.with_name("int8-50.ov")
    ov_int8_101 = ckpt.with_name("int8-101-64.ov")
    runners: dict[str, Callable[[], list[float]]] = {
        "a": lambda: run_hub(folder, ckpt, repeats),
        "b": lambda: run_timm(folder, ckpt, repeats),
        "c": lambda: run_resnext(folder, ckpt, repeats),
        "f": lambda: run_resnext(folder, ckpt, repeats, precision="fp32"),
        "g": lambda: run_resnext(folder, ckpt, repeats, precision="bf16"),
        "d": lambda: run_resnext(folder, ckpt, repeats, exact=True),
        "e": lambda: run_model_only(folder, ckpt, repeats),
        "l": lambda: run_features(folder, ckpt, repeats),
        "q": lambda: run_resnext(folder, int8, repeats, quantized=True),
        "r": lambda: run_resnext(
            folder, int8_101, repeats, quantized=True, model="resnext101_64x4d"
        ),
        "t": lambda: run_resnext(folder, ckpt, repeats, runtime="torch"),
        "o": lambda: run_resnext(folder, ckpt, repeats, runtime="openvino", precision="fp32"),
        "ob": lambda: run_resnext(folder, ckpt, repeats, runtime="openvino", precision="bf16"),
        "t1": lambda: run_resnext(folder, ckpt, repeats, runtime="torch", batch_size=1),
        "o1": lambda: run_resnext(folder, ckpt, repeats, runtime="openvino", batch_size=1),
        "te": lambda: run_model_only(folder, ckpt, repeats, runtime="torch"),
        "oe": lambda: run_model_only(folder, ckpt, repeats, runtime="openvino"),
        "oq": lambda: run_resnext(folder, ov_int8, repeats, quantized=True),
        "orq": lambda: run_resnext(
            folder, ov_int8_101, repeats, quantized=True, model="resnext101_64x4d"
        ),
    }
    rates = runners[variant]()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = {"rates": rates, "rss_mb": (own + kids) / 1024, "predictions": PREDICTIONS}
    print(json.dumps(out))


def agreement(
    got: dict[str, list[list[float]]], reference: dict[str, list[list[float]]]
) -> tuple[float, float, float]:
    """Top-1 agreement, top-5 set agreement, largest |dp| over the shared top-5 classes."""
    top1 = top5 = 0
    worst = 0.0
    for name, ref in reference.items():
        mine = got[name]
        top1 += mine[0][0] == ref[0][0]
        top5 += {int(i) for i, _ in mine} == {int(i) for i, _ in ref}
        theirs = {int(i): p for i, p in ref}
        for i, p in mine:
            if int(i) in theirs:
                worst = max(worst, abs(p - theirs[int(i)]))
    n = max(1, len(reference))
    return top1 / n, top5 / n, worst


# -- the parent: orchestrate, tabulate, write BENCHMARKS.md ------------------------------


def measure(variant: str, folder: Path, ckpt: Path, repeats: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--folder",
            str(folder),
            "--checkpoint",
            str(ckpt),
            "--repeats",
            str(repeats),
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"variant {variant} failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "ips": statistics.median(result["rates"]),
        "rss_mb": result["rss_mb"],
        "predictions": result["predictions"],
    }


def _native_bf16() -> bool:
    from resnext_cli.run.plan import MachineFacts

    return MachineFacts.probe("cpu").cpu_native_bf16


def machine() -> str:
    import torch

    cpu = cpu_model()
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )


# -- resnext learn ---------------------------------------------------------------------------


def make_class_photos(folder: Path, classes: int, per_class: int, seed: int = 5) -> None:
    """JPEGs (500x375) in one folder per class: smooth colour fields, a hue per class."""
    import torch
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for k in range(classes):
        hue = torch.rand(3, 1, 1, generator=g)
        (folder / f"class{k:03d}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            small = torch.rand(3, 12, 16, generator=g)
            big = torch.nn.functional.interpolate(small[None], size=(375, 500), mode="bicubic")[0]
            pixels = (0.5 * big + 0.5 * hue).clamp(0, 1).mul(255).to(torch.uint8)
            image = Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())
            image.save(folder / f"class{k:03d}" / f"img_{i:04d}.jpg", quality=90)


def head_fit_seconds(images: int, classes: int, dim: int = 2048, seed: int = 0) -> float:
    """What learn does with the features: fit on 80%, score 20%, refit on all (warm)."""
    import numpy as np

    from resnext_cli.model.head import fit_head, score, stratified_split

    g = np.random.default_rng(seed)
    centres = g.random((classes, dim), dtype=np.float32)
    y = g.integers(0, classes, images)
    x = np.maximum(centres[y] + 0.5 * g.standard_normal((images, dim), dtype=np.float32), 0)
    start = time.perf_counter()
    train, held = stratified_split(y, classes, 0.2, seed=0)
    first = fit_head(x[train], y[train], classes)
    score(first, x[held], y[held], classes)
    fit_head(x, y, classes, start=first)
    return time.perf_counter() - start


def learn_seconds(folder: Path, ckpt: Path, out: Path, home: Path) -> tuple[float, str]:
    """Wall time of one `resnext learn` in a fresh process, and its 'features:' line."""
    env = {**os.environ, "TORCH_HOME": str(home)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "resnext_cli", "learn", str(folder), "-o", str(out), "--force",
         "--checkpoint", str(ckpt)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    line = next((s for s in done.stderr.splitlines() if s.startswith("features:")), "")
    return seconds, line


def learn_rows(quick: bool, repeats: int) -> str:
    """Feature extraction against classify, the head's fit, and a re-learn after 2 moves."""
    classes, per_class = (2, 8) if quick else (10, 30)
    sizes = [(1000, 10)] if quick else [(1000, 10), (1000, 100), (10000, 10), (10000, 100)]
    with tempfile.TemporaryDirectory(prefix="resnext-bench-learn-") as tmp:
        work = Path(tmp)
        photos, flat = work / "photos", work / "flat"
        make_class_photos(photos, classes, per_class)
        flat.mkdir()
        for path in sorted(photos.rglob("*.jpg")):  # the same photos, for classify's rate
            (flat / f"{path.parent.name}_{path.name}").symlink_to(path)
        ckpt = work / "resnext50_random.pth"
        make_checkpoint(ckpt, flat)
        rates = {v: measure(v, flat, ckpt, repeats)["ips"] for v in ("c", "l")}
        print(f"learn: classify {rates['c']:.2f} img/s, features {rates['l']:.2f}", file=sys.stderr)
        fits = {size: head_fit_seconds(*size) for size in sizes}
        home = work / "torch_home"
        first, first_line = learn_seconds(photos, ckpt, work / "a.pth", home)
        a, b = sorted((photos / "class000").iterdir())[:2]
        os.rename(a, photos / "class001" / f"moved_{a.name}")  # no name of class001's
        os.rename(b, photos / "class001" / f"moved_{b.name}")
        again, again_line = learn_seconds(photos, ckpt, work / "b.pth", home)
    images = classes * per_class
    lines = [
        "## resnext learn (resnext50_32x4d, random weights)",
        "",
        f"Machine: {machine()}.",
        f"Command: `python benchmarks/bench.py --learn{' --quick' if quick else ''}` "
        f"({images} JPEGs of 500x375 in {classes} class folders; median of {repeats} runs "
        "for the rates; the head is fitted on synthetic 2,048-long features).",
        "",
        "| measure | value | target |",
        "| --- | ---: | --- |",
        f"| classify (defaults), img/s | {rates['c']:.2f} | |",
        f"| learn's feature step (defaults), img/s | {rates['l']:.2f} | |",
        f"| features / classify | {rates['l'] / rates['c']:.2f} | ≥ 0.9 |",
    ]
    for (n, k), seconds in fits.items():
        target = "< 5 s on 2 cores" if (n, k) == (10000, 100) else ""
        lines.append(
            f"| head fit + score + refit, {n:,} images x {k} classes | {seconds:.2f} s | {target} |"
        )
    lines += [
        f"| first learn of {images} images (fresh process) | {first:.1f} s | |",
        f"| re-learn after moving 2 files | {again:.1f} s | |",
        f"| re-learn / first learn | {again / first:.1%} | < 10% |",
        "",
        f"First learn: `{first_line}`; re-learn: `{again_line}`.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer images, one repeat")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--learn", action="store_true", help="only the resnext learn rows")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="8 small photos, one repeat, no phone photos, print only: checks the code runs",
    )
    parser.add_argument("--only", help="comma-separated variants to run (default: all)")
    parser.add_argument(
        "--startup",
        action="store_true",
        help="only one photo's start-up: OpenVINO warm and cold, torch (no extras needed)",
    )
    args = parser.parse_args()
    if args.child:
        child(args.child, args.folder, args.checkpoint, args.repeats)
        return
    if args.startup:
        text = startup_rows(args.repeats)
        print(text)
        if not args.no_write:
            write_section("startup", text)
        return
    if args.learn:
        text = learn_rows(args.quick, 1 if args.quick else args.repeats)
        print(text)
        if not args.no_write:
            write_section("learn", text)
        return

    chosen = [v for v in VARIANTS if args.only is None or v in args.only.split(",")]
    if not _has_openvino():
        chosen = [v for v in chosen if v not in OPENVINO]
    if "ob" in chosen and not _native_bf16():
        chosen.remove("ob")  # OpenVINO runs bf16 only where the CPU has it
    if args.smoke:
        args.quick = args.no_write = True
    repeats = 1 if args.quick else args.repeats
    counts = (8, 0, 8) if args.smoke else (40, 6, 400) if args.quick else (200, 24, 2000)
    with tempfile.TemporaryDirectory(prefix="resnext-bench-") as tmp:
        work = Path(tmp)
        ckpt = work / "resnext50_random.pth"
        small, phone, many = work / "imagenet", work / "phone", work / "many"
        make_images(small, counts[0], (500, 375), seed=1)
        make_images(phone, counts[1], (4032, 3024), seed=2)
        make_checkpoint(ckpt, small)
        if "q" in chosen:
            make_int8(ckpt, small, work / "int8-50.pth", "resnext50_32x4d")
        if "oq" in chosen:
            make_openvino_int8(ckpt, small, work / "int8-50.ov")
        if "r" in chosen or "orq" in chosen:
            make_checkpoint(work / "r101-64.pth", small, "resnext101_64x4d")
        if "r" in chosen:
            make_int8(work / "r101-64.pth", small, work / "int8-101-64.pth", "resnext101_64x4d")
        if "orq" in chosen:
            make_openvino_int8(
                work / "r101-64.pth", small, work / "int8-101-64.ov", "resnext101_64x4d"
            )
        many.mkdir()
        for i in range(counts[2]):  # the same files again, by link: memory, not decoding
            target = small / f"img_{i % counts[0]:05d}.jpg"
            (many / f"img_{i:05d}.jpg").symlink_to(target)

        results: dict[str, dict[str, dict[str, Any]]] = {}
        for label, folder in (("imagenet", small), ("phone", phone)):
            results[label] = {}
            for variant in chosen:
                if label == "phone" and (variant in IMAGENET_ONLY or args.smoke):
                    continue
                results[label][variant] = measure(variant, folder, ckpt, repeats)
                r = results[label][variant]
                print(
                    f"{label:9s} {variant} {VARIANTS[variant]:34s} {r['ips']:7.2f} img/s "
                    f"rss {r['rss_mb']:6.0f} MB",
                    file=sys.stderr,
                )
        rss_many = measure("c", many, ckpt, 1)["rss_mb"] if "c" in chosen else 0.0
        starts = startup(ckpt, _files(small)[0], work)

    lines = [
        "## Local CPU throughput (resnext50_32x4d)",
        "",
        f"Machine: {machine()}.",
        f"Command: `python benchmarks/bench.py{' --quick' if args.quick else ''}` "
        f"(median of {repeats} runs per variant, each "
        "variant in a fresh process; images from skimage.data re-encoded as JPEG quality 90).",
        "",
        f"| variant | ImageNet-sized ({counts[0]} x 500x375) img/s | phone-sized "
        f"({counts[1]} x 4032x3024) img/s | peak RSS (ImageNet-sized) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for v in chosen:
        name = VARIANTS[v]
        a, b = results["imagenet"][v], results["phone"].get(v)
        phone_ips = f"{b['ips']:.2f}" if b else "-"
        lines.append(f"| {v}: {name} | {a['ips']:.1f} | {phone_ips} | {a['rss_mb']:.0f} MB |")
    lines += [
        "",
        "| ratio | ImageNet-sized | phone-sized | target |",
        "| --- | ---: | ---: | --- |",
    ]
    targets = {
        "c/a": "≥ 2.0 / ≥ 3.5",
        "c/b": "≥ 1.0",
        "d/a": "≥ 0.95",
        "c/e": "≥ 0.85",
        "q/a": "≥ 4.5 (native bf16 CPU)",
        "r/g": "≥ 0.75 (native bf16 CPU)",
        "c/t": "≥ 1.2 (native bf16 CPU): the default against torch's",
        "o/t": "",
        "oe/te": "",
        "o1/t1": "",
        "oq/q": "≥ 1.5",
        "r/t": "≥ 0.75 (native bf16 CPU): 101 INT8, torch, against resnext50 torch bf16",
        "orq/t": "≥ 0.75 (native bf16 CPU): 101 INT8, OpenVINO, the same yardstick",
    }
    for ratio, target in targets.items():
        x, y = ratio.split("/")
        cells = [
            f"{results[f][x]['ips'] / results[f][y]['ips']:.2f}"
            if x in results[f] and y in results[f]
            else "-"
            for f in ("imagenet", "phone")
        ]
        lines.append(f"| {ratio} | {cells[0]} | {cells[1]} | {target} |")
    lines += [
        "",
        "Agreement with `--exact` on the same ImageNet-sized photos. The weights are random "
        "(fc centred on these photos so that predictions are peaked); real weights are "
        "more confident on real photos, so this shows more disagreement than they would:",
        "",
        "| variant | top-1 agreement | top-5 set agreement | largest \\|Δp\\| |",
        "| --- | ---: | ---: | ---: |",
    ]
    reference = results["imagenet"].get("d", {}).get("predictions")
    for v in AGREEMENT if reference is not None else ():
        if v not in results["imagenet"]:
            continue
        top1, top5, worst = agreement(results["imagenet"][v]["predictions"], reference)
        lines.append(f"| {v}: {VARIANTS[v]} | {top1:.1%} | {top5:.1%} | {worst:.3g} |")
    if "c" in results["imagenet"]:
        rss_small = results["imagenet"]["c"]["rss_mb"]
        lines += [
            "",
            f"Peak RSS of `resnext classify` (c): {rss_small:.0f} MB for {counts[0]} images, "
            f"{rss_many:.0f} MB for {counts[2]} images "
            f"({(rss_many / rss_small - 1) * 100:+.1f}%).",
        ]
    lines += ["", "Start-up: one photo, `resnext classify photo.jpg`, a fresh process:", ""]
    lines += [f"- {what}: {seconds:.1f} s" for what, seconds in starts.items()]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("local", text)


if __name__ == "__main__":
    main()
