"""No torch on the run path when it is not needed (issue 28, item 7).

With the converted model in the cache, `resnext classify` through OpenVINO crops in Pillow
and numpy, plans from /proc/cpuinfo and reads the class names from the cache entry: it
imports neither torch nor torchvision. These tests run the command as a fresh process
(the only way to see what it imports) and compare its records with the path that imports
torch; the crop itself is checked against torchvision's functions on many photos.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms import functional as F

from resnext_cli.imaging.preprocess import DecodeOptions, Preprocess, decode, limit_aspect
from resnext_cli.model import openvino_runtime as ovr
from resnext_cli.model.registry import all_weights, torchvision_weights
from resnext_cli.run import pipeline
from resnext_cli.run.engine import Classifier
from resnext_cli.run.plan import MachineFacts, cpu_flags
from tests.conftest import natural_image

needs_openvino = pytest.mark.skipif(
    not ovr.available(), reason="the openvino extra is not installed (pip install '.[openvino]')"
)

# Runs resnext_cli as `python -m resnext_cli` would, then says on stderr's last line which
# torch and torchvision modules the process imported.
WRAPPER = """\
import atexit, runpy, sys
def said():
    loaded = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'torchvision'})
    print('IMPORTED ' + ' '.join(loaded), file=sys.stderr)
atexit.register(said)
sys.argv = ['resnext', *sys.argv[1:]]
runpy.run_module('resnext_cli', run_name='__main__')
"""


# -- the snapshot's preprocessing: torchvision's, compared independently ----------------------


@pytest.mark.parametrize("info", all_weights(include_quantized=True), ids=lambda i: i.tag)
def test_the_snapshots_preprocessing_is_torchvisions(info) -> None:
    reference = torchvision_weights(info).transforms()
    assert [info.resize_size] == list(reference.resize_size)
    assert [info.crop_size] == list(reference.crop_size)
    assert info.interpolation == reference.interpolation.value
    assert info.antialias == reference.antialias
    assert list(info.mean) == list(reference.mean)
    assert list(info.std) == list(reference.std)


# -- the crop: today's torchvision functions, bit for bit --------------------------------------


def _todays_crop(img: Image.Image, weights: Any) -> torch.Tensor:
    """What resnext cropped with before: torchvision's resize, center_crop, pil_to_tensor."""
    t = weights.transforms()
    img = F.resize(limit_aspect(img), list(t.resize_size), interpolation=t.interpolation)
    return F.pil_to_tensor(F.center_crop(img, list(t.crop_size)))


def _photo(size: tuple[int, int], mode: str, orientation: int, fmt: str, seed: int) -> bytes:
    img = natural_image(seed, size, mode)
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    img.save(out, format=fmt, exif=exif.tobytes())
    return out.getvalue()


CASES = [
    ((640, 480), "RGB", 1, "JPEG"),
    ((480, 640), "RGB", 6, "JPEG"),
    ((300, 301), "L", 3, "JPEG"),
    ((232, 232), "RGB", 8, "PNG"),
    ((233, 1000), "RGBA", 1, "PNG"),
    ((2000, 90), "RGB", 5, "JPEG"),  # past 16:1: the middle is kept first
    ((100, 60), "P", 1, "PNG"),  # upscaled
    ((5, 7), "RGB", 2, "PNG"),
    ((1037, 779), "RGB", 7, "JPEG"),
]


@pytest.mark.parametrize(("size", "mode", "orientation", "fmt"), CASES)
def test_the_numpy_crop_is_todays_crop(size, mode, orientation, fmt) -> None:
    data = _photo(size, mode, orientation, fmt, seed=sum(size))
    weights = [
        torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V1,  # resize 256
        torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V2,  # resize 232
    ]
    for options in (
        DecodeOptions(draft_min_side=464),
        DecodeOptions(),
        DecodeOptions(upright=False),
    ):
        img = decode(io.BytesIO(data), "photo", options)
        for w in weights:
            want = _todays_crop(img, w)
            pre = Preprocess(w)
            got = pre.pixels(img)
            assert got.dtype == np.uint8 and got.flags.c_contiguous
            assert torch.equal(torch.from_numpy(got), want)
            assert torch.equal(pre(img), want)  # the torch path: the same array as a tensor


