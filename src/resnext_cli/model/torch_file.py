"""Torch checkpoint files without torch: read the object tree, write a new file.

``torch.save`` writes a zip: ``<top>/data.pkl`` (the object tree, a pickle whose tensors
name their storages by key), ``<top>/data/<key>`` (each storage's raw little-endian bytes)
and a few small records. :class:`StoredFile` reads the tree with each tensor as a
:class:`StoredTensor` (a reference; no data decoded), and :func:`write_checkpoint` writes
a file that ``torch.load(weights_only=True)`` (and ``mmap=True``) reads, copying stored
tensors' storages byte for byte and adding numpy arrays as new tensors.

Only the globals a state dict needs are resolved, each to a stand-in defined here, so a
hostile pickle runs nothing; anything else raises :class:`Unsupported`, and the caller
hands the file to torch instead. This module never imports torch (1.35 s).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import reprlib
import secrets
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, BinaryIO, Final, NamedTuple, TypeGuard

import numpy as np
import numpy.typing as npt

# Bytes per element of each dtype a storage global names.
_ITEMSIZE: Final = {
    "float32": 4,
    "float64": 8,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}
_STORAGE_DTYPES: Final = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
_STORAGE_NAMES: Final = {dtype: name for name, dtype in _STORAGE_DTYPES.items()}
# numpy (kind, itemsize) -> dtype name: every storage dtype but bfloat16, which numpy lacks.
_NUMPY_DTYPES: Final = {
    ("f", 4): "float32",
    ("f", 8): "float64",
    ("f", 2): "float16",
    ("i", 8): "int64",
    ("i", 4): "int32",
    ("i", 2): "int16",
    ("i", 1): "int8",
    ("u", 1): "uint8",
    ("b", 1): "bool",
}

_TOP: Final = "archive"  # torch.save's folder for a buffer; any one folder loads
_ALIGNMENT: Final = 64  # torch's storage alignment, which mmap=True relies on
_EPOCH: Final = (1980, 1, 1, 0, 0, 0)
_STORAGE_KEY: Final = re.compile(r"[0-9A-Za-z_.-]{1,64}")
_MAX_PICKLE_BYTES: Final = 64 << 20
# Bounds on the tree: a state dict is a few levels deep and a few thousand objects; a
# pickle can refer to one object many times (or to itself), so reading counts visits.
_MAX_DEPTH: Final = 200
_MAX_VISITS: Final = 5_000_000
_CHUNK: Final = 1 << 20
# What zipfile raises for a damaged, encrypted or oddly compressed entry.
_ZIP_ERRORS: Final = (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError)
_LOCAL_HEADER: Final = 30  # bytes of a zip local file header before its name
_ZIP64_EXTRA: Final = 20  # zipfile's zip64 field in a local header


class Unsupported(Exception):
    """The file is not one this module reads; hand it to torch instead."""


@dataclass(frozen=True)
class StoredTensor:
    """A tensor in a checkpoint: where its elements lie in a stored storage."""

    dtype: str
    storage: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _StorageType(NamedTuple):
    """Stand-in for a ``torch.<X>Storage`` global."""

    dtype: str


class _StorageRef(NamedTuple):
    """Stand-in for a storage that ``persistent_load`` resolved."""

    key: str
    dtype: str
    numel: int


class _Rebuilt(NamedTuple):
    """The arguments of one ``_rebuild_tensor_v2`` call, checked after unpickling.

    A NamedTuple, so a pickle's BUILD cannot change it once made.
    """

    storage: object
    offset: object
    shape: object
    stride: object
    requires_grad: object
    hooks: object
    metadata: object


class _OrderedDict(dict[Any, Any]):
    """Stand-in for ``collections.OrderedDict``; drops the state BUILD gives it (``_metadata``)."""

    def __setstate__(self, state: object) -> None:
        """Ignore the instance state."""
        del state


def _ordered_dict() -> _OrderedDict:
    """Make the empty dict a pickled ``OrderedDict()`` starts as."""
    return _OrderedDict()


def _rebuild_tensor_v2(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    backward_hooks: object,
    metadata: object = None,
) -> _Rebuilt:
    """Record ``torch._utils._rebuild_tensor_v2``'s arguments."""
    return _Rebuilt(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata)


