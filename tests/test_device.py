"""Device, precision and batch choice: the plan, with the machine's facts faked."""

from __future__ import annotations

import os

import pytest
import torch

from resnext_cli.errors import ConfigError
from resnext_cli.run.config import Config
from resnext_cli.run.plan import MachineFacts, resolve

AVX2 = MachineFacts(cpu_count=2)  # no native bf16: AVX2-only
BF16_CPU = MachineFacts(cpu_count=2, cpu_native_bf16=True)  # AVX512-BF16 or AMX
GPU = MachineFacts(cpu_count=16, cuda_count=1, cuda_bf16=True, cuda_free_bytes=80 << 30)
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
        Config(exact=True, precision="bf16")
    assert str(info.value) == "--exact runs in fp32; drop --precision bf16 or --exact"


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


def test_probe_reads_torchs_cpu_flags(monkeypatch) -> None:
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert MachineFacts.probe().cpu_native_bf16 is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert MachineFacts.probe().cpu_native_bf16 is True


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


@pytest.mark.skipif(
    not torch.cuda.is_available() or not os.environ.get("RESNEXT_TEST_GPU"),
    reason="needs a CUDA GPU and RESNEXT_TEST_GPU=1",
)
@pytest.mark.gpu
def test_cuda_matches_cpu(checkpoint, make_image) -> None:
    from resnext_cli import Classifier

    paths = [str(make_image(f"{i}.png", seed=i)) for i in range(4)]
    cpu = list(Classifier(checkpoint=str(checkpoint), device="cpu", exact=True).classify(paths))
    gpu = list(Classifier(checkpoint=str(checkpoint), device="cuda", exact=True).classify(paths))
    for a, b in zip(cpu, gpu, strict=True):
        assert [p.index for p in a.predictions] == [p.index for p in b.predictions]
        for pa, pb in zip(a.predictions, b.predictions, strict=True):
            assert pa.probability == pytest.approx(pb.probability, abs=1e-3)
