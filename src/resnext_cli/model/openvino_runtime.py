"""The OpenVINO runtime: a ResNeXt body converted once, cached, compiled for the CPU.

The torch network (BatchNorm folded) is converted in memory up to its pooled features
and the result kept as a bundle: one zip file holding the OpenVINO model (IR), the fc
head's float32 weights and a manifest. Bundles are cached next to the weights, keyed by
the weights file's identity, the model and the OpenVINO version, and published by
rename, so a concurrent first run or a kill never leaves a half-written entry; a
bundle that does not load is removed and converted again. `resnext quantize --runtime
openvino` writes the same kind of bundle with an INT8 body.

The head and the softmax run here in numpy float32 whatever the body's precision, so
probabilities are not rounded to bf16. Nothing in this module imports torch except the
conversion: a warm cache runs on openvino, numpy and Pillow alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import stat
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from resnext_cli.errors import CheckpointError, ConfigError
from resnext_cli.model import blas

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'resnext-cli[openvino]'"
# The first member of every bundle: what sniffing a checkpoint file looks for.
MANIFEST = "resnext-openvino.json"
FORMAT = 1
CACHE_FOLDER = "openvino"
# Temporary bundles older than this are what a killed conversion left behind.
STALE_PARTIAL_SECONDS = 3600
# Every precision is said explicitly: on a CPU with bf16 OpenVINO would choose bf16 by
# itself. INT8's layers that are not quantized (the head among them) run in float32, as
# torch's INT8 runs them, so its answers do not depend on which CPU runs them.
_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
_ZIP_MAGIC = b"PK\x03\x04"
_ZIP_NAME_AT = 30  # a zip's local file header: the first member's name starts here
# The manifest key of a converted checkpoint's own class names (a list, or null when it
# keeps none), so that a warm run reads them without loading the checkpoint with torch.
CLASSES_KEY = "checkpoint_classes"


def available() -> bool:
    """Whether the optional extra is installed (without importing it)."""
    return find_spec("openvino") is not None


def _ov() -> Any:
    try:
        import openvino
    except ImportError:
        raise ConfigError(
            f"the openvino runtime is not installed ({EXTRA_HINT}, or use --runtime torch)"
        ) from None
    return openvino


def version() -> str:
    """The installed OpenVINO's version string."""
    return str(_ov().get_version())


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """Whether *path* is a bundle this module wrote (read from its first bytes only).

    Only a regular file is read, opened without blocking: a FIFO or a device named as a
    checkpoint is left for the loader to refuse.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (OSError, ValueError):
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.read(fd, _ZIP_NAME_AT + len(MANIFEST))
    except OSError:
        return False
    finally:
        os.close(fd)
    return head.startswith(_ZIP_MAGIC) and head[_ZIP_NAME_AT:] == MANIFEST.encode()


# -- bundles --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A converted body, its float32 head and what it was made from."""

    model: Any  # openvino.Model: NCHW float32 crops -> pooled features
    weight: np.ndarray[Any, np.dtype[np.float32]]  # (classes, features)
    bias: np.ndarray[Any, np.dtype[np.float32]]  # (classes,)
    manifest: dict[str, Any]

    @property
    def classes(self) -> int:
        """How many classes the head gives."""
        return int(self.weight.shape[0])