def _rebuild_parameter(data: object, requires_grad: object, backward_hooks: object) -> object:
    """Unwrap ``torch._utils._rebuild_parameter``: a parameter is read as its tensor."""
    if type(data) is not _Rebuilt or type(requires_grad) is not bool or not _empty(backward_hooks):
        raise Unsupported(f"unexpected parameter arguments {_brief(data)}")
    return data


_GLOBALS: Final[dict[tuple[str, str], object]] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


def _clip(text: str) -> str:
    """Return *text* cut to a length fit for a message (a pickle's values may be huge)."""
    return text if len(text) <= 80 else text[:77] + "..."


def _brief(obj: object) -> str:
    """Return a short repr of *obj* for a message, however deep it nests."""
    try:
        return _clip(reprlib.repr(obj))
    except RecursionError:
        return f"a {type(obj).__name__}"


def _empty(obj: object) -> bool:
    """Say whether *obj* is an empty dict (backward hooks, metadata)."""
    return type(obj) in (dict, _OrderedDict) and not obj


def _is_count(obj: object) -> TypeGuard[int]:
    """Say whether *obj* is a non-negative int (bools excluded)."""
    return type(obj) is int and obj >= 0


def _is_counts(obj: object) -> TypeGuard[tuple[int, ...]]:
    """Say whether *obj* is a tuple of non-negative ints."""
    return type(obj) is tuple and all(_is_count(n) for n in obj)


def _layout(
    offset: object, shape: object, stride: object, numel: int
) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Return a tensor's layout after checking it fits a storage of *numel* elements.

    Raise ValueError where it does not.
    """
    if not _is_count(offset):
        raise ValueError(f"storage offset {_brief(offset)} is not a non-negative int")
    if not _is_counts(shape) or not _is_counts(stride) or len(shape) != len(stride):
        raise ValueError(f"shape {_brief(shape)} and stride {_brief(stride)} do not match")
    if 0 in shape:
        end = offset
    else:
        end = offset + 1 + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
    if end > numel:
        raise ValueError(f"the tensor reaches element {end} of a storage of {numel}")
    return offset, shape, stride


class _Unpickler(pickle.Unpickler):
    """Unpickle data.pkl with stand-ins for the allowed globals and nothing else."""

    def __init__(self, data: bytes, resolve: Callable[[object], _StorageRef]) -> None:
        super().__init__(io.BytesIO(data))
        self._resolve = resolve

    def find_class(self, module: str, name: str, /) -> Any:
        """Return the stand-in for an allowed global; refuse every other."""
        found = _GLOBALS.get((module, name))
        if found is None:
            raise Unsupported(f"the checkpoint refers to '{_clip(f'{module}.{name}')}'")
        return found

    def persistent_load(self, pid: Any, /) -> Any:
        """Resolve a storage reference."""
        return self._resolve(pid)


class _Plain:
    """Turn the unpickled object into plain dicts, lists, tuples, scalars and tensors."""

    def __init__(self) -> None:
        self._visits = 0

    def convert(self, obj: object, depth: int = 0) -> object:
        """Return *obj* with stand-ins replaced; refuse any other type."""
        self._visits += 1
        if depth > _MAX_DEPTH or self._visits > _MAX_VISITS:
            raise Unsupported("the object tree is too deep or too large (or refers to itself)")
        if obj is None or type(obj) in (str, int, float, bool):
            return obj
        if type(obj) is _Rebuilt:
            return _stored_tensor(obj)
        if type(obj) in (dict, _OrderedDict) and isinstance(obj, dict):
            return self._dict(obj, depth)
        if type(obj) is list:
            return [self.convert(item, depth + 1) for item in obj]
        if type(obj) is tuple:
            return tuple(self.convert(item, depth + 1) for item in obj)
        raise Unsupported(f"the checkpoint holds a {type(obj).__name__}: {_brief(obj)}")

    def _dict(self, obj: dict[Any, Any], depth: int) -> dict[Any, Any]:
        """Convert a dict's keys and values, keeping their order."""
        out = {self.convert(k, depth + 1): self.convert(v, depth + 1) for k, v in obj.items()}
        if len(out) != len(obj):
            raise Unsupported("two keys of a dict in the checkpoint read as one")
        return out


