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
    forward_pass,
    load_model,
    load_state,
    reduced_dtype,
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
    assert plan.precision == precision
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


def test_reduced_precisions_are_torchs_half_types() -> None:
    assert (reduced_dtype("bf16"), reduced_dtype("fp16")) == (torch.bfloat16, torch.float16)


@pytest.fixture
def fetched(monkeypatch, tmp_path) -> list[tuple[str, dict[str, object]]]:
    """network.fetch recorded: each call's URL and options; it 'downloads' a file."""
    calls: list[tuple[str, dict[str, object]]] = []

    def fetch(url: str, **options: object) -> Path:
        calls.append((url, options))
        path = tmp_path / "fetched.pth"
        path.write_bytes(b"x")
        return path

    monkeypatch.setattr(network, "fetch", fetch)
    return calls


def test_weights_and_url_checkpoints_are_fetched_with_the_plans_options(fetched, tmp_path):
    progress = object()
    plan = resolve(Config(precision="fp32", offline=True, timeout=2.5), AVX2)
    path, name = weights_file(plan, progress=progress)  # type: ignore[arg-type]
    assert (path, name) == (tmp_path / "fetched.pth", str(tmp_path / "fetched.pth"))
    for url in ("http://127.0.0.1:9/mine.pth", "https://example.test/mine.pth"):
        remote = resolve(Config(precision="fp32", checkpoint=url, timeout=4.0), AVX2)
        assert weights_file(remote, progress=progress) == (tmp_path / "fetched.pth", url)  # type: ignore[arg-type]
    assert fetched == [
        (plan.info.url, {"offline": True, "progress": progress, "timeout": 2.5}),
        ("http://127.0.0.1:9/mine.pth", {"offline": False, "progress": progress, "timeout": 4.0}),
        ("https://example.test/mine.pth", {"offline": False, "progress": progress, "timeout": 4.0}),
    ]
    fetched.clear()
    load_state_progress = object()
    with pytest.raises(WeightsError):  # the fetched file is no state dict
        load_state(plan, progress=load_state_progress)  # type: ignore[arg-type]
    assert fetched[0][1]["progress"] is load_state_progress


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_downloaded_checkpoint_that_does_not_load_is_not_kept(scheme, monkeypatch) -> None:
    url = f"{scheme}://127.0.0.1:9/mine.pth"
    cached = checkpoints_dir() / "mine.pth"
    cached.parent.mkdir(parents=True, exist_ok=True)

    def fetch(url: str, **options: object) -> Path:
        cached.write_bytes(b"not a state dict")
        return cached

    monkeypatch.setattr(network, "fetch", fetch)
    with pytest.raises(CheckpointError) as info:
        load_state(_plan(checkpoint=url))
    assert str(info.value).startswith(f"cannot load checkpoint '{url}': ")
    assert not cached.exists()


def test_an_int8_plan_reads_its_file_as_int8(tmp_path, monkeypatch) -> None:
    """An INT8 checkpoint is read by quantized.py (packed parameters), not as float tensors."""
    from resnext_cli.model import quantized

    mine = tmp_path / "mine-int8.pth"
    mine.write_bytes(b"int8 bytes")
    read: list[tuple[Path, str]] = []
    state = {"fc._packed_params._packed_params": (torch.zeros(1),)}

    class Read:
        def __init__(self, path: Path, name: str) -> None:
            read.append((path, name))
            self.state = state

    monkeypatch.setattr(quantized, "read_quantized", lambda path, *, name: Read(path, name))
    plan = resolve(Config(quantized=True, checkpoint=str(mine)), AVX2)
    assert plan.precision == "int8"
    assert load_state(plan) == (state, str(mine))
    assert read == [(mine, str(mine))]


@pytest.fixture(scope="module")
def int8_state10(checkpoint10: Path) -> dict[str, torch.Tensor]:
    """A 10-class INT8 state dict in torchvision's quantized layout (calibrated on noise)."""
    from resnext_cli.model import checkpoint as checkpoint_module
    from resnext_cli.model import quantized

    float_state = checkpoint_module.read_state_dict(checkpoint10, name="ten")
    batch = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    net = quantized.calibrate("resnext50_32x4d", float_state, [batch], name="ten")
    return net.state_dict()