def _npy(array: np.ndarray[Any, Any]) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def write_bundle(dest: Path, bundle: Bundle) -> None:
    """Write *bundle* to a temporary file next to *dest*, then rename it onto *dest*.

    For the cache of converted models, a folder of this tool's own. The temporary name
    starts with '.' and ends in '.partial': a kill leaves only that, which readers never
    open and a later write clears once it is old.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            write_bundle_into(raw, bundle)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_bundle_into(raw: BinaryIO, bundle: Bundle) -> None:
    """Write *bundle* as a zip into the open file *raw* (a user's output goes through
    files.OutputTarget, which owns the temporary file and publishes it)."""
    ov = _ov()
    # OpenVINO saves to a path: a private folder of its own, never the output's folder.
    with tempfile.TemporaryDirectory(prefix="resnext-ir-") as ir:
        xml = Path(ir) / "model.xml"
        # Weights stay float32: fp16 compression would change the answers.
        ov.save_model(bundle.model, str(xml), compress_to_fp16=False)
        with zipfile.ZipFile(raw, "w") as zf:
            # Stored, not deflated: the weights do not compress, and reading is faster.
            zf.writestr(MANIFEST, json.dumps(bundle.manifest, sort_keys=True))
            zf.write(xml, "model.xml")
            zf.write(xml.with_suffix(".bin"), "model.bin")
            zf.writestr("head_weight.npy", _npy(bundle.weight))
            zf.writestr("head_bias.npy", _npy(bundle.bias))


def read_bundle(path: Path, *, name: str) -> Bundle:
    """Read a bundle; CheckpointError when it is not one or is damaged."""
    ov = _ov()
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(MANIFEST))
            xml = zf.read("model.xml")
            weights = zf.read("model.bin")
            weight = np.load(io.BytesIO(zf.read("head_weight.npy")), allow_pickle=False)
            bias = np.load(io.BytesIO(zf.read("head_bias.npy")), allow_pickle=False)
        model = ov.Core().read_model(xml, ov.Tensor(np.frombuffer(weights, dtype=np.uint8)))
    except Exception as exc:
        raise CheckpointError(
            f"cannot read OpenVINO file '{name}': {exc.__class__.__name__} "
            "(make it again with 'resnext quantize --runtime openvino')"
        ) from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or weight.dtype != np.float32
        or bias.dtype != np.float32
        or weight.ndim != 2
        or bias.shape != (weight.shape[0],)
    ):
        raise CheckpointError(
            f"OpenVINO file '{name}' is damaged or from another version "
            "(make it again with 'resnext quantize --runtime openvino')"
        )
    return Bundle(model, weight, bias, manifest)


# -- conversion -----------------------------------------------------------------------------


def _features_module(net: torch.nn.Module) -> torch.nn.Module:
    """torchvision's ResNet forward up to the pooled features, as a module to convert."""
    import torch

    class Body(torch.nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = self.net
            x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
            x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
            return torch.flatten(n.avgpool(x), 1)

    return Body(net).eval()


def convert(net: torch.nn.Module, *, crop: int, manifest: dict[str, Any]) -> Bundle:
    """Convert a float torch ResNeXt (on the CPU) to a bundle: body to OpenVINO, head kept."""
    import torch

    ov = _ov()
    body = _features_module(net)
    example = torch.zeros(1, 3, crop, crop)
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # Conversion traces with torch.jit (deprecated in torch 2.14, and chatty). The trace
        # is not run three more times to check it (torch's default): a ResNeXt has no
        # branch on its input, and the check took two thirds of a conversion's time.
        warnings.simplefilter("ignore")
        traced = TorchScriptPythonDecoder(
            body, example_input=example, trace_kwargs={"check_trace": False}
        )
        model = ov.convert_model(traced)
    model.reshape(ov.PartialShape([ov.Dimension(), 3, crop, crop]))
    fc: Any = getattr(net, "fc")  # noqa: B009 - any torch module with an fc Linear
    weight = fc.weight.detach().to(torch.float32).cpu().numpy().copy()
    bias = fc.bias.detach().to(torch.float32).cpu().numpy().copy()
    return Bundle(model, weight, bias, {"format": FORMAT, **manifest})


def quantize_int8(
    bundle: Bundle, batches: list[np.ndarray[Any, Any]], *, manifest: dict[str, Any]
) -> Bundle:
    """Post-training INT8 with NNCF: the body calibrated on normalised NCHW *batches*.

    The head stays float32, as in every bundle; the manifest says what it was made from.
    """
    import logging

    # NNCF imports torch's extension builder, which logs a CUDA note on machines without.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        import nncf
    except ImportError:
        raise ConfigError(
            f"calibrating for OpenVINO needs NNCF ({EXTRA_HINT}, or use --runtime torch)"
        ) from None
    images = [image[None] for batch in batches for image in batch]
    # NNCF draws its own progress bar on stdout, where only the payload belongs.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quantized = nncf.quantize(
            bundle.model,
            nncf.Dataset(images),
            subset_size=len(images),
            preset=nncf.QuantizationPreset.PERFORMANCE,
            model_type=None,
        )
    return Bundle(quantized, bundle.weight, bundle.bias, {"format": FORMAT, **manifest})


# -- the cache ------------------------------------------------------------------------------


