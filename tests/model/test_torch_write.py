"""model/torch_write.py: torch checkpoints written without importing torch."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from resnext_cli.model.torch_file import StoredFile, StoredTensor, Unsupported
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


# -- helpers for the checks below ----------------------------------------------------------


def _written(tree: object) -> bytes:
    """The file write_checkpoint makes of *tree* (no source)."""
    out = io.BytesIO()
    write_checkpoint(out, tree, source=None)
    return out.getvalue()


def _entry(data: bytes, suffix: str) -> bytes:
    """The one entry of the zip *data* whose name ends in *suffix*."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(suffix)]
        return zf.read(name)


def _message(exc_type: type[BaseException], call: Callable[[], object]) -> str:
    """The message of the *exc_type* (that exact type) *call* raises."""
    with pytest.raises(exc_type) as info:
        call()
    assert type(info.value) is exc_type
    return str(info.value)


def _local_headers(raw: bytes) -> dict[str, tuple[int, bytes]]:
    """Each entry's data offset and local header extra field, read from the bytes themselves."""
    found = {}
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        for info in zf.infolist():
            at = info.header_offset
            assert raw[at : at + 4] == b"PK\x03\x04"
            name_len, extra_len = struct.unpack("<HH", raw[at + 26 : at + 30])
            assert raw[at + 30 : at + 30 + name_len] == info.filename.encode()
            extra = raw[at + 30 + name_len : at + 30 + name_len + extra_len]
            found[info.filename] = (at + 30 + name_len + extra_len, extra)
    return found


def _fb_padding(extra: bytes) -> int:
    """Check *extra* opens with torch's padding record ('FB', a size, that many 'Z's)."""
    assert extra[:2] == b"FB", extra[:8]
    pad = int.from_bytes(extra[2:4], "little")
    assert extra[4 : 4 + pad] == b"Z" * pad
    return 4 + pad


# Ints at every edge of pickle's int opcodes: BININT1 (0..255), BININT2 (..65535), BININT
# (signed 32 bits), LONG1 (up to 255 bytes of two's complement). -(2**(8k-1)) are the
# negatives whose shortest form is one byte under what their bit length suggests.
EDGE_INTS = [0, 1, 127, 128, 255, 256, 65535, 65536, -1, -128, -129, -255, -256, -257]
EDGE_INTS += [2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**32, -(2**32), -(2**32) - 1]
EDGE_INTS += [2**39, -(2**39), -(2**39) - 1, -(2**40), -3 * 2**40, 2**63 - 1, 2**63]
EDGE_INTS += [-(2**63), -(2**63) - 1, 2**64, -(2**64), 2**200, -(2**200), -(2**1000 + 12345)]
EDGE_INTS += [2**2039 - 1, -(2**2039)]  # 255 bytes: the longest LONG1 holds
EDGE_STRINGS = [*HOSTILE_STRINGS, "é", "😀", "\udfff", "€" * 100, "y" * 255, "z" * 256]
EDGE_FLOATS = [
    *FLOATS,
    float("nan"),
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
]
EDGE_SCALARS: list[object] = [*EDGE_INTS, *EDGE_STRINGS, *EDGE_FLOATS, True, False, None]
EDGE_CONTAINERS: list[object] = [
    (),
    (1,),
    (1, "two"),
    (1, 2.5, None),
    (1, 2, 3, 4),
    (1, (2, (3, (4, 5, 6, 7)))),
    [],
    {},
    [True, 1],
    [0, [1.5, [None, "n"]]],
    {"k1": -1, "k2": [2**40, "v"], 3: {"k3": (False, 0.0), "k4": 9}},
]


# -- the pickle: what torch.save writes, read back as given --------------------------------


@pytest.mark.parametrize(
    "value",
    EDGE_SCALARS + EDGE_CONTAINERS,
    ids=[f"{type(v).__name__}{n}" for n, v in enumerate(EDGE_SCALARS + EDGE_CONTAINERS)],
)
def test_data_pkl_holds_the_opcodes_torch_save_writes(value: object) -> None:
    """Opcode for opcode what torch.save's protocol-2 pickler writes (its unused memo PUTs
    dropped): the shortest int opcode, LONG1 in its shortest form, BINUNICODE, BINFLOAT,
    TUPLE1..3. (Lists and dicts of one item aside: torch's pickler writes APPEND, SETITEM.)
    """
    saved = io.BytesIO()
    torch.save(value, saved)
    expected = pickletools.optimize(_entry(saved.getvalue(), "/data.pkl"))
    ours = _entry(_written(value), "/data.pkl")
    assert ours == expected
    ops = [op.name for op, _, _ in pickletools.genops(ours)]
    assert ops[0] == "PROTO" and ours[:2] == b"\x80\x02" and ops[-1] == "STOP"


