"""Torch checkpoint files written without torch: a tree into a new ``torch.save`` zip.

:func:`write_checkpoint` writes dicts, lists, tuples, scalars, numpy arrays (new tensors)
and the :class:`~resnext_cli.model.torch_file.StoredTensor` references that
model/torch_file.py reads (their storages copied byte for byte from the file read) as
the zip ``torch.save`` makes: data.pkl (a protocol-2 pickle encoded by hand), each
storage uncompressed and 64-byte aligned, and the small records. ``torch.load`` reads it
with ``weights_only=True``, and with ``mmap=True``. This module never imports torch.
"""

from __future__ import annotations

import io
import pickle
import secrets
import struct
import zipfile
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

import numpy as np
import numpy.typing as npt

from resnext_cli.model.torch_file import (
    ALIGNMENT,
    CHUNK,
    EPOCH,
    ITEMSIZE,
    LOCAL_HEADER,
    MAX_DEPTH,
    NUMPY_DTYPES,
    STORAGE_NAMES,
    TOP,
    ZIP64_EXTRA,
    ZIP_ERRORS,
    StoredFile,
    StoredTensor,
    Unsupported,
    layout,
)


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
        if depth > MAX_DEPTH:
            raise ValueError(f"the tree is nested over {MAX_DEPTH} levels deep (or holds a cycle)")
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
        dtype = source.storage_dtype(tensor.storage)
        if dtype is None or dtype != tensor.dtype:
            raise ValueError(f"{tensor!r} names no {tensor.dtype} storage of the source")
        numel = source.storage_numel(tensor.storage)
        try:
            offset, shape, stride = layout(tensor.offset, tensor.shape, tensor.stride, numel)
        except ValueError as exc:
            raise ValueError(f"{tensor!r}: {exc}") from None
        key = self._copied.get(tensor.storage)
        if key is None:
            key = self._copied[tensor.storage] = str(len(self.storages))
            self.storages.append(_Copied(tensor.storage, numel * ITEMSIZE[dtype]))
        self._tensor(dtype, key, numel, offset, shape, stride)

    def _array(self, array: npt.NDArray[Any]) -> None:
        """Write a numpy array as a new contiguous tensor."""
        dtype = NUMPY_DTYPES.get((array.dtype.kind, array.dtype.itemsize))
        if dtype is None:
            raise TypeError(
                f"cannot write a numpy array of dtype '{array.dtype}' (use one of: "
                f"{', '.join(NUMPY_DTYPES.values())})"
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
        write(pickle.GLOBAL + f"torch\n{STORAGE_NAMES[dtype]}\n".encode())
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
    arcname = f"{TOP}/{name}"
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own test for a zip64 header
    start = zf.fp.tell() + LOCAL_HEADER + len(arcname) + 4 + (ZIP64_EXTRA if zip64 else 0)
    pad = -start % ALIGNMENT
    info = zipfile.ZipInfo(arcname, date_time=EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    stream = zf.open(info, "w", force_zip64=zip64)
    if zf.fp.tell() % ALIGNMENT:
        stream.close()
        raise RuntimeError(f"entry '{arcname}' is not {ALIGNMENT}-byte aligned")
    return stream


def _write_record(zf: zipfile.ZipFile, name: str, data: bytes | memoryview) -> None:
    """Write a small entry."""
    with _open_entry(zf, name, len(data)) as stream:
        stream.write(data)


def _copy_storage(dst: IO[bytes], source: StoredFile, storage: _Copied) -> None:
    """Stream one storage from the source into *dst*."""
    copied = 0
    try:
        src = source.open_storage(storage.key)
    except ZIP_ERRORS as exc:
        raise Unsupported(f"cannot read storage '{storage.key}': {exc}") from exc
    with src:
        while True:
            try:  # only the reads: a write's OSError (a full disk) is the caller's to say
                chunk = src.read(CHUNK)
            except ZIP_ERRORS as exc:
                raise Unsupported(f"cannot read storage '{storage.key}': {exc}") from exc
            if not chunk:
                break
            dst.write(chunk)
            copied += len(chunk)
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
        _write_record(zf, ".storage_alignment", str(ALIGNMENT).encode())
        _write_record(zf, "byteorder", b"little")
        for number, storage in enumerate(encoder.storages):
            _write_storage(zf, f"data/{number}", storage, source)
        _write_record(zf, "version", b"3\n")
        _write_record(zf, ".data/serialization_id", serialization_id.encode())
