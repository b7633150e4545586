"""run/network.py: the model a plan loads: its checkpoint read once, CUDA's TF32 off, --compile."""

from __future__ import annotations

import dataclasses
import logging
import types
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


# -- fast, in-process tests with small stand-in networks --------------------------------------


class _Resnetish(torch.nn.Module):
    """torchvision's ResNet attribute names on a network of a few small layers: each step
    changes the values differently, so a step left out or run out of order shows."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(4)
        self.relu = torch.nn.ReLU()
        self.maxpool = torch.nn.MaxPool2d(2)
        self.layer1 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.layer2 = torch.nn.Conv2d(4, 4, 1)
        self.layer3 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.layer4 = torch.nn.Conv2d(4, 6, 1)
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(6, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
            self.bn1.running_mean.copy_(torch.randn(4, generator=gen))
            self.bn1.running_var.copy_(torch.rand(4, generator=gen) + 0.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the pass goes through the named layers, not forward")


def _by_hand(net: _Resnetish, x: torch.Tensor) -> torch.Tensor:
    """The pooled features as torchvision's ResNet.forward computes them, step by step."""
    x = net.conv1(x)
    x = net.bn1(x)
    x = net.relu(x)
    x = net.maxpool(x)
    x = net.layer1(x)
    x = net.layer2(x)
    x = net.layer3(x)
    x = net.layer4(x)
    x = net.avgpool(x)
    return x.reshape(x.shape[0], -1)


def _pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _fake_model(precision: str = "fp32", net: torch.nn.Module | None = None, **changes) -> Model:
    plan = dataclasses.replace(_plan(), precision=precision, **changes)
    return Model(plan, net if net is not None else _Resnetish(), transform_for(plan), "fake.pth")


def test_a_models_repr_leaves_out_its_pass_budget_and_normalisation() -> None:
    model = _fake_model("fp32")
    model.forward, model.budget, model._norm = print, "a budget", ("m", "s")  # type: ignore[assignment]
    shown = repr(model)
    assert shown.startswith("Model(plan=Plan(") and "name='fake.pth'" in shown
    assert "compile_seconds=None" in shown and "max_batch=None" in shown
    for hidden in ("forward=", "budget=", "_norm="):
        assert hidden not in shown
    fresh = Model(model.plan, None, model.transform, "x")
    assert (fresh.openvino, fresh.forward, fresh.compile_seconds) == (None, None, None)
    assert (fresh.budget, fresh.max_batch, fresh._norm) == (None, None, None)


def test_pooled_features_are_resnets_forward_without_fc() -> None:
    net, x = _Resnetish(), _pixels()
    with torch.no_grad():
        got = network.pooled_features(net, x)
        assert got.shape == (2, 6)
        assert torch.equal(got, _by_hand(net, x))


def test_an_fp32_forward_pass_is_the_network_itself() -> None:
    model = _fake_model("fp32")
    assert forward_pass(model) is model.net


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_a_reduced_pass_runs_the_body_in_its_half_type_and_the_head_in_float32(
    precision: str, dtype: torch.dtype
) -> None:
    net = _Resnetish()
    model = _fake_model(precision, net)
    seen: dict[str, torch.dtype] = {}
    net.layer4.register_forward_hook(lambda m, i, out: seen.update(body=out.dtype))
    net.fc.register_forward_hook(lambda m, i, out: seen.update(head=i[0].dtype))
    x = _pixels()
    with torch.no_grad():
        logits = forward_pass(model)(x)
        seen_reduced = dict(seen)
        with torch.autocast(device_type="cpu", dtype=dtype):
            features = _by_hand(net, x)
        expected = net.fc(features.float())
    assert seen_reduced == {"body": dtype, "head": torch.float32}
    assert logits.dtype == torch.float32 and logits.shape == (2, 1000)
    assert torch.equal(logits, expected)


def test_the_compiled_pass_is_compiled_once_and_its_first_call_timed(monkeypatch, caplog) -> None:
    compiled_fns: list[tuple[object, dict[str, object]]] = []
    ran: list[object] = []

    def fake_compile(fn, **kwargs):
        compiled_fns.append((fn, kwargs))
        return lambda x: ran.append(x) or f"logits of {len(ran)}"

    monkeypatch.setattr(torch, "compile", fake_compile)
    ticks = iter([10.0, 12.5])
    monkeypatch.setattr(network, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    synced: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    model = _fake_model("fp32")
    caplog.set_level(logging.INFO, logger="resnext_cli.run.network")
    forward = network._compiled(model)
    assert compiled_fns == [(model.net, {"dynamic": False})]
    assert model.compile_seconds is None  # nothing timed before the first call
    x = torch.zeros(1)
    assert forward(x) == "logits of 1"
    assert model.compile_seconds == 2.5
    assert synced == []  # a CPU batch has nothing to wait for
    assert forward(x) == "logits of 2"  # not timed again: the clock has no third tick
    assert model.compile_seconds == 2.5 and ran == [x, x]
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "resnext_cli.run.network",
            "INFO",
            "torch.compile: 2.5 s compiling (the first batch's call)",
        )
    ]


