"""The ResNeXt variants and their weights tags, as torchvision describes them.

Listing and validation read a snapshot of torchvision's metadata (weights_meta.json,
written by tools/snapshot_weights.py and checked against torchvision by the tests), so
that `resnext --help` and `resnext models` need not import torch. Building a model and
its preprocessing use torchvision's own Weights enum.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from .errors import ConfigError

MODELS = ("resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d")
ALIASES = {
    "50": "resnext50_32x4d",
    "r50": "resnext50_32x4d",
    "resnext50": "resnext50_32x4d",
    "101": "resnext101_32x8d",
    "r101": "resnext101_32x8d",
    "resnext101": "resnext101_32x8d",
    "101-64": "resnext101_64x4d",
    "r101-64": "resnext101_64x4d",
    "resnext101_64": "resnext101_64x4d",
}


@dataclass(frozen=True)
class WeightsInfo:
    """One weights tag of one model, with what torchvision's metadata says of it."""

    model: str
    tag: str
    url: str
    is_default: bool
    acc1: float
    acc5: float
    params: int
    gflops: float
    file_size_mb: float
    resize_size: int
    crop_size: int
    num_classes: int

    @property
    def filename(self) -> str:
        """The file name the weights are cached under."""
        return self.url.rsplit("/", 1)[-1]


@cache
def _snapshot() -> dict[str, Any]:
    text = resources.files("resnext_cli").joinpath("weights_meta.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _info(model: str, tag: str, entry: dict[str, Any]) -> WeightsInfo:
    return WeightsInfo(
        model=model,
        tag=tag,
        url=entry["url"],
        is_default=tag == _snapshot()[model]["default"],
        acc1=entry["acc@1"],
        acc5=entry["acc@5"],
        params=entry["num_params"],
        gflops=entry["gflops"],
        file_size_mb=entry["file_size_mb"],
        resize_size=entry["resize_size"],
        crop_size=entry["crop_size"],
        num_classes=entry["num_classes"],
    )


def resolve_model(name: str) -> str:
    """Return the canonical model name for *name* or an alias of it."""
    key = name.strip().lower()
    if key in MODELS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    raise ConfigError(f"unknown model '{name}' (choose from: {', '.join(MODELS)})")


def resolve_weights(model: str, tag: str = "DEFAULT") -> WeightsInfo:
    """Return the weights *tag* of *model*; 'DEFAULT' means torchvision's default."""
    model = resolve_model(model)
    entry = _snapshot()[model]
    wanted = tag.strip().upper()
    if wanted == "DEFAULT":
        wanted = entry["default"]
    if wanted not in entry["weights"]:
        valid = ", ".join(["DEFAULT", *entry["weights"]])
        raise ConfigError(f"unknown weights '{tag}' for {model} (choose from: {valid})")
    return _info(model, wanted, entry["weights"][wanted])


def all_weights() -> list[WeightsInfo]:
    """Return every weights tag of every model, in a stable order."""
    return [
        _info(model, tag, entry)
        for model in MODELS
        for tag, entry in _snapshot()[model]["weights"].items()
    ]


def torchvision_weights(info: WeightsInfo) -> Any:
    """Return torchvision's Weights enum member for *info* (imports torchvision)."""
    from torchvision.models import get_model_weights

    return get_model_weights(info.model)[info.tag]


def live_metadata() -> dict[str, Any]:
    """Read the snapshot's content afresh from torchvision (imports torchvision)."""
    from torchvision.models import get_model_weights

    out: dict[str, Any] = {}
    for model in MODELS:
        enum = get_model_weights(model)
        weights: dict[str, Any] = {}
        for member in enum:
            meta = member.meta
            transform = member.transforms()
            weights[member.name] = {
                "url": member.url,
                "acc@1": meta["_metrics"]["ImageNet-1K"]["acc@1"],
                "acc@5": meta["_metrics"]["ImageNet-1K"]["acc@5"],
                "num_params": meta["num_params"],
                "gflops": meta["_ops"],
                "file_size_mb": meta["_file_size"],
                "resize_size": transform.resize_size[0],
                "crop_size": transform.crop_size[0],
                "num_classes": len(meta["categories"]),
            }
        out[model] = {"default": enum.DEFAULT.name, "weights": weights}
    return out
