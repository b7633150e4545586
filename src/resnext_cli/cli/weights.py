"""`resnext models` and `resnext download`: the weights there are, and fetching them ahead.

Each command only declares its options; a plain function below (_models, _download) does its
work, so a test or the mutation tool (which leaves decorated functions alone) reaches it.
"""

from __future__ import annotations

from typing import Any

import click

from resnext_cli.cli.options import MODEL_HELP, debug_option, pass_console
from resnext_cli.console import Console
from resnext_cli.model.weights import OFFLINE_ENV


@click.command()
@click.option(
    "-f",
    "--format",
    "fmt",
    default="table",
    show_default=True,
    type=click.Choice(["table", "json"]),
    help="How to print the list.",
)
@pass_console
@debug_option
def models(console: Console, **params: Any) -> int:
    """List the models and weights tags, with accuracy, size, file and cache state."""
    return _models(console, **params)


@click.command()
@click.option("-m", "--model", default="resnext50_32x4d", show_default=True, help=MODEL_HELP)
@click.option("-w", "--weights", default="DEFAULT", show_default=True, help="Weights tag.")
@click.option("--quantized", is_flag=True, help="The INT8 weights (101 variants).")
@click.option(
    "--offline",
    is_flag=True,
    envvar=OFFLINE_ENV,
    help="Do not download: say what would be fetched and where it goes.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@pass_console
@debug_option
def download(console: Console, **params: Any) -> int:
    """Fetch weights into torch's hub cache ahead of time and print the file's path."""
    return _download(console, **params)


def _models(
    console: Console,
    *,
    fmt: str,
) -> int:
    from resnext_cli.model.registry import all_weights
    from resnext_cli.outputs.writers import models_json, models_table

    rows = all_weights(include_quantized=True)
    if fmt == "json":
        console.stdout.write(models_json(rows) + "\n")
    else:
        models_table(rows, console.stdout, is_terminal=console.stdout_is_terminal)
    return 0


def _download(
    console: Console,
    *,
    model: str,
    weights: str,
    quantized: bool,
    offline: bool,
    quiet: bool,
) -> int:
    from resnext_cli.model.registry import resolve_weights
    from resnext_cli.model.weights import fetch

    console.quiet = quiet
    info = resolve_weights(model, weights, quantized=quantized)
    with console.loading(f"{info.model} ({info.tag})") as progress:
        path = fetch(info.url, offline=offline, progress=progress)
    console.stdout.write(f"{path}\n")
    return 0
