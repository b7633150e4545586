"""Device, precision and batch choice: the plan, with the machine's facts faked."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Any

import pytest
import torch

from resnext_cli.errors import ConfigError
from resnext_cli.imaging.preprocess import DecodeOptions
from resnext_cli.model import checkpoint as checkpoint_module
from resnext_cli.model import openvino_runtime
from resnext_cli.model.checkpoint import CLASSES_KEY
from resnext_cli.run import plan
from resnext_cli.run.config import Config
from resnext_cli.run.plan import MachineFacts, cpu_flags, refuse_pairs, resolve, weights_for
from tests.helpers import AVX2, GPU, _FakeStream, _to_fake_cuda

BF16_CPU = MachineFacts(cpu_count=2, cpu_native_bf16=True)  # AVX512-BF16 or AMX
OLD_GPU = MachineFacts(cpu_count=16, cuda_count=2, cuda_bf16=False, cuda_free_bytes=8 << 30)


def test_auto_prefers_cuda_then_mps_then_cpu() -> None:
    assert resolve(Config(), GPU).device == "cuda"
    assert resolve(Config(), MachineFacts(mps=True)).device == "mps"
    assert resolve(Config(), AVX2).device == "cpu"


def test_missing_cuda_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as info:
        resolve(Config(device="cuda"), AVX2)
    assert str(info.value) == "device 'cuda' is not available: no CUDA GPU (use --device cpu)"
    assert resolve(Config(device="cuda:1"), OLD_GPU).device == "cuda:1"
    with pytest.raises(ConfigError) as info:
        resolve(Config(device="cuda:2"), OLD_GPU)
    assert str(info.value) == (
        "device 'cuda:2' is not available: this machine has 2 CUDA device(s) (use cuda:0 to cuda:1)"
    )


@pytest.mark.parametrize(
    ("facts", "device", "expected"),
    [
        (GPU, "auto", "bf16"),
        (OLD_GPU, "auto", "fp16"),
        (AVX2, "auto", "fp32"),
        (BF16_CPU, "auto", "bf16"),
        (BF16_CPU, "cpu", "bf16"),
        (GPU, "cpu", "fp32"),  # the GPU's bf16 says nothing of the CPU's
        (MachineFacts(mps=True), "auto", "fp32"),
    ],
)
def test_auto_precision_per_machine(facts, device, expected) -> None:
    assert resolve(Config(device=device), facts).precision == expected
    # --exact always means fp32, whatever the hardware offers.
    assert resolve(Config(device=device, exact=True), facts).precision == "fp32"


def test_explicit_precision_is_kept_where_it_runs() -> None:
    assert resolve(Config(precision="bf16"), AVX2).precision == "bf16"  # emulated, allowed
    assert resolve(Config(precision="fp16", device="cuda"), GPU).precision == "fp16"
    with pytest.raises(ConfigError) as info:
        resolve(Config(exact=True, precision="bf16"), BF16_CPU)
    assert str(info.value) == "--exact runs in fp32; drop --precision bf16 or --exact"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"exact": True, "quantized": True},
            "--exact is the fp32 reference and --quantized is INT8; give one",
        ),
        (
            {"exact": True, "precision": "fp16"},
            "--exact runs in fp32; drop --precision fp16 or --exact",
        ),
        (
            {"exact": True, "runtime": "openvino"},
            "--exact is the torch fp32 reference; drop --runtime openvino or --exact",
        ),
        (
            {"exact": True, "decode": "gpu"},
            "--exact decodes with Pillow, as the reference; drop --decode gpu",
        ),
        (
            {"model": "101", "quantized": True, "precision": "bf16"},
            "--quantized runs in int8; drop --precision bf16 or --quantized",
        ),
        (
            {"model": "101", "quantized": True, "embeddings": True},
            "--embeddings come from the float model; drop --quantized",
        ),
        (
            {"model": "101", "quantized": True, "compile": True},
            "--compile is for float models; drop --compile or --quantized",
        ),
    ],
)
def test_contradicting_options_are_refused_before_the_machine_is_probed(
    options, message, monkeypatch
) -> None:
    def no_probe(device: str = "auto") -> MachineFacts:
        raise AssertionError("probed the machine before refusing the options")

    monkeypatch.setattr(MachineFacts, "probe", no_probe)
    config = Config(**options)
    for check in (lambda: refuse_pairs(config), lambda: resolve(config)):
        with pytest.raises(ConfigError) as info:
            check()
        assert str(info.value) == message
    # quantize's calibration plan drops --quantized only after refusing what was given.
    with pytest.raises(ConfigError) as info:
        resolve(config, AVX2, purpose="calibrate")
    assert str(info.value) == message


@pytest.mark.parametrize("facts", [AVX2, BF16_CPU])
def test_fp16_on_a_cpu_without_native_fp16_is_refused(facts) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(Config(precision="fp16"), facts)
    assert str(info.value) == (
        "--precision fp16 needs a GPU or a CPU with native fp16 (AMX-FP16); this CPU has "
        "none (use --precision bf16 or fp32)"
    )
    native = MachineFacts(cpu_count=2, cpu_native_fp16=True)
    assert resolve(Config(precision="fp16"), native).precision == "fp16"


@pytest.mark.real_cpu  # the probe itself is under test: RESNEXT_TEST_CPU would replace it
def test_probe_reads_torchs_cpu_flags(monkeypatch) -> None:
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert MachineFacts.probe("auto").cpu_native_bf16 is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert MachineFacts.probe("auto").cpu_native_bf16 is True


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu", "CPU0"])
def test_unknown_device_names(spec) -> None:
    with pytest.raises(ConfigError) as info:
        Config(device=spec)
    assert str(info.value) == (
        f"unknown device '{spec}' (choose from: auto, cpu, cuda, cuda:N, mps)"
    )


def test_batch_size_comes_from_the_device_and_free_memory() -> None:
    assert resolve(Config(), AVX2).batch_size == 8
    assert resolve(Config(batch_size=3), GPU).batch_size == 3
    # 80 GiB free holds far more than the cap; half of 8 GiB holds less than 64 images of
    # ResNeXt-50 (4.27 GFLOPs, torchvision's metadata) at ~90 MB of activations each, so
    # the floor of 64 (all 8 GiB hold 64 even when each is also decoded on the GPU).
    assert resolve(Config(), GPU).batch_size == 256
    assert resolve(Config(), OLD_GPU).batch_size == 64
    # 3 GiB hold 35 images' activations (32), but only 25 once each is also decoded on
    # the GPU at full size (a 12 MP photo: 36 MB of RGB): 16.
    small = MachineFacts(cpu_count=4, cuda_count=1, cuda_free_bytes=3 << 30)
    assert resolve(Config(), small).decode_on == "gpu"
    assert resolve(Config(), small).batch_size == 16
    assert resolve(Config(decode="cpu"), small).batch_size == 32
    tiny = MachineFacts(cpu_count=4, cuda_count=1, cuda_free_bytes=1 << 30)
    assert resolve(Config(), tiny).batch_size == 8  # 1 GiB / 126 MB = 8: the least


def test_workers_default_to_the_cores_up_to_eight() -> None:
    assert resolve(Config(), AVX2).workers == 2
    assert resolve(Config(), GPU).workers == 8
    assert resolve(Config(workers=0), GPU).workers == 0


# -- the probe: the run's own device, and no CUDA context for a CPU run ---------------------


def test_probe_for_the_cpu_makes_no_cuda_call(monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("a CUDA call for --device cpu")

    for name in ("is_available", "device_count", "mem_get_info", "get_device_name"):
        monkeypatch.setattr(torch.cuda, name, forbidden)
    facts = MachineFacts.probe("cpu")
    assert facts.cuda_count == 0 and facts.cuda_free_bytes == 0


def test_probe_reads_the_named_devices_memory_and_decoder(monkeypatch) -> None:
    """Two fake GPUs: a T4-like cuda:0 (7.5) and an H100-like cuda:1 (9.0)."""
    free = {0: 3 << 30, 1: 70 << 30}
    names = {0: "Tesla T4", 1: "NVIDIA H100 80GB HBM3"}
    caps = {0: (7, 5), 1: (9, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=None: (free[i or 0], 80 << 30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: names[i or 0])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: caps[i or 0])
    second = MachineFacts.probe("cuda:1")
    assert (second.cuda_free_bytes, second.cuda_name) == (70 << 30, "NVIDIA H100 80GB HBM3")
    assert second.cuda_jpeg_hardware
    first = MachineFacts.probe("cuda")
    assert (first.cuda_free_bytes, first.cuda_jpeg_hardware) == (3 << 30, False)
    assert MachineFacts.probe("auto").cuda_name == "Tesla T4"


def test_decode_auto_keeps_the_cpu_without_a_hardware_jpeg_decoder() -> None:
    t4 = MachineFacts(
        cpu_count=8, cuda_count=1, cuda_free_bytes=14 << 30, cuda_jpeg_hardware=False,
        cuda_name="Tesla T4",
    )  # fmt: skip
    plan = resolve(Config(), t4)
    assert plan.decode_on == "cpu"
    assert plan.choices == (
        "decode: cpu (--decode auto: 'Tesla T4' has no hardware JPEG decoder, and nvJPEG's "
        "hybrid decoder is slower than Pillow threads; --decode gpu forces it)",
    )
    assert resolve(Config(decode="gpu"), t4).decode_on == "gpu"  # asked for: kept
    assert resolve(Config(decode="gpu"), t4).choices == ()
    h100 = dataclasses.replace(t4, cuda_jpeg_hardware=True, cuda_name="NVIDIA H100")
    assert resolve(Config(), h100).decode_on == "gpu"
    assert resolve(Config(), h100).choices == (
        "decode: gpu (--decode auto: 'NVIDIA H100' has a hardware JPEG decoder)",
    )


def test_the_decoder_choice_is_named_under_debug(checkpoint, tmp_path, monkeypatch, resnext):
    """A fake T4: the run plans CUDA without GPU decoding and says why under --debug."""
    t4 = MachineFacts(
        cpu_count=2, cuda_count=1, cuda_free_bytes=14 << 30, cuda_jpeg_hardware=False,
        cuda_name="Tesla T4",
    )  # fmt: skip
    monkeypatch.setattr(MachineFacts, "probe", classmethod(lambda cls, device="auto": t4))
    _to_fake_cuda(monkeypatch)
    log = []
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _FakeStream(log, "side"))
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _FakeStream(log, "d"))
    junk = tmp_path / "notes.jpg"  # fails in decoding: the run never needs the fake GPU
    junk.write_text("not a picture")
    run = resnext("classify", junk, "--checkpoint", checkpoint, "--debug", "-f", "json")
    assert run.code == 1, run
    assert [r["error"]["type"] for r in run.records()] == ["not_an_image"]
    assert (
        "debug: decode: cpu (--decode auto: 'Tesla T4' has no hardware JPEG decoder, and "
        "nvJPEG's hybrid decoder is slower than Pillow threads; --decode gpu forces it)"
    ) in run.stderr.splitlines()
    quiet = resnext("classify", junk, "--checkpoint", checkpoint, "-f", "json")
    assert "debug:" not in quiet.stderr


def test_compile_is_off_by_default_and_reaches_the_plan() -> None:
    assert resolve(Config(), AVX2).compile is False
    assert resolve(Config(compile=True), AVX2).compile is True
    with pytest.raises(ConfigError) as info:
        resolve(Config(compile=True, quantized=True, model="resnext101_32x8d"), AVX2)
    assert str(info.value) == "--compile is for float models; drop --compile or --quantized"


def _count_calls(monkeypatch: pytest.MonkeyPatch, module: str, name: str) -> list[object]:
    """Wrap *module*.*name* everywhere the package holds it; the list grows by one per call."""
    import importlib
    import sys

    original = getattr(importlib.import_module(module), name)
    calls: list[object] = []

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return original(*args, **kwargs)

    for loaded in list(sys.modules.values()):
        if getattr(loaded, "__name__", "").startswith("resnext_cli") and (
            getattr(loaded, name, None) is original
        ):
            monkeypatch.setattr(loaded, name, counting)
    return calls


def test_a_run_looks_its_weights_up_once(monkeypatch, resnext, checkpoint, photos) -> None:
    # Loaded first, so that a name any of them imported is wrapped too.
    import resnext_cli.run.classify
    import resnext_cli.run.engine
    import resnext_cli.run.network
    import resnext_cli.run.plan  # noqa: F401

    # The command line's early check and the plan both ask; the registry looks up once.
    from resnext_cli.model import registry

    registry._looked_up.clear()
    calls = _count_calls(monkeypatch, "resnext_cli.model.registry", "_info")
    run = resnext("classify", photos, "--checkpoint", checkpoint, "-m", "50", "--runtime", "torch")
    assert run.code == 0, run.stderr
    assert [r["model"] for r in run.records()] == ["resnext50_32x4d"] * 3
    assert len(calls) == 1


def test_a_calibration_plan_is_the_float_network_on_the_cpu_through_torch() -> None:
    # quantize asks resolve for it; the config says what classify would have run.
    openvino_gpu = dataclasses.replace(GPU, cpu_native_bf16=True, openvino=True)
    config = Config(device="cuda", precision="bf16", runtime="openvino")
    plan = resolve(config, openvino_gpu, purpose="calibrate")
    assert (plan.device, plan.precision, plan.runtime) == ("cpu", "fp32", "torch")
    assert plan.fold_batchnorm is False
    assert resolve(Config(), openvino_gpu).fold_batchnorm is True


def test_the_weights_a_config_names() -> None:
    # Tags from torchvision's documentation: resnext50_32x4d's default is IMAGENET1K_V2,
    # and resnext101_32x8d publishes INT8 weights (FBGEMM).
    v1 = weights_for(Config(model="50", weights="imagenet1k_v1"))
    assert (v1.model, v1.tag, v1.quantized) == ("resnext50_32x4d", "IMAGENET1K_V1", False)
    assert weights_for(Config(model="50")).tag == "IMAGENET1K_V2"
    int8 = weights_for(Config(model="101", quantized=True))
    assert (int8.model, int8.tag, int8.quantized) == (
        "resnext101_32x8d",
        "IMAGENET1K_FBGEMM_V2",
        True,
    )
    # A checkpoint made by 'resnext quantize' brings its INT8 weights: the float ones name
    # the architecture and the preprocessing.
    own = weights_for(Config(model="101", quantized=True, checkpoint="mine-int8.pth"))
    assert (own.tag, own.quantized) == ("IMAGENET1K_V2", False)
    plan = resolve(Config(model="50", weights="imagenet1k_v1"), AVX2)
    assert (plan.info.model, plan.info.tag) == ("resnext50_32x4d", "IMAGENET1K_V1")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"weights": "V9"},
            "unknown weights 'V9' for resnext50_32x4d (choose from: DEFAULT, IMAGENET1K_V1, "
            "IMAGENET1K_V2)",
        ),
        (
            {"quantized": True},
            "resnext50_32x4d has no published INT8 weights (make them from your own photos "
            "with 'resnext quantize -m resnext50_32x4d --calibrate PHOTOS -o my50-int8.pth', "
            "then use --checkpoint my50-int8.pth --quantized)",
        ),
    ],
)
def test_weights_a_model_does_not_have_are_one_line(options, message) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(Config(**options), AVX2)
    assert str(info.value) == message


# -- the probe without torch: /proc/cpuinfo's flags (stand-ins in a temporary folder) -------

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu sse2
"""


