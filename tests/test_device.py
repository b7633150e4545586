"""Device and precision choice, including the CUDA paths this machine cannot run."""

from __future__ import annotations

import pytest
import torch

from resnext_cli import engine
from resnext_cli.config import Config
from resnext_cli.errors import ConfigError


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend to have *n* CUDA GPUs, with or without bf16."""

    def install(count: int, *, bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)

    return install


def test_auto_prefers_cuda_then_mps_then_cpu(fake_cuda, monkeypatch) -> None:
    fake_cuda(1)
    assert engine.pick_device("auto") == torch.device("cuda")
    fake_cuda(0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert engine.pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert engine.pick_device("auto") == torch.device("cpu")


def test_missing_cuda_is_a_clear_error(fake_cuda) -> None:
    fake_cuda(0)
    with pytest.raises(ConfigError) as info:
        engine.pick_device("cuda")
    assert str(info.value) == "device 'cuda' is not available: no CUDA GPU (use --device cpu)"
    fake_cuda(2)
    assert engine.pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError) as info:
        engine.pick_device("cuda:2")
    assert str(info.value) == (
        "device 'cuda:2' is not available: this machine has 2 CUDA device(s) (use cuda:0 to cuda:1)"
    )


@pytest.mark.parametrize(
    ("device", "bf16", "cpu_bf16", "expected"),
    [
        ("cuda", True, False, "bf16"),
        ("cuda", False, False, "fp16"),
        ("cpu", False, False, "fp32"),
        ("cpu", False, True, "bf16"),
        ("mps", False, False, "fp32"),
    ],
)
def test_auto_precision(fake_cuda, monkeypatch, device, bf16, cpu_bf16, expected) -> None:
    fake_cuda(1, bf16=bf16)
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: cpu_bf16)
    assert engine.pick_precision("auto", torch.device(device), exact=False) == expected
    # --exact always means fp32, whatever the hardware offers.
    assert engine.pick_precision("auto", torch.device(device), exact=True) == "fp32"


def test_explicit_precision_is_kept() -> None:
    assert engine.pick_precision("fp16", torch.device("cpu"), exact=False) == "fp16"
    with pytest.raises(ConfigError) as info:
        Config(exact=True, precision="bf16")
    assert str(info.value) == "--exact runs in fp32; drop --precision bf16 or --exact"


def test_cpu_bf16_detection_asks_torch() -> None:
    expected = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert engine.cpu_has_native_bf16() is expected


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu", "CPU0"])
def test_unknown_device_names(spec) -> None:
    with pytest.raises(ConfigError) as info:
        Config(device=spec)
    assert str(info.value) == (
        f"unknown device '{spec}' (choose from: auto, cpu, cuda, cuda:N, mps)"
    )


def test_default_batch_sizes_differ_by_device() -> None:
    assert engine.DEFAULT_BATCH["cpu"] < engine.DEFAULT_BATCH["cuda"]


@pytest.mark.skipif(
    not torch.cuda.is_available() or not __import__("os").environ.get("RESNEXT_TEST_GPU"),
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