def file_identity(path: Path) -> str:
    """A weights file as a cache key part: where it is, its size and modification time."""
    st = path.stat()
    return f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def state_identity(state: dict[str, torch.Tensor]) -> str:
    """A state dict handed over in memory (Ray's actors) as a key part: its contents' hash."""
    sha = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        sha.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        sha.update(tensor.view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    return f"state:{sha.hexdigest()}"


def _byte_dtype() -> Any:
    import torch

    return torch.uint8


@dataclass(frozen=True)
class CacheKey:
    """What a cached conversion depends on."""

    model: str
    source: str  # file_identity or state_identity
    fold_batchnorm: bool
    crop: int

    def fields(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model,
            "source": self.source,
            "fold_batchnorm": self.fold_batchnorm,
            "crop": self.crop,
            "openvino": version(),
        }

    def file_name(self) -> str:
        """'<model>-<source hash>-<key hash>.zip': entries of one source share a prefix."""
        digest = hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()
        return f"{_source_prefix(self.model, self.source)}{digest[:16]}.zip"


def _source_prefix(model: str, source: str) -> str:
    """'<model>-<source hash>-': the start of the names of every entry of one source."""
    if source.startswith("state:"):
        return f"{model}-{source.removeprefix('state:')[:12]}-"
    return f"{model}-{hashlib.sha256(source.rsplit(':', 2)[0].encode()).hexdigest()[:12]}-"


def read_manifest(path: Path) -> dict[str, Any] | None:
    """A bundle's manifest alone (no model is read, openvino is not imported), or None."""
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(MANIFEST))
    except Exception:
        return None
    return manifest if isinstance(manifest, dict) else None


def cached_classes(
    folder: Path, model: str, checkpoint: Path
) -> tuple[bool, tuple[str, ...] | None]:
    """The class names a local *checkpoint* keeps, as a cached conversion of it recorded
    them: (True, names or None), or (False, None) when no entry of this very file says.

    The entries of a file are those of its path, size and modification time, so a
    checkpoint rewritten since is never answered for.
    """
    try:
        source = file_identity(checkpoint)
        entries = sorted(folder.glob(f"{_source_prefix(model, source)}*.zip"))
    except OSError:
        return False, None
    for entry in entries:
        manifest = read_manifest(entry)
        if manifest is None or manifest.get("source") != source or CLASSES_KEY not in manifest:
            continue
        names = manifest[CLASSES_KEY]
        if names is None:
            return True, None
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return True, tuple(names)
    return False, None


def cache_dir(weights_dir: Path) -> Path:
    """Where converted models are kept: beside the weights files."""
    return weights_dir / CACHE_FOLDER


def _clear_leftovers(folder: Path, entry: Path) -> None:
    """Remove what killed conversions left (old .partial files and IR folders) and older
    entries of the same source (the file changed since)."""
    now = time.time()
    prefix = entry.name.rsplit("-", 1)[0] + "-"
    with contextlib.suppress(OSError):
        for path in folder.iterdir():
            try:
                st = path.lstat()
            except OSError:
                continue
            leftover = path.name.startswith(".") and now - st.st_mtime > STALE_PARTIAL_SECONDS
            superseded = (
                path.name.startswith(prefix) and path.name.endswith(".zip") and path != entry
            )
            if leftover and path.is_dir() and not path.is_symlink():
                import shutil

                shutil.rmtree(path, ignore_errors=True)
            elif (leftover or superseded) and not path.is_dir():
                path.unlink(missing_ok=True)


_CONVERTING = threading.Lock()


def cached_bundle(
    key: CacheKey,
    folder: Path,
    build: Callable[[], torch.nn.Module],
    *,
    name: str,
    extra: Callable[[], dict[str, Any]] | None = None,
) -> tuple[Bundle, bool]:
    """The bundle for *key* from *folder*, converting with *build*() on a miss.

    Returns it and whether it came from the cache. A damaged or mismatched entry is
    removed (the log says so) and converted again. *extra*() adds to a new entry's
    manifest (asked only when converting).
    """
    entry = folder / key.file_name()
    expected = key.fields()
    if entry.is_file() and not entry.is_symlink():
        try:
            bundle = read_bundle(entry, name=str(entry))
            if {k: bundle.manifest.get(k) for k in expected} == expected:
                return bundle, True
        except CheckpointError:
            pass
        log.warning("the converted model '%s' was damaged or stale: converting it again", entry)
        entry.unlink(missing_ok=True)
    with _CONVERTING:  # threads of one process convert once; processes race harmlessly
        if entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(CheckpointError):
                return read_bundle(entry, name=str(entry)), True
        more = extra() if extra is not None else {}
        bundle = convert(build(), crop=key.crop, manifest={**more, **expected, "name": name})
        try:
            write_bundle(entry, bundle)
            _clear_leftovers(folder, entry)
        except OSError:
            pass  # a read-only cache: run from memory, convert again next time
    return bundle, False


