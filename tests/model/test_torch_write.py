"""model/torch_write.py: torch checkpoints written without importing torch."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from resnext_cli.model.torch_file import StoredFile, StoredTensor
from resnext_cli.model.torch_write import write_checkpoint
from tests.helpers import TORCH_FILE_SEED as SEED
from tests.helpers import (
    saved_checkpoint,  # noqa: F401  (the saved fixture)
    zip_entries,
)

SRC = Path(__file__).resolve().parents[2] / "src"


# -- building and comparing checkpoints --------------------------------------------------


def _assert_same(actual: object, expected: object, where: str = "tree") -> None:
    """Assert two loaded trees are equal: types, key order, and tensors' dtype and layout."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), where
        assert actual.stride() == expected.stride(), where
        assert actual.storage_offset() == expected.storage_offset(), where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert list(actual) == list(expected), where
        for key, value in expected.items():
            _assert_same(actual[key], value, f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected), where
        assert len(actual) == len(expected), where
        for n, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_same(a, e, f"{where}[{n}]")
    else:
        # repr tells -0.0 from 0.0 and keeps lone surrogates.
        assert (type(actual), repr(actual)) == (type(expected), repr(expected)), where


def _as_tensors() -> Callable[[np.ndarray[Any, Any]], torch.Tensor]:
    """Turn arrays into what torch should load: values, contiguous, native byte order.

    One array met twice gives one tensor, as the writer gives it one storage.
    """
    made: dict[int, torch.Tensor] = {}

    def convert(array: np.ndarray[Any, Any]) -> torch.Tensor:
        if id(array) not in made:
            native = np.array(array, dtype=array.dtype.newbyteorder("="), order="C", copy=True)
            loaded = torch.from_numpy(native)
            out = torch.empty(loaded.shape, dtype=loaded.dtype)  # torch's contiguous strides
            made[id(array)] = out.copy_(loaded)
        return made[id(array)]

    return convert


def _new_arrays() -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(SEED)
    once = rng.standard_normal(4).astype(np.float32)
    return {
        "fc.weight": rng.standard_normal((3, 4)).astype(np.float32),
        "fc.bias": rng.standard_normal(3).astype(np.float32),
        "float64": rng.standard_normal(3),
        "float16": rng.standard_normal(3).astype(np.float16),
        "int64": np.array([-(2**40), 0, 2**40], dtype=np.int64),
        "int32": np.array([-5, 5], dtype=np.int32),
        "int16": np.array([-300, 300], dtype=np.int16),
        "int8": np.array([-7, 7], dtype=np.int8),
        "uint8": np.array([1, 200], dtype=np.uint8),
        "bool": np.array([[True, False]]),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((2, 0, 3), dtype=np.float32),
        "transposed": rng.standard_normal((3, 5)).astype(np.float32).T,
        "big_endian": rng.standard_normal((2, 2)).astype(">f4"),
        "twice_a": once,
        "twice_b": once,
    }


HOSTILE_STRINGS = [
    "",
    "line\nbreak\r\n\ttab",
    "\x00\x01\x07\x1b[31mred\x1b[0m\x7f",
    "\u2028\u2029\ufeff",
    "😀 𝄞 non-BMP",
    "\ud800 lone surrogate",
    "'\"\\ quotes",
    "c\nos\nsystem\n(X\x04\x00\x00\x00tR.",
    "x" * 10_000,
]
INTS = [0, 1, 255, 256, 65535, 65536, -1, -128, -129, -(2**31), 2**31 - 1, 2**31]
INTS += [-(2**31) - 1, 2**40, -(2**40), 2**63, 2**64, -(2**64), 2**200, -(2**200)]
FLOATS = [0.0, -0.0, 1.5, -2.25, 1e-300, 1e300, float("inf"), float("-inf"), 3.141592653589793]


def _plain_values() -> dict[Any, Any]:
    return {
        "strings": HOSTILE_STRINGS,
        "ints": INTS,
        "floats": FLOATS,
        "flags": [True, False, None],
        "tuples": [(), (1,), (1, "a"), (1, 2.5, None), (1, 2, 3, 4)],
        "nested": {"a": [1, (2, [3, {"b": None}])], "empty_dict": {}, "empty_list": []},
        7: "an int key",
        -1: "a negative key",
        (1, "a"): "a tuple key",
    }


