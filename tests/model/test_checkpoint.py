"""model/checkpoint.py: the load takes what the peek read, and never a stale copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from resnext_cli.errors import CheckpointError
from resnext_cli.model import checkpoint as ckpt


def _learned(path: Path, names: list[str], *, seed: int) -> Path:
    """A small file in the layout 'resnext learn' writes: a state dict and class names."""
    torch.manual_seed(seed)
    state = {"fc.weight": torch.randn(len(names), 4), "fc.bias": torch.randn(len(names))}
    torch.save({"state_dict": state, ckpt.CLASSES_KEY: names}, path)
    return path


def test_a_checkpoint_changed_after_the_peek_is_read_anew(
    loads: list[object], tmp_path: Path
) -> None:
    path = _learned(tmp_path / "learned.pth", ["cat", "dog"], seed=1)
    assert ckpt.stored_classes(path) == ("cat", "dog")
    # Replaced between the peek and the load, as 'resnext learn --force' publishes it.
    newer = _learned(tmp_path / "newer.pth", ["ant", "bee", "cow"], seed=2)
    expected = torch.load(newer, weights_only=True)["state_dict"]
    loads.clear()
    os.replace(newer, path)
    state = ckpt.read_state_dict(path, name="learned.pth")
    assert len(loads) == 1
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_the_load_takes_what_the_peek_read_and_keeps_nothing(
    loads: list[object], tmp_path: Path
) -> None:
    path = _learned(tmp_path / "learned.pth", ["cat", "dog"], seed=1)
    assert ckpt.stored_classes(path) == ("cat", "dog")
    assert ckpt.stored_classes(path) == ("cat", "dog")  # a second peek: still the one read
    first = ckpt.read_state_dict(path, name="learned.pth")
    assert len(loads) == 1
    # Taken by that load: the next one reads the file again rather than hold the weights.
    second = ckpt.read_state_dict(path, name="learned.pth")
    assert len(loads) == 2
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_file_the_peek_cannot_read_is_refused_by_the_load(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_bytes(b"not a checkpoint")
    assert ckpt.stored_classes(path) is None
    with pytest.raises(CheckpointError) as info:
        ckpt.read_state_dict(path, name="notes.pth")
    assert str(info.value).startswith("cannot load checkpoint 'notes.pth': ")


class NotWeights:
    """Any object beside the tensors: a weights-only load must refuse to build it."""


def refused(call) -> str:
    with pytest.raises(CheckpointError) as info:
        call()
    return str(info.value)


def test_state_dicts_are_found_under_each_wrapper_and_prefix(tmp_path: Path) -> None:
    inner = {"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}
    for wrapper in ("state_dict", "model", "model_state_dict"):
        assert ckpt.unwrap({wrapper: inner, "epoch": 3}) is inner
    assert ckpt.unwrap({"other": inner}) == {"other": inner}
    path = tmp_path / "ddp.pth"
    torch.save({"module." + k: v for k, v in inner.items()}, path)
    assert sorted(ckpt.read_state_dict(path, name="ddp.pth")) == ["fc.bias", "fc.weight"]
    torch.save({"module.fc.weight": inner["fc.weight"], "fc.bias": inner["fc.bias"]}, path)
    assert sorted(ckpt.read_state_dict(path, name="ddp.pth")) == ["fc.bias", "module.fc.weight"]


def test_what_a_weights_only_load_refuses_and_int8_are_named(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    torch.save({"fc.weight": torch.ones(2, 2), "extra": NotWeights()}, path)
    assert refused(lambda: ckpt.read_state_dict(path, name="c.pth")) == (
        "cannot load checkpoint 'c.pth': UnpicklingError (give a state dict saved with torch.save)"
    )
    torch.save({"fc.weight": torch.ones(2, 2), ckpt.INT8_MARKER: True}, path)
    assert refused(lambda: ckpt.read_state_dict(path, name="c.pth")) == (
        "checkpoint 'c.pth' holds INT8 weights (add --quantized)"
    )


def test_int8_is_told_by_its_tensors_or_its_packed_params() -> None:
    q = torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)
    assert ckpt.holds_int8({"state_dict": {"fc.weight": q}})
    assert ckpt.holds_int8({"fc._packed_params._packed_params": (torch.ones(1),)})
    assert ckpt.holds_int8({ckpt.INT8_MARKER: 1})
    assert not ckpt.holds_int8({"fc.weight": torch.ones(2), "fc_packed": torch.ones(1)})
    assert not ckpt.holds_int8([q])


def test_class_names_are_kept_only_as_a_list_of_text(tmp_path: Path) -> None:
    for names in ([], "cat", ["cat", 3]):
        path = tmp_path / "c.pth"
        torch.save({"state_dict": {"fc.bias": torch.zeros(1)}, ckpt.CLASSES_KEY: names}, path)
        assert ckpt.stored_classes(path) is None
        ckpt.read_state_dict(path, name="c.pth")  # take what the peek kept


def test_each_tensor_the_network_cannot_use_is_named() -> None:
    want = {"w": torch.zeros(2, 2), "n": torch.zeros((), dtype=torch.int64)}
    good = {"w": torch.ones(2, 2, dtype=torch.float16), "n": torch.tensor(5)}
    out = ckpt._check_tensors(good, want, "c.pth")
    assert out["w"].dtype == torch.float32 and out["n"].dtype == torch.int64
    cases = [
        ({"w": torch.ones(2, 2).to_sparse()}, "tensor 'w' is sparse_coo, not a dense tensor"),
        ({"w": torch.ones(2, 2, device="meta")}, "tensor 'w' is meta, not a dense tensor"),
        ({"w": torch.ones(2, 2, dtype=torch.int32)}, "tensor 'w' is int32, not floating point"),
        ({"w": torch.tensor([[1.0, float("nan")], [0, 0]])}, "tensor 'w' holds NaN or infinite"),
        ({"n": torch.tensor(5.0)}, "tensor 'n' should hold integers, not torch.float32"),
        ({"n": torch.tensor(5j)}, "tensor 'n' should hold integers, not torch.complex64"),
    ]
    endings = {
        "dense tensor": " (save real weights)",
        "floating point": " (give a float checkpoint)",
        "infinite": " values (the checkpoint is damaged)",
        "integers": "",
        "complex64": "",
        "float32": "",
    }
    for bad, start in cases:
        message = refused(lambda bad=bad: ckpt._check_tensors({**good, **bad}, want, "c.pth"))
        ending = next(v for k, v in endings.items() if start.endswith(k))
        assert message == f"checkpoint 'c.pth': {start}{ending}"


def test_a_checkpoint_that_does_not_fit_names_the_first_of_each_kind() -> None:
    expected = {k: torch.zeros(2) for k in ("a", "b", "c", "d")}
    expected["fc._packed_params"] = (torch.zeros(3, 4), torch.zeros(3))
    state = {
        "c": torch.zeros(5),
        "d": torch.zeros(6),
        "fc._packed_params": (torch.zeros(3, 4), None),
        "x": torch.zeros(1),
        "y": torch.zeros(1),
    }
    message = refused(lambda: ckpt.check_fit(expected, state, model="resnext50_32x4d", name="c"))
    assert message == (
        "checkpoint 'c' does not fit resnext50_32x4d: 2 missing keys (first: 'a'); 2 "
        "unexpected keys (first: 'x'); 2 of the wrong shape (first: 'c' is [5], expected "
        "[2]) (check --model matches the checkpoint)"
    )
    only = refused(lambda: ckpt.check_fit({"a": torch.zeros(1)}, {}, model="m", name="c"))
    assert only == (
        "checkpoint 'c' does not fit m: 1 missing keys (first: 'a') (check --model matches "
        "the checkpoint)"
    )
    ckpt.check_fit(expected, {**expected}, model="m", name="c")  # a fit says nothing


def test_a_state_without_a_classifier_is_not_a_resnext() -> None:
    for fc in (None, torch.zeros(4)):
        state = {} if fc is None else {"fc.weight": fc}
        assert refused(
            lambda state=state: ckpt.build_model("resnext50_32x4d", state, name="c")
        ) == (
            "checkpoint 'c' does not fit resnext50_32x4d: it has no 'fc.weight' (give a state "
            "dict in torchvision's ResNeXt layout)"
        )


def test_extra_keys_alone_do_not_fit() -> None:
    message = refused(
        lambda: ckpt.check_fit({"a": torch.zeros(1)}, {"a": torch.zeros(1), "z": torch.zeros(1)},
                               model="m", name="c")
    )  # fmt: skip
    assert message == (
        "checkpoint 'c' does not fit m: 1 unexpected keys (first: 'z') (check --model "
        "matches the checkpoint)"
    )


def test_the_network_has_as_many_classes_as_the_checkpoints_fc() -> None:
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.resnext50_32x4d(num_classes=3).state_dict()
    net = ckpt.build_model("resnext50_32x4d", state, name="c")
    assert net.fc.out_features == 3 and not net.training
    assert torch.equal(net.state_dict()["fc.weight"], state["fc.weight"])
