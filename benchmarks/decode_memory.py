"""Peak memory of decoding one input: deep-pixel files against the largest 8-bit photos.

    python benchmarks/decode_memory.py                 # about 5 minutes on 2 cores
    python benchmarks/decode_memory.py --before REV    # also the preprocess.py of commit REV
    python benchmarks/decode_memory.py --scale 0.1     # images a tenth of the size, a smoke run

It writes two folders of images at the sizes the default --max-pixels allows (178,956,970
pixels): "deep" holds 16-bit, 32-bit integer, float, RGBA and CMYK files, small on disk
but deep in pixels (the issue's 13000x13000 ones and the largest a 4-byte mode may be);
"photos" holds 8-bit RGB JPEGs at the pixel limit, one with an EXIF rotation. Each file,
and then each folder, is decoded in a fresh child process exactly as a run does it
(open_source, decode, the weights' Resize and CenterCrop), the folder with --workers
threads at once; the child reports its peak RSS (VmHWM) before and after decoding.
The table goes into BENCHMARKS.md between the bench:decode-memory markers.

--before REV loads src/resnext_cli/imaging/preprocess.py as it was at commit REV (git show) for a
second column. Each child runs under an address-space limit (--limit-gb), so a decoder
that wants more fails with MemoryError instead of pushing the machine into swap.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import cpu_model, write_section

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MAX_PIXELS = 2 * 89_478_485
NOTES = """\
What bounds it: a decode holds the decoded image and its RGB copy, no more. Pixels are
weighed in bytes against --max-pixels times 3 (8-bit RGB) before decoding, so a 4-byte
mode (float, int32, RGBA, CMYK) may have 3/4 of --max-pixels and is refused as
`too_large` above that; 16-bit, float and alpha images convert to RGB in strips of about
a megapixel, with no whole-image float64 copy; the EXIF turn is made on the RGB copy after
the original is freed. The worst deep file now costs about what the largest 8-bit photo
costs (between the plain and the EXIF-rotated one), where before a float or 16-bit file
cost 5 to 6 times as much; a run holds about --workers such inputs at once."""


# -- data ------------------------------------------------------------------------------


def _gradient(width: int, height: int) -> Any:
    """A float32 picture in 0..1 of 64 flat bands: compresses to little, like the issue's."""
    import numpy as np

    x = np.linspace(0, 1, width, dtype=np.float32)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    return (np.floor((x * 0.6 + y * 0.4) * 63) / 63).astype(np.float32)


