"""Checkpoint to a running network, as a plan describes it: fetch or read the weights, check
their classes, build the torch network (float or INT8) on its device or convert it for
OpenVINO, and the plan's forward pass (reduced precision for the body, float32 for the head,
torch.compile under --compile).

torch is imported only where a torch network is read, built or run: a run through
OpenVINO with its converted model in the cache never imports it.

The steps of a run (pipeline.py) take the Model this module loads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnext_cli.errors import CheckpointError, ConfigError, WeightsError
from resnext_cli.imaging.preprocess import Preprocess
from resnext_cli.inputs.http import Progress
from resnext_cli.model.weights import checkpoints_dir, discard, fetch
from resnext_cli.run.plan import Plan

if TYPE_CHECKING:
    import torch

    from resnext_cli.imaging.tensor_decode import Budget
    from resnext_cli.model.openvino_runtime import Network as OpenVinoNetwork

# The reduced precisions the body of the network may run in (see reduced_dtype).
REDUCED = frozenset({"bf16", "fp16"})

log = logging.getLogger(__name__)

State = tuple[dict[str, "torch.Tensor"], str]


def reduced_dtype(precision: str) -> torch.dtype:
    """autocast's dtype for a reduced *precision* ('bf16', 'fp16')."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def weights_file(plan: Plan, *, progress: Progress | None = None) -> tuple[Path, str]:
    """The local file of the weights or checkpoint the plan names (fetched if need be),
    with its name for messages."""
    info = plan.info
    if plan.checkpoint is None:
        path = fetch(info.url, offline=plan.offline, progress=progress, timeout=plan.timeout)
        return path, str(path)
    name = plan.checkpoint
    if name.startswith(("http://", "https://")):
        return fetch(name, offline=plan.offline, progress=progress, timeout=plan.timeout), name
    path = Path(name)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{name}' does not exist (give a file)")
    return path, name


def load_state(plan: Plan, *, progress: Progress | None = None) -> State:
    """Fetch or read the state dict the plan names; return it with its name for messages.

    An INT8 plan's state is torchvision's quantized layout (packed parameters), read by
    quantized.py; a float plan's is plain tensors.
    """
    from resnext_cli.model.checkpoint import read_state_dict

    info = plan.info
    read = _read_int8 if plan.precision == "int8" else read_state_dict
    path, name = weights_file(plan, progress=progress)
    try:
        return read(path, name=name), name
    except CheckpointError:
        if plan.checkpoint is None:
            discard(path)
            quantized = " --quantized" if plan.precision == "int8" else ""
            raise WeightsError(
                f"cached weights file '{path}' was corrupt and has been removed (run again "
                f"to download it, or 'resnext download -m {info.model} -w {info.tag}{quantized}')"
            ) from None
        if name.startswith(("http://", "https://")):
            discard(path)  # never reuse a cached file that does not load
        raise


def _read_int8(path: Path, *, name: str) -> dict[str, torch.Tensor]:
    from resnext_cli.model.quantized import read_quantized

    return read_quantized(path, name=name).state


@dataclass
class Model:
    """The network of a plan, on its device, with the weights' own preprocessing."""

    plan: Plan
    # None when OpenVINO runs it: the torch network is then built only if asked for.
    _net: torch.nn.Module | None
    transform: Preprocess
    # The checkpoint (or cached weights file) it came from, for messages.
    name: str
    # The compiled OpenVINO network, when the plan's runtime is 'openvino'.
    openvino: OpenVinoNetwork | None = None
    # The plan's forward pass (uint8 crops normalised -> float32 logits), compiled under
    # --compile; None: built on first use.
    forward: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    # Seconds the first compiled call took (compiling included), once it has run.
    compile_seconds: float | None = None
    # Out-of-memory back-offs, each taken once per run: the GPU decoder's resize chunk,
    # and the largest batch the model is given at once.
    budget: Budget | None = field(default=None, repr=False)
    max_batch: int | None = None
    _norm: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def net(self) -> torch.nn.Module:
        """The torch network (under OpenVINO, built from the same weights on first use)."""
        if self._net is None:
            if self.plan.precision == "int8":
                raise ConfigError(
                    f"'{self.name}' is an OpenVINO INT8 model: it has no torch network "
                    "(use a checkpoint made by 'resnext quantize')"
                )
            self._net = load_model(replace(self.plan, runtime="torch")).net
        return self._net


def check_classes(
    plan: Plan, state: dict[str, torch.Tensor], name: str, *, classes: int | None = None
) -> None:
    """Refuse a checkpoint whose class count differs from the labels', and a top-k past it."""
    fc = state.get("fc.weight")
    if classes is None and fc is not None and fc.ndim == 2:
        classes = int(fc.shape[0])
    if classes is not None and classes != len(plan.labels):
        if plan.labels_file:
            source = f"labels file '{plan.labels_file}' has"
        elif plan.labels_kept:
            source = "the class names it keeps are"
        else:
            source = "the bundled ImageNet labels have"
        raise ConfigError(
            f"checkpoint '{name}' has {classes} classes but {source} "
            f"{len(plan.labels)} (give --labels FILE with {classes} lines)"
        )
    if plan.topk > len(plan.labels):
        raise ConfigError(
            f"--topk {plan.topk} is more than the {len(plan.labels)} classes (lower --topk)"
        )