def test_the_first_compiled_cuda_call_waits_for_the_device(monkeypatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: lambda x: "logits")
    ticks = iter([1.0, 4.0])
    monkeypatch.setattr(network, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    synced: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    model = _fake_model("fp32")
    on_gpu = types.SimpleNamespace(device=torch.device("cuda:1"))
    assert network._compiled(model)(on_gpu) == "logits"  # type: ignore[arg-type]
    assert synced == [torch.device("cuda:1")]
    assert model.compile_seconds == 3.0


def test_configure_backends_sets_ieee_fp32_and_autotuning_for_cuda_only(cuda_flags_on) -> None:
    network.configure_backends(dataclasses.replace(_plan(), device="cpu"))
    assert torch.backends.cudnn.allow_tf32 is True
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.get_float32_matmul_precision() == "high"
    assert torch.backends.cudnn.benchmark is False
    network.configure_backends(dataclasses.replace(_plan(), device="cuda:1"))
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cudnn.benchmark is True


def test_transform_for_takes_every_setting_of_the_plans_preprocessing() -> None:
    plan = _plan()
    odd = dataclasses.replace(
        plan.preprocess,
        resize_size=300,
        crop_size=260,
        interpolation="bicubic",
        antialias=False,
        mean=(0.1, 0.2, 0.3),
        std=(0.4, 0.5, 0.6),
    )
    transform = transform_for(dataclasses.replace(plan, preprocess=odd))
    assert transform.resize_size == [300] and transform.crop_size == [260]
    assert transform.interpolation_name == "bicubic" and transform.antialias is False
    assert transform.mean == [0.1, 0.2, 0.3] and transform.std == [0.4, 0.5, 0.6]


class _Moved(_Resnetish):
    """Notes each .to() it is given."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__(classes)
        self.moves: list[tuple[tuple[object, ...], dict[str, object]]] = []

    def to(self, *args, **kwargs):  # type: ignore[override]
        self.moves.append((args, kwargs))
        return super().to(*args, **kwargs)


@pytest.fixture
def built(monkeypatch) -> list[tuple[str, object, ...]]:
    """checkpoint.build_model and fold_batchnorm faked: a small network, each call noted."""
    from resnext_cli.model import checkpoint as checkpoint_module

    calls: list[tuple[str, object, ...]] = []

    def build_model(model: str, state, *, name: str):
        calls.append(("build", model, state, name))
        return _Moved(state["fc.weight"].shape[0])

    def fold_batchnorm(net):
        calls.append(("fold", net))
        return net

    monkeypatch.setattr(checkpoint_module, "build_model", build_model)
    monkeypatch.setattr(checkpoint_module, "fold_batchnorm", fold_batchnorm)
    monkeypatch.setattr(
        network, "configure_backends", lambda plan: calls.append(("backends", plan))
    )
    return calls


@pytest.mark.parametrize("fold", [True, False])
def test_a_float_model_is_built_folded_as_asked_channels_last_on_its_device(built, fold) -> None:
    plan = dataclasses.replace(_plan(), fold_batchnorm=fold)
    state = {"fc.weight": torch.zeros(1000, 6)}
    model = load_model(plan, state=(state, "given.pth"))
    net = model.net
    assert isinstance(net, _Moved)
    expected = [("build", plan.info.model, state, "given.pth")]
    expected += [("fold", net)] if fold else []
    assert built == [*expected, ("backends", plan)]
    assert net.moves == [((), {"memory_format": torch.channels_last}), (("cpu",), {})]
    assert net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.plan is plan and model.name == "given.pth" and model.openvino is None
    assert model.forward is None and model.compile_seconds is None
    assert model.transform.crop_size == [plan.preprocess.crop_size]
    assert model.transform.resize_size == [plan.preprocess.resize_size]


def test_a_float_model_with_the_wrong_class_count_is_refused_before_it_is_built(built) -> None:
    with pytest.raises(ConfigError) as info:
        load_model(_plan(), state=({"fc.weight": torch.zeros(7, 6)}, "seven.pth"))
    assert str(info.value).startswith("checkpoint 'seven.pth' has 7 classes but ")
    assert built == []


def test_compile_gives_the_model_its_compiled_pass(built, monkeypatch) -> None:
    compiled: list[object] = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or (lambda x: x))
    plan = dataclasses.replace(_plan(), compile=True)
    model = load_model(plan, state=({"fc.weight": torch.zeros(1000, 6)}, "given.pth"))
    assert compiled == [model.net]
    assert callable(model.forward) and model.forward is not model.net


def test_a_plan_without_a_state_loads_the_plans_own(built, monkeypatch) -> None:
    progress = object()
    state = {"fc.weight": torch.zeros(1000, 6)}
    asked: list[tuple[object, object]] = []

    def load_state(plan, *, progress=None):
        asked.append((plan, progress))
        return state, "read.pth"

    monkeypatch.setattr(network, "load_state", load_state)
    plan = _plan()
    model = load_model(plan, progress=progress)  # type: ignore[arg-type]
    assert asked == [(plan, progress)] and model.name == "read.pth"


@pytest.fixture
def int8_faked(monkeypatch) -> list[tuple[object, ...]]:
    """quantized.py's engine choice, class count and builder faked, each call noted."""
    from resnext_cli.model import quantized

    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(quantized, "quantized_engine", lambda: calls.append(("engine",)) or "x86")

    def num_classes(state, *, model: str, name: str) -> int:
        calls.append(("classes", state, model, name))
        return int(state["classes"])

    def build_quantized(model: str, state, *, name: str):
        calls.append(("build", model, state, name))
        return "the INT8 network"

    monkeypatch.setattr(quantized, "num_classes", num_classes)
    monkeypatch.setattr(quantized, "build_quantized", build_quantized)
    return calls


def test_an_int8_model_is_built_by_quantized_py_after_its_class_count_is_checked(
    int8_faked,
) -> None:
    plan = resolve(Config(model="101", quantized=True), AVX2)
    assert plan.precision == "int8"
    state = {"classes": 1000}
    model = load_model(plan, state=(state, "mine-int8.pth"))  # type: ignore[arg-type]
    assert int8_faked == [
        ("engine",),
        ("classes", state, "resnext101_32x8d", "mine-int8.pth"),
        ("build", "resnext101_32x8d", state, "mine-int8.pth"),
    ]
    assert model.net == "the INT8 network" and model.name == "mine-int8.pth"
    assert model.plan is plan and model.openvino is None and model.forward is None
    assert model.transform.crop_size == [plan.preprocess.crop_size]
    int8_faked.clear()
    with pytest.raises(ConfigError) as info:
        load_model(plan, state=({"classes": 10}, "ten.pth"))  # type: ignore[arg-type]
    assert str(info.value) == (
        "checkpoint 'ten.pth' has 10 classes but the bundled ImageNet labels have 1000 "
        "(give --labels FILE with 10 lines)"
    )
    assert [c[0] for c in int8_faked] == ["engine", "classes"]


def test_an_openvino_float_models_torch_network_is_built_once_on_the_cpu(monkeypatch) -> None:
    built: list[tuple[Plan, dict[str, object]]] = []
    net = _Resnetish()

    def load(plan: Plan, **kw: object) -> Model:
        built.append((plan, kw))
        return Model(plan, net, transform_for(plan), "built")

    monkeypatch.setattr(network, "load_model", load)
    plan = dataclasses.replace(_plan(), runtime="openvino")
    model = Model(plan, None, transform_for(plan), "mine.pth")
    assert model.net is net and model.net is net
    assert built == [(dataclasses.replace(plan, runtime="torch"), {})]


# _load_openvino, with openvino_runtime faked


class _Bundle:
    def __init__(self, classes: int = 1000, **manifest: object) -> None:
        self.classes = classes
        self.manifest = dict(manifest)


@pytest.fixture
def ovr_faked(monkeypatch, tmp_path) -> dict[str, list[object]]:
    """openvino_runtime's reading, caching and compiling faked; each call noted."""
    from resnext_cli.model import checkpoint as checkpoint_module
    from resnext_cli.model import openvino_runtime as ovr

    calls: dict[str, list[object]] = {
        "read": [],
        "network": [],
        "cached": [],
        "added": [],
        "stored": [],
    }
    state: dict[str, object] = {"bundle": _Bundle(), "cached": False, "stored": ("cat", "dog")}

    class Network:
        def __init__(self, bundle, *, int8: bool = False) -> None:
            calls["network"].append((bundle, int8))
            self.bundle = bundle

    def cached_bundle(key, folder, build, *, name, extra=None):
        calls["cached"].append((key, folder, build, name, extra))
        return state["bundle"], state["cached"]

    def add_to_manifest(entry, bundle, more):
        calls["added"].append((entry, bundle, more))
        return _Bundle(bundle.classes, **{**bundle.manifest, **more})

    def stored_classes(path):
        calls["stored"].append(path)
        return state["stored"]

    monkeypatch.setattr(ovr, "Network", Network)
    monkeypatch.setattr(ovr, "cached_bundle", cached_bundle)
    monkeypatch.setattr(ovr, "add_to_manifest", add_to_manifest)
    monkeypatch.setattr(ovr, "state_identity", lambda tensors: f"state:{sorted(tensors)}")
    monkeypatch.setattr(ovr, "file_identity", lambda path: f"file:{path.name}")
    monkeypatch.setattr(
        ovr,
        "read_bundle",
        lambda path, *, name: calls["read"].append((path, name)) or state["bundle"],
    )
    monkeypatch.setattr(checkpoint_module, "stored_classes", stored_classes)
    calls["state"] = [state]  # type: ignore[list-item]
    return calls


def _ov_plan(**changes: object) -> Plan:
    return dataclasses.replace(_plan(), runtime="openvino", **changes)  # type: ignore[arg-type]


def test_an_openvino_int8_file_is_read_and_checked(ovr_faked, monkeypatch, tmp_path) -> None:
    file = tmp_path / "mine.ovbundle"
    handed: list[object] = []
    monkeypatch.setattr(
        network,
        "weights_file",
        lambda plan, *, progress=None: handed.append(progress) or (file, "mine"),
    )
    [settings] = ovr_faked["state"]
    progress = object()
    plan = dataclasses.replace(
        resolve(Config(model="101", quantized=True), AVX2), runtime="openvino"
    )
    settings["bundle"] = _Bundle(1000, model="resnext101_32x8d")
    model = network._load_openvino(plan, progress=progress, state=None)  # type: ignore[arg-type]
    assert handed == [progress] and ovr_faked["read"] == [(file, "mine")]
    assert ovr_faked["network"] == [(settings["bundle"], True)]
    assert model.openvino.bundle is settings["bundle"] and model._net is None
    assert model.name == "mine" and model.plan is plan
    assert model.transform.crop_size == [plan.preprocess.crop_size]
    assert ovr_faked["cached"] == []
    settings["bundle"] = _Bundle(1000, model="resnext50_32x4d")
    with pytest.raises(CheckpointError) as info:
        network._load_openvino(plan, progress=None, state=None)
    assert str(info.value) == (
        "checkpoint 'mine' was made for resnext50_32x4d, not resnext101_32x8d "
        "(use -m resnext50_32x4d)"
    )
    settings["bundle"] = _Bundle(10, model="resnext101_32x8d")
    with pytest.raises(ConfigError) as info2:
        network._load_openvino(plan, progress=None, state=None)
    assert str(info2.value).startswith("checkpoint 'mine' has 10 classes but ")


def test_an_openvino_model_of_a_given_state_is_keyed_by_its_contents(
    ovr_faked, monkeypatch
) -> None:
    from resnext_cli.model import openvino_runtime as ovr

    [settings] = ovr_faked["state"]
    state = ({"fc.weight": torch.zeros(1000, 6)}, "given.pth")
    plan = _ov_plan(checkpoint="/somewhere/mine.pth", fold_batchnorm=True, device="cuda:1")
    progress = object()
    model = network._load_openvino(plan, progress=progress, state=state)  # type: ignore[arg-type]
    [(key, folder, build, name, extra)] = ovr_faked["cached"]
    assert key == ovr.CacheKey("resnext50_32x4d", "state:['fc.weight']", True, 224)
    assert folder == checkpoints_dir() / "openvino"
    assert name == "given.pth" and extra is None  # no file to read class names from
    assert ovr_faked["network"] == [(settings["bundle"], False)]
    assert model.name == "given.pth" and model._net is None and model.plan is plan
    assert ovr_faked["added"] == [] and ovr_faked["stored"] == []
    # The network to convert: the same weights through torch, on the CPU.
    loads: list[tuple[Plan, dict[str, object]]] = []
    monkeypatch.setattr(
        network,
        "load_model",
        lambda p, **kw: loads.append((p, kw)) or Model(p, "torch net", None, "n"),  # type: ignore[arg-type]
    )
    assert build() == "torch net"
    assert loads == [
        (
            dataclasses.replace(plan, runtime="torch", device="cpu"),
            {"progress": progress, "state": state},
        )
    ]


@pytest.mark.parametrize("stored", [("cat", "dog"), None, ()], ids=["names", "none", "empty"])
def test_an_openvino_model_of_a_local_checkpoint_keeps_its_class_names(
    ovr_faked, monkeypatch, tmp_path, stored
) -> None:
    from resnext_cli.model import openvino_runtime as ovr

    [settings] = ovr_faked["state"]
    settings["stored"] = stored
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"x")
    plan = _ov_plan(checkpoint=str(mine))
    network._load_openvino(plan, progress=None, state=None)
    [(key, _folder, _build, name, extra)] = ovr_faked["cached"]
    assert key == ovr.CacheKey("resnext50_32x4d", "file:mine.pth", plan.fold_batchnorm, 224)
    assert name == str(mine)
    assert ovr_faked["stored"] == []  # asked only when converting
    assert extra() == {ovr.CLASSES_KEY: list(stored) if stored else None}
    assert ovr_faked["stored"] == [mine]


