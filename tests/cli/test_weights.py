"""cli/weights.py: `resnext models` lists torchvision's tags with their metadata."""

from __future__ import annotations

import json

# torchvision's tags, float then INT8 (torchvision.models.quantization), per model.
TAGS = [
    ("resnext50_32x4d", "IMAGENET1K_V1"),
    ("resnext50_32x4d", "IMAGENET1K_V2"),
    ("resnext101_32x8d", "IMAGENET1K_V1"),
    ("resnext101_32x8d", "IMAGENET1K_V2"),
    ("resnext101_32x8d", "IMAGENET1K_FBGEMM_V1"),
    ("resnext101_32x8d", "IMAGENET1K_FBGEMM_V2"),
    ("resnext101_64x4d", "IMAGENET1K_V1"),
    ("resnext101_64x4d", "IMAGENET1K_FBGEMM_V1"),
]


def test_models_lists_torchvision_metadata(resnext) -> None:
    run = resnext("models", "-f", "json")
    rows = json.loads(run.stdout)
    assert [(r["model"], r["weights"]) for r in rows] == TAGS
    v2 = rows[1]
    assert (v2["acc@1"], v2["default"], v2["cached"]) == (81.198, True, False)
    int8 = rows[5]  # torchvision: ResNeXt101_32X8D_QuantizedWeights.IMAGENET1K_FBGEMM_V2
    assert (int8["acc@1"], int8["quantized"], int8["default"]) == (82.574, True, True)


def test_models_table_shows_every_tag_whole(resnext) -> None:
    run = resnext("models")
    assert run.code == 0
    rows = [line.split() for line in run.stdout.splitlines() if line.startswith("resnext")]
    assert [(r[0], r[1]) for r in rows] == TAGS
    assert [r[2] == "*" for r in rows] == [False, True, False, True, False, True, True, True]
    assert rows[1][3:5] == ["81.20", "95.34"]
