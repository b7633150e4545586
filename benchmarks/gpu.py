"""GPU throughput of `resnext classify` against the model alone, the hub loop and a timm loader.

    PYTHONPATH=src python3 benchmarks/gpu.py --out gpu.json   # one CUDA GPU, within 480 s
    PYTHONPATH=src python3 benchmarks/gpu.py --write   # and put the table in BENCHMARKS.md
    python3 benchmarks/gpu.py --smoke                  # the same code on CPU, tiny, < 1 min

No row is ever lost: each is printed, and appended to --out FILE as one JSON line, the
moment it is measured; one overall deadline (--deadline, 480 s) ends the run cleanly with
the rows so far. Where nvidia-smi exists, GPU (and JPEG engine) utilisation is sampled in
the background during each row. The table names the JPEG decoder the device offers
(hardware or nvJPEG's hybrid mode), as `resnext` itself decides it.

Needs only torch, torchvision, Pillow, numpy, click, rich and requests (timm is used for
the timm row when it is installed; without it a plain DataLoader stands in). It makes its
own data in a temp dir: ImageNet-sized JPEGs (500x375, 375x500, 500x333) and phone-sized
ones (4032x3024, half of them with EXIF orientation 6), drawn from numpy noise and
gradients in threads, and a seeded resnext50_32x4d checkpoint in torchvision's layout whose
fc is centred on these images, so predictions are peaked and the parity row means something.

Each row runs in its own child process with a time limit, so one that fails or hangs
prints its reason in the table and the others still run:

  model     the model alone on uint8 batches already on the device (BatchNorm folded,
            channels_last, the precision resnext's plan picks), at its best batch of
            64/128/256 (one figure: ready batches do not depend on the photos' size)
  hub       the hub page's loop: PIL open, its Compose, batch 1, fp32, on the device
  timm      timm's inference recipe: create_loader with Pillow workers (one per core),
            its GPU prefetcher, channels_last, bf16 autocast, batch 256; a warm-up pass
            (cuDNN autotuning, worker start-up) outside the timed ones, best of several
  decode    decoding alone, from bytes in memory to 224x224 uint8 crops: the Pillow path
            in one thread per core, and tensor_decode.decode_batch on the device
  resnext   the real command, as a user runs it: `python -m resnext_cli classify FOLDER
            --checkpoint CKPT -o FILE` (defaults, --decode cpu, --decode gpu), timed from
            start to exit, after one warm-up run (page cache, kernels on disk)
  parity    decode_batch on the device against the Pillow path: top-1 agreement and
            max |dp| with the model in fp32, and how far the crops differ in uint8 levels
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from common import cpu_model, write_section

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(SRC))

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Scale:
    """How big a run is: the full one for a GPU, or a smoke run on CPU."""

    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.imagenet = 8 if smoke else 2000
        self.phone = 2 if smoke else 200
        self.phone_size = (1008, 756) if smoke else (4032, 3024)
        self.batches = (2,) if smoke else (64, 128, 256)
        self.loader_batch = 2 if smoke else 256
        self.decode_batch = 4 if smoke else 128
        self.parity = (4, 2) if smoke else (256, 48)  # (ImageNet-sized, phone-sized) images
        self.calibrate = 2 if smoke else 8  # images the checkpoint's fc is centred on
        self.warmup = 1 if smoke else 64  # files classified before timing
        self.repeats = 1 if smoke else 3  # timed passes of each row; the best counts
        self.seconds = 1.0 if smoke else 20.0  # time box of the hub row, per folder
        self.child_timeout = 120 if smoke else 100


# -- data ----------------------------------------------------------------------------------


def _noise_tile(seed: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.normal(0, 9, (256, 256, 3)).round().astype(np.int16)


def make_photo(seed: int, size: tuple[int, int], tile: Any) -> Any:
    """A smooth random colour field, a gradient and fine noise: photo-like JPEG work."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    grid = rng.integers(0, 256, (max(2, h // 48), max(2, w // 48), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC))
    ramp = np.linspace(-40, 40, w, dtype=np.float32)[None, :, None] * rng.uniform(-1, 1, 3)
    dy, dx = rng.integers(0, 256, 2)
    reps = (h // 256 + 2, w // 256 + 2, 1)
    noise = np.tile(tile, reps)[dy : dy + h, dx : dx + w]
    pixels = base.astype(np.int16) + ramp.astype(np.int16) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def make_images(folder: Path, count: int, sizes: list[tuple[int, int]], *, seed: int) -> None:
    """Write *count* JPEGs (quality 90) in threads; every other phone photo is rotated."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    tile = _noise_tile(seed)
    phone = max(sizes[0]) > 1000

    def one(i: int) -> None:
        img = make_photo(seed * 100_000 + i, sizes[i % len(sizes)], tile)
        exif = Image.Exif()
        if phone and i % 2:
            exif[0x0112] = 6  # as a phone held upright writes it
        img.save(folder / f"img_{i:05d}.jpg", quality=90, exif=exif)

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(one, range(count)))


def make_checkpoint(path: Path) -> None:
    """The tests' seeded resnext50_32x4d, its fc centred so predictions are peaked."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.conftest import make_checkpoint as tests_checkpoint

    tests_checkpoint(path)


# -- helpers for the children ----------------------------------------------------------------


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


def _device(smoke: bool) -> Any:
    import torch

    if smoke:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here (run with --smoke to check the script on CPU)")
    return torch.device("cuda")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reduced(device: Any) -> Any:
    """The dtype resnext's own plan picks on this device (--precision auto)."""
    import torch

    from resnext_cli.run.config import Config
    from resnext_cli.run.plan import resolve

    precision = resolve(Config(device=device.type)).precision
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def _autocast(device: Any, dtype: Any) -> Any:
    import torch

    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _network(ckpt: Path) -> Any:
    import torch
    import torchvision

    model = torchvision.models.resnext50_32x4d()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    return model.eval()


def _fold(model: Any) -> Any:
    """Fold each BatchNorm into its convolution, as resnext does outside --exact."""
    from resnext_cli.model.checkpoint import fold_batchnorm

    return fold_batchnorm(model)


def _boxed(items: list[Any], seconds: float) -> Iterator[Any]:
    """Yield items until *seconds* have passed (always at least one)."""
    start = time.perf_counter()
    for i, item in enumerate(items):
        if i and time.perf_counter() - start > seconds:
            return
        yield item


def _rate(run: Callable[[], int], device: Any) -> float:
    """Images per second of one call of *run*, which returns how many it did."""
    _sync(device)
    start = time.perf_counter()
    done = run()
    _sync(device)
    return done / (time.perf_counter() - start)


# -- the rows, each in a child process ---------------------------------------------------------


def row_model(work: Path, scale: Scale) -> dict[str, Any]:
    import torch

    device = _device(scale.smoke)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtype = _reduced(device)
    model = _fold(_network(work / "ckpt.pth")).to(memory_format=torch.channels_last).to(device)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    best: tuple[float, int] = (0.0, 0)
    for size in scale.batches:
        x = torch.randint(0, 256, (size, 3, 224, 224), dtype=torch.uint8, device=device)

        def steps(n: int, x: Any = x, size: int = size) -> int:
            with torch.inference_mode(), _autocast(device, dtype):
                for _ in range(n):
                    batch = ((x.float() / 255 - mean) / std).contiguous(
                        memory_format=torch.channels_last
                    )
                    model(batch).float().softmax(1).topk(5)
            return n * size

        if not scale.smoke:
            steps(3)  # warm up: cuDNN picks its kernels
        n = 1 if scale.smoke else max(3, 3000 // size)
        rate = max(_rate(lambda n=n, steps=steps: steps(n), device) for _ in range(scale.repeats))
        best = max(best, (rate, size))
    rate, size = best
    note = f"batch {size}, {str(dtype).removeprefix('torch.')}; one figure for both sizes"
    return {"imagenet": rate, "note": note, "device": _device_name(device)}


def row_hub(work: Path, scale: Scale) -> dict[str, Any]:
    import torch
    from PIL import Image
    from torchvision import transforms

    device = _device(scale.smoke)
    model = _network(work / "ckpt.pth").to(device)
    # The hub page's snippet, word for word but for the loop.
    preprocess = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=MEAN, std=STD),
        ]
    )

    def loop(files: list[Path]) -> int:
        done = 0
        for filename in _boxed(files, scale.seconds):
            input_image = Image.open(filename)
            input_tensor = preprocess(input_image.convert("RGB"))
            input_batch = input_tensor.unsqueeze(0).to(device)
            with torch.no_grad():
                output = model(input_batch)
            probabilities = torch.nn.functional.softmax(output[0], dim=0)
            torch.topk(probabilities, 5).indices.tolist()  # the page prints them
            done += 1
        return done

    out: dict[str, Any] = {"note": "batch 1, fp32"}
    for name in ("imagenet", "phone"):
        files = _files(work / name)
        loop(files[:2])
        out[name] = _rate(lambda f=files: loop(f), device)  # time-boxed: one pass
    return out