def test_scalars_at_every_opcode_edge_load_as_written() -> None:
    tree = {"scalars": EDGE_SCALARS, "containers": EDGE_CONTAINERS}
    data = _written(tree)
    _assert_same(torch.load(io.BytesIO(data), weights_only=True), tree)
    with StoredFile(io.BytesIO(data)) as stored:
        _assert_same(stored.tree, tree)


def test_an_int_of_255_bytes_loads() -> None:
    fits = [2**2039 - 1, -(2**2039), 2**2038, -(2**2038) - 1]  # 255 bytes, two's complement
    assert torch.load(io.BytesIO(_written(fits)), weights_only=True) == fits


@pytest.mark.parametrize(
    ("value", "bits"),
    [(2**2039, 2040), (-(2**2039) - 1, 2040), (2**2047, 2048), (-(2**2047) - 1, 2048)],
    ids=["2040-bits", "minus-2040-bits", "2048-bits", "minus-2048-bits"],
)
def test_an_int_of_256_bytes_is_refused(value: int, bits: int) -> None:
    message = _message(ValueError, lambda: _written({"n": value}))
    assert message == f"int of {bits} bits is too large for torch.load"


def _claiming(size: int) -> str:
    """A str whose UTF-8 form claims *size* bytes: a real one of 4 GiB is too big for a test."""

    class Claimed(bytes):
        def __len__(self) -> int:
            return size

    class Huge(str):
        def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
            return Claimed(str(self).encode(encoding, errors))

    return Huge("x")


def test_a_string_of_4_gib_is_refused_and_one_byte_less_is_written() -> None:
    message = _message(ValueError, lambda: _written({"s": _claiming(2**32)}))
    assert message == "a string of 4 GiB or more cannot be pickled with protocol 2"
    # BINUNICODE's unsigned 4-byte length holds 2**32 - 1.
    data = _entry(_written([_claiming(2**32 - 1)]), "/data.pkl")
    assert pickle.BINUNICODE + b"\xff\xff\xff\xff" + b"x" in data


# -- how deep a tree may nest ----------------------------------------------------------------


def _nest(levels: int, wrap: Callable[[object], object], leaf: object = 0) -> object:
    tree = leaf
    for _ in range(levels):
        tree = wrap(tree)
    return tree