def test_a_cached_conversion_without_the_class_names_gets_them(
    ovr_faked, monkeypatch, tmp_path
) -> None:
    from resnext_cli.model import openvino_runtime as ovr

    def weights_file(plan, *, progress=None):
        name = plan.checkpoint or "default.pth"
        return Path(name.rpartition("/")[2]), name

    monkeypatch.setattr(network, "weights_file", weights_file)

    [settings] = ovr_faked["state"]
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"x")
    plan = _ov_plan(checkpoint=str(mine))
    settings["cached"] = True
    old = settings["bundle"]
    model = network._load_openvino(plan, progress=None, state=None)
    [(key, folder, *_)] = ovr_faked["cached"]
    [(entry, bundle, more)] = ovr_faked["added"]
    assert entry == folder / key.file_name() and bundle is old
    assert more == {ovr.CLASSES_KEY: ["cat", "dog"]}
    assert model.openvino.bundle.manifest == {ovr.CLASSES_KEY: ["cat", "dog"]}
    # Kept already, or converted just now, or not a local file: nothing is added.
    for cached, manifest, checkpoint in [
        (True, {ovr.CLASSES_KEY: None}, str(mine)),
        (False, {}, str(mine)),
        (True, {}, "https://example.test/mine.pth"),
        (True, {}, None),
    ]:
        ovr_faked["added"].clear()
        settings["cached"], settings["bundle"] = cached, _Bundle(**manifest)
        network._load_openvino(_ov_plan(checkpoint=checkpoint), progress=None, state=None)
        assert ovr_faked["added"] == [], (cached, manifest, checkpoint)