def row_timm(work: Path, scale: Scale) -> dict[str, Any]:
    import torch

    device = _device(scale.smoke)
    dtype = _reduced(device)
    workers = 2 if scale.smoke else os.cpu_count() or 1
    try:
        import timm  # noqa: F401
    except ImportError:
        make, note = _plain_loader, "torch DataLoader + weights.transforms() (no timm)"
        model = _network(work / "ckpt.pth")
    else:
        make, note = _timm_loader, "timm create_loader"
        model = _timm_model(work / "ckpt.pth")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = model.to(device).to(memory_format=torch.channels_last)

    def one_pass(folder: Path) -> int:
        done = 0
        with torch.inference_mode(), _autocast(device, dtype):
            for batch in make(folder, scale.loader_batch, workers, device):
                x = batch.to(device, non_blocking=True).contiguous(
                    memory_format=torch.channels_last
                )
                model(x).float().softmax(-1).topk(5).indices.cpu()
                done += len(batch)
        return done

    out: dict[str, Any] = {
        "note": f"{note}, {workers} workers, batch {scale.loader_batch}, channels_last, "
        f"{str(dtype).removeprefix('torch.')}"
    }
    for name in ("imagenet", "phone"):
        one_pass(work / name)  # warm up: cuDNN autotuning, worker start-up, page cache
        out[name] = max(
            _rate(lambda n=name: one_pass(work / n), device) for _ in range(scale.repeats)
        )
    return out