def test_the_flags_are_the_first_processors() -> None:
    assert cpu_flags(CPUINFO) == frozenset(
        {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16", "amx_tile"}
    )
    assert cpu_flags("flags: a  b\tc\n") == frozenset({"a", "b", "c"})
    assert cpu_flags("flags:\n") == frozenset()  # listed, and empty
    # Not the flags: another key that contains the word, a line without a colon, none.
    assert cpu_flags("vmx flags\t: ept vpid\nflags\n") is None
    assert cpu_flags("processor : 0\n") is None
    assert cpu_flags("") is None


@pytest.mark.parametrize(
    ("flags", "bf16", "fp16"),
    [
        ({"avx512_bf16"}, True, False),
        ({"amx_tile"}, True, False),
        ({"amx_fp16"}, False, True),
        ({"avx512_fp16"}, False, True),
        ({"avx512_bf16", "avx512_fp16"}, True, True),
        ({"avx2", "avx512f", "avx512bw"}, False, False),
        (set(), False, False),
    ],
)
def test_the_facts_of_a_cpus_flags(monkeypatch, flags: set[str], bf16: bool, fp16: bool) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.setattr(openvino_runtime, "available", lambda: True)
    assert MachineFacts.from_cpu_flags(frozenset(flags)) == MachineFacts(
        cpu_count=6, cpu_native_bf16=bf16, cpu_native_fp16=fp16, openvino=True
    )
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one core
    monkeypatch.setattr(openvino_runtime, "available", lambda: False)
    assert MachineFacts.from_cpu_flags(frozenset(flags)).cpu_count == 1
    assert MachineFacts.from_cpu_flags(frozenset(flags)).openvino is False


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A stand-in /proc/cpuinfo and GPU driver paths in a temporary folder, on Linux."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO, encoding="utf-8")
    drivers = (tmp_path / "driver-nvidia", tmp_path / "kfd")
    monkeypatch.setattr(plan, "_CPUINFO", str(cpuinfo))
    monkeypatch.setattr(plan, "_GPU_DRIVER_PATHS", tuple(str(p) for p in drivers))
    monkeypatch.setattr(sys, "platform", "linux")
    return cpuinfo, drivers


def test_the_cpus_flags_are_read_where_no_gpu_driver_is_loaded(machine, monkeypatch) -> None:
    cpuinfo, drivers = machine
    assert plan._cpu_flags_without_a_gpu() == cpu_flags(CPUINFO)
    for driver in drivers:  # either driver's path: torch is asked about the GPU
        driver.mkdir()
        assert plan._cpu_flags_without_a_gpu() is None
        driver.rmdir()
    cpuinfo.unlink()  # unreadable: torch is asked
    assert plan._cpu_flags_without_a_gpu() is None
    cpuinfo.write_bytes(b"flags\t: avx2 \xff\xfe\n")  # undecodable bytes are not fatal
    assert plan._cpu_flags_without_a_gpu() == frozenset({"avx2", "\ufffd\ufffd"})
    monkeypatch.setattr(sys, "platform", "darwin")
    assert plan._cpu_flags_without_a_gpu() is None


@pytest.mark.real_cpu  # the probe itself is under test
@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_a_cpu_probe_before_torch_reads_cpuinfo(machine, monkeypatch, device: str) -> None:
    monkeypatch.delitem(sys.modules, "torch")  # as in a run that has not imported torch
    monkeypatch.setattr(openvino_runtime, "available", lambda: False)
    facts = MachineFacts.probe(device)
    assert "torch" not in sys.modules
    assert facts == MachineFacts(cpu_count=os.cpu_count() or 1, cpu_native_bf16=True)


def test_only_a_cpu_run_before_torch_is_planned_without_it(monkeypatch) -> None:
    assert not any(plan._before_torch(d) for d in ("auto", "cpu", "cuda", "cuda:1", "mps"))
    monkeypatch.delitem(sys.modules, "torch")
    assert [plan._before_torch(d) for d in ("auto", "cpu", "cuda", "cuda:1", "mps")] == [
        True,
        True,
        False,
        False,
        False,
    ]


@pytest.mark.real_cpu
def test_a_probe_asks_torch_once_it_is_imported(machine, monkeypatch) -> None:
    """The stand-in cpuinfo says bf16; torch, faked here, says not: who answered shows."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert MachineFacts.probe("cpu").cpu_native_bf16 is False
    assert MachineFacts.probe("auto").cpu_native_bf16 is False


@pytest.mark.real_cpu
def test_a_probe_asks_torch_where_cpuinfo_lists_no_flags(machine, monkeypatch) -> None:
    cpuinfo, _ = machine
    cpuinfo.write_text("processor : 0\n", encoding="utf-8")
    monkeypatch.setattr(plan, "_before_torch", lambda device: True)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert MachineFacts.probe("cpu").cpu_native_bf16 is False  # torch's answer, not None's


# -- Ray places the models -------------------------------------------------------------------

RAY_CPUS = MachineFacts(cpu_count=64, placement="ray")
RAY_GPUS = MachineFacts(cpu_count=64, cuda_count=4, cuda_free_bytes=40 << 30, placement="ray")


@pytest.mark.parametrize(
    ("facts", "spec", "device"),
    [
        (RAY_CPUS, "auto", "cpu"),
        (RAY_CPUS, "cpu", "cpu"),
        (RAY_GPUS, "auto", "cuda"),
        (RAY_GPUS, "cuda", "cuda"),
        (RAY_GPUS, "cpu", "cpu"),
    ],
)
def test_ray_takes_the_clusters_gpus_else_cpus(facts, spec: str, device: str) -> None:
    assert resolve(Config(device=spec, runtime="torch"), facts).device == device


@pytest.mark.parametrize(
    ("facts", "spec", "message"),
    [
        (RAY_CPUS, "cuda", "--device cuda but the Ray cluster has no GPUs (use --device auto)"),
        (
            RAY_GPUS,
            "cuda:1",
            "--engine ray places models itself: use --device auto, cpu or cuda, not 'cuda:1'",
        ),
        (
            RAY_GPUS,
            "mps",
            "--engine ray places models itself: use --device auto, cpu or cuda, not 'mps'",
        ),
    ],
)
def test_ray_refuses_a_device_it_cannot_place(facts, spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(Config(device=spec), facts)
    assert str(caught.value) == message


# -- each refusal of the plan, in its exact words ---------------------------------------------

OV_CPU = MachineFacts(cpu_count=2, cpu_native_fp16=True, openvino=True)


@pytest.mark.parametrize(
    ("options", "facts", "message"),
    [
        ({"device": "mps"}, AVX2, "device 'mps' is not available (use --device cpu)"),
        (
            {"model": "resnext101_32x8d", "quantized": True, "device": "cuda"},
            GPU,
            "--quantized runs INT8 on the CPU, not on cuda (use --device cpu, or drop --quantized)",
        ),
        (
            {"runtime": "openvino", "precision": "fp16"},
            OV_CPU,
            "--runtime openvino runs fp32 and bf16 (use --runtime torch for fp16)",
        ),
        (
            {"runtime": "openvino", "precision": "bf16"},
            OV_CPU,
            "--runtime openvino runs bf16 only on a CPU with native bf16; this CPU has none "
            "(use --precision fp32, or --runtime torch)",
        ),
        (
            {"runtime": "openvino", "device": "cuda"},
            dataclasses.replace(GPU, openvino=True),
            "--runtime openvino runs on the CPU, not on cuda (use --device cpu, or --runtime auto)",
        ),
        (
            {"runtime": "openvino"},
            AVX2,
            "the openvino runtime is not installed (pip install 'resnext-cli[openvino]', or "
            "use --runtime torch)",
        ),
        (
            {"model": "resnext101_32x8d", "quantized": True, "runtime": "openvino"},
            OV_CPU,
            "--runtime openvino runs INT8 from a file made by 'resnext quantize --runtime "
            "openvino' (give it with --checkpoint FILE --quantized, or use --runtime torch)",
        ),
        (
            {"decode": "gpu"},
            RAY_GPUS,
            "--engine ray decodes in CPU tasks; drop --decode gpu",
        ),
        (
            {"decode": "gpu"},
            AVX2,
            "--decode gpu needs a CUDA device, not cpu (use --decode auto)",
        ),
    ],
)
def test_each_refusal_of_the_plan_is_one_exact_line(options, facts, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(Config(**options), facts)
    assert str(caught.value) == message


@pytest.fixture
def bundle(tmp_path):
    """A file whose first bytes say 'OpenVINO bundle' (all the plan reads of it)."""
    path = tmp_path / "mine-int8.ov"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 26 + openvino_runtime.MANIFEST.encode())
    return path


def test_an_openvino_bundle_needs_quantized_and_the_openvino_runtime(bundle, monkeypatch) -> None:
    def unread(path: object) -> None:
        raise AssertionError(f"torch read {path}: an OpenVINO bundle keeps no class names")

    monkeypatch.setattr(checkpoint_module, "stored_classes", unread)

    def refusal(**options: object) -> str:
        with pytest.raises(ConfigError) as caught:
            resolve(Config(checkpoint=str(bundle), **options), OV_CPU)  # type: ignore[arg-type]
        return str(caught.value)

    assert refusal() == f"checkpoint '{bundle}' holds OpenVINO INT8 weights (add --quantized)"
    assert refusal(quantized=True, runtime="torch") == (
        f"checkpoint '{bundle}' is an OpenVINO INT8 model (use --runtime openvino or auto, "
        "or a checkpoint made by 'resnext quantize')"
    )
    chosen = resolve(Config(checkpoint=str(bundle), quantized=True), OV_CPU)
    assert (chosen.runtime, chosen.precision) == ("openvino", "int8")
    # It keeps no class names: ImageNet's, without torch reading the file.
    assert len(chosen.labels) == 1000 and not chosen.labels_kept


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("NVIDIA H100 80GB HBM3", "'NVIDIA H100 80GB HBM3' has a hardware JPEG decoder"),
        ("", "this GPU has a hardware JPEG decoder"),
    ],
)
def test_the_decoder_choice_names_the_gpu_or_says_this_gpu(name: str, why: str) -> None:
    chosen = resolve(Config(), dataclasses.replace(GPU, cuda_name=name))
    assert chosen.decode_on == "gpu"
    assert chosen.choices == (f"decode: gpu (--decode auto: {why})",)


# ResNeXt-50 is 4.23 GFLOPs (torchvision's metadata); the plan allows 20 MiB of activations
# per GFLOP for each image of a batch.
R50_IMAGE = int(4.23 * (20 << 20))


@pytest.mark.parametrize(
    ("images", "batch"),
    [
        (5, 8),  # not even 8 fit: 8, the least
        (8, 8),
        (32, 32),  # all the memory holds 32 exactly: 32, not 16
        (33, 32),
        (128, 64),  # half holds 64: 64
        (256, 128),
        (1000, 256),  # the most
    ],
)
def test_the_cuda_batch_at_the_edges(images: int, batch: int) -> None:
    facts = MachineFacts(
        cpu_count=8, cuda_count=1, cuda_bf16=True, cuda_free_bytes=images * R50_IMAGE
    )
    assert resolve(Config(decode="cpu"), facts).batch_size == batch


def test_a_missing_or_remote_checkpoint_keeps_imagenets_names(tmp_path) -> None:
    for checkpoint in (str(tmp_path / "gone.pth"), "https://127.0.0.1:9/mine.pth"):
        chosen = resolve(Config(checkpoint=checkpoint), AVX2)
        assert len(chosen.labels) == 1000 and not chosen.labels_kept


def test_a_learned_checkpoint_brings_its_class_names_unless_labels_are_given(
    tmp_path, monkeypatch
) -> None:
    learned = tmp_path / "learned.pth"
    torch.save({CLASSES_KEY: ["cat", "dog", "owl"], "fc.bias": torch.zeros(3)}, learned)
    chosen = resolve(Config(checkpoint=str(learned)), AVX2)
    assert (chosen.labels, chosen.labels_kept, chosen.topk) == (("cat", "dog", "owl"), True, 3)
    labels = tmp_path / "mine.txt"
    labels.write_text("one\ntwo\nthree\n", encoding="utf-8")
    chosen = resolve(Config(checkpoint=str(learned), labels=str(labels), topk=2), AVX2)
    assert (chosen.labels, chosen.labels_kept) == (("one", "two", "three"), False)
    # A URL is never read as a local path, even where one of that name exists.
    monkeypatch.chdir(tmp_path)
    url = "https://127.0.0.1:9/learned.pth"
    lookalike = tmp_path / "https:" / "127.0.0.1:9" / "learned.pth"
    lookalike.parent.mkdir(parents=True)
    lookalike.write_bytes(learned.read_bytes())
    chosen = resolve(Config(checkpoint=url), AVX2)
    assert len(chosen.labels) == 1000 and not chosen.labels_kept


# -- every value the plan carries, as the options gave it --------------------------------


def test_every_option_reaches_the_plan_as_given(tmp_path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("".join(f"thing {i}\n" for i in range(1000)), encoding="utf-8")
    groups = tmp_path / "groups.tsv"
    groups.write_text("thing 0\tfirst\n7\tsecond\n", encoding="utf-8")
    config = Config(
        labels=str(names), categories=str(groups), embeddings=True, offline=True,
        timeout=2.5, max_download_bytes=12345, max_pixels=4321, allow_truncated=True, topk=7,
    )  # fmt: skip
    plan = resolve(config, AVX2)
    assert (plan.labels[0], plan.labels[999], len(plan.labels)) == ("thing 0", "thing 999", 1000)
    assert (plan.labels_file, plan.labels_kept, plan.checkpoint) == (str(names), False, None)
    assert plan.categories is not None
    assert plan.categories.names == ("first", "second", "other")
    assert [plan.categories.name_of(i) for i in (0, 7, 1, 999)] == [
        "first",
        "second",
        "other",
        "other",
    ]
    assert (plan.embeddings, plan.offline, plan.timeout, plan.max_download_bytes) == (
        True,
        True,
        2.5,
        12345,
    )
    assert plan.topk == 7
    # resnext50_32x4d's default weights (IMAGENET1K_V2) resize to 232 (torchvision's
    # documented transforms): JPEG drafts stop at twice that.
    assert plan.decode == DecodeOptions(
        max_pixels=4321, allow_truncated=True, draft_min_side=464, upright=True, plain_rgb=False
    )
    assert (plan.compile, plan.notes, plan.choices) == (False, (), ())
    assert resolve(Config(), AVX2).categories is None


def test_exact_decodes_as_the_hub_page_and_v1_weights_draft_at_twice_256() -> None:
    """--exact: full size, no EXIF turn, plain convert('RGB'); IMAGENET1K_V1 resizes to 256."""
    v1 = Config(model="50", weights="imagenet1k_v1", max_pixels=99)
    assert resolve(v1, AVX2).decode == DecodeOptions(
        max_pixels=99, allow_truncated=False, draft_min_side=512, upright=True, plain_rgb=False
    )
    assert resolve(v1.with_(exact=True), AVX2).decode == DecodeOptions(
        max_pixels=99, allow_truncated=False, draft_min_side=0, upright=False, plain_rgb=True
    )


def test_emulated_bf16_is_noted_only_on_a_cpu_without_it() -> None:
    note = "this CPU has no native bf16: it is emulated, slower than fp32"
    assert resolve(Config(precision="bf16"), AVX2).notes == (note,)
    assert resolve(Config(precision="bf16", device="cpu"), GPU).notes == (note,)
    assert resolve(Config(precision="bf16"), BF16_CPU).notes == ()
    assert resolve(Config(precision="bf16"), GPU).notes == ()  # on the GPU: native
    assert resolve(Config(), AVX2).notes == ()  # fp32


def test_ray_plans_no_decoding_workers() -> None:
    """Ray's tasks decode; each actor only runs the model, whatever --workers says."""
    assert resolve(Config(runtime="torch"), RAY_CPUS).workers == 0
    assert resolve(Config(runtime="torch", workers=4), RAY_GPUS).workers == 0


def test_a_calibration_plan_of_a_quantized_config_is_the_float_network() -> None:
    plan = resolve(Config(model="101", quantized=True), AVX2, purpose="calibrate")
    assert (plan.info.model, plan.info.tag, plan.info.quantized) == (
        "resnext101_32x8d",
        "IMAGENET1K_V2",
        False,
    )
    assert (plan.precision, plan.runtime, plan.fold_batchnorm) == ("fp32", "torch", False)


def test_the_precision_each_option_names_is_accepted_beside_it() -> None:
    refuse_pairs(Config(exact=True, precision="fp32"))  # nothing to refuse
    assert resolve(Config(exact=True, precision="fp32"), BF16_CPU).precision == "fp32"
    int8 = resolve(Config(model="101", quantized=True, precision="auto"), AVX2)
    assert int8.precision == "int8"


OV_FP32 = MachineFacts(cpu_count=2, openvino=True)
OV_BF16 = MachineFacts(cpu_count=2, cpu_native_bf16=True, openvino=True)


@pytest.mark.parametrize(
    ("options", "facts", "runtime"),
    [
        ({}, OV_FP32, "openvino"),  # fp32 runs natively everywhere
        ({}, AVX2, "torch"),  # the extra is not installed
        ({"exact": True}, OV_FP32, "torch"),  # the reference is torch's
        ({"runtime": "torch"}, OV_FP32, "torch"),
        ({"precision": "bf16"}, OV_FP32, "torch"),  # bf16 emulated: torch
        ({"precision": "bf16"}, OV_BF16, "openvino"),
        ({}, OV_BF16, "openvino"),  # auto is bf16 here, natively
        ({"precision": "fp32"}, OV_BF16, "openvino"),
        ({"runtime": "openvino"}, OV_FP32, "openvino"),
        ({"runtime": "openvino", "precision": "bf16"}, OV_BF16, "openvino"),
        ({"model": "101", "quantized": True}, OV_BF16, "torch"),  # torchvision's INT8
        # a GPU run is torch's, even where the CPU could run OpenVINO natively
        ({}, dataclasses.replace(GPU, cpu_native_bf16=True, openvino=True), "torch"),
        ({"device": "cpu"}, dataclasses.replace(GPU, openvino=True), "openvino"),
    ],
)
def test_the_runtime_auto_chooses(options, facts, runtime: str) -> None:
    assert resolve(Config(**options), facts).runtime == runtime


def test_the_plan_says_where_and_what_it_runs(tmp_path) -> None:
    torch_plan = resolve(Config(precision="fp32"), AVX2)
    assert torch_plan.describe() == "cpu, fp32"
    assert torch_plan.source_line() == "resnext50_32x4d (IMAGENET1K_V2)"
    assert torch_plan.model_line() == "resnext50_32x4d (IMAGENET1K_V2) on cpu, fp32"
    openvino = resolve(Config(), OV_BF16)
    assert openvino.describe() == "cpu, bf16, openvino"
    mine = str(tmp_path / "mine.pth")  # missing: read only by the run
    own = resolve(Config(checkpoint=mine, precision="fp32"), GPU)
    assert own.source_line() == f"resnext50_32x4d ({mine})"
    assert own.model_line() == f"resnext50_32x4d ({mine}) on cuda, fp32"


# -- the probe asks torch each fact, for the device the run will use -------------------------

_CPU_CHECKS = (
    "_is_avx512_bf16_supported",
    "_is_amx_tile_supported",
    "_is_amx_fp16_supported",
    "_is_avx512_fp16_supported",
)


@pytest.fixture
def fake_torch(monkeypatch):
    """Every answer the probe reads from torch, faked: no CPU feature, no GPU, no MPS, six
    cores, OpenVINO installed. Tests change the dict's answers."""
    answers: dict[str, Any] = dict.fromkeys(_CPU_CHECKS, False)
    answers.update(mps=False, gpus=[], cores=6)
    for name in _CPU_CHECKS:
        monkeypatch.setattr(torch.cpu, name, lambda name=name: answers[name], raising=False)

    def gpu(index: int | None) -> dict[str, Any]:
        gpus = answers["gpus"]
        if not 0 <= (index or 0) < len(gpus):
            raise AssertionError(f"asked about cuda:{index} of {len(gpus)}")
        return gpus[index or 0]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(answers["gpus"]))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(answers["gpus"]))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=None: (gpu(i)["free"], 99 << 30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: gpu(i)["name"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: gpu(i)["cap"])
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: answers["mps"])
    monkeypatch.setattr(os, "cpu_count", lambda: answers["cores"])
    monkeypatch.setattr(openvino_runtime, "available", lambda: True)
    return answers