def test_preprocess_from_the_snapshot_equals_preprocess_from_torchvision() -> None:
    from resnext_cli.model.registry import resolve_weights

    for tag in ("IMAGENET1K_V1", "IMAGENET1K_V2"):
        info = resolve_weights("resnext50_32x4d", tag)
        light = Preprocess.from_settings(
            resize_size=info.resize_size,
            crop_size=info.crop_size,
            interpolation=info.interpolation,
            antialias=info.antialias,
            mean=info.mean,
            std=info.std,
        )
        full = Preprocess(torchvision_weights(info))
        assert vars(light) == vars(full)
        assert light.interpolation == full.interpolation  # torchvision's InterpolationMode


# -- numpy's top-k and softmax: torch's order -------------------------------------------------


def test_numpy_topk_orders_as_torch_does_ties_by_class_index() -> None:
    rows = np.array(
        [[0.1, 0.3, 0.3, 0.0, 0.3], [0.2, 0.2, 0.2, 0.2, 0.2], [0.0, 0.5, 0.25, 0.25, 0.0]],
        dtype=np.float32,
    )
    for k in (1, 3, 5):
        got = pipeline._batch_topk(rows, k)
        assert got == pipeline._batch_topk(torch.from_numpy(rows), k)
        for row, values, indices in zip(rows, *got, strict=True):
            assert pipeline.topk(row, k) == (values, indices)
            assert pipeline.topk(row, k) == pipeline.topk(torch.from_numpy(row), k)
    assert pipeline._finite_rows(np.array([[1.0, np.nan], [0.5, 0.5]])) == [False, True]


# -- planning without torch: /proc/cpuinfo's flags --------------------------------------------


def test_cpu_flags_are_read_from_cpuinfo() -> None:
    text = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n"
    flags = cpu_flags(text)
    assert flags is not None and "avx512_bf16" in flags and "avx2" in flags
    assert cpu_flags("processor : 0\n") is None
    assert MachineFacts.from_cpu_flags(flags).cpu_native_bf16
    assert MachineFacts.from_cpu_flags(frozenset({"amx_tile"})).cpu_native_bf16
    assert not MachineFacts.from_cpu_flags(frozenset({"avx2", "avx512f"})).cpu_native_bf16
    assert MachineFacts.from_cpu_flags(frozenset({"amx_fp16"})).cpu_native_fp16
    assert not MachineFacts.from_cpu_flags(frozenset({"avx2"})).cpu_native_fp16


@pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or os.path.exists("/proc/driver/nvidia")
    or os.path.exists("/dev/kfd"),
    reason="reads /proc/cpuinfo only on Linux without a GPU driver",
)
@pytest.mark.real_cpu  # the child process's probe is never faked
def test_the_probe_without_torch_says_what_torch_says() -> None:
    code = (
        "import sys; from resnext_cli.run.plan import MachineFacts; f = MachineFacts.probe('cpu');"
        "print(int('torch' in sys.modules), int(f.cpu_native_bf16), int(f.cpu_native_fp16))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    real = MachineFacts.probe.__func__(MachineFacts, "cpu")  # type: ignore[attr-defined]
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert out[0] == "0"  # planned without importing torch
    assert out[1] == str(int(native)) == str(int(real.cpu_native_bf16))


# -- the command as a fresh process -----------------------------------------------------------


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESNEXT_")}
    env.update(
        TORCH_HOME=str(home),
        XDG_CACHE_HOME=str(home / "xdg"),
        XDG_CONFIG_HOME=str(home / "config"),
    )
    return env


def _run(
    home: Path, *args: str | Path, quiet: bool = True
) -> tuple[int, list[dict[str, Any]], str, list[str]]:
    """Run `resnext ARGS -f jsonl -q` in a fresh process: exit code, records, stderr
    (without the import line) and the torch modules it imported."""
    code, stdout, stderr, imported = _fresh(home, *args, "-f", "jsonl", *(["-q"] * quiet))
    records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return code, records, stderr, imported


def _fresh(home: Path, *args: str | Path) -> tuple[int, str, str, list[str]]:
    """Run `resnext ARGS` in a fresh process: exit code, stdout, stderr (without the
    import line) and the torch modules it imported."""
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(home),
        timeout=300,
    )
    lines = done.stderr.splitlines()
    assert lines and lines[-1].startswith("IMPORTED"), done.stderr
    return done.returncode, done.stdout, "\n".join(lines[:-1]), lines[-1].split()[1:]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("light_photos")
    paths = []
    for i, size in enumerate([(640, 480), (300, 500), (260, 260)]):
        path = folder / f"{i}.jpg"
        natural_image(20 + i, size).save(path, quality=90)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, photos) -> Path:
    """A home whose cache holds the test checkpoint converted (fp32's and bf16's are one
    entry), made by a first, cold run, which imports torch to convert."""
    if not ovr.available():
        pytest.skip("the openvino extra is not installed")
    home = tmp_path_factory.mktemp("light_home")
    code, records, err, imported = _run(
        home, "classify", photos[0], "--checkpoint", checkpoint, "--runtime", "openvino"
    )
    assert code == 0 and len(records) == 1, err
    assert "torch" in imported and "torchvision" in imported  # converting needs them
    return home


@needs_openvino
def test_a_warm_run_through_openvino_imports_neither_torch_nor_torchvision(
    warm, checkpoint, photos
) -> None:
    for runtime in ("openvino", "auto"):
        code, records, err, imported = _run(
            warm, "classify", *photos, "--checkpoint", checkpoint, "--runtime", runtime
        )
        assert code == 0, err
        assert imported == []
        assert [r["runtime"] for r in records] == ["openvino"] * len(photos)


@needs_openvino
def test_torch_is_imported_where_it_is_needed(warm, checkpoint, photos, tmp_path) -> None:
    for extra in (["--runtime", "torch"], ["--exact"]):
        code, records, err, imported = _run(
            warm, "classify", photos[0], "--checkpoint", checkpoint, *extra
        )
        assert code == 0, err
        assert "torch" in imported
        assert records[0]["runtime"] == "torch"
    # A cold cache converts, with torch (the warm fixture saw that too).
    code, _, err, imported = _run(
        tmp_path, "classify", photos[0], "--checkpoint", checkpoint, "--runtime", "openvino"
    )
    assert code == 0 and "torchvision" in imported, err


def _top5(record: dict[str, Any]) -> list[tuple[str, int, float]]:
    return [(p["label"], p["index"], p["probability"]) for p in record["predictions"]]