def _timm_model(ckpt: Path) -> Any:
    import timm
    import torch

    model = timm.create_model("resnext50_32x4d", pretrained=False)
    model.load_state_dict(torch.load(ckpt, weights_only=True))  # the same key layout
    return model.eval()


def _timm_loader(folder: Path, batch: int, workers: int, device: Any) -> Any:
    import timm
    from timm.data import ImageDataset, create_loader, resolve_data_config

    config = resolve_data_config({}, model=timm.create_model("resnext50_32x4d"))
    loader = create_loader(
        ImageDataset(str(folder)),
        input_size=config["input_size"],
        batch_size=batch,
        interpolation=config["interpolation"],
        mean=config["mean"],
        std=config["std"],
        crop_pct=config["crop_pct"],
        num_workers=workers,
        pin_memory=device.type == "cuda",
        use_prefetcher=device.type == "cuda",
        device=device,
        persistent_workers=False,
    )
    return (images for images, _ in loader)


def _plain_loader(folder: Path, batch: int, workers: int, device: Any) -> Any:
    import torch
    import torchvision
    from PIL import Image

    transform = torchvision.models.ResNeXt50_32X4D_Weights.DEFAULT.transforms()
    files = _files(folder)

    class Files(torch.utils.data.Dataset[Any]):
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int) -> Any:
            return transform(Image.open(files[i]).convert("RGB"))

    return torch.utils.data.DataLoader(
        Files(), batch_size=batch, num_workers=workers, pin_memory=device.type == "cuda"
    )