def _edited(
    base: dict[str, Any],
    arrays: dict[str, np.ndarray[Any, Any]],
    convert: Callable[[np.ndarray[Any, Any]], object],
) -> dict[str, Any]:
    """*base* with fc replaced, the other arrays under 'new' and plain values added."""
    state = dict(base["state_dict"])
    state["fc.weight"] = convert(arrays["fc.weight"])
    state["fc.bias"] = convert(arrays["fc.bias"])
    new = {k: convert(v) for k, v in arrays.items() if not k.startswith("fc.")}
    return {**base, "state_dict": state, "new": new, "values": _plain_values()}


@pytest.fixture
def rewritten(
    saved: tuple[Path, dict[str, Any]], tmp_path: Path
) -> tuple[Path, Path, dict[str, Any]]:
    """The original, its rewrite with new arrays and values, and what the rewrite should load."""
    path, _ = saved
    arrays = _new_arrays()
    out = tmp_path / "rewritten.pth"
    with StoredFile(path) as stored, open(out, "wb") as fp:
        write_checkpoint(fp, _edited(stored.tree, arrays, lambda a: a), source=stored)  # type: ignore[arg-type]
    expected = _edited(torch.load(path, weights_only=True), arrays, _as_tensors())
    return path, out, expected


def _data_offsets(path: Path) -> dict[str, int]:
    """Where each entry's data starts in the file, from its local header."""
    raw = path.read_bytes()
    offsets = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            at = info.header_offset
            name_len, extra_len = struct.unpack("<HH", raw[at + 26 : at + 30])
            offsets[info.filename] = at + 30 + name_len + extra_len
    return offsets


# -- writing -------------------------------------------------------------------------------


def test_round_trip_loads_as_the_original_plus_the_new(
    rewritten: tuple[Path, Path, dict[str, Any]],
) -> None:
    _, out, expected = rewritten
    _assert_same(torch.load(out, weights_only=True), expected)


def test_round_trip_loads_with_mmap(rewritten: tuple[Path, Path, dict[str, Any]]) -> None:
    _, out, expected = rewritten
    _assert_same(torch.load(out, weights_only=True, mmap=True), expected)


def test_round_trip_keeps_shared_storages_shared(
    rewritten: tuple[Path, Path, dict[str, Any]],
) -> None:
    _, out, _ = rewritten
    loaded = torch.load(out, weights_only=True)
    state, new = loaded["state_dict"], loaded["new"]

    def ptr(t: torch.Tensor) -> int:
        return int(t.untyped_storage().data_ptr())

    assert ptr(state["shared_whole"]) == ptr(state["shared_slice"])
    assert state["shared_slice"].storage_offset() == 2
    assert ptr(new["twice_a"]) == ptr(new["twice_b"])
    assert ptr(state["shared_whole"]) != ptr(state["half"])


@pytest.fixture
def reference(rewritten: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> Path:
    """What torch.save writes of the tree the rewritten file should hold."""
    path = tmp_path / "reference.pth"
    torch.save(rewritten[2], path)
    return path


def test_round_trip_equals_what_torch_save_writes_of_the_same_tree(
    rewritten: tuple[Path, Path, dict[str, Any]], reference: Path
) -> None:
    _, out, _ = rewritten
    _assert_same(torch.load(out, weights_only=True), torch.load(reference, weights_only=True))


def test_written_zip_is_laid_out_as_torch_writes_it(
    rewritten: tuple[Path, Path, dict[str, Any]], reference: Path
) -> None:
    _, out, _ = rewritten
    ours, theirs = zip_entries(out), zip_entries(reference)

    def layout(entries: dict[str, bytes]) -> list[str]:
        return [name.partition("/")[2] for name in entries]

    assert layout(ours) == layout(theirs)  # same records, same order, storages 0..n-1
    for record in ("byteorder", "version", ".format_version", ".storage_alignment"):
        assert ours[f"archive/{record}"] == theirs[f"reference/{record}"], record
    assert ours["archive/byteorder"] == b"little"
    assert ours["archive/version"] == b"3\n"
    assert len(ours["archive/.data/serialization_id"]) == 40
    with zipfile.ZipFile(out) as zf:
        assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_STORED}
        assert zf.testzip() is None  # every CRC right
    assert all(offset % 64 == 0 for offset in _data_offsets(out).values())