def test_an_int8_state_is_checked_by_its_packed_class_count(int8_state10, tmp_path) -> None:
    plan = resolve(Config(quantized=True, checkpoint=str(tmp_path / "ten.pth")), AVX2)
    with pytest.raises(ConfigError) as info:
        load_model(plan, state=(int8_state10, "ten.pth"))
    assert str(info.value) == (
        "checkpoint 'ten.pth' has 10 classes but the bundled ImageNet labels have 1000 "
        "(give --labels FILE with 10 lines)"
    )
    names = tmp_path / "ten.txt"
    names.write_text("".join(f"c{i}\n" for i in range(10)), encoding="utf-8")
    ten = resolve(
        Config(quantized=True, checkpoint=str(tmp_path / "ten.pth"), labels=str(names)), AVX2
    )
    model = load_model(ten, state=(int8_state10, "ten.pth"))  # the file is never read
    assert isinstance(model.net.fc, torch.ao.nn.quantized.Linear)
    assert model.net.fc.weight().shape == (10, 2048)
    assert model.name == "ten.pth"


def test_a_given_state_is_used_and_no_file_read(checkpoint, tmp_path) -> None:
    state = torch.load(checkpoint, weights_only=True)
    plan = _plan(checkpoint=str(tmp_path / "gone.pth"))  # no such file: never opened
    model = load_model(plan, state=(state, "given.pth"))
    assert model.name == "given.pth"
    torch.testing.assert_close(model.net.fc.weight, state["fc.weight"])


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_the_body_runs_in_the_plans_half_type_and_the_head_in_float32(
    checkpoint, precision: str, dtype: torch.dtype
) -> None:
    """autocast's own default on the CPU is bf16: fp16 must be asked for by name."""
    facts = dataclasses.replace(AVX2, cpu_native_bf16=True, cpu_native_fp16=True)
    plan = resolve(Config(checkpoint=str(checkpoint), precision=precision, device="cpu"), facts)  # type: ignore[arg-type]
    model = load_model(plan)
    seen: dict[str, torch.dtype] = {}
    model.net.layer4.register_forward_hook(lambda m, i, out: seen.update(body=out.dtype))
    model.net.fc.register_forward_hook(lambda m, i, out: seen.update(head=i[0].dtype))
    logits = forward_pass(model)(torch.zeros(1, 3, 224, 224))
    assert seen == {"body": dtype, "head": torch.float32}
    assert logits.dtype == torch.float32


def test_the_first_compiled_call_is_timed_once(checkpoint, monkeypatch) -> None:
    """torch.compile faked (it takes minutes here); the clock faked: 12.5 - 10.0 seconds."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    model = load_model(_plan(checkpoint=str(checkpoint)))
    ticks = iter([10.0, 12.5])
    monkeypatch.setattr(network.time, "perf_counter", lambda: next(ticks))
    forward = network._compiled(model)
    x = torch.zeros(1, 3, 224, 224)
    forward(x)
    assert model.compile_seconds == 2.5
    forward(x)  # not timed again: the clock has no third tick
    assert model.compile_seconds == 2.5


def test_load_model_hands_its_progress_and_state_on(fetched, monkeypatch) -> None:
    progress, state = object(), ({}, "given.pth")
    handed: list[tuple[object, object]] = []

    def load_openvino(plan: Plan, *, progress: object, state: object) -> str:
        handed.append((progress, state))
        return "the OpenVINO model"

    monkeypatch.setattr(network, "_load_openvino", load_openvino)
    openvino = dataclasses.replace(_plan(), runtime="openvino")
    assert load_model(openvino, progress=progress, state=state) == "the OpenVINO model"  # type: ignore[arg-type,comparison-overlap]
    assert handed == [(progress, state)]
    # A torch plan without a state fetches its weights with the same progress.
    with pytest.raises(WeightsError):  # the fetched file is no state dict
        load_model(resolve(Config(precision="fp32", offline=True), AVX2), progress=progress)  # type: ignore[arg-type]
    assert [options["progress"] for _, options in fetched] == [progress]