def test_an_openvino_model_of_remote_or_default_weights_keeps_no_names(
    ovr_faked, monkeypatch, tmp_path
) -> None:
    fetched = tmp_path / "fetched.pth"
    handed: list[object] = []
    monkeypatch.setattr(
        network,
        "weights_file",
        lambda plan, *, progress=None: handed.append((plan, progress)) or (fetched, "w"),
    )
    progress = object()
    for checkpoint in ("https://example.test/mine.pth", None):
        ovr_faked["cached"].clear()
        handed.clear()
        plan = _ov_plan(checkpoint=checkpoint)
        network._load_openvino(plan, progress=progress, state=None)  # type: ignore[arg-type]
        [(key, _folder, _build, name, extra)] = ovr_faked["cached"]
        assert key.source == "file:fetched.pth" and name == "w" and extra is None
        assert handed == [(plan, progress)]


def test_an_openvino_model_with_the_wrong_class_count_is_refused(ovr_faked) -> None:
    [settings] = ovr_faked["state"]
    settings["bundle"] = _Bundle(10)
    with pytest.raises(ConfigError) as info:
        network._load_openvino(_ov_plan(), progress=None, state=({}, "ten.pth"))
    assert str(info.value) == (
        "checkpoint 'ten.pth' has 10 classes but the bundled ImageNet labels have 1000 "
        "(give --labels FILE with 10 lines)"
    )


def test_a_float_plan_reads_its_file_as_plain_tensors(tmp_path) -> None:
    mine = tmp_path / "mine.pth"
    saved = {"fc.weight": torch.arange(6.0).reshape(2, 3), "fc.bias": torch.ones(2)}
    torch.save(saved, mine)
    state, name = load_state(_plan(checkpoint=str(mine)))
    assert name == str(mine) and sorted(state) == ["fc.bias", "fc.weight"]
    assert all(torch.equal(state[k], saved[k]) for k in saved)
