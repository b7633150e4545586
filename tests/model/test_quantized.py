"""INT8 models: calibration, torchvision's quantized layout, checkpoints, engines, downloads."""

from __future__ import annotations

import hashlib
import pickle
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torchvision.transforms.functional import pil_to_tensor

from resnext_cli.errors import CheckpointError, ConfigError, OutputError, WeightsError
from resnext_cli.model import quantized, weights
from resnext_cli.model.registry import resolve_weights
from tests.conftest import natural_image

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
R50 = "resnext50_32x4d"


@pytest.fixture(autouse=True)
def restore_engine() -> Iterator[None]:
    """Building a model selects the process-wide quantized engine; put it back."""
    engine = torch.backends.quantized.engine
    yield
    torch.backends.quantized.engine = engine


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Sixteen generated photos, cropped to 224 and normalised as ImageNet weights expect."""
    images = [natural_image(seed, (224, 224)) for seed in range(100, 116)]
    batch = torch.stack([pil_to_tensor(im).float() / 255 for im in images])
    return (batch - MEAN) / STD


@pytest.fixture(scope="module")
def float_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(checkpoint, weights_only=True)
    return state


@pytest.fixture(scope="module")
def calibrated(
    float_state: dict[str, torch.Tensor], photos: torch.Tensor
) -> tuple[torch.nn.Module, list[int]]:
    """The test checkpoint, quantized after observing the photos four at a time."""
    seen: list[int] = []
    return (
        quantized.calibrate(R50, float_state, photos.split(4), name="w.pth", progress=seen.append),
        seen,
    )


@pytest.fixture(scope="module")
def int8(calibrated: tuple[torch.nn.Module, list[int]]) -> torch.nn.Module:
    return calibrated[0]


@pytest.fixture(scope="module")
def saved(int8: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("int8") / "my50-int8.pth"
    quantized.save_quantized(
        path, int8, model_name=R50, labels_count=1000, source="test.pth", weights="IMAGENET1K_V2"
    )
    return path


@pytest.fixture(scope="module")
def torchvision_int8(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A random 10-class INT8 resnext50, quantized and saved exactly as torchvision does."""
    from torchvision.models.quantization.resnet import QuantizableBottleneck, QuantizableResNet
    from torchvision.models.quantization.utils import _replace_relu, quantize_model

    engine = torch.backends.quantized.engine
    torch.manual_seed(7)
    net = QuantizableResNet(
        QuantizableBottleneck, [3, 4, 6, 3], groups=32, width_per_group=4, num_classes=10
    )
    # What torchvision.models.quantization's builders run for quantize=True.
    _replace_relu(net)
    with quantized._quiet():  # torchvision's own calls raise torch's deprecation notice
        quantize_model(net, "fbgemm")
    torch.backends.quantized.engine = engine
    path = tmp_path_factory.mktemp("tv") / "resnext50_fbgemm-00000000.pth"
    torch.save(net.state_dict(), path)
    return path, net


