"""run/network.py: the model a plan loads: its checkpoint read once, CUDA's TF32 off, --compile."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from resnext_cli.run.config import Config
from resnext_cli.run.plan import resolve
from tests.conftest import Outcome
from tests.helpers import AVX2, GPU, _same_predictions, _to_fake_cuda

# -- TF32, cuDNN autotuning and torch.compile, with CUDA faked ---------------------------------


@pytest.fixture
def cuda_flags_on():
    """Torch's defaults as a CUDA user meets them (cuDNN TF32 on), restored afterwards."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark)
    precision = torch.get_float32_matmul_precision()
    cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = True, True, False
    torch.set_float32_matmul_precision("high")
    yield
    cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = saved
    torch.set_float32_matmul_precision(precision)


@pytest.mark.parametrize(
    ("options", "precision"),
    [({"exact": True}, "fp32"), ({"precision": "fp32"}, "fp32"), ({}, "bf16")],
)
def test_a_cuda_run_turns_tf32_off(checkpoint, monkeypatch, cuda_flags_on, options, precision):
    from resnext_cli.run.network import load_model

    _to_fake_cuda(monkeypatch)
    plan = resolve(Config(checkpoint=str(checkpoint), device="cuda", **options), GPU)
    assert (plan.precision, plan.tf32) == (precision, False)
    load_model(plan)
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cudnn.benchmark is True  # one input shape: autotune it


def test_a_cpu_run_leaves_cuda_flags_alone(checkpoint, cuda_flags_on) -> None:
    from resnext_cli.run.network import load_model

    load_model(resolve(Config(checkpoint=str(checkpoint), device="cpu"), AVX2))
    assert torch.backends.cudnn.allow_tf32 is True
    assert torch.backends.cudnn.benchmark is False


def test_compile_compiles_once_pads_the_last_batch_and_reports_its_time(
    checkpoint, make_image, monkeypatch, resnext
) -> None:
    """torch.compile faked (the real one takes minutes here): what the run does with it."""
    calls = []
    shapes = []

    def fake_compile(fn, **kwargs):
        calls.append(kwargs)

        def compiled(x):
            shapes.append(tuple(x.shape))
            return fn(x)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    images = [make_image(f"{i}.jpg", seed=i) for i in range(5)]
    plain = resnext("classify", *images, "--checkpoint", checkpoint, "-f", "json",
                    "--batch-size", "2", "--precision", "fp32")  # fmt: skip
    assert plain.code == 0 and calls == []
    run = resnext("classify", *images, "--checkpoint", checkpoint, "-f", "json",
                  "--batch-size", "2", "--precision", "fp32", "--compile")  # fmt: skip
    assert run.code == 0, run
    assert calls == [{"dynamic": False}]
    # Three batches of two: the last image padded to the compiled shape.
    assert shapes == [(2, 3, 224, 224)] * 3
    # The same predictions (a padded batch may pick other kernels: rounding apart).
    _same_predictions(run.records(), plain.records())
    lines = [line for line in run.stderr.splitlines() if line.startswith("torch.compile")]
    assert len(lines) == 1
    assert lines[0].startswith("torch.compile: ") and lines[0].endswith(
        " s compiling (the first batch's call)"
    )
    float(lines[0].split()[1])  # the seconds, a number


def test_a_classify_run_reads_its_checkpoint_once(
    loads: list[object], resnext: Callable[..., Outcome], checkpoint: Path, photos: Path
) -> None:
    # The plan peeks at the file (its class names) and the network then loads it.
    run = resnext("classify", photos, "--checkpoint", checkpoint, "--runtime", "torch")
    assert run.code == 0, run.stderr
    assert len(run.records()) == 3
    assert len(loads) == 1
