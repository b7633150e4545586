"""`resnext quantize`: make INT8 weights from float ones by calibrating on the user's photos.

The photos go through the classification pipeline's own preprocessing (the weights'
transforms); calibration observes them, and the result is checked against the float
model on the same photos before it is saved.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from resnext_cli.console import Console
from resnext_cli.errors import ConfigError, ExitStatus
from resnext_cli.files import OutputTarget
from resnext_cli.inputs.sources import iter_sources
from resnext_cli.run.config import Config
from resnext_cli.run.pipeline import _softmax, load_model, load_state, prepare
from resnext_cli.run.plan import resolve

# Calibration needs enough photos to see the activations' range, not thousands.
ENOUGH = 100
MAX_PHOTOS = 1000


@dataclass(frozen=True)
class QuantizeRequest:
    """What `resnext quantize` was asked."""

    calibrate: tuple[str, ...]
    output: str
    force: bool = False
    batch_size: int = 16


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
    plan = resolve(replace(config, precision="fp32", quantized=False, device="cpu"))
    with console.loading(config.checkpoint or f"{plan.info.model} ({plan.info.tag})") as bar:
        state = load_state(plan, progress=bar)
    model = load_model(replace(plan, fold_batchnorm=False), state=state)
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
    from resnext_cli.model.quantized import agreement, calibrate, quantized_engine, save_quantized

    engine = quantized_engine()
    console.note(f"calibrating {plan.info.model} on {len(crops)} photos ({engine} engine)…")
    step = request.batch_size
    batches = [torch.stack(crops[i : i + step]) for i in range(0, len(crops), step)]
    normalized = [model.transform.normalize(b) for b in batches]
    int8 = calibrate(plan.info.model, state[0], normalized, name=state[1])
    with torch.inference_mode():
        float_probs = torch.cat([_softmax(model, b, "fp32") for b in batches])
        int8_probs = torch.cat([torch.softmax(int8(x).float(), dim=1) for x in normalized])
    agree = agreement(float_probs, int8_probs)
    save_quantized(
        out,
        int8,
        model_name=plan.info.model,
        labels_count=len(plan.labels),
        source=state[1],
        weights=plan.info.tag,
        target=target,
    )
    console.note(
        f"INT8 agrees with the float model on {agree.top1:.1%} of the {len(crops)} photos' "
        f"top-1 (top-5 sets: {agree.top5:.1%}; largest probability change "
        f"{agree.max_abs_dp:.3f})"
    )
    console.note(
        f"use it with: resnext classify --checkpoint {out} --quantized -m {plan.info.model}"
    )
    console.stdout.write(f"{out}\n")
    return ExitStatus.SOME_FAILED if failed else ExitStatus.OK