def row_decode(work: Path, scale: Scale) -> dict[str, Any]:
    import io

    import torchvision

    from resnext_cli.imaging.limits import DEFAULT_MAX_PIXELS
    from resnext_cli.imaging.preprocess import DecodeOptions, Preprocess, decode
    from resnext_cli.imaging.tensor_decode import decode_batch

    device = _device(scale.smoke)
    pre = Preprocess(torchvision.models.ResNeXt50_32X4D_Weights.DEFAULT)
    options = DecodeOptions(draft_min_side=2 * pre.resize_size[0])  # resnext's default
    threads = os.cpu_count() or 1
    out: dict[str, Any] = {}
    for name in ("imagenet", "phone"):
        datas = [f.read_bytes() for f in _files(work / name)]

        def pillow(datas: list[bytes] = datas) -> int:
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                crops = pool.map(lambda d: pre(decode(io.BytesIO(d), "x", options)), datas)
                return sum(1 for _ in crops)

        def tensors(datas: list[bytes] = datas) -> int:
            done = 0
            step = scale.decode_batch
            for start in range(0, len(datas), step):
                crops = decode_batch(
                    datas[start : start + step],
                    device=device,
                    resize_size=pre.resize_size[0],
                    crop_size=pre.crop_size[0],
                    antialias=bool(pre.antialias),
                    max_pixels=DEFAULT_MAX_PIXELS,
                )
                done += sum(c is not None for c in crops)
            return done

        tensors(datas[: scale.decode_batch])  # warm up: nvjpeg's handles, kernels
        out[name] = {
            "cpu": max(_rate(pillow, device) for _ in range(scale.repeats)),
            "gpu": max(_rate(tensors, device) for _ in range(scale.repeats)),
        }
    return out


def _jpeg_decoder(device: Any) -> str:
    """The JPEG decoder the device offers, as resnext's plan judges it."""
    if device.type != "cuda":
        return "CPU (libjpeg-turbo)"
    from resnext_cli.run.plan import MachineFacts

    facts = MachineFacts.probe(str(device))
    kind = "hardware" if facts.cuda_jpeg_hardware else "hybrid (no hardware JPEG engine)"
    return f"nvJPEG {kind} on {facts.cuda_name}"


def row_resnext(work: Path, scale: Scale, decode: str | None) -> dict[str, Any]:
    """The real command, start to exit, as a user runs it, after one warm-up run."""
    device = _device(scale.smoke)
    argv = [sys.executable, "-m", "resnext_cli", "classify", "--checkpoint",
            str(work / "ckpt.pth"), "--device", device.type, "-f", "jsonl", "--quiet"]  # fmt: skip
    if decode is not None:
        argv += ["--decode", decode]
    out: dict[str, Any] = {
        "note": " ".join(["classify", *(["--decode", decode] if decode else [])])
    }
    failed = 0
    for name in ("imagenet", "phone"):
        folder = work / name
        records = work / f"records-{name}-{decode}.jsonl"

        def command(folder: Path = folder, records: Path = records) -> float:
            nonlocal failed
            records.unlink(missing_ok=True)
            start = time.perf_counter()
            run = subprocess.run([*argv, str(folder), "-o", str(records)],
                                 capture_output=True, text=True, env=_env())  # fmt: skip
            seconds = time.perf_counter() - start
            if run.returncode not in (0, 1):
                last = (run.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"exit {run.returncode}: {last}")
            lines = records.read_text().splitlines()
            failed = sum('"error"' in line for line in lines)
            return len(lines) / seconds

        if not scale.smoke:
            command()  # warm up: page cache, compiled kernels on disk
        out[name] = max(command() for _ in range(min(2, scale.repeats)))
    if failed:
        out["note"] += f"; {failed} records failed"
    return out


def row_parity(work: Path, scale: Scale) -> dict[str, Any]:
    import io

    import torch
    import torchvision

    from resnext_cli.imaging.limits import DEFAULT_MAX_PIXELS
    from resnext_cli.imaging.preprocess import DecodeOptions, Preprocess, decode
    from resnext_cli.imaging.tensor_decode import decode_batch

    device = _device(scale.smoke)
    pre = Preprocess(torchvision.models.ResNeXt50_32X4D_Weights.DEFAULT)
    options = DecodeOptions(draft_min_side=2 * pre.resize_size[0])  # resnext's default
    model = _network(work / "ckpt.pth").to(device)
    out: dict[str, Any] = {}
    for name, count in zip(("imagenet", "phone"), scale.parity, strict=True):
        datas = [f.read_bytes() for f in _files(work / name)[:count]]
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            cpu = list(pool.map(lambda d: pre(decode(io.BytesIO(d), "x", options)), datas))
        gpu: list[Any] = []
        for start in range(0, len(datas), scale.decode_batch):
            gpu += decode_batch(
                datas[start : start + scale.decode_batch],
                device=device,
                resize_size=pre.resize_size[0],
                crop_size=pre.crop_size[0],
                antialias=bool(pre.antialias),
                max_pixels=DEFAULT_MAX_PIXELS,
            )
        fell_back = sum(g is None for g in gpu)
        pairs = [(c, g.cpu()) for c, g in zip(cpu, gpu, strict=True) if g is not None]
        if not pairs:
            out[name] = {"error": "decode_batch decoded none of them"}
            continue
        a = torch.stack([c for c, _ in pairs])
        b = torch.stack([g for _, g in pairs])
        levels = (a.int() - b.int()).abs().float()
        probs = []
        with torch.inference_mode():
            for x in (a, b):
                p = [
                    model(pre.normalize(chunk.to(device))).float().softmax(1).cpu()
                    for chunk in x.split(64)
                ]
                probs.append(torch.cat(p))
        top1 = (probs[0].argmax(1) == probs[1].argmax(1)).float().mean().item()
        out[name] = {
            "images": len(pairs),
            "fell_back": fell_back,
            "top1": top1,
            "max_dp": (probs[0] - probs[1]).abs().max().item(),
            "mean_levels": levels.mean().item(),
            "max_levels": levels.max().item(),
        }
    return out


