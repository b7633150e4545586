"""run/network.py: the model a plan loads: its checkpoint read once, CUDA's TF32 off, --compile."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from resnext_cli.errors import CheckpointError, ConfigError, WeightsError
from resnext_cli.model.weights import checkpoints_dir, filename_of
from resnext_cli.run import network
from resnext_cli.run.config import Config
from resnext_cli.run.network import (
    Model,
    check_classes,
    load_state,
    transform_for,
    weights_file,
)
from resnext_cli.run.plan import Plan, resolve
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


# -- the checks and messages of a load, called directly ---------------------------------------


def _plan(**options: object) -> Plan:
    return resolve(Config(precision="fp32", **options), AVX2)  # type: ignore[arg-type]


def _refusal(plan: Plan, state: dict[str, torch.Tensor], **kw: int) -> str:
    with pytest.raises(ConfigError) as info:
        check_classes(plan, state, "mine.pth", **kw)
    return str(info.value)


def test_a_class_count_that_differs_from_the_labels_names_where_they_came_from(tmp_path) -> None:
    ten = {"fc.weight": torch.zeros(10, 2048)}
    assert _refusal(_plan(), ten) == (
        "checkpoint 'mine.pth' has 10 classes but the bundled ImageNet labels have 1000 "
        "(give --labels FILE with 10 lines)"
    )
    names = tmp_path / "names.txt"
    names.write_text("".join(f"n{i}\n" for i in range(1000)), encoding="utf-8")
    assert _refusal(_plan(labels=str(names)), ten) == (
        f"checkpoint 'mine.pth' has 10 classes but labels file '{names}' has 1000 "
        "(give --labels FILE with 10 lines)"
    )
    kept = dataclasses.replace(_plan(), labels=("cat", "dog"), labels_kept=True, topk=2)
    assert _refusal(kept, ten) == (
        "checkpoint 'mine.pth' has 10 classes but the class names it keeps are 2 "
        "(give --labels FILE with 10 lines)"
    )
    # The count handed in (an INT8 state's packed fc) wins over any fc.weight.
    assert _refusal(kept, {"fc.weight": torch.zeros(2, 2048)}, classes=3).startswith(
        "checkpoint 'mine.pth' has 3 classes but"
    )


def test_a_matching_or_unreadable_class_count_passes(tmp_path) -> None:
    plan = dataclasses.replace(_plan(), labels=("cat", "dog"), labels_kept=True, topk=2)
    check_classes(plan, {"fc.weight": torch.zeros(2, 2048)}, "mine.pth")
    check_classes(plan, {"fc.weight": torch.zeros(2, 2048, 1)}, "mine.pth")  # not a matrix
    check_classes(plan, {}, "mine.pth")
    check_classes(plan, {}, "mine.pth", classes=2)


def test_a_topk_past_the_classes_is_refused() -> None:
    plan = dataclasses.replace(_plan(), labels=("cat", "dog"), labels_kept=True, topk=3)
    assert _refusal(plan, {"fc.weight": torch.zeros(2, 2048)}) == (
        "--topk 3 is more than the 2 classes (lower --topk)"
    )


def test_a_checkpoint_that_is_not_a_file_is_refused(tmp_path) -> None:
    for name in (tmp_path / "nope.pth", tmp_path):
        with pytest.raises(CheckpointError) as info:
            weights_file(_plan(checkpoint=str(name)))
        assert str(info.value) == f"checkpoint '{name}' does not exist (give a file)"
    here = tmp_path / "mine.pth"
    here.write_bytes(b"x")
    assert weights_file(_plan(checkpoint=str(here))) == (here, str(here))


@pytest.mark.parametrize(
    ("options", "command"),
    [
        ({}, "resnext download -m resnext50_32x4d -w IMAGENET1K_V2"),
        (
            {"model": "101", "quantized": True, "precision": "auto"},
            "resnext download -m resnext101_32x8d -w IMAGENET1K_FBGEMM_V2 --quantized",
        ),
    ],
)
def test_corrupt_cached_weights_are_removed_and_the_way_back_said(options, command) -> None:
    options = {"precision": "fp32", **options}
    plan = resolve(Config(offline=True, **options), AVX2)  # type: ignore[arg-type]
    cached = checkpoints_dir() / filename_of(plan.info.url)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"not a state dict")
    with pytest.raises(WeightsError) as info:
        load_state(plan)
    assert str(info.value) == (
        f"cached weights file '{cached}' was corrupt and has been removed (run again to "
        f"download it, or '{command}')"
    )
    assert not cached.exists()


def test_a_users_corrupt_checkpoint_is_refused_and_kept(tmp_path) -> None:
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"not a state dict")
    with pytest.raises(CheckpointError) as info:
        load_state(_plan(checkpoint=str(mine)))
    assert str(info.value) == (
        f"cannot load checkpoint '{mine}': UnpicklingError (give a state dict saved with "
        "torch.save)"
    )
    assert mine.read_bytes() == b"not a state dict"


def test_an_openvino_int8_model_has_no_torch_network() -> None:
    plan = dataclasses.replace(
        resolve(Config(model="101", quantized=True), AVX2), runtime="openvino"
    )
    model = Model(plan, None, transform_for(plan), "mine-int8.ovbundle")
    with pytest.raises(ConfigError) as info:
        model.net  # noqa: B018 - the property is the behaviour under test
    assert str(info.value) == (
        "'mine-int8.ovbundle' is an OpenVINO INT8 model: it has no torch network "
        "(use a checkpoint made by 'resnext quantize')"
    )


def test_an_openvino_float_model_builds_its_torch_network_once_on_cpu(
    checkpoint, monkeypatch
) -> None:
    plan = dataclasses.replace(_plan(checkpoint=str(checkpoint)), runtime="openvino")
    built: list[Plan] = []
    real = network.load_model

    def counting(plan: Plan, **kw: object) -> Model:
        built.append(plan)
        return real(plan, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(network, "load_model", counting)
    model = Model(plan, None, transform_for(plan), str(checkpoint))
    first = model.net
    assert model.net is first
    assert [(p.runtime, p.device) for p in built] == [("torch", "cpu")]
    assert isinstance(first.fc, torch.nn.Linear) and first.fc.out_features == 1000