def test_copied_storages_are_byte_for_byte(rewritten: tuple[Path, Path, dict[str, Any]]) -> None:
    path, out, _ = rewritten
    with StoredFile(path) as source, StoredFile(out) as copy:
        old, new = source.tree["state_dict"], copy.tree["state_dict"]  # type: ignore[index]
        for name in ("0.weight", "1.num_batches_tracked", "bf16", "transposed", "shared_slice"):
            assert (new[name].offset, new[name].shape) == (old[name].offset, old[name].shape)
            assert copy.storage_bytes(new[name].storage) == source.storage_bytes(
                old[name].storage
            ), name


def test_writes_into_a_stream_that_cannot_seek(saved: tuple[Path, dict[str, Any]]) -> None:
    class Stream(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            self.data += b
            return len(b)

    path, _ = saved
    stream = Stream()
    with StoredFile(path) as stored:
        write_checkpoint(stream, stored.tree, source=stored)  # type: ignore[arg-type]
    loaded = torch.load(io.BytesIO(bytes(stream.data)), weights_only=True)
    _assert_same(loaded, torch.load(path, weights_only=True))


# -- what the writer refuses ------------------------------------------------------------------


@pytest.mark.parametrize(
    "leaf",
    [
        {1, 2},
        b"bytes",
        object(),
        np.float32(1.0),
        np.zeros(2, dtype=np.complex64),
        np.zeros(2, dtype=object),
        np.zeros(2, dtype=np.uint16),
    ],
    ids=["set", "bytes", "object", "np-scalar", "complex", "object-array", "uint16"],
)
def test_a_leaf_the_writer_cannot_write_is_a_type_error(leaf: object) -> None:
    with pytest.raises(TypeError):
        write_checkpoint(io.BytesIO(), {"x": [leaf]}, source=None)


def test_a_stored_tensor_the_source_lacks_is_a_value_error(
    saved: tuple[Path, dict[str, Any]],
) -> None:
    path, _ = saved
    with StoredFile(path) as stored:
        good = stored.tree["state_dict"]["fc.bias"]  # type: ignore[index]
        with pytest.raises(ValueError, match="source"):
            write_checkpoint(io.BytesIO(), {"w": good}, source=None)
        for bad in (
            StoredTensor("float32", "999", 0, (1,), (1,)),
            StoredTensor("int64", good.storage, 0, (1,), (1,)),
            StoredTensor("float32", good.storage, 1, (3,), (1,)),
        ):
            with pytest.raises(ValueError):
                write_checkpoint(io.BytesIO(), {"w": bad}, source=stored)


def test_an_int_beyond_what_torch_reads_is_a_value_error() -> None:
    write_checkpoint(io.BytesIO(), {"n": 2**2000}, source=None)
    with pytest.raises(ValueError, match="too large"):
        write_checkpoint(io.BytesIO(), {"n": 2**2100}, source=None)


def test_a_tree_that_holds_itself_is_a_value_error() -> None:
    tree: list[object] = []
    tree.append(tree)
    with pytest.raises(ValueError, match="deep"):
        write_checkpoint(io.BytesIO(), tree, source=None)


# -- no torch ----------------------------------------------------------------------------------


def test_reading_and_writing_never_import_torch(
    saved: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, original = saved
    out = tmp_path / "out.pth"
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from resnext_cli.model.torch_file import StoredFile\n"
        "from resnext_cli.model.torch_write import write_checkpoint\n"
        "with StoredFile(sys.argv[1]) as f, open(sys.argv[2], 'wb') as out:\n"
        "    tree = f.tree\n"
        "    tree['state_dict']['fc.bias'] = np.zeros(3, np.float32)\n"
        "    write_checkpoint(out, tree, source=f)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    loaded = torch.load(out, weights_only=True)
    assert torch.equal(loaded["state_dict"]["fc.bias"], torch.zeros(3))
    assert torch.equal(loaded["state_dict"]["0.weight"], original["state_dict"]["0.weight"])