def _device_name(device: Any) -> str:
    """The device's name, for the table."""
    import torch

    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"CPU ({cpu_model()})"


ROWS: dict[str, Callable[[Path, Scale], dict[str, Any]]] = {
    "model": row_model,
    "hub": row_hub,
    "timm": row_timm,
    "decode": row_decode,
    "resnext": lambda w, s: row_resnext(w, s, None),
    "resnext-cpu": lambda w, s: row_resnext(w, s, "cpu"),
    "resnext-gpu": lambda w, s: row_resnext(w, s, "gpu"),
    "parity": row_parity,
}


# -- the parent --------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return env


class Utilisation:
    """nvidia-smi's GPU (and JPEG engine) utilisation, sampled in the background."""

    QUERIES = ("utilization.gpu,utilization.jpeg", "utilization.gpu")

    def __init__(self) -> None:
        self.samples: list[list[float]] = []
        self.fields: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import shutil

        if shutil.which("nvidia-smi") is None:
            return
        for query in self.QUERIES:  # older drivers know no utilization.jpeg
            check = subprocess.run(["nvidia-smi", f"--query-gpu={query}",
                                    "--format=csv,noheader,nounits"],
                                   capture_output=True, text=True, timeout=20)  # fmt: skip
            if check.returncode == 0:
                self.fields = query.split(",")
                break
        else:
            return
        self._proc = subprocess.Popen(["nvidia-smi", f"--query-gpu={','.join(self.fields)}",
                                       "--format=csv,noheader,nounits", "-lms", "500"],
                                      stdout=subprocess.PIPE, text=True)  # fmt: skip
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self.samples.append([float(v) for v in line.split(",")[: len(self.fields)]])
            except ValueError:
                continue  # '[N/A]' on a device that has no such engine

    def stop(self) -> dict[str, float]:
        """Mean and peak of each field over the samples since start()."""
        if self._proc is None:
            return {}
        self._proc.terminate()
        self._proc.wait(timeout=10)
        out: dict[str, float] = {}
        for i, name in enumerate(self.fields):
            values = [s[i] for s in self.samples if len(s) > i]
            if values:
                short = name.removeprefix("utilization.")
                out[f"{short}_util_mean"] = sum(values) / len(values)
                out[f"{short}_util_max"] = max(values)
        return out


class Rows:
    """Every row the moment it is measured: on stdout, and one JSON line in --out."""

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self.results: dict[str, dict[str, Any]] = {}

    def add(self, row: str, result: dict[str, Any]) -> None:
        self.results[row] = result
        line = json.dumps({"row": row, **result})
        print(f"row {line}", flush=True)
        if self.out is not None:
            with self.out.open("a") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())