def _stored_tensor(rebuilt: _Rebuilt) -> StoredTensor:
    """Check one ``_rebuild_tensor_v2`` call and return the tensor it describes."""
    storage = rebuilt.storage
    if type(storage) is not _StorageRef:
        raise Unsupported(f"a tensor's storage is {_brief(storage)}")
    if type(rebuilt.requires_grad) is not bool or not _empty(rebuilt.hooks):
        raise Unsupported("a tensor has backward hooks or an odd requires_grad")
    if rebuilt.metadata is not None and not _empty(rebuilt.metadata):
        # Metadata carries flags (conjugate, negative) that change the values read.
        raise Unsupported(f"a tensor has metadata {_brief(rebuilt.metadata)}")
    try:
        offset, shape, stride = _layout(
            rebuilt.offset, rebuilt.shape, rebuilt.stride, storage.numel
        )
    except ValueError as exc:
        raise Unsupported(f"storage '{storage.key}': {exc}") from None
    return StoredTensor(storage.dtype, storage.key, offset, shape, stride)


class StoredFile:
    """A checkpoint written by ``torch.save``, read as a tree of :class:`StoredTensor`.

    Dicts keep their key order; an ``OrderedDict`` reads as a plain dict (its
    ``_metadata`` dropped) and a parameter as its tensor. Raise :class:`Unsupported` for
    anything else: a legacy (non-zip) file, a global outside the state-dict set, a
    malformed zip or pickle, a big-endian file, a storage of the wrong size.
    """

    tree: object

    def __init__(self, file: str | os.PathLike[str] | BinaryIO) -> None:
        try:
            self._zip = zipfile.ZipFile(file)
        except (zipfile.BadZipFile, EOFError) as exc:
            raise Unsupported(f"not a zip-format torch checkpoint: {exc}") from exc
        self._storages: dict[str, _StorageRef] = {}
        try:
            self._top = self._top_folder()
            self._check_records()
            self.tree = _Plain().convert(self._unpickle())
        except BaseException:
            self._zip.close()
            raise

    def __enter__(self) -> StoredFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        self._zip.close()

    def storage_bytes(self, key: str) -> bytes:
        """Return the raw little-endian bytes of the storage *key*."""
        try:
            with self.open_storage(key) as stream:
                return stream.read()
        except _ZIP_ERRORS as exc:
            raise Unsupported(f"cannot read storage '{key}': {exc}") from exc

    def open_storage(self, key: str) -> IO[bytes]:
        """Open the storage *key* (one the tree refers to) for reading."""
        if key not in self._storages:
            raise KeyError(f"no storage '{_clip(key)}' in the tree")
        return self._zip.open(f"{self._top}/data/{key}")

    def storage_numel(self, key: str) -> int:
        """Return how many elements the storage *key* holds."""
        return self._storages[key].numel

    def _top_folder(self) -> str:
        """Return the one folder all entries sit in, after checking the archive's layout."""
        names = self._zip.namelist()
        tops = {name.partition("/")[0] for name in names}
        if len(tops) != 1 or any("/" not in name for name in names):
            raise Unsupported("the zip's entries are not all in one folder")
        if len(set(names)) != len(names):
            raise Unsupported("the zip holds two entries of one name")
        top = tops.pop()
        if f"{top}/data.pkl" not in names:
            raise Unsupported("the zip has no data.pkl: not a torch.save checkpoint")
        return top

    def _record(self, name: str) -> bytes | None:
        """Return a small record's bytes, or None where the archive has none."""
        try:
            info = self._zip.getinfo(f"{self._top}/{name}")
        except KeyError:
            return None
        if info.file_size > _MAX_PICKLE_BYTES:
            raise Unsupported(f"'{name}' is {info.file_size} bytes: too large")
        try:
            return self._zip.read(info)
        except _ZIP_ERRORS as exc:
            raise Unsupported(f"cannot read '{name}': {exc}") from exc

    def _check_records(self) -> None:
        """Refuse big-endian storages and format versions newer than 3."""
        byteorder = self._record("byteorder")
        if byteorder not in (None, b"little"):
            raise Unsupported(f"the storages are in byte order {_brief(byteorder)}, not little")
        version = self._record("version")
        if version is not None and version.strip() not in (b"1", b"2", b"3"):
            raise Unsupported(f"archive version {_brief(version)} is not 1 to 3")

    def _unpickle(self) -> object:
        """Unpickle data.pkl with the allowed globals only."""
        data = self._record("data.pkl")
        if data is None:  # _top_folder checked it is there
            raise Unsupported("the zip has no data.pkl")
        try:
            return _Unpickler(data, self._resolve).load()
        except Unsupported:
            raise
        except Exception as exc:  # a malformed pickle fails in many ways
            raise Unsupported(f"cannot read data.pkl: {type(exc).__name__}: {exc}") from exc

    def _resolve(self, pid: object) -> _StorageRef:
        """Check a ``('storage', type, key, location, numel)`` reference against the zip."""
        if type(pid) is not tuple or len(pid) != 5:
            raise Unsupported(f"unexpected persistent id {_brief(pid)}")
        tag, kind, key, location, numel = pid
        if (
            tag != "storage"
            or type(kind) is not _StorageType
            or type(key) is not str
            or not _STORAGE_KEY.fullmatch(key)
            or type(location) is not str
            or not _is_count(numel)
        ):
            raise Unsupported(f"unexpected storage reference {_brief(pid)}")
        ref = _StorageRef(key, kind.dtype, numel)
        seen = self._storages.get(key)
        if seen is not None:
            if seen != ref:
                raise Unsupported(f"storage '{key}' is read as two dtypes or sizes")
            return seen
        try:
            info = self._zip.getinfo(f"{self._top}/data/{key}")
        except KeyError:
            raise Unsupported(f"storage '{key}' is missing from the zip") from None
        if info.file_size != numel * _ITEMSIZE[ref.dtype]:
            raise Unsupported(
                f"storage '{key}' holds {info.file_size} bytes, not {numel} {ref.dtype} elements"
            )
        self._storages[key] = ref
        return ref


