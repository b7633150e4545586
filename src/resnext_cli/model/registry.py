"""The ResNeXt variants and their weights tags, as torchvision describes them.

Listing, validation and preprocessing read a snapshot of torchvision's metadata
(weights_meta.json, written by tools/snapshot_weights.py and checked against torchvision
by the tests), so that `resnext --help`, `resnext models` and a run through OpenVINO need
not import torch. Building a model uses torchvision's own Weights enum. A model's INT8
weights (those in torchvision.models.quantization) sit in the snapshot under its
"quantized" key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from resnext_cli.errors import ConfigError

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
# torchvision registers the INT8 builders under this prefix (quantized_resnext101_32x8d).
QUANTIZED_PREFIX = "quantized_"


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
    quantized: bool = False
    # The rest of the weights' transforms(): Resize's interpolation ('bilinear') and
    # antialias, Normalize's mean and std.
    interpolation: str = "bilinear"
    antialias: bool | None = True
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    backend: str | None = None  # the quantized engine the INT8 weights were made for
    unquantized: str | None = None  # the float tag the INT8 weights were made from

    @property
    def filename(self) -> str:
        """The file name the weights are cached under."""
        return self.url.rsplit("/", 1)[-1]


@cache
def _snapshot() -> dict[str, Any]:
    text = resources.files("resnext_cli.model").joinpath("weights_meta.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _section(model: str, *, quantized: bool) -> dict[str, Any]:
    """Return the snapshot's {"default", "weights"} of *model*, float or INT8."""
    entry: dict[str, Any] = _snapshot()[model]
    if not quantized:
        return entry
    if "quantized" not in entry:
        raise ConfigError(
            f"{model} has no published INT8 weights (make them from your own photos with "
            f"'resnext quantize -m {model} --calibrate PHOTOS -o my50-int8.pth', then use "
            "--checkpoint my50-int8.pth --quantized)"
        )
    section: dict[str, Any] = entry["quantized"]
    return section


def _info(model: str, tag: str, entry: dict[str, Any], *, quantized: bool = False) -> WeightsInfo:
    return WeightsInfo(
        model=model,
        tag=tag,
        url=entry["url"],
        is_default=tag == _section(model, quantized=quantized)["default"],
        acc1=entry["acc@1"],
        acc5=entry["acc@5"],
        params=entry["num_params"],
        gflops=entry["gflops"],
        file_size_mb=entry["file_size_mb"],
        resize_size=entry["resize_size"],
        crop_size=entry["crop_size"],
        num_classes=entry["num_classes"],
        quantized=quantized,
        backend=entry.get("backend"),
        unquantized=entry.get("unquantized"),
        interpolation=entry["interpolation"],
        antialias=entry["antialias"],
        mean=tuple(entry["mean"]),
        std=tuple(entry["std"]),
    )


def resolve_model(name: str) -> str:
    """Return the canonical model name for *name* or an alias of it."""
    key = name.strip().lower()
    if key in MODELS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    raise ConfigError(f"unknown model '{name}' (choose from: {', '.join(MODELS)})")


# Weights looked up, by the snapshot they came from: a run looks its weights up once,
# however many steps ask, and a snapshot put in place later (tests) is not answered from
# the old one.
_looked_up: dict[tuple[int, str, str, bool], tuple[dict[str, Any], WeightsInfo]] = {}


def resolve_weights(model: str, tag: str = "DEFAULT", *, quantized: bool = False) -> WeightsInfo:
    """Return the weights *tag* of *model*; 'DEFAULT' means torchvision's default.

    With *quantized*, the tag is one of the model's published INT8 weights.
    """
    snapshot = _snapshot()
    key = (id(snapshot), model, tag, quantized)
    known = _looked_up.get(key)
    if known is not None and known[0] is snapshot:
        return known[1]
    info = _lookup(model, tag, quantized=quantized)
    _looked_up[key] = (snapshot, info)
    return info


def _lookup(model: str, tag: str, *, quantized: bool) -> WeightsInfo:
    model = resolve_model(model)
    section = _section(model, quantized=quantized)
    wanted = tag.strip().upper()
    if wanted == "DEFAULT":
        wanted = section["default"]
    if wanted not in section["weights"]:
        valid = ", ".join(["DEFAULT", *section["weights"]])
        kind = "quantized weights" if quantized else "weights"
        raise ConfigError(f"unknown {kind} '{tag}' for {model} (choose from: {valid})")
    return _info(model, wanted, section["weights"][wanted], quantized=quantized)


def preprocessing_weights(info: WeightsInfo) -> WeightsInfo:
    """The float weights whose transforms *info*'s inputs get: for torchvision's INT8
    weights, the float weights they were made from; else *info* itself."""
    if not (info.quantized and info.unquantized):
        return info
    section = _section(info.model, quantized=False)
    return _info(info.model, info.unquantized, section["weights"][info.unquantized])


def has_quantized_weights(model: str) -> bool:
    """Whether torchvision publishes INT8 weights for *model*."""
    return "quantized" in _snapshot()[resolve_model(model)]


def all_weights(*, include_quantized: bool = False) -> list[WeightsInfo]:
    """Return every weights tag of every model in a stable order, INT8 after float."""
    rows: list[WeightsInfo] = []
    for model in MODELS:
        kinds = [False, True] if include_quantized and has_quantized_weights(model) else [False]
        for quantized in kinds:
            section = _section(model, quantized=quantized)
            rows.extend(
                _info(model, tag, entry, quantized=quantized)
                for tag, entry in section["weights"].items()
            )
    return rows


def torchvision_weights(info: WeightsInfo) -> Any:
    """Return torchvision's Weights enum member for *info* (imports torchvision)."""
    from torchvision.models import get_model_weights

    name = QUANTIZED_PREFIX + info.model if info.quantized else info.model
    return get_model_weights(name)[info.tag]


def _live_entry(member: Any) -> dict[str, Any]:
    meta = member.meta
    transform = member.transforms()
    entry = {
        "url": member.url,
        "acc@1": meta["_metrics"]["ImageNet-1K"]["acc@1"],
        "acc@5": meta["_metrics"]["ImageNet-1K"]["acc@5"],
        "num_params": meta["num_params"],
        "gflops": meta["_ops"],
        "file_size_mb": meta["_file_size"],
        "resize_size": transform.resize_size[0],
        "crop_size": transform.crop_size[0],
        "interpolation": transform.interpolation.value,
        "antialias": transform.antialias,
        "mean": list(transform.mean),
        "std": list(transform.std),
        "num_classes": len(meta["categories"]),
    }
    if "backend" in meta:
        entry["backend"] = meta["backend"]
        entry["unquantized"] = meta["unquantized"].name
    return entry


def _live_section(enum: Any) -> dict[str, Any]:
    weights = {member.name: _live_entry(member) for member in enum}
    return {"default": enum.DEFAULT.name, "weights": weights}


def live_metadata() -> dict[str, Any]:
    """Read the snapshot's content afresh from torchvision (imports torchvision)."""
    import torchvision.models.quantization
    from torchvision.models import get_model_weights, list_models

    quantizable = set(list_models(module=torchvision.models.quantization))
    out: dict[str, Any] = {}
    for model in MODELS:
        out[model] = _live_section(get_model_weights(model))
        if QUANTIZED_PREFIX + model in quantizable:
            out[model]["quantized"] = _live_section(get_model_weights(QUANTIZED_PREFIX + model))
    return out