@pytest.mark.real_cpu  # the probe itself is under test
@pytest.mark.parametrize(
    ("check", "bf16", "fp16"),
    [
        (None, False, False),
        ("_is_avx512_bf16_supported", True, False),
        ("_is_amx_tile_supported", True, False),
        ("_is_amx_fp16_supported", False, True),
        ("_is_avx512_fp16_supported", False, True),
    ],
)
def test_the_probe_asks_torch_each_cpu_feature(fake_torch, check, bf16: bool, fp16: bool):
    if check is not None:
        fake_torch[check] = True
    cpu_only = MachineFacts(cpu_count=6, cpu_native_bf16=bf16, cpu_native_fp16=fp16, openvino=True)
    for device in ("cpu", "auto"):
        facts = MachineFacts.probe(device)
        assert facts == cpu_only
        assert (facts.cuda_name, facts.cuda_jpeg_hardware, facts.mps) == ("", True, False)


@pytest.mark.real_cpu
def test_a_torch_without_the_cpu_checks_means_none(fake_torch, monkeypatch) -> None:
    for name in _CPU_CHECKS:
        monkeypatch.delattr(torch.cpu, name, raising=False)
    facts = MachineFacts.probe("cpu")
    assert (facts.cpu_native_bf16, facts.cpu_native_fp16) == (False, False)