# Each builds a tree whose deepest leaf lies *levels* below the root (the root is level 0).
NESTINGS: dict[str, Callable[[int], object]] = {
    "lists": lambda n: _nest(n, lambda t: [t]),
    "lists-of-two": lambda n: _nest(n, lambda t: [t, 1]),
    "tuples": lambda n: _nest(n, lambda t: (t,)),
    "long-tuples": lambda n: _nest(n, lambda t: (1, 2, 3, t)),
    "dict-values": lambda n: _nest(n, lambda t: {"k": t}),
    "dict-keys": lambda n: {_nest(n - 1, lambda t: (t,)): "v"},
    "mixed": lambda n: _nest(n // 2, lambda t: {"k": [t]}),
}


@pytest.mark.parametrize("kind", list(NESTINGS))
def test_a_tree_200_levels_deep_is_written_and_201_refused(kind: str) -> None:
    limit = 200  # torch_file's MAX_DEPTH, which its reader shares
    deepest = NESTINGS[kind](limit)
    data = _written(deepest)
    assert torch.load(io.BytesIO(data), weights_only=True) == deepest
    with StoredFile(io.BytesIO(data)) as stored:
        assert stored.tree == deepest
    too_deep = NESTINGS[kind](limit + (2 if kind == "mixed" else 1))
    message = _message(ValueError, lambda: _written(too_deep))
    assert message == "the tree is nested over 200 levels deep (or holds a cycle)"


# -- arrays -----------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["<", ">"], ids=["little", "big"])
@pytest.mark.parametrize("code", ["f4", "f8", "f2", "i8", "i4", "i2", "i1", "u1", "b1"])
def test_arrays_of_every_dtype_and_byte_order_load_as_their_values(code: str, order: str) -> None:
    rng = np.random.default_rng(SEED)
    dtype = np.dtype(order + code)
    values = (rng.standard_normal((4, 3)) * 40).clip(-127, 127)  # fits every dtype
    grid = (np.abs(values) if code == "u1" else values).astype(dtype)
    arrays = {
        "grid": grid,
        "transposed": grid.T,
        "strided": grid[::2, ::-1],
        "scalar": np.array(grid[1, 2], dtype=dtype),
        "empty": np.zeros((0, 2), dtype),
    }
    data = _written(arrays)
    loaded = torch.load(io.BytesIO(data), weights_only=True)
    assert list(loaded) == list(arrays)
    for name, array in arrays.items():
        native = np.array(array, dtype=dtype.newbyteorder("="), order="C", copy=True)
        got = loaded[name]
        assert got.shape == native.shape and got.is_contiguous(), name
        assert torch.equal(got, torch.from_numpy(native)), name
    with StoredFile(io.BytesIO(data)) as stored:
        assert stored.tree["transposed"].stride == (4, 1)  # type: ignore[index]
        assert stored.tree["scalar"].shape == ()  # type: ignore[index]


# -- the zip ------------------------------------------------------------------------------------


def test_each_entry_is_padded_by_an_fb_record_of_zs_to_64_bytes(
    rewritten: tuple[Path, Path, dict[str, Any]],
) -> None:
    _, out, _ = rewritten
    headers = _local_headers(out.read_bytes())
    assert len(headers) > 20
    for name, (offset, extra) in headers.items():
        assert offset % 64 == 0, name
        assert _fb_padding(extra) == len(extra), name  # the padding record and nothing more


class _Sink(io.RawIOBase):
    """A stream that cannot seek and keeps only its small writes (headers), with where."""

    def __init__(self) -> None:
        self.position = 0
        self.small: list[tuple[int, bytes]] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        size = memoryview(b).nbytes
        if size < 1 << 16:
            self.small.append((self.position, bytes(b)))
        self.position += size
        return size


def test_a_storage_over_2_gib_gets_a_zip64_header_and_stays_aligned() -> None:
    # Untouched pages of np.zeros cost no memory, and the sink keeps none of the data.
    size = 2_100_000_000  # over 2**31 - 1 with zipfile's 5% margin: a zip64 entry
    sink = _Sink()
    write_checkpoint(sink, {"big": np.zeros((2, size // 2), np.uint8)}, source=None)  # type: ignore[arg-type]
    headers = [(at, b) for at, b in sink.small if b.startswith(b"PK\x03\x04")]
    names = {b[30 : 30 + struct.unpack("<H", b[26:28])[0]]: (at, b) for at, b in headers}
    at, header = names[b"archive/data/0"]
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    extra = header[30 + name_len : 30 + name_len + extra_len]
    start = at + 30 + name_len + extra_len
    assert start % 64 == 0
    fb = _fb_padding(extra)
    assert extra[fb : fb + 4] == b"\x01\x00\x10\x00"  # then zipfile's zip64 sizes record
    assert len(extra) == fb + 20
    # The data descriptor after the data: zip64 sizes, both the whole storage.
    (descriptor,) = [(a, b) for a, b in sink.small if a == start + size]
    assert descriptor[1][:4] == b"PK\x07\x08"
    assert struct.unpack("<QQ", descriptor[1][8:24]) == (size, size)


def test_a_storage_over_a_chunk_is_copied_whole_without_holding_it_all(
    tmp_path: Path,
) -> None:
    source, out = tmp_path / "source.pth", tmp_path / "out.pth"
    values = torch.arange(4 << 20, dtype=torch.float32)  # 16 MiB
    torch.save({"w": values, "view": values[5:9]}, source)
    with StoredFile(source) as stored, open(out, "wb") as fp:
        tracemalloc.start()
        try:
            write_checkpoint(fp, stored.tree, source=stored)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 8 << 20  # streamed: never the whole 16 MiB at once
    loaded = torch.load(out, weights_only=True, mmap=True)
    assert torch.equal(loaded["w"], values) and torch.equal(loaded["view"], values[5:9])
    assert _entry(out.read_bytes(), "/data/0") == _entry(source.read_bytes(), "/data/0")


def _source_with_one_storage(tmp_path: Path) -> tuple[Path, bytearray, zipfile.ZipInfo]:
    path = tmp_path / "source.pth"
    torch.save({"w": torch.arange(6, dtype=torch.float32)}, path)
    with zipfile.ZipFile(path) as zf:
        (info,) = [i for i in zf.infolist() if i.filename.endswith("/data/0")]
    return path, bytearray(path.read_bytes()), info


@pytest.mark.parametrize("damage", ["data", "header"])
def test_a_damaged_source_storage_is_unsupported(tmp_path: Path, damage: str) -> None:
    """A flipped byte of the storage's data (its CRC fails as it is read), or of its local
    header's signature (zipfile refuses to open it)."""
    path, raw, info = _source_with_one_storage(tmp_path)
    offset, _ = _local_headers(bytes(raw))[info.filename]
    raw[offset if damage == "data" else info.header_offset] ^= 0xFF
    path.write_bytes(raw)
    with zipfile.ZipFile(path) as zf, pytest.raises(zipfile.BadZipFile) as zip_says:
        zf.read(info.filename)
    with StoredFile(path) as stored, pytest.raises(Unsupported) as refused:
        write_checkpoint(io.BytesIO(), stored.tree, source=stored)
    assert str(refused.value) == f"cannot read storage '0': {zip_says.value}"
    assert isinstance(refused.value.__cause__, zipfile.BadZipFile)


def test_a_source_storage_shorter_than_it_says_is_unsupported(tmp_path: Path) -> None:
    """The central directory keeps the storage's size but stores only 20 of its 24 bytes."""
    path, raw, info = _source_with_one_storage(tmp_path)
    with zipfile.ZipFile(path) as zf:
        kept = zf.read(info.filename)[:20]
    entry = raw.rfind(b"PK\x01\x02" + raw[info.header_offset + 4 : info.header_offset + 6])
    while raw[entry + 46 : entry + 46 + len(info.filename)] != info.filename.encode():
        entry = raw.find(b"PK\x01\x02", entry + 1)
    raw[entry + 16 : entry + 24] = struct.pack("<II", zlib.crc32(kept), len(kept))
    path.write_bytes(raw)
    with StoredFile(path) as stored:
        message = _message(
            Unsupported, lambda: write_checkpoint(io.BytesIO(), stored.tree, source=stored)
        )
    assert message == "storage '0' changed size while it was copied"


def test_each_file_gets_a_new_serialization_id_of_two_64_bit_numbers() -> None:
    ids = [_entry(_written({}), "/.data/serialization_id") for _ in range(32)]
    assert len(set(ids)) == len(ids)
    for serialization_id in ids:
        assert re.fullmatch(rb"[0-9]{40}", serialization_id), serialization_id
        halves = int(serialization_id[:20]), int(serialization_id[20:])
        assert all(half < 2**64 for half in halves), serialization_id


# -- the exact refusals -------------------------------------------------------------------------

USE = "(use dict, list, tuple, str, int, float, bool, None, StoredTensor or a numpy array)"
DTYPES = "float32, float64, float16, int64, int32, int16, int8, uint8, bool"


@pytest.mark.parametrize(
    ("leaf", "expected"),
    [
        ({1, 2}, f"cannot write a set into a checkpoint {USE}"),
        (frozenset(), f"cannot write a frozenset into a checkpoint {USE}"),
        (b"bytes", f"cannot write a bytes into a checkpoint {USE}"),
        (object(), f"cannot write a object into a checkpoint {USE}"),
        (1j, f"cannot write a complex into a checkpoint {USE}"),
        (np.float32(1.0), f"cannot write a float32 into a checkpoint {USE}"),
        (
            np.zeros(2, np.complex64),
            f"cannot write a numpy array of dtype 'complex64' (use one of: {DTYPES})",
        ),
        (
            np.zeros(2, object),
            f"cannot write a numpy array of dtype 'object' (use one of: {DTYPES})",
        ),
        (
            np.zeros(2, np.uint16),
            f"cannot write a numpy array of dtype 'uint16' (use one of: {DTYPES})",
        ),
        (np.zeros(2, ">u4"), f"cannot write a numpy array of dtype '>u4' (use one of: {DTYPES})"),
    ],
    ids=[
        "set",
        "frozenset",
        "bytes",
        "object",
        "complex",
        "np-scalar",
        "complex64",
        "object-array",
        "uint16",
        "big-uint32",
    ],
)
def test_a_leaf_the_writer_cannot_write_is_this_type_error(leaf: object, expected: str) -> None:
    assert _message(TypeError, lambda: _written({"x": [leaf]})) == expected


def test_the_exact_value_errors_for_stored_tensors(saved: tuple[Path, dict[str, Any]]) -> None:
    path, _ = saved
    with StoredFile(path) as stored:
        good = stored.tree["state_dict"]["fc.bias"]  # type: ignore[index]
        assert good.shape == (3,) and good.dtype == "float32"
        assert _message(ValueError, lambda: _written({"w": good})) == (
            "the tree holds a StoredTensor: pass the file it came from as source"
        )

        def refusal(bad: StoredTensor) -> str:
            return _message(
                ValueError, lambda: write_checkpoint(io.BytesIO(), {"w": bad}, source=stored)
            )

        unknown = StoredTensor("float32", "999", 0, (1,), (1,))
        assert refusal(unknown) == f"{unknown!r} names no float32 storage of the source"
        as_long = StoredTensor("int64", good.storage, 0, (1,), (1,))
        assert refusal(as_long) == f"{as_long!r} names no int64 storage of the source"
        past_end = StoredTensor("float32", good.storage, 1, (3,), (1,))
        assert refusal(past_end) == f"{past_end!r}: the tensor reaches element 4 of a storage of 3"
