"""Torch checkpoint files read without torch, and the facts of the format.

``torch.save`` writes a zip: ``<top>/data.pkl`` (the object tree, a pickle whose tensors
name their storages by key), ``<top>/data/<key>`` (each storage's raw little-endian bytes)
and a few small records. :class:`StoredFile` reads the tree with each tensor as a
:class:`StoredTensor` (a reference; no data decoded) and opens each storage's bytes.
model/torch_write.py writes a new file from such a tree, with the facts of the format
kept here (the dtype tables, the folder, the alignment, the layout check).

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
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, BinaryIO, Final, NamedTuple, TypeGuard

# Bytes per element of each dtype a storage global names.
ITEMSIZE: Final = {
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
STORAGE_NAMES: Final = {dtype: name for name, dtype in _STORAGE_DTYPES.items()}
# numpy (kind, itemsize) -> dtype name: every storage dtype but bfloat16, which numpy lacks.
NUMPY_DTYPES: Final = {
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

TOP: Final = "archive"  # torch.save's folder for a buffer; any one folder loads
ALIGNMENT: Final = 64  # torch's storage alignment, which mmap=True relies on
EPOCH: Final = (1980, 1, 1, 0, 0, 0)
_STORAGE_KEY: Final = re.compile(r"[0-9A-Za-z_.-]{1,64}")
_MAX_PICKLE_BYTES: Final = 64 << 20
# Bounds on the tree: a state dict is a few levels deep and a few thousand objects; a
# pickle can refer to one object many times (or to itself), so reading counts visits.
MAX_DEPTH: Final = 200
_MAX_VISITS: Final = 5_000_000
CHUNK: Final = 1 << 20
# What zipfile raises for a damaged, encrypted or oddly compressed entry.
# What reading a damaged, encrypted or oddly compressed zip raises: zipfile's own errors, a
# name flagged UTF-8 that is not (UnicodeDecodeError, a ValueError), a damaged deflate
# stream (zlib.error), an offset that seeks before the file's start (OSError from a path,
# ValueError from a stream). Only around reads: a write's OSError is the writer's own.
ZIP_ERRORS: Final = (
    zipfile.BadZipFile,
    NotImplementedError,
    RuntimeError,
    EOFError,
    ValueError,
    OSError,
    zlib.error,
)
LOCAL_HEADER: Final = 30  # bytes of a zip local file header before its name
ZIP64_EXTRA: Final = 20  # zipfile's zip64 field in a local header


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


class _Call:
    """An allowed global a pickle calls, kept behind a wall: BUILD on it (which would set
    the stand-in function's attributes, its defaults among them, for every later file the
    process reads) is refused."""

    __slots__ = ("_function",)

    def __init__(self, function: Callable[..., object]) -> None:
        self._function = function

    def __call__(self, *args: object) -> object:
        return self._function(*args)

    def __setstate__(self, state: object) -> None:
        """Refuse a pickle's BUILD."""
        raise Unsupported(f"the checkpoint sets the state of a global: {_brief(state)}")


_GLOBALS: Final[dict[tuple[str, str], object]] = {
    ("collections", "OrderedDict"): _Call(_ordered_dict),
    ("torch._utils", "_rebuild_tensor_v2"): _Call(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Call(_rebuild_parameter),
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


def _clip(text: str) -> str:
    """Return *text* cut to a length fit for a message (a pickle's values may be huge)."""
    return text if len(text) <= 80 else text[:77] + "..."


def _brief(obj: object) -> str:
    """Return a short repr of *obj* for a message, however deep it nests."""
    try:
        return _clip(reprlib.repr(obj))
    except (RecursionError, ValueError):  # ValueError: an int past str()'s 4,300 digits
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


def layout(
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
        if depth > MAX_DEPTH or self._visits > _MAX_VISITS:
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
        offset, shape, stride = layout(rebuilt.offset, rebuilt.shape, rebuilt.stride, storage.numel)
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
        except OSError:  # the file cannot be opened or read: the caller's to say
            raise
        except ZIP_ERRORS as exc:
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
        except ZIP_ERRORS as exc:
            raise Unsupported(f"cannot read storage '{key}': {exc}") from exc

    def open_storage(self, key: str) -> IO[bytes]:
        """Open the storage *key* (one the tree refers to) for reading."""
        if key not in self._storages:
            raise KeyError(f"no storage '{_clip(key)}' in the tree")
        return self._zip.open(f"{self._top}/data/{key}")

    def storage_numel(self, key: str) -> int:
        """Return how many elements the storage *key* holds."""
        return self._storages[key].numel

    def storage_dtype(self, key: str) -> str | None:
        """Return the dtype of the storage *key*, or None where the tree names no such one."""
        ref = self._storages.get(key)
        return None if ref is None else ref.dtype

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
        except ZIP_ERRORS as exc:
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
        if info.file_size != numel * ITEMSIZE[ref.dtype]:
            raise Unsupported(
                f"storage '{key}' holds {info.file_size} bytes, not {numel} {ref.dtype} elements"
            )
        self._storages[key] = ref
        return ref