def add_to_manifest(entry: Path, bundle: Bundle, more: dict[str, Any]) -> Bundle:
    """*bundle* with *more* in its manifest, written again onto its cache *entry* (by
    rename; a read-only cache keeps the old one)."""
    updated = Bundle(bundle.model, bundle.weight, bundle.bias, {**bundle.manifest, **more})
    with contextlib.suppress(OSError):
        write_bundle(entry, updated)
    return updated


# -- running --------------------------------------------------------------------------------


def softmax(logits: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Row-wise float32 softmax (the largest logit subtracted first, as torch does)."""
    x = logits.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    out: np.ndarray[Any, np.dtype[np.float32]] = e / e.sum(axis=1, keepdims=True)
    return out


class Network:
    """A bundle compiled for the CPU: crops in, float32 probabilities out.

    One compiled model per precision and mode, made on first use (a fraction of a
    second): a single image runs in latency mode on one request; a batch is split over
    as many parallel requests as the throughput mode recommends.
    """

    def __init__(self, bundle: Bundle, *, int8: bool = False) -> None:
        ov = _ov()
        self.bundle = bundle
        self.int8 = int8
        self._core = ov.Core()
        self._compiled: dict[tuple[str, str], Any] = {}
        # The infer requests of each compiled model, made with its first batch and kept.
        self._requests: dict[int, list[Any]] = {}
        self._lock = threading.Lock()

    def config(self, precision: str, mode: str) -> dict[str, Any]:
        """The CPU plugin's settings for *precision* in *mode* ('LATENCY', 'THROUGHPUT')."""
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": mode,
            # Unpinned: the decoding threads share the cores, and pinned inference
            # threads would keep them off the core they hold.
            "ENABLE_CPU_PINNING": False,
        }
        hint = _PRECISION_HINTS.get("int8" if self.int8 else precision)
        if hint is not None:
            config["INFERENCE_PRECISION_HINT"] = hint
        return config

    def compiled(self, precision: str, mode: str) -> Any:
        """The compiled model for *precision* and *mode*, compiled on first use."""
        with self._lock:
            found = self._compiled.get((precision, mode))
            if found is None:
                found = self._core.compile_model(
                    self.bundle.model, "CPU", self.config(precision, mode)
                )
                self._compiled[(precision, mode)] = found
            return found

    def features(self, x: np.ndarray[Any, Any], precision: str) -> np.ndarray[Any, Any]:
        """Pooled float32 features of a normalised NCHW float32 batch."""
        if len(x) == 1:
            compiled = next(
                (c for (p, _), c in self._compiled.items() if p == precision), None
            ) or self.compiled(precision, "LATENCY")
            return np.asarray(compiled(x)[0], dtype=np.float32)
        return self._in_parallel(self.compiled(precision, "THROUGHPUT"), x)

    def _in_parallel(self, compiled: Any, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Split a batch over the recommended number of asynchronous requests.

        Plain requests, waited for here: no Python callback runs on OpenVINO's threads (with
        an AsyncInferQueue's callback, freeing the compiled model right after a batch could
        deadlock: its destructor joins a thread that waits for the GIL it holds)."""
        requests = self._requests.get(id(compiled))
        if requests is None:
            jobs = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            requests = [compiled.create_infer_request() for _ in range(jobs)]
            self._requests[id(compiled)] = requests
        parts = [p for p in np.array_split(x, min(len(requests), len(x))) if len(p)]
        started: list[Any] = []
        try:
            for request, part in zip(requests, parts, strict=False):
                request.start_async(np.ascontiguousarray(part))
                started.append(request)
        finally:
            for request in started:
                request.wait()
        return np.concatenate(
            [np.array(r.get_output_tensor(0).data, dtype=np.float32) for r in started]
        )

    def probabilities(
        self, x: np.ndarray[Any, Any], precision: str
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Softmax probabilities: the body through OpenVINO, the head and softmax in fp32."""
        return self.head(self.features(x, precision))

    def head(self, feats: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Softmax probabilities of pooled features: the float32 head, then the softmax."""
        with blas.one_thread():  # beside OpenVINO's threads (model/blas.py)
            logits = feats @ self.bundle.weight.T + self.bundle.bias
        return softmax(logits)


def normalize(
    batch: np.ndarray[Any, Any], mean: list[float], std: list[float]
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """uint8 NCHW crops to the normalised float32 batch, as Preprocess.normalize does
    (the same float32 steps: / 255, - mean, / std)."""
    x: np.ndarray[Any, np.dtype[np.float32]] = batch.astype(np.float32) / np.float32(255.0)
    m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    x -= m
    x /= s
    return x