@needs_openvino
def test_the_light_paths_records_are_those_of_the_path_with_torch(warm, checkpoint, photos) -> None:
    code, light, err, imported = _run(
        warm, "classify", *photos, "--checkpoint", checkpoint, "--precision", "fp32"
    )
    assert code == 0 and imported == [], err
    # The same OpenVINO network fed torch tensors (torch's crop and stack), in-process.
    clf = Classifier(
        checkpoint=str(checkpoint),
        precision="fp32",
        runtime="openvino",
        facts=MachineFacts(cpu_count=2, openvino=True),
    )
    from resnext_cli.inputs.sources import iter_sources

    sources = list(iter_sources([str(p) for p in photos]))
    crops = [pipeline.prepare(s, clf.plan, clf.loaded.transform) for s in sources]
    assert all(isinstance(c, torch.Tensor) for c in crops)
    probs = pipeline.probabilities(clf.loaded, torch.stack(crops), "fp32")  # type: ignore[arg-type]
    assert isinstance(probs, torch.Tensor)
    for record, row in zip(light, probs, strict=True):
        values, indices = pipeline.topk(row, 5)
        assert [p[1] for p in _top5(record)] == indices
        assert [p[0] for p in _top5(record)] == [clf.plan.labels[i] for i in indices]
        for (_, _, got), want in zip(_top5(record), values, strict=True):
            assert got == pytest.approx(want, abs=1e-5)
    # And torch's own network (fp32): the same top-5, probabilities within 1e-4.
    code, reference, err, _ = _run(
        warm, "classify", *photos, "--checkpoint", checkpoint, "--runtime", "torch",
        "--precision", "fp32",
    )  # fmt: skip
    assert code == 0, err
    for a, b in zip(light, reference, strict=True):
        assert [p[:2] for p in _top5(a)] == [p[:2] for p in _top5(b)]
        for pa, pb in zip(_top5(a), _top5(b), strict=True):
            assert pa[2] == pytest.approx(pb[2], abs=1e-4)
    # The photos disagree, so agreeing means something.
    assert len({r["predictions"][0]["index"] for r in reference}) >= 2


@needs_openvino
def test_a_learned_checkpoints_names_come_from_the_cache_entry(
    checkpoint10, photos, tmp_path
) -> None:
    names = [f"kind {i}" for i in range(10)]
    learned = tmp_path / "learned.pth"
    torch.save({"state_dict": torch.load(checkpoint10)["model"], "resnext_classes": names}, learned)
    code, cold, err, imported = _run(
        tmp_path, "classify", *photos, "--checkpoint", learned, "--runtime", "openvino"
    )
    assert code == 0 and "torch" in imported, err
    code, light, err, imported = _run(
        tmp_path, "classify", *photos, "--checkpoint", learned, "--runtime", "openvino"
    )
    assert code == 0, err
    assert imported == []
    assert light == cold
    for record in light:
        labels = [p["label"] for p in record["predictions"]]
        assert labels == [names[p["index"]] for p in record["predictions"]]
        assert len(labels) == 5
    # The checkpoint changed since: its entry no longer answers, torch reads the new names.
    renamed = [f"sort {i}" for i in range(10)]
    torch.save(
        {"state_dict": torch.load(checkpoint10)["model"], "resnext_classes": renamed}, learned
    )
    code, records, err, imported = _run(
        tmp_path, "classify", photos[0], "--checkpoint", learned, "--runtime", "openvino"
    )
    assert code == 0, err
    assert {p["label"] for p in records[0]["predictions"]} <= set(renamed)