def measure(rows: list[str], work: Path, scale: Scale, sink: Rows, deadline: float) -> None:
    """Run *rows* in one child process; each row reaches *sink* as soon as it is done.

    The child's time limit is its own (child_timeout per row) or what is left of the
    run's deadline, whichever comes first; rows it did not reach say why.
    """
    left = deadline - time.monotonic()
    if left <= 1:
        for row in rows:
            sink.add(row, {"na": "not run: the deadline had passed"})
        return
    own = scale.child_timeout * len(rows)
    limit = min(own, left)
    argv = [sys.executable, __file__, "--child", ",".join(rows), "--work", str(work)]
    started = time.perf_counter()
    sampler = Utilisation()
    sampler.start()
    proc = subprocess.Popen(argv + (["--smoke"] if scale.smoke else []),
                            stdout=subprocess.PIPE, text=True, env=_env())  # fmt: skip
    timer = threading.Timer(limit, proc.kill)
    timer.start()
    done: set[str] = set()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            item = json.loads(line)
            result = {**item["result"], **sampler.stop()}
            sink.add(item["row"], result)
            done.add(item["row"])
            sampler = Utilisation()  # the next row's samples
            sampler.start()
        proc.wait()
    finally:
        timer.cancel()
        sampler.stop()
    print(f"  {', '.join(rows)}: {time.perf_counter() - started:.0f}s", file=sys.stderr)
    for row in rows:
        if row not in done:
            stopped = "the run's deadline" if limit < own else "its time limit"
            why = (f"not finished by {stopped} ({limit:.0f}s)" if proc.returncode in (-9, 137)
                   else f"failed: exit {proc.returncode}")  # fmt: skip
            sink.add(row, {"na": why})


def child(rows: list[str], work: Path, scale: Scale) -> None:
    """Run rows here, one after another, each printed when done; one that raises gets
    its error, the rest still run."""
    for row in rows:
        try:
            result = ROWS[row](work, scale)
        except Exception as exc:
            traceback.print_exc()
            result = {"na": f"failed: {exc!r}"[:160]}
        print(json.dumps({"row": row, "result": result}), flush=True)


def _cell(value: Any, digits: int = 0) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, int | float) else "n/a"


