"""The bundled metadata and labels equal torchvision's, and ship inside the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from torchvision.models import ResNeXt50_32X4D_Weights

from resnext_cli.errors import ConfigError
from resnext_cli.model import registry
from resnext_cli.model.labels import imagenet_labels, load_labels

ROOT = Path(__file__).resolve().parents[2]


def test_snapshot_equals_torchvision_metadata() -> None:
    assert registry._snapshot() == registry.live_metadata()


def test_snapshot_holds_every_quantized_resnext_torchvision_has() -> None:
    """The INT8 entries are there, and no quantized ResNeXt builder is left out."""
    import torchvision.models.quantization as tvq
    from torchvision.models import list_models

    quantized = {m for m in list_models(module=tvq) if "resnext" in m}
    snapshot = registry._snapshot()
    assert {registry.QUANTIZED_PREFIX + m for m in snapshot if "quantized" in snapshot[m]} == (
        quantized
    )
    assert quantized == {"quantized_resnext101_32x8d", "quantized_resnext101_64x4d"}


def test_bundled_labels_equal_torchvision_categories() -> None:
    assert list(imagenet_labels()) == ResNeXt50_32X4D_Weights.DEFAULT.meta["categories"]
    assert (ROOT / "data" / "imagenet_classes.txt").read_text().splitlines() == list(
        imagenet_labels()
    )


@pytest.mark.parametrize(
    ("name", "model"),
    [("50", "resnext50_32x4d"), ("R101", "resnext101_32x8d"), ("101-64", "resnext101_64x4d")],
)
def test_aliases(name: str, model: str) -> None:
    assert registry.resolve_model(name) == model


def test_default_tags_follow_torchvision() -> None:
    assert registry.resolve_weights("resnext50_32x4d").tag == "IMAGENET1K_V2"
    assert registry.resolve_weights("resnext101_64x4d", "default").tag == "IMAGENET1K_V1"
    v1 = registry.resolve_weights("resnext50_32x4d", "IMAGENET1K_V1")
    assert (v1.resize_size, v1.crop_size) == (256, 224)
    assert registry.resolve_weights("resnext50_32x4d", "IMAGENET1K_V2").resize_size == 232


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        registry.resolve_model("resnext51")
    assert str(info.value) == (
        "unknown model 'resnext51' (choose from: resnext50_32x4d, resnext101_32x8d, "
        "resnext101_64x4d)"
    )
    with pytest.raises(ConfigError) as info:
        registry.resolve_weights("resnext101_64x4d", "IMAGENET1K_V2")
    assert str(info.value) == (
        "unknown weights 'IMAGENET1K_V2' for resnext101_64x4d (choose from: DEFAULT, IMAGENET1K_V1)"
    )


def test_quantized_weights_follow_torchvision() -> None:
    from torchvision.models.quantization import ResNeXt101_32X8D_QuantizedWeights as Q32

    info = registry.resolve_weights("101", quantized=True)
    assert (info.model, info.tag, info.is_default) == (
        "resnext101_32x8d",
        "IMAGENET1K_FBGEMM_V2",
        True,
    )
    assert (info.quantized, info.backend, info.unquantized) == (True, "fbgemm", "IMAGENET1K_V2")
    assert (info.acc1, info.acc5) == (82.574, 96.132)
    assert info.url == Q32.DEFAULT.url
    assert info.filename == "resnext101_32x8_fbgemm-ee16d00c.pth"
    assert registry.torchvision_weights(info) is Q32.IMAGENET1K_FBGEMM_V2
    v1 = registry.resolve_weights("resnext101_32x8d", "imagenet1k_fbgemm_v1", quantized=True)
    assert (v1.resize_size, v1.is_default, v1.unquantized) == (256, False, "IMAGENET1K_V1")
    r64 = registry.resolve_weights("101-64", quantized=True)
    assert (r64.tag, r64.acc1, r64.file_size_mb) == ("IMAGENET1K_FBGEMM_V1", 82.898, 81.556)
    # The float entries say they are float.
    assert registry.resolve_weights("101").quantized is False


def test_all_weights_lists_int8_after_each_models_float_tags() -> None:
    assert [(w.model, w.tag, w.quantized) for w in registry.all_weights()] == [
        ("resnext50_32x4d", "IMAGENET1K_V1", False),
        ("resnext50_32x4d", "IMAGENET1K_V2", False),
        ("resnext101_32x8d", "IMAGENET1K_V1", False),
        ("resnext101_32x8d", "IMAGENET1K_V2", False),
        ("resnext101_64x4d", "IMAGENET1K_V1", False),
    ]
    rows = registry.all_weights(include_quantized=True)
    assert [(w.model, w.tag, w.quantized, w.is_default) for w in rows] == [
        ("resnext50_32x4d", "IMAGENET1K_V1", False, False),
        ("resnext50_32x4d", "IMAGENET1K_V2", False, True),
        ("resnext101_32x8d", "IMAGENET1K_V1", False, False),
        ("resnext101_32x8d", "IMAGENET1K_V2", False, True),
        ("resnext101_32x8d", "IMAGENET1K_FBGEMM_V1", True, False),
        ("resnext101_32x8d", "IMAGENET1K_FBGEMM_V2", True, True),
        ("resnext101_64x4d", "IMAGENET1K_V1", False, True),
        ("resnext101_64x4d", "IMAGENET1K_FBGEMM_V1", True, True),
    ]


def test_resnext50_int8_names_the_quantize_command() -> None:
    assert not registry.has_quantized_weights("50")
    assert registry.has_quantized_weights("101-64")
    with pytest.raises(ConfigError) as info:
        registry.resolve_weights("50", quantized=True)
    assert str(info.value) == (
        "resnext50_32x4d has no published INT8 weights (make them from your own photos with "
        "'resnext quantize -m resnext50_32x4d --calibrate PHOTOS -o my50-int8.pth', then use "
        "--checkpoint my50-int8.pth --quantized)"
    )
    with pytest.raises(ConfigError) as info:
        registry.resolve_weights("resnext101_64x4d", "IMAGENET1K_V1", quantized=True)
    assert str(info.value) == (
        "unknown quantized weights 'IMAGENET1K_V1' for resnext101_64x4d "
        "(choose from: DEFAULT, IMAGENET1K_FBGEMM_V1)"
    )


def test_registry_lists_int8_without_torch() -> None:
    code = (
        "import sys\n"
        "for m in ('torch', 'torchvision', 'PIL', 'numpy'): sys.modules[m] = None\n"
        "from resnext_cli.model import registry\n"
        "rows = registry.all_weights(include_quantized=True)\n"
        "print(sum(w.quantized for w in rows), registry.resolve_weights('101', quantized=True).url)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    assert out == [
        "3",
        "https://download.pytorch.org/models/quantized/resnext101_32x8_fbgemm-ee16d00c.pth",
    ]


def test_user_labels_file(tmp_path) -> None:
    path = tmp_path / "l.txt"
    path.write_text("cat\r\n\r\ndog\n  bird  \n")
    assert load_labels(path) == ("cat", "dog", "bird")
    path.write_text("\n\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_labels(path)


@pytest.mark.slow
def test_wheel_ships_labels_and_metadata(tmp_path) -> None:
    """A non-editable install finds its data files through importlib.resources."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    [wheel] = tmp_path.glob("resnext_cli-*.whl")
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(target)
    assert "resnext_cli/data/imagenet_classes.txt" in names
    assert "resnext_cli/model/weights_meta.json" in names
    assert "resnext_cli/data/imagenet_categories.tsv" in names
    assert "resnext_cli/outputs/report.js" in names
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import resnext_cli.model.labels as l, "
        "resnext_cli.model.registry as r, resnext_cli.model.categories as c; print(l.__file__); "
        "print(len(l.imagenet_labels())); print(len(r.all_weights())); print(len(c.DEFAULT_NAMES))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.split()
    assert out[0].startswith(str(target))
    assert out[1:] == ["1000", "5", "48"]  # 48 categories, as the README lists them