@dataclass(frozen=True)
class _Copied:
    """A storage to copy from the source file."""

    key: str
    nbytes: int


@dataclass(frozen=True)
class _Fresh:
    """A storage holding a new array's bytes (C-contiguous, little-endian)."""

    array: npt.NDArray[Any]


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Return the strides torch gives a contiguous tensor of *shape*."""
    strides: list[int] = []
    step = 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _long_bytes(value: int) -> bytes:
    """Encode *value* the way pickle's LONG1 wants: little-endian two's complement, short."""
    if value == 0:
        return b""
    size = (value.bit_length() >> 3) + 1
    data = value.to_bytes(size, "little", signed=True)
    if value < 0 and size > 1 and data[-1] == 0xFF and data[-2] & 0x80:
        data = data[:-1]
    return data


class _Encoder:
    """Write a tree as a protocol-2 pickle the way torch.save does, by hand.

    ``pickle.Pickler`` would import torch to check the tensor globals. Storages are
    numbered in first-use order; a source storage or a numpy array met twice is one
    storage.
    """

    def __init__(self, source: StoredFile | None) -> None:
        self._source = source
        self._out = io.BytesIO()
        self.storages: list[_Copied | _Fresh] = []
        self._copied: dict[str, str] = {}
        self._fresh: dict[int, str] = {}

    def encode(self, tree: object) -> bytes:
        """Return the pickle of *tree*."""
        self._out.write(pickle.PROTO + b"\x02")
        self._value(tree, 0)
        self._out.write(pickle.STOP)
        return self._out.getvalue()

    def _value(self, obj: object, depth: int) -> None:
        """Write one value."""
        if depth > _MAX_DEPTH:
            raise ValueError(f"the tree is nested over {_MAX_DEPTH} levels deep (or holds a cycle)")
        if isinstance(obj, dict):
            self._dict(obj, depth)
        elif isinstance(obj, list):
            self._list(obj, depth)
        elif isinstance(obj, tuple):
            self._tuple(obj, depth)
        elif isinstance(obj, StoredTensor):
            self._stored(obj)
        elif isinstance(obj, np.ndarray):
            self._array(obj)
        else:
            self._scalar(obj)

    def _scalar(self, obj: object) -> None:
        """Write None, a bool, an int, a float or a str."""
        if obj is None:
            self._out.write(pickle.NONE)
        elif isinstance(obj, bool):
            self._out.write(pickle.NEWTRUE if obj else pickle.NEWFALSE)
        elif isinstance(obj, int):
            self._int(obj)
        elif isinstance(obj, float):
            self._out.write(pickle.BINFLOAT + struct.pack(">d", obj))
        elif isinstance(obj, str):
            self._str(obj)
        else:
            raise TypeError(
                f"cannot write a {type(obj).__name__} into a checkpoint (use dict, list, tuple,"
                " str, int, float, bool, None, StoredTensor or a numpy array)"
            )

    def _int(self, value: int) -> None:
        """Write an int in the shortest opcode torch's loader reads (it lacks LONG4)."""
        if 0 <= value < 0x100:
            self._out.write(pickle.BININT1 + bytes([value]))
        elif 0 <= value < 0x10000:
            self._out.write(pickle.BININT2 + struct.pack("<H", value))
        elif -(2**31) <= value < 2**31:
            self._out.write(pickle.BININT + struct.pack("<i", value))
        else:
            data = _long_bytes(value)
            if len(data) > 0xFF:
                raise ValueError(f"int of {value.bit_length()} bits is too large for torch.load")
            self._out.write(pickle.LONG1 + bytes([len(data)]) + data)

    def _str(self, value: str) -> None:
        """Write a str as UTF-8 (lone surrogates kept, as pickle does)."""
        data = value.encode("utf-8", "surrogatepass")
        if len(data) > 0xFFFFFFFF:
            raise ValueError("a string of 4 GiB or more cannot be pickled with protocol 2")
        self._out.write(pickle.BINUNICODE + struct.pack("<I", len(data)) + data)

    def _dict(self, value: dict[Any, Any], depth: int) -> None:
        """Write a dict, its items in order in one MARK batch."""
        self._out.write(pickle.EMPTY_DICT)
        if value:
            self._out.write(pickle.MARK)
            for key, item in value.items():
                self._value(key, depth + 1)
                self._value(item, depth + 1)
            self._out.write(pickle.SETITEMS)

    def _list(self, value: list[Any], depth: int) -> None:
        """Write a list, its items in one MARK batch."""
        self._out.write(pickle.EMPTY_LIST)
        if value:
            self._out.write(pickle.MARK)
            for item in value:
                self._value(item, depth + 1)
            self._out.write(pickle.APPENDS)

    def _tuple(self, value: tuple[object, ...], depth: int) -> None:
        """Write a tuple."""
        if not value:
            self._out.write(pickle.EMPTY_TUPLE)
            return
        short = len(value) <= 3
        if not short:
            self._out.write(pickle.MARK)
        for item in value:
            self._value(item, depth + 1)
        if short:
            self._out.write((pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3)[len(value) - 1])
        else:
            self._out.write(pickle.TUPLE)

    def _stored(self, tensor: StoredTensor) -> None:
        """Write a tensor whose storage is copied from the source."""
        source = self._source
        if source is None:
            raise ValueError("the tree holds a StoredTensor: pass the file it came from as source")
        ref = source._storages.get(tensor.storage)
        if ref is None or ref.dtype != tensor.dtype:
            raise ValueError(f"{tensor!r} names no {tensor.dtype} storage of the source")
        try:
            offset, shape, stride = _layout(tensor.offset, tensor.shape, tensor.stride, ref.numel)
        except ValueError as exc:
            raise ValueError(f"{tensor!r}: {exc}") from None
        key = self._copied.get(ref.key)
        if key is None:
            key = self._copied[ref.key] = str(len(self.storages))
            self.storages.append(_Copied(ref.key, ref.numel * _ITEMSIZE[ref.dtype]))
        self._tensor(ref.dtype, key, ref.numel, offset, shape, stride)

    def _array(self, array: npt.NDArray[Any]) -> None:
        """Write a numpy array as a new contiguous tensor."""
        dtype = _NUMPY_DTYPES.get((array.dtype.kind, array.dtype.itemsize))
        if dtype is None:
            raise TypeError(
                f"cannot write a numpy array of dtype '{array.dtype}' (use one of: "
                f"{', '.join(_NUMPY_DTYPES.values())})"
            )
        key = self._fresh.get(id(array))
        if key is None:
            key = self._fresh[id(array)] = str(len(self.storages))
            little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            self.storages.append(_Fresh(little))
        shape = tuple(int(n) for n in array.shape)
        self._tensor(dtype, key, array.size, 0, shape, _contiguous_strides(shape))

    def _tensor(
        self,
        dtype: str,
        key: str,
        numel: int,
        offset: int,
        shape: tuple[int, ...],
        stride: tuple[int, ...],
    ) -> None:
        """Write ``_rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())``."""
        write = self._out.write
        write(pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + pickle.MARK)
        write(pickle.MARK)
        self._str("storage")
        write(pickle.GLOBAL + f"torch\n{_STORAGE_NAMES[dtype]}\n".encode())
        self._str(key)
        self._str("cpu")
        self._int(numel)
        write(pickle.TUPLE + pickle.BINPERSID)
        self._int(offset)
        self._tuple(shape, 0)
        self._tuple(stride, 0)
        write(pickle.NEWFALSE)
        write(pickle.GLOBAL + b"collections\nOrderedDict\n" + pickle.EMPTY_TUPLE + pickle.REDUCE)
        write(pickle.TUPLE + pickle.REDUCE)