def make_files(root: Path, scale: float) -> dict[str, list[tuple[Path, str]]]:
    """Write the two folders; return folder -> [(file, what it is)]."""
    import numpy as np
    from PIL import Image

    def side(pixels: float) -> int:
        return max(16, math.isqrt(int(pixels * scale)))

    limit_side = side(DEFAULT_MAX_PIXELS)  # 13377: 8-bit RGB at the pixel limit
    deep_side = side(3 * DEFAULT_MAX_PIXELS / 4)  # 11585: 4 bytes a pixel at the budget
    issue_side = side(13000 * 13000)
    folders: dict[str, list[tuple[Path, str]]] = {"deep": [], "photos": []}
    for name in folders:
        (root / name).mkdir(parents=True, exist_ok=True)

    def add(folder: str, name: str, what: str, make: Any, **save: Any) -> None:
        path = root / folder / name
        if not path.exists():
            print(f"  writing {path.name}", file=sys.stderr, flush=True)
            img = make()
            img.save(path, **save)
            del img
        folders[folder].append((path, what))

    def deep(n: int, kind: str) -> Any:
        g = _gradient(n, n)
        if kind == "F":
            return Image.fromarray(g * 3 - 1)  # outside 0..1: stretched
        if kind == "I;16":
            return Image.fromarray((g * 65535).astype(np.uint16))
        if kind == "I":
            return Image.fromarray((g * 2_000_000 - 1_000_000).astype(np.int32))
        gray = (g * 255).astype(np.uint8)
        if kind == "RGBA":
            return Image.fromarray(np.dstack([gray, gray[::-1], gray.T, gray[:, ::-1]]), "RGBA")
        return Image.merge("CMYK", [Image.fromarray(b) for b in (gray, gray.T, gray, gray.T)])

    tiff = {"compression": "tiff_adobe_deflate"}
    n = issue_side
    add("deep", f"float_{n}.tif", f"float32 TIFF {n}x{n}", lambda: deep(n, "F"), **tiff)
    add("deep", f"gray16_{n}.png", f"16-bit PNG {n}x{n}", lambda: deep(n, "I;16"))
    add("deep", f"rgba_{n}.png", f"RGBA PNG {n}x{n}", lambda: deep(n, "RGBA"))
    m = deep_side
    add("deep", f"float_{m}.tif", f"float32 TIFF {m}x{m}", lambda: deep(m, "F"), **tiff)
    add("deep", f"int32_{m}.tif", f"int32 TIFF {m}x{m}", lambda: deep(m, "I"), **tiff)
    add("deep", f"rgba_{m}.png", f"RGBA PNG {m}x{m}", lambda: deep(m, "RGBA"))
    add("deep", f"cmyk_{m}.tif", f"CMYK TIFF {m}x{m}", lambda: deep(m, "CMYK"), **tiff)

    def photo(width: int, height: int) -> Any:
        g = (_gradient(width, height) * 255).astype(np.uint8)
        return Image.fromarray(np.dstack([g, g[::-1], g[:, ::-1]]), "RGB")

    k = limit_side
    exif = Image.Exif()
    exif[0x0112] = 6  # shot upright: decoding turns it, a second copy
    add("photos", f"rgb_{k}.jpg", f"8-bit RGB JPEG {k}x{k}", lambda: photo(k, k), quality=90)
    add(
        "photos",
        f"rgb_{k}_rotated.jpg",
        f"8-bit RGB JPEG {k}x{k}, EXIF-rotated",
        lambda: photo(k, k),
        quality=90,
        exif=exif,
    )
    add("photos", "phone.jpg", "8-bit RGB JPEG 4032x3024", lambda: photo(4032, 3024), quality=90)
    return folders


# -- one child: decode files, report peak RSS ------------------------------------------


def _load_preprocess(rev: str | None) -> Any:
    """resnext_cli.imaging.preprocess, or its source at commit *rev* loaded beside it."""
    import importlib
    import types

    if rev is None:
        return importlib.import_module("resnext_cli.imaging.preprocess")
    source = subprocess.run(
        ["git", "show", f"{rev}:src/resnext_cli/imaging/preprocess.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType("resnext_cli.preprocess_before")
    module.__package__ = "resnext_cli"
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(source, f"preprocess.py@{rev}", "exec"), module.__dict__)
    return module


def peak_rss_mb() -> float:
    """This process's peak RSS in MB."""
    # VmHWM, not getrusage: Linux carries ru_maxrss over from the parent through exec.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(
    paths: list[str], rev: str | None, workers: int, limit_gb: float, max_pixels: int
) -> None:
    """Decode *paths* (with *workers* threads) and print peak RSS in MB as JSON."""
    from concurrent.futures import ThreadPoolExecutor

    import torchvision

    from resnext_cli.errors import InputError
    from resnext_cli.inputs.sources import Source, open_source

    limit = int(limit_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    pre = _load_preprocess(rev)
    transform = pre.Preprocess(torchvision.models.ResNeXt50_32X4D_Weights.DEFAULT)
    options = pre.DecodeOptions(max_pixels=max_pixels)

    def one(path: str) -> str:
        try:
            with open_source(Source(input=path, path=Path(path))) as fp:
                transform(pre.decode(fp, path, options))
            return "ok"
        except InputError as exc:
            return exc.error_type
        except MemoryError:
            return f"MemoryError (over the {limit_gb:g} GB address-space limit)"

    before = peak_rss_mb()
    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(one, paths))
    peak = peak_rss_mb()
    print(json.dumps({"baseline_mb": before, "peak_mb": peak, "outcomes": outcomes}))


