"""Regenerate src/resnext_cli/model/weights_meta.json and data/imagenet_classes.txt
from torchvision.

The CLI lists models without importing torch, so it reads this snapshot (float weights,
and the INT8 weights of torchvision.models.quantization); a test checks that the snapshot
still equals torchvision's own metadata.

    python tools/snapshot_weights.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from resnext_cli.model.registry import live_metadata

    meta = live_metadata()
    out = ROOT / "src" / "resnext_cli" / "model" / "weights_meta.json"
    out.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    from torchvision.models import ResNeXt50_32X4D_Weights

    categories = ResNeXt50_32X4D_Weights.DEFAULT.meta["categories"]
    (ROOT / "data" / "imagenet_classes.txt").write_text("\n".join(categories) + "\n", "utf-8")
    print(f"wrote {out} and data/imagenet_classes.txt ({len(categories)} classes)")


if __name__ == "__main__":
    main()
