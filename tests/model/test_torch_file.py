"""model/torch_file.py: torch checkpoints read without importing torch."""

from __future__ import annotations

import argparse
import pickle
import random
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from resnext_cli.model.torch_file import StoredFile, StoredTensor, Unsupported
from tests.helpers import TORCH_FILE_SEED as SEED
from tests.helpers import (
    saved_checkpoint,  # noqa: F401  (the saved fixture)
    zip_entries,
)

PROBE_CALLS: list[str] = []


def _probe() -> None:
    """A harmless global a hostile pickle points at: it records that it ran."""
    PROBE_CALLS.append("ran")


# -- building checkpoints -----------------------------------------------------------------


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    """Write a zip of *entries*, uncompressed."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


# -- reading -------------------------------------------------------------------------------


def test_read_gives_the_tree_with_tensor_references(saved: tuple[Path, dict[str, Any]]) -> None:
    path, original = saved
    with StoredFile(path) as stored:
        tree = stored.tree
    assert isinstance(tree, dict)
    assert list(tree) == ["state_dict", "names", "info", "epoch"]
    assert tree["names"] == ["cat", "dog"]
    assert tree["info"] == {"x": 1.5, "y": None, "z": True}
    assert list(tree["info"]) == ["x", "y", "z"]
    assert tree["epoch"] == 12
    state = tree["state_dict"]
    assert type(state) is dict  # the OrderedDict, _metadata dropped
    assert list(state) == list(original["state_dict"])
    for name, tensor in original["state_dict"].items():
        ref = state[name]
        assert isinstance(ref, StoredTensor), name
        assert ref.dtype == _dtype(tensor), name
        assert ref.shape == tuple(tensor.shape), name
        assert ref.stride == tensor.stride(), name
        assert ref.offset == tensor.storage_offset(), name
    assert state["shared_whole"].storage == state["shared_slice"].storage
    assert state["shared_slice"].offset == 2
    keys = [ref.storage for name, ref in state.items() if name != "shared_slice"]
    assert len(set(keys)) == len(keys)


def test_storage_bytes_hold_the_tensors_values(saved: tuple[Path, dict[str, Any]]) -> None:
    path, original = saved
    with StoredFile(path) as stored:
        for name, tensor in original["state_dict"].items():
            ref = stored.tree["state_dict"][name]  # type: ignore[index]
            expected = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
            values = np.frombuffer(stored.storage_bytes(ref.storage), dtype=expected.numpy().dtype)
            itemsize = values.itemsize
            view = np.lib.stride_tricks.as_strided(
                values[ref.offset :], ref.shape, tuple(s * itemsize for s in ref.stride)
            )
            np.testing.assert_array_equal(view, expected.numpy(), err_msg=name)


def test_a_parameter_reads_as_its_tensor(tmp_path: Path) -> None:
    path = tmp_path / "param.pth"
    torch.save({"p": torch.nn.Parameter(torch.ones(2, 3))}, path)
    with StoredFile(path) as stored:
        assert stored.tree == {"p": StoredTensor("float32", "0", 0, (2, 3), (3, 1))}


# -- refusals --------------------------------------------------------------------------------


def _p_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _p_ints(*values: int) -> bytes:
    return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"


def _tensor_pickle(
    *,
    numel: int = 4,
    offset: int = 0,
    shape: tuple[int, ...] = (4,),
    stride: tuple[int, ...] = (1,),
    storage: str = "FloatStorage",
    metadata: bytes = b"",
    after: bytes = b"",
) -> bytes:
    """A data.pkl as torch writes it for {'w': tensor}, assembled by hand."""
    pid = b"(" + _p_str("storage") + f"ctorch\n{storage}\n".encode() + _p_str("0")
    pid += _p_str("cpu") + struct.pack("<cI", b"J", numel) + b"tQ"
    args = b"(" + pid + struct.pack("<ci", b"J", offset) + _p_ints(*shape) + _p_ints(*stride)
    args += b"\x89ccollections\nOrderedDict\n)R" + metadata + b"t"
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R" + after
    return b"\x80\x02}(" + _p_str("w") + tensor + b"u."


def _crafted(tmp_path: Path, pkl: bytes, storage: bytes = bytes(16)) -> Path:
    entries = {"archive/data.pkl": pkl, "archive/byteorder": b"little"}
    entries |= {"archive/data/0": storage, "archive/version": b"3\n"}
    return _zip(tmp_path / "crafted.pth", entries)


def test_the_hand_made_tensor_file_is_read_by_both(tmp_path: Path) -> None:
    path = _crafted(tmp_path, _tensor_pickle(offset=1, shape=(3,)))
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(3))
    with StoredFile(path) as stored:
        assert stored.tree == {"w": StoredTensor("float32", "0", 1, (3,), (1,))}


@pytest.mark.parametrize(
    ("pkl", "storage"),
    [
        (_tensor_pickle(shape=(5,)), bytes(16)),
        (_tensor_pickle(offset=2, shape=(3,)), bytes(16)),
        (_tensor_pickle(shape=(3,), stride=(2,)), bytes(16)),
        (_tensor_pickle(shape=(2, 2), stride=(3, 1)), bytes(16)),
        (_tensor_pickle(offset=-1, shape=(1,)), bytes(16)),
        (_tensor_pickle(shape=(2,), stride=(1, 1)), bytes(16)),
        (_tensor_pickle(), bytes(12)),  # the entry is shorter than numel × 4
        (_tensor_pickle(), bytes(20)),
        (_tensor_pickle(storage="DoubleStorage"), bytes(16)),
        (_tensor_pickle(metadata=b"}(" + _p_str("conj") + b"\x88u"), bytes(16)),
        (_tensor_pickle(after=b"}(" + _p_str("offset") + b"K\x00ub"), bytes(16)),
    ],
    ids=[
        "past-end",
        "offset-past-end",
        "stride-past-end",
        "2d-past-end",
        "negative-offset",
        "stride-rank",
        "short-entry",
        "long-entry",
        "wrong-dtype-size",
        "metadata",
        "build-on-tensor",
    ],
)
def test_a_tensor_that_does_not_fit_its_storage_is_refused(
    tmp_path: Path, pkl: bytes, storage: bytes
) -> None:
    with pytest.raises(Unsupported):
        StoredFile(_crafted(tmp_path, pkl, storage))


@pytest.mark.parametrize(
    "pkl",
    [
        b"\x80\x02]q\x00h\x00a.",  # a list that holds itself
        b"\x80\x04\x8f.",  # a set
        b"\x80\x03C\x03abc.",  # bytes
        b"\x80\x02("
        + _p_str("storage")
        + b"ctorch\nFloatStorage\n"
        + _p_str("0")
        # a bare storage, not in a tensor
        + _p_str("cpu")
        + b"K\x04tQ.",
        b"\x80\x02ctorch\nFloatStorage\n.",
        b"\x80\x02ccollections\nOrderedDict\nK\x01\x85R.",  # OrderedDict(1)
        b"\x80\x02}",  # no STOP
        b"not a pickle",
    ],
)
def test_a_hostile_or_malformed_pickle_is_refused(tmp_path: Path, pkl: bytes) -> None:
    with pytest.raises(Unsupported):
        StoredFile(_crafted(tmp_path, pkl))


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("subprocess", "Popen"),
        ("torch", "Tensor"),
        ("torch._utils", "_rebuild_qtensor"),
        ("torch.nn.modules.linear", "Linear"),
        ("collections", "Counter"),
    ],
)
def test_a_global_off_the_allow_list_is_refused(tmp_path: Path, module: str, name: str) -> None:
    pkl = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"."
    with pytest.raises(Unsupported, match=re.escape(f"'{module}.{name}'")):
        StoredFile(_crafted(tmp_path, pkl))


def test_a_refused_global_is_never_called(tmp_path: Path) -> None:
    pkl = b"\x80\x02c" + f"{__name__}\n_probe\n".encode() + b")R."
    PROBE_CALLS.clear()
    pickle.loads(pkl)  # the payload runs when unpickled the ordinary way
    assert PROBE_CALLS == ["ran"]
    PROBE_CALLS.clear()
    with pytest.raises(Unsupported, match="_probe"):
        StoredFile(_crafted(tmp_path, pkl))
    assert PROBE_CALLS == []


def test_an_object_torch_pickles_as_a_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "args.pth"
    torch.save({"args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(Unsupported, match=re.escape("argparse.Namespace")):
        StoredFile(path)


def test_the_legacy_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    with pytest.raises(Unsupported, match="zip"):
        StoredFile(path)


def test_random_bytes_and_an_empty_file_are_refused(tmp_path: Path) -> None:
    noise = tmp_path / "noise.pth"
    noise.write_bytes(random.Random(SEED).randbytes(4096))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for path in (noise, empty):
        with pytest.raises(Unsupported):
            StoredFile(path)


@pytest.mark.parametrize(
    "entries",
    [
        {"archive/version": b"3\n", "archive/data/0": b""},
        {"data.pkl": b"\x80\x02}."},
        {"archive/data.pkl": b"\x80\x02}.", "other/version": b"3\n"},
        {"archive/data.pkl": b"\x80\x02}.", "archive/byteorder": b"big"},
        {"archive/data.pkl": b"\x80\x02}.", "archive/version": b"99\n"},
    ],
    ids=["no-data-pkl", "no-folder", "two-folders", "big-endian", "future-version"],
)
def test_an_odd_archive_is_refused(tmp_path: Path, entries: dict[str, bytes]) -> None:
    with pytest.raises(Unsupported):
        StoredFile(_zip(tmp_path / "odd.pth", entries))


def test_a_truncated_storage_from_torch_save_is_refused(
    saved: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, _ = saved
    entries = zip_entries(path)
    entries["original/data/0"] = entries["original/data/0"][:-4]
    with pytest.raises(Unsupported, match="storage '0'"):
        StoredFile(_zip(tmp_path / "truncated.pth", entries))


def test_the_minimal_archive_reads(tmp_path: Path) -> None:
    with StoredFile(_zip(tmp_path / "min.pth", {"archive/data.pkl": b"\x80\x02}."})) as stored:
        assert stored.tree == {}