def probabilities(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.softmax(model(batch), dim=1)


def raw_load(path: Path) -> dict[str, Any]:
    with quantized._quiet():  # quantized tensors are rebuilt with deprecated storages
        obj: dict[str, Any] = torch.load(path, weights_only=True)
    return obj


def test_calibrated_model_round_trips_through_its_file(
    int8: torch.nn.Module, saved: Path, photos: torch.Tensor
) -> None:
    raw = raw_load(saved)
    assert raw[quantized.MARKER] == {
        "format": 1,
        "model": R50,
        "engine": torch.backends.quantized.engine,
        "num_classes": 1000,
        "source": "test.pth",
        "weights": "IMAGENET1K_V2",
    }
    assert quantized.is_quantized_checkpoint(raw)
    model, checkpoint = quantized.load_quantized(saved, R50, name="my50-int8.pth")
    assert (checkpoint.model, checkpoint.weights, checkpoint.num_classes) == (
        R50,
        "IMAGENET1K_V2",
        1000,
    )
    with torch.inference_mode():
        assert torch.equal(model(photos[:4]), int8(photos[:4]))
    assert [p.name for p in saved.parent.iterdir()] == ["my50-int8.pth"]  # no temp file left


def test_agreement_with_the_float_model(
    int8: torch.nn.Module, float_state: dict[str, torch.Tensor], photos: torch.Tensor
) -> None:
    reference = torchvision.models.resnext50_32x4d()
    reference.load_state_dict(float_state)
    p_float = probabilities(reference.eval(), photos).tolist()
    p_int8 = probabilities(int8, photos).tolist()

    def ranked(row: list[float]) -> list[int]:
        return sorted(range(len(row)), key=lambda i: -row[i])

    same_top1 = [ranked(a)[0] == ranked(b)[0] for a, b in zip(p_float, p_int8, strict=True)]
    same_top5 = [
        set(ranked(a)[:5]) == set(ranked(b)[:5]) for a, b in zip(p_float, p_int8, strict=True)
    ]
    biggest = max(
        abs(x - y) for a, b in zip(p_float, p_int8, strict=True) for x, y in zip(a, b, strict=True)
    )
    got = quantized.agreement(torch.tensor(p_float), torch.tensor(p_int8))
    assert got.images == 16
    assert got.top1 == sum(same_top1) / 16
    assert got.top5 == sum(same_top5) / 16
    assert got.max_abs_dp == pytest.approx(biggest, abs=1e-6)
    # By chance one image in a thousand would agree; a working calibration keeps many.
    # (Random weights quantize worse than trained ones: 9 of 16 agree here.)
    assert sum(same_top1) >= 4


def test_agreement_on_small_examples() -> None:
    a = torch.tensor([[0.5, 0.2, 0.12, 0.1, 0.06, 0.02], [0.1, 0.2, 0.3, 0.35, 0.05, 0.0]])
    b = torch.tensor([[0.4, 0.3, 0.1, 0.12, 0.0, 0.08], [0.4, 0.3, 0.15, 0.1, 0.05, 0.0]])
    # Image 1: top-1 0 in both, top-5 {0,1,2,3,4} against {0,1,2,3,5}; image 2: top-1
    # 3 against 0, top-5 {0,1,2,3,4} in both; the largest difference is 0.3 (image 2).
    assert quantized.agreement(a, b) == pytest.approx((0.5, 0.5, 0.3, 2))
    # Ten classes of a fine-tuned model: k stays 5; fewer than five compares them all.
    three = torch.tensor([[0.2, 0.3, 0.5]])
    assert quantized.agreement(three, three.flip(1)) == pytest.approx((0.0, 1.0, 0.3, 1))
    with pytest.raises(ValueError, match=r"different shapes: \[1, 3\] and \[2, 6\]"):
        quantized.agreement(three, a)


def test_torchvision_quantized_layout_loads(
    torchvision_int8: tuple[Path, torch.nn.Module],
    photos: torch.Tensor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, reference = torchvision_int8
    model, checkpoint = quantized.load_quantized(path, R50, name=path.name)
    assert checkpoint.model is None  # a bare state dict says nothing of itself
    # Every weight, scale and zero point is torchvision's, bit for bit.
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        mine = ours[key]
        if isinstance(value, tuple):  # the Linear's packed (weight, bias)
            value, mine = value[0], mine[0]
        if isinstance(value, torch.Tensor) and value.is_quantized:
            assert torch.equal(mine.int_repr(), value.int_repr()), key
            assert torch.equal(mine.q_per_channel_scales(), value.q_per_channel_scales()), key
        elif isinstance(value, torch.Tensor):
            assert torch.equal(mine, value), key
        else:
            assert mine == value, key
    # The class count is read from the INT8 fc layer. The x86 engine rounds a little
    # differently from fbgemm, which torchvision packed for: within two output steps.
    with torch.inference_mode():
        ours_out = model(photos[:2])
        theirs_out = reference(photos[:2])
    assert ours_out.shape == (2, 10)
    step = float(reference.fc.scale)
    assert (ours_out - theirs_out).abs().max().item() <= 2 * step + 1e-7
    # Packed for the same engine, the outputs are torchvision's exactly.
    monkeypatch.setattr(quantized, "supported_engines", lambda: ["fbgemm"])
    model, _ = quantized.load_quantized(path, R50, name=path.name)
    with torch.inference_mode():
        assert torch.equal(model(photos[:2]), theirs_out)


def test_a_state_dict_saved_as_a_plain_dict_loads(
    torchvision_int8: tuple[Path, torch.nn.Module],
    photos: torch.Tensor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """dict(state_dict()) drops the layout versions torch keeps in _metadata; without them
    torch reads the packed fc as an old layout and asks for 'fc.weight'. The keys are this
    layout's, so the file loads, and runs as torchvision's model does."""
    _, reference = torchvision_int8
    plain = dict(reference.state_dict())
    assert not hasattr(plain, "_metadata")
    path = tmp_path / "plain.pth"
    torch.save(plain, path)
    monkeypatch.setattr(quantized, "supported_engines", lambda: ["fbgemm"])
    model, _ = quantized.load_quantized(path, R50, name=path.name)
    with torch.inference_mode():
        assert torch.equal(model(photos[:2]), reference(photos[:2]))


@pytest.mark.parametrize("model", ["resnext101_32x8d", "resnext101_64x4d"])
def test_101_structure_matches_torchvisions_builders(model: str) -> None:
    """The ResNeXt101 variants have torchvision's keys and shapes (float, unconverted)."""
    import torchvision.models.quantization as tvq

    theirs = getattr(tvq, model)(weights=None, quantize=False).state_dict()
    ours = quantized._quantizable(model, 1000).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_wrong_model_is_named(torchvision_int8: tuple[Path, torch.nn.Module], saved: Path) -> None:
    path, _ = torchvision_int8
    with pytest.raises(CheckpointError) as info:
        quantized.load_quantized(path, "resnext101_32x8d", name="r50.pth")
    assert str(info.value) == (
        "checkpoint 'r50.pth' does not fit resnext101_32x8d: 238 missing keys (first: "
        "'layer3.6.conv1.weight'); 80 of the wrong shape (first: 'layer1.0.conv1.weight' is "
        "[128, 64, 1, 1], expected [256, 64, 1, 1]) (check --model matches the checkpoint)"
    )
    # A file `resnext quantize` wrote says which model it holds.
    with pytest.raises(CheckpointError) as info:
        quantized.load_quantized(saved, "resnext101_64x4d", name="my50-int8.pth")
    assert str(info.value) == (
        "checkpoint 'my50-int8.pth' holds quantized resnext50_32x4d, not resnext101_64x4d "
        "(use -m resnext50_32x4d)"
    )


def test_damaged_state_dict_is_described(torchvision_int8: tuple[Path, torch.nn.Module]) -> None:
    _, reference = torchvision_int8
    state = dict(reference.state_dict())
    state["extra.weight"] = state.pop("layer2.1.conv2.weight")
    state["layer1.0.conv1.weight"] = state["layer1.0.conv3.weight"]
    with pytest.raises(CheckpointError) as info:
        quantized.build_quantized(R50, state, name="bad.pth")
    assert str(info.value) == (
        "checkpoint 'bad.pth' does not fit resnext50_32x4d: 1 missing keys (first: "
        "'layer2.1.conv2.weight'); 1 unexpected keys (first: 'extra.weight'); 1 of the "
        "wrong shape (first: 'layer1.0.conv1.weight' is [256, 128, 1, 1], expected "
        "[128, 64, 1, 1]) (check --model matches the checkpoint)"
    )


def test_float_checkpoints_are_told_apart(
    checkpoint: Path, float_state: dict[str, torch.Tensor], saved: Path
) -> None:
    assert not quantized.is_quantized_checkpoint(float_state)
    assert not quantized.is_quantized_checkpoint({"model": float_state})
    # What a float loader keeps of an INT8 file (its tensors) still shows it is INT8.
    raw = raw_load(saved)
    tensors = {k: v for k, v in raw["state_dict"].items() if isinstance(v, torch.Tensor)}
    assert quantized.is_quantized_checkpoint(tensors)
    assert quantized.is_quantized_checkpoint({"state_dict": raw["state_dict"]})
    with pytest.raises(CheckpointError) as info:
        quantized.build_quantized(R50, float_state, name="float.pth")
    assert str(info.value) == (
        "checkpoint 'float.pth' holds float weights, not INT8 (drop --quantized, or make INT8 "
        "weights with 'resnext quantize -m resnext50_32x4d --checkpoint float.pth --calibrate "
        "PHOTOS -o OUT.pth')"
    )
    with pytest.raises(CheckpointError) as info:
        quantized.read_quantized(checkpoint, name="float.pth")
    assert str(info.value) == (
        "checkpoint 'float.pth' holds no INT8 weights (drop --quantized, or make them with "
        "'resnext quantize')"
    )


def test_loading_and_running_raise_no_warnings(saved: Path, photos: torch.Tensor) -> None:
    """torch.ao.quantization's deprecation notices stay inside the quantized module."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, _ = quantized.load_quantized(saved, R50, name="my50-int8.pth")
        with torch.inference_mode():
            out = model(photos[:1])
    assert out.shape == (1, 1000) and bool(torch.isfinite(out).all())


def test_loading_gives_back_the_threads_it_borrowed(saved: Path) -> None:
    """Repacking runs on one thread; the rest of the run gets the threads it had."""
    before = torch.get_num_threads()
    wanted = 3 if before != 3 else 2
    torch.set_num_threads(wanted)
    try:
        quantized.load_quantized(saved, R50, name="my50-int8.pth")
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


class Payload:
    """Something torch.load(weights_only=True) must refuse to build."""


def test_loading_never_unpickles_arbitrary_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with path.open("wb") as fp:
        pickle.dump({"state_dict": Payload()}, fp, protocol=2)
    with pytest.raises(CheckpointError) as info:
        quantized.read_quantized(path, name="evil.pth")
    assert str(info.value) == (
        "cannot load checkpoint 'evil.pth': UnpicklingError (give a state dict saved with "
        "torch.save)"
    )


def test_calibration_needs_photos_and_a_float_state(
    float_state: dict[str, torch.Tensor], int8: torch.nn.Module, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        quantized.calibrate(R50, float_state, [], name="w.pth")
    assert str(info.value) == "no photos to calibrate on (give --calibrate a folder of photos)"
    with pytest.raises(CheckpointError) as info:
        quantized.calibrate(R50, {"conv1.weight": torch.zeros(1)}, [], name="x.pth")
    assert str(info.value) == (
        "checkpoint 'x.pth' does not fit resnext50_32x4d: it has no float 'fc.weight' "
        "(give a state dict in torchvision's ResNeXt layout)"
    )
    with pytest.raises(ConfigError) as info:
        quantized.save_quantized(
            tmp_path / "x.pth", int8, model_name=R50, labels_count=10, source="test.pth"
        )
    assert str(info.value) == (
        "the model has 1000 classes but there are 10 labels (give --labels FILE with 1000 lines)"
    )
    assert not any(tmp_path.iterdir())


def test_calibration_reports_progress(calibrated: tuple[torch.nn.Module, list[int]]) -> None:
    assert calibrated[1] == [4, 8, 12, 16]


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["qnnpack", "onednn", "x86", "fbgemm"], "x86"),
        (["none", "qnnpack", "fbgemm"], "fbgemm"),
        (["none", "qnnpack"], "qnnpack"),
    ],
)
def test_engine_prefers_x86_and_falls_back(
    monkeypatch: pytest.MonkeyPatch, offered: list[str], chosen: str
) -> None:
    if chosen not in torch.backends.quantized.supported_engines:
        pytest.skip(f"this torch build cannot select {chosen}")
    monkeypatch.setattr(quantized, "supported_engines", lambda: offered)
    assert quantized.quantized_engine() == chosen
    assert torch.backends.quantized.engine == chosen


def test_no_engine_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantized, "supported_engines", lambda: ["none", "onednn"])
    with pytest.raises(ConfigError) as info:
        quantized.quantized_engine()
    assert str(info.value) == (
        "this torch build has no quantized CPU engine (it offers: none, onednn) (install a "
        "torch build with x86, fbgemm or qnnpack, or drop --quantized)"
    )


def test_fallback_engine_builds_a_working_model(
    monkeypatch: pytest.MonkeyPatch, saved: Path, int8: torch.nn.Module, photos: torch.Tensor
) -> None:
    if "qnnpack" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch build has no qnnpack")
    monkeypatch.setattr(quantized, "supported_engines", lambda: ["qnnpack"])
    model, _ = quantized.load_quantized(saved, R50, name="my50-int8.pth")
    assert torch.backends.quantized.engine == "qnnpack"
    with torch.inference_mode():
        x86 = int8(photos[:4])
        qnnpack = model(photos[:4])
    # qnnpack rounds differently, so it computes the same function with its own rounding:
    # each photo's logits correlate (0.98 here) more than those of any two photos do.
    for i, theirs in enumerate(x86):
        r = [torch.corrcoef(torch.stack([ours, theirs]))[0, 1].item() for ours in qnnpack]
        assert r[i] > 0.95
        assert r[i] > max(r[:i] + r[i + 1 :])


def test_int8_weights_are_fetched_cached_and_hash_checked(
    http_server: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    torchvision_int8: tuple[Path, torch.nn.Module],
    photos: torch.Tensor,
) -> None:
    base, root = http_server
    path, _ = torchvision_int8
    data = path.read_bytes()
    # Named as torch.hub names files: a sha256 prefix after the last dash.
    name = f"resnext50_int8_fbgemm-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (root / "quantized").mkdir()
    (root / "quantized" / name).write_bytes(data)
    monkeypatch.setenv("RESNEXT_WEIGHTS_MIRROR", base)
    url = f"{weights.DEFAULT_HOST}quantized/{name}"
    fetched = weights.fetch(url)
    assert fetched == Path(torch.hub.get_dir()) / "checkpoints" / name
    assert weights.fetch(url, offline=True) == fetched  # from the cache now
    model, _ = quantized.load_quantized(fetched, R50, name=str(fetched))
    original, _ = quantized.load_quantized(path, R50, name=path.name)
    with torch.inference_mode():
        assert torch.equal(model(photos[:2]), original(photos[:2]))

    # The published file's name carries its hash: other bytes under it are refused.
    info = resolve_weights("101-64", quantized=True)
    (root / "quantized" / info.filename).write_bytes(data)
    with pytest.raises(WeightsError) as error:
        weights.fetch(info.url)
    assert str(error.value) == (
        f"hash mismatch for '{info.filename}' from '{base}/quantized/{info.filename}': "
        f"expected sha256 starting 605a1cb3, got {hashlib.sha256(data).hexdigest()[:8]} "
        "(nothing was saved; try again)"
    )
    assert not weights.cached_path(info.url).exists()


def test_published_int8_files_carry_their_hash_as_torch_hub_reads_it() -> None:
    prefixes = {
        (info.model, info.tag): weights.expected_hash_prefix(info.filename)
        for info in [
            resolve_weights("101", "IMAGENET1K_FBGEMM_V1", quantized=True),
            resolve_weights("101", "IMAGENET1K_FBGEMM_V2", quantized=True),
            resolve_weights("101-64", quantized=True),
        ]
    }
    # torchvision named the first file with an underscore, so torch.hub checks no hash
    # for it either.
    assert prefixes == {
        ("resnext101_32x8d", "IMAGENET1K_FBGEMM_V1"): None,
        ("resnext101_32x8d", "IMAGENET1K_FBGEMM_V2"): "ee16d00c",
        ("resnext101_64x4d", "IMAGENET1K_FBGEMM_V1"): "605a1cb3",
    }
    assert torch.hub.HASH_REGEX.search("resnext101_32x8_fbgemm_09835ccf.pth") is None


def test_resnext50_int8_request_names_the_quantize_command() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_weights(R50, quantized=True)
    assert str(info.value) == (
        "resnext50_32x4d has no published INT8 weights (make them from your own photos with "
        "'resnext quantize -m resnext50_32x4d --calibrate PHOTOS -o my50-int8.pth', then use "
        "--checkpoint my50-int8.pth --quantized)"
    )


@pytest.mark.slow
def test_torchvision_resnext101_int8_state_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchvision's own quantize=True ResNeXt101 64x4d (the published layout) loads."""
    import torchvision.models.quantization as tvq

    engine = torch.backends.quantized.engine
    torch.manual_seed(11)
    with quantized._quiet():  # torchvision's own calls raise torch's deprecation notice
        reference = tvq.resnext101_64x4d(weights=None, quantize=True)
    torch.backends.quantized.engine = engine
    path = tmp_path / "r101.pth"
    torch.save(reference.state_dict(), path)
    # Packed for torchvision's engine, so the outputs can be compared bit for bit.
    monkeypatch.setattr(quantized, "supported_engines", lambda: ["fbgemm"])
    model, _ = quantized.load_quantized(path, "resnext101_64x4d", name="r101.pth")
    batch = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(batch), reference(batch))


# -- the edges of each step: class counts, load errors, calibration, files, agreement --------

NO_PACKED_FC = (
    "does not fit quantized resnext50_32x4d: it has no 'fc._packed_params._packed_params' "
    "(give a state dict of torchvision's quantized ResNeXt)"
)


def fc_only(classes: int, *, bias: bool = True) -> torch.nn.Module:
    """A stand-in INT8 network for what reads only its fc layer: 8 inputs, packed by torch."""
    from torch.ao.nn.quantized import Linear

    net = torch.nn.Module()
    with quantized._quiet():
        net.fc = Linear(8, classes, bias_=bias)  # type: ignore[no-untyped-call]
    return net


@pytest.mark.parametrize("bias", [True, False])
def test_class_count_is_the_packed_fc_layers_rows(bias: bool) -> None:
    state = fc_only(7, bias=bias).state_dict()
    assert quantized.num_classes(state, model=R50, name="x.pth") == 7


def test_class_count_of_a_state_without_packed_fc_is_refused() -> None:
    weight, bias = fc_only(7).state_dict()["fc._packed_params._packed_params"]
    # Nothing there; an empty tuple; the pair as a list (not torch's packed tuple).
    for value in [None, (), [weight, bias]]:
        state = {} if value is None else {"fc._packed_params._packed_params": value}
        with pytest.raises(CheckpointError) as info:
            quantized.num_classes(state, model=R50, name="mine.pth")
        assert str(info.value) == f"checkpoint 'mine.pth' {NO_PACKED_FC}"
    with pytest.raises(CheckpointError) as info:
        quantized.num_classes({}, model="resnext101_64x4d", name="r101.pth")
    assert str(info.value) == (
        "checkpoint 'r101.pth' does not fit quantized resnext101_64x4d: it has no "
        "'fc._packed_params._packed_params' (give a state dict of torchvision's quantized "
        "ResNeXt)"
    )


class SilentScale(torch.Tensor):
    """A scale whose conversion fails with an exception that has no text at all."""

    def __float__(self) -> float:
        raise ValueError()


def test_load_errors_name_their_first_line_or_their_type(
    torchvision_int8: tuple[Path, torch.nn.Module],
) -> None:
    _, reference = torchvision_int8
    # A tensor without data where a scale belongs: torch's error is several lines long,
    # "Error(s) in loading state_dict for QuantizableResNet:" and then the details.
    state = reference.state_dict()  # keeps torch's _metadata, as a saved file does
    state["quant.scale"] = torch.ones(1, device="meta")
    with pytest.raises(CheckpointError) as info:
        quantized.build_quantized(R50, state, name="bad.pth")
    assert str(info.value) == (
        "checkpoint 'bad.pth' does not fit quantized resnext50_32x4d: Error(s) in loading "
        "state_dict for QuantizableResNet: (give a state dict of torchvision's quantized ResNeXt)"
    )
    # An exception with an empty text is named by its type.
    state = reference.state_dict()
    state["fc.scale"] = torch.tensor(0.5).as_subclass(SilentScale)
    with pytest.raises(CheckpointError) as info:
        quantized.build_quantized(R50, state, name="bad.pth")
    assert str(info.value) == (
        "checkpoint 'bad.pth' does not fit quantized resnext50_32x4d: ValueError (give a state "
        "dict of torchvision's quantized ResNeXt)"
    )


def test_calibration_counts_images_not_batches(
    float_state: dict[str, torch.Tensor], photos: torch.Tensor
) -> None:
    small = photos[:3, :, :64, :64]  # the count is what matters here, not the picture
    seen: list[int] = []
    # An empty batch (a folder's last, all skipped) adds nothing and stops nothing.
    net = quantized.calibrate(
        R50, float_state, [small[:1], small[1:3], small[:0]], name="w.pth", progress=seen.append
    )
    assert seen == [1, 3, 3]
    assert isinstance(net.fc, torch.ao.nn.quantized.Linear)
    # Only empty batches: no image was observed.
    with pytest.raises(ConfigError) as info:
        quantized.calibrate(R50, float_state, [small[:0]], name="w.pth")
    assert str(info.value) == "no photos to calibrate on (give --calibrate a folder of photos)"


@pytest.mark.parametrize(
    "fc",
    [torch.zeros(10, 2048, dtype=torch.int64), torch.zeros(10), torch.zeros(1, 10, 2048)],
    ids=["integer", "1-d", "3-d"],
)
def test_calibration_needs_a_float_matrix_fc(fc: torch.Tensor) -> None:
    with pytest.raises(CheckpointError) as info:
        quantized.calibrate(R50, {"fc.weight": fc}, [], name="float.pth")
    assert str(info.value) == (
        "checkpoint 'float.pth' does not fit resnext50_32x4d: it has no float "
        "'fc.weight' (give a state dict in torchvision's ResNeXt layout)"
    )


def test_saved_file_keeps_the_class_names(tmp_path: Path) -> None:
    path = tmp_path / "pets-int8.pth"
    quantized.save_quantized(
        path,
        fc_only(3),
        model_name=R50,
        labels_count=3,
        source="pets.pth",
        names=("cat", "dog", "fox"),
    )
    raw = raw_load(path)
    assert raw["resnext_classes"] == ["cat", "dog", "fox"]
    # Without names (ImageNet's labels) the file keeps none.
    quantized.save_quantized(path, fc_only(3), model_name=R50, labels_count=3, source="p.pth")
    assert "resnext_classes" not in raw_load(path)


def test_saving_replaces_a_file_already_there(tmp_path: Path) -> None:
    """Without a target claimed before the work, the file there is overwritten."""
    path = tmp_path / "old.pth"
    path.write_bytes(b"an older file")
    got = quantized.save_quantized(path, fc_only(3), model_name=R50, labels_count=3, source="s")
    assert got == path
    assert raw_load(path)["resnext_quantized"]["num_classes"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["old.pth"]


def test_a_write_that_fails_is_an_output_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device_node: Callable[..., Path]
) -> None:
    full = device_node("full", "int8.pth")  # every write fails: no space left on device
    private = tmp_path / "tmp"  # where the bytes wait before they go into a device
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    with pytest.raises(OutputError) as info:
        quantized.save_quantized(full, fc_only(3), model_name=R50, labels_count=3, source="s")
    assert str(info.value) == (
        f"cannot write '{full}': No space left on device (choose a writable folder)"
    )
    assert full.is_char_device()
    assert not any(private.iterdir())


def test_read_quantized_returns_what_the_file_says(tmp_path: Path) -> None:
    path = tmp_path / "written.pth"
    meta = {
        "format": 1,
        "model": "resnext101_64x4d",
        "engine": "fbgemm",
        "num_classes": 3,
        "source": "mine.pth",
        "weights": "IMAGENET1K_V1",
    }
    torch.save({"resnext_quantized": meta, "state_dict": fc_only(3).state_dict()}, path)
    got = quantized.read_quantized(path, name="written.pth")
    assert (got.model, got.engine, got.num_classes, got.source, got.weights) == (
        "resnext101_64x4d",
        "fbgemm",
        3,
        "mine.pth",
        "IMAGENET1K_V1",
    )
    assert list(got.state) == [
        "fc.scale",
        "fc.zero_point",
        "fc._packed_params.dtype",
        "fc._packed_params._packed_params",
    ]
    torch.save({"resnext_quantized": meta}, path)
    with pytest.raises(CheckpointError) as info:
        quantized.read_quantized(path, name="written.pth")
    assert str(info.value) == (
        "checkpoint 'written.pth' has no 'state_dict' (write it again with resnext quantize)"
    )


def test_agreement_of_no_images_is_all_zero() -> None:
    got = quantized.agreement(torch.empty(0, 10), torch.empty(0, 10))
    assert tuple(got) == (0.0, 0.0, 0.0, 0)


def test_agreement_ranks_equal_probabilities_by_class_index() -> None:
    # A thousand equal float probabilities rank 0, 1, 2, ...: the INT8 ones, which put
    # classes 0 to 4 just ahead in that order, agree on both counts.
    a = torch.full((3, 1000), 0.001)
    b = a.clone()
    b[:, :5] += torch.tensor([5e-4, 4e-4, 3e-4, 2e-4, 1e-4])
    got = quantized.agreement(a, b)
    assert got == pytest.approx((1.0, 1.0, 5e-4, 3))
    # Ahead in another order or by other classes, they do not.
    b[1, :6] = torch.tensor([0.001, 0.0015, 0.001, 0.001, 0.001, 0.001])
    b[2, 995] = 0.002
    got = quantized.agreement(a, b)
    assert got == pytest.approx((1 / 3, 2 / 3, 1e-3, 3))
