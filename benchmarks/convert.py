"""The first OpenVINO run's conversion: torch's checked trace against the one trace resnext makes.

    python benchmarks/convert.py             # about 2 minutes on 2 cores
    python benchmarks/convert.py --rounds 1  # one round

A cold `resnext classify` through OpenVINO converts the network once per weights file
(model/openvino_runtime.py, `convert`). `openvino.convert_model(module, example_input=...)`
traces with torch.jit.trace's default `check_trace=True`, which runs the network three more
times to compare; resnext traces once (a ResNeXt has no branch on its input). This times
both on the same resnext50 (seeded random weights in torchvision's layout: speed does not
depend on them), in alternated rounds, and checks the two converted models give the same
features. Needs the openvino extra. It prints the table; nothing is written.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

import numpy as np
import torch
import torchvision

from resnext_cli.model import openvino_runtime as ovr


def _default(net: torch.nn.Module, crop: int) -> Any:
    """What `convert` did before: OpenVINO's own trace of the module, checked."""
    import openvino as ov

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        model = ov.convert_model(
            ovr._features_module(net), example_input=torch.zeros(1, 3, crop, crop)
        )
    model.reshape(ov.PartialShape([ov.Dimension(), 3, crop, crop]))
    return model


def _features(model: Any, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(x)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = torchvision.models.resnext50_32x4d(weights=None).eval()
    times: dict[str, list[float]] = {"checked trace": [], "one trace": []}
    models: dict[str, Any] = {}
    for _ in range(args.rounds):
        for name in times:
            started = time.perf_counter()
            if name == "checked trace":
                models[name] = _default(net, 224)
            else:
                models[name] = ovr.convert(net, crop=224, manifest={}).model
            times[name].append(time.perf_counter() - started)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    diff = float(
        np.abs(_features(models["checked trace"], x) - _features(models["one trace"], x)).max()
    )
    checked, once = (statistics.median(times[k]) for k in times)
    print("| conversion of resnext50 | median of", args.rounds, "rounds |")
    print("| --- | --- |")
    print(f"| checked trace (openvino's default) | {checked:.1f} s |")
    print(f"| one trace (resnext) | {once:.1f} s |")
    print(f"| ratio | {checked / once:.2f}x |")
    print(f"features differ by at most {diff:.3g}")


if __name__ == "__main__":
    main()