@needs_openvino
def test_a_damaged_cache_entry_is_said_once_and_converted_again(
    warm, checkpoint, photos, tmp_path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(warm, home)
    (entry,) = ovr.cache_dir(home / "hub" / "checkpoints").glob("*.zip")
    entry.write_bytes(b"PK\x03\x04 not a bundle any more")
    code, records, err, imported = _run(
        home, "classify", photos[0], "--checkpoint", checkpoint, "--runtime", "openvino",
        quiet=False,
    )  # fmt: skip
    assert code == 0 and len(records) == 1
    said = f"the converted model '{entry}' was damaged or stale: converting it again"
    assert [line.strip() for line in err.splitlines()].count(said) == 1, err
    assert "torch" in imported
    code, again, err, imported = _run(
        home, "classify", photos[0], "--checkpoint", checkpoint, "--runtime", "openvino"
    )
    assert (code, err, imported) == (0, "", [])
    assert _top5(again[0]) == _top5(records[0])


def test_an_openvino_int8_file_is_planned_without_torch(tmp_path) -> None:
    """Its names are the bundled ones (it keeps none): nothing asks torch.load to read it."""
    import zipfile

    bundle = tmp_path / "my50.ov"
    with zipfile.ZipFile(bundle, "w") as zf:
        zf.writestr(ovr.MANIFEST, "{}")
    code = (
        "import sys\n"
        "from resnext_cli.run.config import Config\n"
        "from resnext_cli.run.plan import MachineFacts, resolve\n"
        f"config = Config(checkpoint={str(bundle)!r}, quantized=True)\n"
        "plan = resolve(config, MachineFacts(cpu_count=2, openvino=True))\n"
        "print(plan.runtime, plan.precision, len(plan.labels), 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env(tmp_path)
    ).stdout.split()
    assert out == ["openvino", "int8", "1000", "False"]


@needs_openvino
def test_an_entry_converted_before_the_names_were_kept_gets_them(
    warm, checkpoint, photos, tmp_path
) -> None:
    """An older entry's manifest has no names: that run reads them with torch and keeps
    them in the entry, and the next run is light."""
    home = tmp_path / "home"
    shutil.copytree(warm, home)
    (entry,) = ovr.cache_dir(home / "hub" / "checkpoints").glob("*.zip")
    old = ovr.read_bundle(entry, name=str(entry))
    manifest = {k: v for k, v in old.manifest.items() if k != ovr.CLASSES_KEY}
    ovr.write_bundle(entry, ovr.Bundle(old.model, old.weight, old.bias, manifest))
    args = ("classify", photos[0], "--checkpoint", checkpoint, "--runtime", "openvino")
    code, first, err, imported = _run(home, *args)
    assert code == 0 and "torch" in imported, err
    assert ovr.CLASSES_KEY in ovr.read_bundle(entry, name=str(entry)).manifest
    code, again, err, imported = _run(home, *args)
    assert (code, imported) == (0, []), err
    assert again == first


# -- resnext learn without torch (issue 26: a re-learn in a fraction of the first) ------------


@needs_openvino
def test_learning_through_openvino_imports_no_torch_and_keeps_the_base_weights(
    warm, checkpoint, tmp_path
) -> None:
    """With the converted model cached, learn computes features through OpenVINO, fits in
    numpy and copies the base weights into the new checkpoint: no torch, first or again."""
    home = tmp_path / "home"
    shutil.copytree(warm, home)
    folder = tmp_path / "photos"
    for k, kind in enumerate(("red", "blue")):
        (folder / kind).mkdir(parents=True)
        for i in range(3):
            natural_image(100 * k + i, (120, 90)).save(folder / kind / f"{i}.jpg", quality=90)
    first = tmp_path / "first.pth"
    args = ("--checkpoint", checkpoint, "--precision", "fp32", "-b", "4")
    code, _, err, imported = _fresh(home, "learn", folder, "-o", first, *args)
    assert (code, imported) == (0, []), err
    assert "features: 6 computed, 0 from the cache" in err
    os.rename(folder / "red" / "0.jpg", folder / "blue" / "moved.jpg")
    again = tmp_path / "again.pth"
    code, _, err, imported = _fresh(home, "learn", folder, "-o", again, *args)
    assert (code, imported) == (0, []), err
    assert "features: 1 computed, 5 from the cache" in err
    # What torch reads back: the base tensors unchanged, the new fc, the names.
    base = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for path, counts in ((first, [3, 3]), (again, [4, 2])):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        assert saved["resnext_classes"] == ["blue", "red"]
        assert saved["resnext_learn"]["images"] == sum(counts)
        state = saved["state_dict"]
        assert list(state) == [k for k in base if not k.startswith("fc.")] + [
            "fc.weight",
            "fc.bias",
        ]
        for key, tensor in base.items():
            if not key.startswith("fc."):
                assert torch.equal(state[key], tensor) and state[key].dtype == tensor.dtype, key
        assert state["fc.weight"].shape == (2, 2048) and state["fc.weight"].dtype == torch.float32
        assert state["fc.bias"].shape == (2,)
        # A plain torchvision model takes it, and mmap reads it (storages aligned).
        net = torchvision.models.resnext50_32x4d(num_classes=2)
        net.load_state_dict(state)
        mapped = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        assert torch.equal(mapped["state_dict"]["fc.weight"], state["fc.weight"])
