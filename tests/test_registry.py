"""The bundled metadata and labels equal torchvision's, and ship inside the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from torchvision.models import ResNeXt50_32X4D_Weights

from resnext_cli import registry
from resnext_cli.errors import ConfigError
from resnext_cli.labels import imagenet_labels, load_labels

ROOT = Path(__file__).resolve().parents[1]


def test_snapshot_equals_torchvision_metadata() -> None:
    assert registry._snapshot() == registry.live_metadata()


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
    assert "resnext_cli/weights_meta.json" in names
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import resnext_cli.labels as l, "
        "resnext_cli.registry as r; print(l.__file__); print(len(l.imagenet_labels())); "
        "print(len(r.all_weights()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.split()
    assert out[0].startswith(str(target))
    assert out[1:] == ["1000", "5"]