def load_model(
    plan: Plan, *, progress: Progress | None = None, state: State | None = None
) -> Model:
    """Fetch or take the state dict, check it, build the network the plan describes."""
    if plan.runtime == "openvino":
        return _load_openvino(plan, progress=progress, state=state)
    tensors, name = state if state is not None else load_state(plan, progress=progress)
    if plan.precision == "int8":
        from resnext_cli.model.quantized import build_quantized, num_classes, quantized_engine

        quantized_engine()  # x86, else fbgemm, else qnnpack: what this torch offers
        classes = num_classes(tensors, model=plan.info.model, name=name)
        check_classes(plan, tensors, name, classes=classes)
        net = build_quantized(plan.info.model, tensors, name=name)
        return Model(plan, net, transform_for(plan), name)
    import torch

    from resnext_cli.model.checkpoint import build_model, fold_batchnorm

    check_classes(plan, tensors, name)
    net = build_model(plan.info.model, tensors, name=name)
    if plan.fold_batchnorm:
        net = fold_batchnorm(net)
    configure_backends(plan)
    # channels_last is only a memory layout, which oneDNN and cuDNN run faster.
    net = net.to(memory_format=torch.channels_last).to(plan.device)
    model = Model(plan, net, transform_for(plan), name)
    if plan.compile:
        model.forward = _compiled(model)
    return model


def configure_backends(plan: Plan) -> None:
    """Set torch's process-wide numerics for a CUDA plan: no TF32, cuDNN autotuning.

    cuDNN's TF32 is on by default, so an fp32 run (--exact, --precision fp32, or the fp32
    retry of an overflowed bf16 row) would otherwise compute in TF32 while its records say
    fp32: every record that says fp32 is IEEE fp32. Every batch has the same 224x224 shape,
    so cuDNN's autotuner pays off.
    """
    if plan.device_type != "cuda":
        return
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.benchmark = True


def forward_pass(model: Model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The plan's forward pass: float32 logits of a normalised batch."""
    net, precision, device_type = model.net, model.plan.precision, model.plan.device_type
    head: Any = net.fc
    if precision not in REDUCED:
        return net
    import torch

    dtype = reduced_dtype(precision)

    def reduced(x: torch.Tensor) -> torch.Tensor:
        # The body runs in reduced precision; the head and the softmax in float32, so
        # logits are not rounded to bf16's 8 bits (equal probabilities, top-k by luck).
        with torch.autocast(device_type=device_type, dtype=dtype):
            features = pooled_features(net, x)
        logits: torch.Tensor = head(features.float())
        return logits

    return reduced


def _compiled(model: Model) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile of the plan's forward pass; its first call's time is the compile time."""
    import torch

    compiled = torch.compile(forward_pass(model), dynamic=False)
    first = True

    def forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal first
        if not first:
            return compiled(x)
        started = time.perf_counter()
        out: torch.Tensor = compiled(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        model.compile_seconds = time.perf_counter() - started
        first = False
        log.info("torch.compile: %.1f s compiling (the first batch's call)", model.compile_seconds)
        return out

    return forward


def _load_openvino(plan: Plan, *, progress: Progress | None, state: State | None) -> Model:
    """The plan's network through OpenVINO: converted once and cached beside the weights,
    or an INT8 file made by 'resnext quantize --runtime openvino'."""
    from resnext_cli.model import openvino_runtime as ovr

    info = plan.info
    transform = transform_for(plan)
    if plan.precision == "int8":
        path, name = weights_file(plan, progress=progress)
        bundle = ovr.read_bundle(path, name=name)
        made_for = bundle.manifest.get("model")
        if made_for != info.model:
            raise CheckpointError(
                f"checkpoint '{name}' was made for {made_for}, not {info.model} (use -m {made_for})"
            )
        check_classes(plan, {}, name, classes=bundle.classes)
        return Model(plan, None, transform, name, ovr.Network(bundle, int8=True))
    if state is not None:
        source, name = ovr.state_identity(state[0]), state[1]
    else:
        path, name = weights_file(plan, progress=progress)
        source = ovr.file_identity(path)

    def build() -> torch.nn.Module:
        torch_plan = replace(plan, runtime="torch", device="cpu")
        return load_model(torch_plan, progress=progress, state=state).net

    def classes() -> dict[str, Any]:
        # A local checkpoint's own class names, kept in the manifest: a warm run's plan
        # reads them there instead of loading the checkpoint with torch.
        from resnext_cli.model.checkpoint import stored_classes

        names = stored_classes(Path(name))
        return {ovr.CLASSES_KEY: list(names) if names else None}

    local = state is None and plan.checkpoint is not None and "://" not in plan.checkpoint
    key = ovr.CacheKey(info.model, source, plan.fold_batchnorm, transform.crop_size[0])
    folder = ovr.cache_dir(checkpoints_dir())
    bundle, cached = ovr.cached_bundle(
        key, folder, build, name=name, extra=classes if local else None
    )
    if cached and local and ovr.CLASSES_KEY not in bundle.manifest:
        # Converted before the names were kept: kept now, so later runs need no torch.
        bundle = ovr.add_to_manifest(folder / key.file_name(), bundle, classes())
    check_classes(plan, {}, name, classes=bundle.classes)
    return Model(plan, None, transform, name, ovr.Network(bundle))


def transform_for(plan: Plan) -> Preprocess:
    """The weights' own Resize, CenterCrop and Normalize, split for batching (INT8 weights
    use those of the float weights they were made from), from the registry's snapshot."""
    info = plan.preprocess
    return Preprocess.from_settings(
        resize_size=info.resize_size,
        crop_size=info.crop_size,
        interpolation=info.interpolation,
        antialias=info.antialias,
        mean=info.mean,
        std=info.std,
    )


def pooled_features(net: Any, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet forward up to the pooled features (everything but fc)."""
    import torch

    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)