@pytest.mark.real_cpu
def test_an_unknown_core_count_is_one(fake_torch) -> None:
    fake_torch["cores"] = None
    assert MachineFacts.probe("cpu").cpu_count == 1


@pytest.mark.real_cpu
def test_mps_is_asked_only_for_an_auto_or_mps_run(fake_torch) -> None:
    fake_torch["mps"] = True
    assert [MachineFacts.probe(d).mps for d in ("auto", "mps", "cpu")] == [True, True, False]


@pytest.mark.real_cpu
def test_the_probe_reads_the_named_gpu_and_no_other(fake_torch) -> None:
    t4 = {"free": 3 << 30, "name": "Tesla T4", "cap": (7, 5)}
    h100 = {"free": 70 << 30, "name": "NVIDIA H100 80GB HBM3", "cap": (9, 0)}
    fake_torch["gpus"] = [t4, h100]
    assert MachineFacts.probe("cuda:1") == MachineFacts(
        cpu_count=6, cuda_count=2, cuda_bf16=True, cuda_free_bytes=70 << 30,
        cuda_jpeg_hardware=True, cuda_name="NVIDIA H100 80GB HBM3", openvino=True,
    )  # fmt: skip
    # cuda:2 does not exist: the plan refuses it; the probe asks nothing about it
    missing = MachineFacts.probe("cuda:2")
    assert (missing.cuda_count, missing.cuda_free_bytes, missing.cuda_name) == (2, 0, "")
    # a CPU or MPS run asks nothing about the GPUs
    assert MachineFacts.probe("cpu").cuda_count == 0
    assert MachineFacts.probe("mps").cuda_count == 0
    assert MachineFacts.probe("auto").cuda_name == "Tesla T4"