def _open_entry(zf: zipfile.ZipFile, name: str, size: int) -> IO[bytes]:
    """Open an uncompressed entry whose data starts on a 64-byte boundary, as torch's do.

    The padding goes in the local header's extra field, an 'FB' record of 'Z's like
    torch's writer makes.
    """
    if zf.fp is None:
        raise ValueError("the zip is closed")
    arcname = f"{_TOP}/{name}"
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own test for a zip64 header
    start = zf.fp.tell() + _LOCAL_HEADER + len(arcname) + 4 + (_ZIP64_EXTRA if zip64 else 0)
    pad = -start % _ALIGNMENT
    info = zipfile.ZipInfo(arcname, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    stream = zf.open(info, "w", force_zip64=zip64)
    if zf.fp.tell() % _ALIGNMENT:
        stream.close()
        raise RuntimeError(f"entry '{arcname}' is not {_ALIGNMENT}-byte aligned")
    return stream


def _write_record(zf: zipfile.ZipFile, name: str, data: bytes | memoryview) -> None:
    """Write a small entry."""
    with _open_entry(zf, name, len(data)) as stream:
        stream.write(data)


def _copy_storage(dst: IO[bytes], source: StoredFile, storage: _Copied) -> None:
    """Stream one storage from the source into *dst*."""
    copied = 0
    try:
        with source.open_storage(storage.key) as src:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
                copied += len(chunk)
    except _ZIP_ERRORS as exc:
        raise Unsupported(f"cannot read storage '{storage.key}': {exc}") from exc
    if copied != storage.nbytes:
        raise Unsupported(f"storage '{storage.key}' changed size while it was copied")


def _write_storage(
    zf: zipfile.ZipFile, name: str, storage: _Copied | _Fresh, source: StoredFile | None
) -> None:
    """Write one storage: a new array's bytes, or a copy of the source's."""
    if isinstance(storage, _Fresh):
        _write_record(zf, name, storage.array.reshape(-1).view(np.uint8).data)
        return
    if source is None:  # _Encoder only plans copies from a source
        raise ValueError("a stored tensor's storage needs a source")
    with _open_entry(zf, name, storage.nbytes) as dst:
        _copy_storage(dst, source, storage)


def write_checkpoint(fp: BinaryIO, tree: object, *, source: StoredFile | None) -> None:
    """Write *tree* to *fp* as a checkpoint ``torch.load(weights_only=True)`` reads.

    *tree* holds dicts, lists, tuples, str, int, float, bool, None, :class:`StoredTensor`
    (its storage copied byte for byte from *source*, each once, so shared storages stay
    shared) and numpy arrays (new tensors of any storage dtype but bfloat16, written
    C-contiguous). Raise TypeError for any other leaf and ValueError for a StoredTensor
    *source* lacks.
    """
    encoder = _Encoder(source)
    data = encoder.encode(tree)
    serialization_id = f"{secrets.randbits(64):020d}{secrets.randbits(64):020d}"
    with zipfile.ZipFile(fp, "w", zipfile.ZIP_STORED) as zf:
        _write_record(zf, "data.pkl", data)
        _write_record(zf, ".format_version", b"1")
        _write_record(zf, ".storage_alignment", str(_ALIGNMENT).encode())
        _write_record(zf, "byteorder", b"little")
        for number, storage in enumerate(encoder.storages):
            _write_storage(zf, f"data/{number}", storage, source)
        _write_record(zf, "version", b"3\n")
        _write_record(zf, ".data/serialization_id", serialization_id.encode())