def table(results: dict[str, dict[str, Any]], scale: Scale, decode_flag: bool) -> str:
    """The one table: throughput rows, ratios against the targets, parity."""
    digits = 1 if scale.smoke else 0
    lines = [
        f"| row | ImageNet-sized ({scale.imagenet} x ~500x375) img/s | phone-sized "
        f"({scale.phone} x {scale.phone_size[0]}x{scale.phone_size[1]}) img/s | notes |",
        "| --- | ---: | ---: | --- |",
    ]

    def add(label: str, key: str, sub: str | None = None, note: str | None = None) -> None:
        r = results.get(key, {})
        if "na" in r:
            lines.append(f"| {label} | n/a | n/a | {r['na']} |")
            return
        cells = [r.get(n, {}).get(sub) if sub else r.get(n) for n in ("imagenet", "phone")]
        text = note if note is not None else r.get("note", "")
        lines.append(
            f"| {label} | {_cell(cells[0], digits)} | {_cell(cells[1], digits)} | {text} |"
        )

    add("model only, ready uint8 batches", "model")
    add("hub page loop", "hub")
    add("timm-style loader", "timm")
    add(
        "decode only: Pillow path, one thread per core",
        "decode",
        "cpu",
        f"{os.cpu_count()} threads",
    )
    add("decode only: tensor_decode.decode_batch", "decode", "gpu", f"batch {scale.decode_batch}")
    add("resnext classify (defaults)", "resnext")
    no_flag = {"na": "n/a (no --decode)"}
    for mode in ("cpu", "gpu"):
        key = f"resnext-{mode}"
        if not decode_flag:
            results[key] = no_flag
        add(f"resnext classify --decode {mode}", key)

    # End to end: with GPU decoding where the CLI has it, else its defaults.
    e2e_key = "resnext-gpu" if "na" not in results.get("resnext-gpu", no_flag) else "resnext"
    e2e = "--decode gpu" if e2e_key == "resnext-gpu" else "defaults"
    rate = results.get(e2e_key, {}).get("imagenet")
    lines.append(
        f"| target: resnext ({e2e}) end to end | {_cell(rate, digits)} | | target ≥ 4,000 "
        "img/s (ImageNet-sized, one H100) |"
    )
    targets = [
        ("model", "model only", "≥ 0.7"),
        ("hub", "hub loop", "≥ 10"),
        ("timm", "timm", "≥ 1.5"),
    ]
    for key, name_, target in targets:
        cells = []
        for name in ("imagenet", "phone"):
            top, bottom = results.get(e2e_key, {}).get(name), results.get(key, {}).get(name)
            ok = isinstance(top, float) and isinstance(bottom, float) and bottom > 0
            cells.append(f"{top / bottom:.2f}" if ok else "n/a")
        lines.append(
            f"| ratio: resnext ({e2e}) / {name_} | {cells[0]} | {cells[1]} | target {target} "
            "(ImageNet-sized) |"
        )
    parity = results.get("parity", {})
    if "na" in parity:
        lines.append(f"| parity: decode_batch vs Pillow path | n/a | n/a | {parity['na']} |")
    else:
        cells = []
        for name in ("imagenet", "phone"):
            p = parity.get(name, {})
            if "top1" not in p:
                cells.append(p.get("error", "n/a"))
                continue
            cells.append(
                f"top-1 {100 * p['top1']:.1f}% of {p['images']}, max Δp {p['max_dp']:.4f}, "
                f"crops {p['mean_levels']:.2f} mean / {p['max_levels']:.0f} max levels"
                + (f", {p['fell_back']} fell back" if p["fell_back"] else "")
            )
        lines.append(
            f"| parity: decode_batch vs Pillow path | {cells[0]} | {cells[1]} | "
            "model in fp32; Pillow path with resnext's draft decoding |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny, on CPU: check the script")
    parser.add_argument("--write", action="store_true", help="put the table in BENCHMARKS.md")
    parser.add_argument("--out", type=Path, help="append each row to FILE as a JSON line")
    parser.add_argument(
        "--deadline", type=float, default=480.0, help="seconds for the whole run (480)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    scale = Scale(args.smoke)
    if args.child:
        child(args.child.split(","), args.work, scale)
        return

    began = time.perf_counter()
    deadline = time.monotonic() + args.deadline
    sink = Rows(args.out)
    with tempfile.TemporaryDirectory(prefix="resnext-gpu-bench-") as tmp:
        work = Path(tmp)
        small = [(500, 375), (375, 500), (500, 333), (500, 375)]
        make_images(work / "imagenet", scale.imagenet, small, seed=1)
        make_images(work / "phone", scale.phone, [scale.phone_size], seed=2)
        make_checkpoint(work / "ckpt.pth")
        print(f"data and checkpoint: {time.perf_counter() - began:.0f}s", file=sys.stderr)
        rows = list(ROWS)
        try:
            # Each row in a fresh process on the GPU; in a smoke run, one process for all
            # of them (the same code, without paying torch's import nine times).
            for group in [rows] if scale.smoke else [[r] for r in rows]:
                measure(group, work, scale, sink, deadline)
        except KeyboardInterrupt:
            print("interrupted: the table has the rows so far", file=sys.stderr)
    results = sink.results
    text = table(results, scale, True)
    device = results.get("model", {}).get("device", "unknown device")
    import torch

    decoder = _jpeg_decoder(_device(scale.smoke))
    header = [
        "## GPU throughput (resnext50_32x4d)" + (" — smoke run on CPU" if scale.smoke else ""),
        "",
        f"Machine: {device}; {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}; "
        f"JPEG decoder: {decoder}.",
        f"Command: `PYTHONPATH=src python3 benchmarks/gpu.py{' --smoke' if scale.smoke else ''}`"
        f" ({'all rows in one process' if scale.smoke else 'each row in its own process'};"
        f" every row warmed up, then best of {scale.repeats} passes, but the hub row (one "
        f"pass, time-boxed to {scale.seconds:.0f}s per folder); resnext rows time the "
        f"command from start to exit; generated JPEGs, quality 90; "
        f"{time.perf_counter() - began:.0f}s in all).",
        "",
    ]
    util = [
        f"{row}: GPU {r['gpu_util_mean']:.0f}% mean / {r['gpu_util_max']:.0f}% peak"
        + (f", JPEG {r['jpeg_util_max']:.0f}% peak" if "jpeg_util_max" in r else "")
        for row, r in results.items()
        if "gpu_util_mean" in r
    ]
    text = "\n".join(header) + "\n" + text
    if util:
        text += "\n\nnvidia-smi utilisation per row: " + "; ".join(util) + "."
    print(text)
    if args.write:
        write_section("gpu-smoke" if scale.smoke else "gpu", text)


if __name__ == "__main__":
    main()