def measure(paths: list[Path], rev: str | None, workers: int, opts: Any) -> dict[str, Any]:
    limit_gb, max_pixels = opts.limit_gb, int(DEFAULT_MAX_PIXELS * opts.scale)
    args = [sys.executable, __file__, "--child", "--workers", str(workers)]
    args += ["--max-pixels", str(max_pixels)]
    args += ["--limit-gb", str(limit_gb), *(["--before", rev] if rev else [])]
    done = subprocess.run([*args, "--", *map(str, paths)], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {tail[0]}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- the table -------------------------------------------------------------------------


def _cell(result: dict[str, Any]) -> str:
    if "error" in result:
        return result["error"]
    grown = result["peak_mb"] - result["baseline_mb"]
    outcomes = sorted(set(result["outcomes"]))
    return f"{grown:,.0f} MB ({', '.join(outcomes)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="REV", help="also measure preprocess.py at REV")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the pixels")
    parser.add_argument("--workers", type=int, default=2, help="threads for a folder")
    parser.add_argument("--limit-gb", type=float, default=14.0, help="address space a child")
    parser.add_argument("--keep", type=Path, help="folder to keep the images in")
    parser.add_argument("--no-write", action="store_true", help="print, leave BENCHMARKS.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help=argparse.SUPPRESS
    )
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        child(opts.paths, opts.before, opts.workers, opts.limit_gb, opts.max_pixels)
        return

    with tempfile.TemporaryDirectory() as scratch:
        root = opts.keep or Path(scratch)
        print(f"writing images into {root}", file=sys.stderr)
        folders = make_files(root, opts.scale)
        revs: list[str | None] = [None, *([opts.before] if opts.before else [])]
        lines = [
            "| input | file size | now: peak RSS above baseline (outcome) |"
            + (f" before ({opts.before}) |" if opts.before else ""),
            "| --- | ---: | --- |" + (" --- |" if opts.before else ""),
        ]
        for files in folders.values():
            for path, what in files:
                cells = []
                for rev in revs:
                    print(f"  {path.name} ({rev or 'now'})", file=sys.stderr, flush=True)
                    cells.append(_cell(measure([path], rev, 1, opts)))
                size = f"{path.stat().st_size / 1e6:,.1f} MB"
                lines.append(f"| {what} | {size} | " + " | ".join(cells) + " |")
        for name, files in folders.items():
            print(f"  folder {name}", file=sys.stderr, flush=True)
            result = measure([p for p, _ in files], None, opts.workers, opts)
            what = f"**folder {name}/** ({len(files)} files, {opts.workers} workers)"
            cells = [_cell(result)] + (["not measured"] if opts.before else [])
            lines.append(f"| {what} | | " + " | ".join(cells) + " |")

    import PIL

    pixels = int(DEFAULT_MAX_PIXELS * opts.scale)
    command = "python benchmarks/decode_memory.py" + (
        f" --before {opts.before}" if opts.before else ""
    )
    if opts.scale != 1:
        command += f" --scale {opts.scale:g}"
    text = "\n".join(
        [
            "## Memory per input: deep pixels against the largest 8-bit photos",
            "",
            f"Machine: {cpu_model()}, {os.cpu_count()} cores; Pillow {PIL.__version__}.",
            f"Command: `{command}`.",
            "",
            "Each row is a fresh child process that decodes as a run does (open_source, decode,",
            "Resize and CenterCrop); the figure is its peak RSS (VmHWM) above its peak after",
            "importing torch and torchvision. Images are sized for --max-pixels",
            f"{pixels:,}, which allows {3 * pixels:,} decoded bytes.",
            "",
            *lines,
            "",
            NOTES,
        ]
    )
    print(text)
    if not opts.no_write:
        write_section("decode-memory", text)


if __name__ == "__main__":
    main()
