"""INT8 on CPU: the eager quantized engines against PT2E + inductor, beside bf16, models alone.

    python benchmarks/int8_paths.py            # about 5 minutes on 2 cores
    python benchmarks/int8_paths.py --quick    # one short round

`resnext --quantized` runs torchvision's eager quantized ResNeXt on the x86 engine. This
measures whether another INT8 path would be faster on this CPU: the same eager model on
the other engines torch offers (fbgemm, onednn), and PT2E quantization (X86InductorQuantizer)
compiled by inductor with freezing, which fuses conv + add + relu into oneDNN kernels. PT2E
needs torchao (pip install torchao; it is not a dependency of resnext) and a C++ compiler.
The bf16 row is resnext50 as `--precision bf16` runs it (channels_last, autocast).

Models alone on random input, batch 8, all threads; weights are random (speed does not
depend on them), calibrated on a few random batches. Each path is timed in rounds
alternated with the others, and the median round is reported. It writes the table into
BENCHMARKS.md between the bench:int8-paths markers.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torchvision
from common import cpu_model, write_section

BATCH = 8
# (blocks per stage, groups, width per group), as torchvision's builders set them.
ARCH = {"resnext50_32x4d": ([3, 4, 6, 3], 32, 4), "resnext101_64x4d": ([3, 4, 23, 3], 64, 4)}
Runner = Callable[[torch.Tensor], object]


def float_model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model: torch.nn.Module = getattr(torchvision.models, arch)().eval()
    return model


def calibration() -> list[torch.Tensor]:
    return [torch.randn(BATCH, 3, 224, 224) for _ in range(2)]


def bf16(arch: str) -> Runner:
    model = float_model(arch).to(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> object:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x.contiguous(memory_format=torch.channels_last))

    return run


def eager(arch: str, engine: str) -> Runner:
    import torch.ao.quantization as tq
    from torchvision.models.quantization import resnet as qresnet

    torch.backends.quantized.engine = engine
    layers, groups, width = ARCH[arch]
    model = qresnet.QuantizableResNet(
        qresnet.QuantizableBottleneck, layers, groups=groups, width_per_group=width
    ).eval()
    model.load_state_dict(float_model(arch).state_dict())
    model.fuse_model()
    model.qconfig = tq.get_default_qconfig(engine)
    tq.prepare(model, inplace=True)
    for batch in calibration():
        model(batch)
    tq.convert(model, inplace=True)

    def run(x: torch.Tensor) -> object:
        torch.backends.quantized.engine = engine
        return model(x)

    return run


def pt2e(arch: str) -> Runner:
    import torch._inductor.config as inductor
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    inductor.freezing = True
    model = float_model(arch)
    for module in model.modules():  # one graph node per ReLU call, as export wants
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    example = (torch.randn(BATCH, 3, 224, 224),)
    graph = torch.export.export(model, example, strict=True).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)  # type: ignore[arg-type]
    for batch in calibration():
        prepared(batch)
    compiled = torch.compile(convert_pt2e(prepared))
    compiled(*example)  # compile now, not in the first timed round
    return compiled  # type: ignore[no-any-return]


def paths(arch: str) -> dict[str, Callable[[], Runner]]:
    found: dict[str, Callable[[], Runner]] = {}
    if arch == "resnext50_32x4d":
        found["bf16 (channels_last, autocast)"] = lambda: bf16(arch)
    for engine in ("x86", "fbgemm", "onednn"):
        if engine in torch.backends.quantized.supported_engines:
            label = "INT8 eager, x86 engine (resnext --quantized)" if engine == "x86" else ""
            found[label or f"INT8 eager, {engine} engine"] = lambda e=engine: eager(arch, e)
    try:
        import torchao  # noqa: F401
    except ImportError:
        print("torchao is not installed: no PT2E row (pip install torchao)")
    else:
        found["INT8 PT2E + inductor (freezing)"] = lambda: pt2e(arch)
    return found


def measure(runners: dict[str, Runner], rounds: int, seconds: float) -> dict[str, float]:
    x = torch.randn(BATCH, 3, 224, 224)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for run in runners.values():
            run(x)
        for _ in range(rounds):
            for name, run in runners.items():
                done, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    run(x)
                    done += BATCH
                rates[name].append(done / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    rounds, seconds = (1, 3.0) if args.quick else (3, 10.0)
    warnings.filterwarnings("ignore")
    rows = []
    for arch in ("resnext50_32x4d", "resnext101_64x4d"):
        runners = {}
        for name, build in paths(arch).items():
            start = time.perf_counter()
            runners[name] = build()
            print(f"{arch}: {name}: ready in {time.perf_counter() - start:.0f}s", flush=True)
        for name, rate in measure(runners, rounds, seconds).items():
            rows.append((arch, name, rate))
            print(f"{arch}: {name}: {rate:.1f} img/s", flush=True)
    text = "\n".join(
        [
            "## INT8 paths, models alone",
            "",
            f"{cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
            f"batch {BATCH}, random weights and input, median of {rounds} alternated rounds.",
            "",
            "| model | path | img/s |",
            "| --- | --- | ---: |",
            *[f"| {arch} | {name} | {rate:.1f} |" for arch, name, rate in rows],
            "",
            "Command: `python benchmarks/int8_paths.py`",
        ]
    )
    print(text)
    if not args.no_write:
        write_section("int8-paths", text)


if __name__ == "__main__":
    main()
