"""`resnext quantize`: make INT8 weights from float ones by calibrating on the user's photos.

The photos go through the classification pipeline's own preprocessing (the weights'
transforms); calibration observes them, and the result is checked against the float
model on the same photos before it is saved.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from resnext_cli.console import Console
from resnext_cli.errors import ConfigError, ExitStatus, OutputError
from resnext_cli.files import OutputTarget
from resnext_cli.inputs.sources import iter_sources
from resnext_cli.model.labels import imagenet_labels
from resnext_cli.run.config import Config
from resnext_cli.run.network import Model, State, load_model, load_state
from resnext_cli.run.pipeline import prepare, probabilities
from resnext_cli.run.plan import Plan, resolve

if TYPE_CHECKING:
    from resnext_cli.model.quantized import Agreement

# Calibration needs enough photos to see the activations' range, not thousands.
ENOUGH = 100
MAX_PHOTOS = 1000
# Below this top-1 agreement with the float model, INT8 weights are not worth saving.
USABLE_AGREEMENT = 0.90
WHAT_TO_TRY = (
    "try more calibration photos, and more varied ones, like those you will classify (a few "
    "hundred); weights are already observed per channel, so if it stays low the model needs "
    "layers kept in float (fc first), which this command does not do: classify with the "
    "float model instead, or save this one anyway with --force"
)


@dataclass(frozen=True)
class QuantizeRequest:
    """What `resnext quantize` was asked."""

    calibrate: tuple[str, ...]
    output: str
    force: bool = False
    batch_size: int = 16
    # 'torch' (torch.ao, for --runtime torch) or 'openvino' (NNCF, an OpenVINO file).
    runtime: str = "torch"


def _agreement_line(agree: Agreement) -> str:
    """What the INT8 model's answers on the calibration photos share with the float model's."""
    return (
        f"INT8 agrees with the float model on {agree.top1:.1%} of the {agree.images} photos' "
        f"top-1 (top-5 sets: {agree.top5:.1%}; largest probability change "
        f"{agree.max_abs_dp:.3f})"
    )


def run_quantize(request: QuantizeRequest, config: Config, console: Console) -> int:
    """Calibrate, check agreement with the float model, save; return the exit status."""
    out = Path(request.output)
    # Checked and locked before any work; published at the end onto nothing or the file
    # seen now (never onto a file that appeared meanwhile without --force, never a device).
    target = OutputTarget.claim(out, force=request.force)
    try:
        return _quantize(request, config, console, out, target)
    finally:
        target.release()


def _quantize(
    request: QuantizeRequest, config: Config, console: Console, out: Path, target: OutputTarget
) -> int:
    plan = resolve(config, purpose="calibrate")
    with console.loading(config.checkpoint or f"{plan.info.model} ({plan.info.tag})") as bar:
        state = load_state(plan, progress=bar)
    model = load_model(plan, state=state)
    crops: list[torch.Tensor] = []
    failed = 0
    for source in iter_sources(request.calibrate, warn=console.warn):
        prepared = prepare(source, plan, model.transform)
        if isinstance(prepared, torch.Tensor):
            crops.append(prepared)
        else:
            failed += 1
            console.note(f"error: {prepared}", style="red")
        if len(crops) == MAX_PHOTOS:
            console.note(f"using the first {MAX_PHOTOS} photos (a few hundred is plenty)")
            break
    if not crops:
        raise ConfigError(
            "no photo to calibrate with (give --calibrate with a folder of your photos)"
        )
    if len(crops) < ENOUGH:
        console.warn(
            f"only {len(crops)} photos: calibration is steadier with a few hundred like "
            "the ones you will classify"
        )
    if request.runtime == "openvino":
        return _quantize_openvino(
            request, plan, model, state, crops, console, target, failed=failed
        )
    from resnext_cli.model.quantized import agreement, calibrate, quantized_engine, save_quantized

    engine = quantized_engine()
    console.note(f"calibrating {plan.info.model} on {len(crops)} photos ({engine} engine)…")
    step = request.batch_size
    batches = [torch.stack(crops[i : i + step]) for i in range(0, len(crops), step)]
    normalized = [model.transform.normalize(b) for b in batches]
    int8 = calibrate(plan.info.model, state[0], normalized, name=state[1])
    with torch.inference_mode():
        float_probs = torch.cat([probabilities(model, b, "fp32") for b in batches])
        int8_probs = torch.cat([torch.softmax(int8(x).float(), dim=1) for x in normalized])
    agree = agreement(float_probs, int8_probs)
    said = _agreement_line(agree)
    if agree.top1 < USABLE_AGREEMENT and not request.force:
        console.error(
            f"{said}: under {USABLE_AGREEMENT:.0%}, the INT8 model is not usable as it "
            f"is, and '{out}' was not written"
        )
        console.say(WHAT_TO_TRY)
        return ExitStatus.SOME_FAILED
    console.note(said)
    if agree.top1 < USABLE_AGREEMENT:
        console.warn(
            f"under {USABLE_AGREEMENT:.0%}, the INT8 model is not usable as it is; "
            "saved anyway (--force)"
        )
    save_quantized(
        out,
        int8,
        model_name=plan.info.model,
        labels_count=len(plan.labels),
        source=state[1],
        weights=plan.info.tag,
        names=None if plan.labels == imagenet_labels() else plan.labels,
        target=target,
    )
    console.note(
        f"use it with: resnext classify --checkpoint {out} --quantized -m {plan.info.model}"
    )
    console.stdout.write(f"{out}\n")
    return ExitStatus.SOME_FAILED if failed else ExitStatus.OK


def _quantize_openvino(
    request: QuantizeRequest,
    plan: Plan,
    model: Model,
    state: State,
    crops: list[torch.Tensor],
    console: Console,
    target: OutputTarget,
    *,
    failed: int,
) -> int:
    """Calibrate the OpenVINO body with NNCF; save it only if it agrees (or --force)."""
    from resnext_cli.model import openvino_runtime as ovr
    from resnext_cli.model.quantized import agreement

    out = Path(request.output)
    folded = replace(plan, runtime="openvino", fold_batchnorm=True)
    float_model = load_model(folded, state=state)
    assert float_model.openvino is not None
    t = model.transform
    step = request.batch_size
    batches = [torch.stack(crops[i : i + step]) for i in range(0, len(crops), step)]
    normalized = [ovr.normalize(b.numpy(), t.mean, t.std) for b in batches]
    console.note(f"calibrating {plan.info.model} on {len(crops)} photos (OpenVINO, NNCF)…")
    bundle = ovr.quantize_int8(
        float_model.openvino.bundle,
        normalized,
        manifest={
            "kind": "int8",
            "model": plan.info.model,
            "weights": plan.info.tag,
            "source": state[1],
            "openvino": ovr.version(),
        },
    )
    int8 = ovr.Network(bundle, int8=True)
    with torch.inference_mode():
        float_probs = torch.cat([probabilities(model, b, "fp32") for b in batches])
    int8_probs = torch.cat([torch.from_numpy(int8.probabilities(x, "int8")) for x in normalized])
    agree = agreement(float_probs, int8_probs)
    said = _agreement_line(agree)
    if agree.top1 < USABLE_AGREEMENT and not request.force:
        console.error(
            f"{said}: below {USABLE_AGREEMENT:.0%}, so '{out}' was not saved (calibrate with "
            "more photos like the ones you will classify, or save it anyway with --force)"
        )
        return ExitStatus.SOME_FAILED
    # The one way of writing (files.py), onto what was claimed before the work began.
    try:
        temp = target.temporary()
        try:
            ovr.write_bundle_into(temp, bundle)
        except BaseException:
            temp.close()
            raise
        target.publish(temp)
    except OSError as exc:
        raise OutputError(
            f"cannot write '{out}': {exc.strerror or exc} (choose a writable folder)"
        ) from None
    console.note(said)
    if agree.top1 < USABLE_AGREEMENT:
        console.warn(f"saved with --force although below {USABLE_AGREEMENT:.0%} agreement")
    console.note(
        f"use it with: resnext classify --checkpoint {out} --quantized -m {plan.info.model}"
    )
    console.stdout.write(f"{out}\n")
    return ExitStatus.SOME_FAILED if failed else ExitStatus.OK