def test_int8_weights_are_preprocessed_as_the_float_weights_they_came_from() -> None:
    v1 = registry.resolve_weights("resnext101_32x8d", "IMAGENET1K_FBGEMM_V1", quantized=True)
    assert registry.preprocessing_weights(v1) == registry.resolve_weights("101", "IMAGENET1K_V1")
    v2 = registry.resolve_weights("101")
    assert registry.preprocessing_weights(v2) is v2


def test_a_run_looks_its_weights_up_once(checkpoint, make_image, monkeypatch) -> None:
    """The checks, the loading line and the plan all ask; the metadata is read once."""
    from tests.conftest import run_resnext

    looked_up: list[tuple[str, str]] = []
    lookup = registry._lookup

    def counted(model: str, tag: str, *, quantized: bool) -> registry.WeightsInfo:
        looked_up.append((model, tag))
        return lookup(model, tag, quantized=quantized)

    monkeypatch.setattr(registry, "_lookup", counted)
    monkeypatch.setattr(registry, "_looked_up", {})
    photo = make_image("a.png")
    run = run_resnext(
        "classify", photo, "--checkpoint", checkpoint, "-w", "imagenet1k_v1", "-f", "jsonl"
    )
    assert run.code == 0, run
    assert looked_up == [("resnext50_32x4d", "imagenet1k_v1")]
    (record,) = run.records()
    assert record["weights"] == "IMAGENET1K_V1"


def test_float_weights_are_torchvisions_float_members() -> None:
    from torchvision.models import ResNeXt101_64X4D_Weights

    info = registry.resolve_weights("resnext101_64x4d")
    assert registry.torchvision_weights(info) is ResNeXt101_64X4D_Weights.IMAGENET1K_V1
    v1 = registry.resolve_weights("50", "imagenet1k_v1")
    assert registry.torchvision_weights(v1) is ResNeXt50_32X4D_Weights.IMAGENET1K_V1


def test_each_weights_preprocessing_is_torchvisions() -> None:
    """The snapshot's transforms, field by field, against torchvision's own for every
    float weight: the tensor decoder resizes with these (antialias included)."""
    for row in registry.all_weights():
        if row.quantized:
            continue
        ref = registry.torchvision_weights(row).transforms()
        got = (row.resize_size, row.crop_size, row.interpolation, row.antialias)
        want = (ref.resize_size[0], ref.crop_size[0], ref.interpolation.value, ref.antialias)
        assert got == want, row.tag
        assert (list(row.mean), list(row.std)) == (list(ref.mean), list(ref.std))
