"""`resnext learn` and `resnext quantize`: make a model of your own from your photos.

torch loads inside the commands, never at import: their --help stays light.
Each command only declares its options; a plain function below (_learn, _quantize) does its
work, so a test or the mutation tool (which leaves decorated functions alone) reaches it.
"""

from __future__ import annotations

from typing import Any

import click

from resnext_cli.cli.options import MODEL_HELP, debug_option, learn_options, pass_console
from resnext_cli.console import Console
from resnext_cli.model.weights import OFFLINE_ENV
from resnext_cli.run.config import Config


@click.command()
@click.argument("folder", required=False, metavar="[FOLDER]")
@click.option(
    "--from",
    "records",
    metavar="FILE",
    help="Learn from a CSV or JSON Lines list of path,label (a reviewed classify -o "
    "file works: its top-1 label) instead of FOLDER.",
)
@click.option("-o", "--output", metavar="FILE", help="Where to save the learned model (.pth).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option(
    "--holdout",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 0.9),
    help="Share of each class held out to score the model before it is refitted on all.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the held-out draw.")
@click.option(
    "--allow-duplicates",
    is_flag=True,
    help="Keep an image whose bytes are in two classes (else it is refused).",
)
@click.option(
    "--clear-cache", is_flag=True, help="Remove every cached feature, then exit (or go on)."
)
@learn_options
def learn(console: Console, **params: Any) -> int:
    """Teach it your own classes: a new head on ResNeXt's features, fitted on the CPU.

    FOLDER holds one subfolder of images per class, as 'resnext sort' writes them (its
    _uncertain/ and _failed/ are left out); the subfolder names become the labels. The
    backbone stays frozen: each image's pooled features are computed once and cached
    (beside the weights), so after moving a few misfiled photos a re-learn computes only
    those. A share of each class (--holdout) scores the model first, then it is fitted
    on every image and saved with its class names: resnext classify --checkpoint FILE.
    """
    return _learn(console, **params)


def _clear_cache(console: Console) -> None:
    from resnext_cli.model.feature_cache import cache_root, clear

    entries, size = clear()
    console.note(f"removed {entries} cached features ({size / 1e6:.1f} MB) from '{cache_root()}'")


@click.command()
@click.option("-m", "--model", default="resnext50_32x4d", show_default=True, help=MODEL_HELP)
@click.option("-w", "--weights", default="DEFAULT", show_default=True, help="Float weights tag.")
@click.option("--checkpoint", metavar="PATH|URL", help="Float state dict to quantize instead.")
@click.option("--labels", type=click.Path(dir_okay=False), metavar="FILE", help="Class names.")
@click.option(
    "--calibrate",
    "photos",
    multiple=True,
    required=True,
    metavar="PHOTOS",
    help="Photos like the ones you will classify (folders, files, globs; a few hundred is "
    "plenty). Repeat for more.",
)
@click.option(
    "-o", "--output", required=True, metavar="FILE", help="Where to save the INT8 weights."
)
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite an existing output file, and save INT8 weights that agree with the float "
    "model on under 90% of the photos' top-1 (else nothing is written and the exit status is 1).",
)
@click.option(
    "--runtime",
    type=click.Choice(["torch", "openvino"]),
    default="torch",
    show_default=True,
    help="torch: torch.ao INT8 weights. openvino: an OpenVINO INT8 model calibrated with "
    "NNCF (pip install 'resnext-cli[openvino]').",
)
@click.option(
    "--offline", is_flag=True, envvar=OFFLINE_ENV, help="Never use the network for weights."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress or messages on stderr.")
@pass_console
@debug_option
def quantize(console: Console, **params: Any) -> int:
    """Make INT8 weights for the CPU by calibrating on your own photos.

    Post-training quantization: the float model observes PHOTOS, is converted to INT8,
    and is checked against the float model on them (top-1 agreement is printed); under
    90% agreement nothing is saved (exit status 1) unless --force. Use the result with:
    resnext classify --checkpoint FILE --quantized. With --runtime openvino the result is
    an OpenVINO INT8 model calibrated with NNCF.
    """
    return _quantize(console, **params)


def _learn(
    console: Console,
    *,
    folder: str | None,
    records: str | None,
    output: str | None,
    force: bool,
    holdout: float,
    seed: int,
    allow_duplicates: bool,
    clear_cache: bool,
    quiet: bool,
    **options: Any,
) -> int:
    console.quiet = quiet
    # A learn that would be refused is refused before the cache is cleared.
    if folder is not None and records is not None:
        raise click.UsageError("give FOLDER or --from FILE, not both")
    if folder is None and records is None:
        if not clear_cache:
            raise click.UsageError("give FOLDER (one subfolder per class) or --from FILE")
        _clear_cache(console)
        return 0
    if output is None:
        raise click.UsageError("give -o FILE: where to save the learned model")
    from resnext_cli.run.plan import weights_for

    config = Config(**options)
    weights_for(config)  # unknown weights are said before anything loads
    if clear_cache:
        _clear_cache(console)
    from resnext_cli.run.learn import LearnRequest, run_learn

    request = LearnRequest(
        output=output,
        folder=folder,
        records=records,
        force=force,
        holdout=holdout,
        seed=seed,
        allow_duplicates=allow_duplicates,
    )
    return run_learn(request, config, console)


def _quantize(
    console: Console,
    *,
    photos: tuple[str, ...],
    output: str,
    force: bool,
    runtime: str,
    quiet: bool,
    **options: Any,
) -> int:
    from resnext_cli.cli.checks import check_model_options, check_quantize

    console.quiet = quiet
    config = Config(**options)
    check_model_options(config)
    check_quantize(output=output, force=force, photos=photos)
    from resnext_cli.run.quantize import QuantizeRequest, run_quantize  # imports torch

    request = QuantizeRequest(photos, output, force, runtime=runtime)
    return run_quantize(request, config, console)
