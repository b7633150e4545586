"""The `resnext` command: options, thin commands, and the one error boundary.

Nothing heavy is imported at module level: `resnext --help`, `resnext models` and shell
completion must not load torch, torchvision or Pillow.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

import click

from resnext_cli import __version__
from resnext_cli.cli.options import (
    MODEL_HELP,
    debug_option,
    given_options,
    learn_options,
    pass_console,
    run_options,
)
from resnext_cli.console import Console
from resnext_cli.errors import ConfigError, ExitStatus, ReaderGone, ResnextError, Terminated
from resnext_cli.model.weights import OFFLINE_ENV
from resnext_cli.outputs.writers import FORMATS
from resnext_cli.reviewed import UNREVIEWED
from resnext_cli.run.config import Config


class _Group(click.Group):
    """Click turns a broken pipe into exit 1; a reader that went away is no failure."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise ReaderGone from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="resnext")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Classify images with torchvision's ResNeXt models.

    Run `resnext classify IMAGE` to see the top-5 ImageNet labels of an image.
    """
    if ctx.obj is None:
        ctx.obj = Console.from_sys()


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "-f",
    "--format",
    "fmt",
    default="auto",
    show_default=True,
    type=click.Choice(FORMATS),
    help="auto: a table on a terminal, else JSON Lines (or by the -o file's extension).",
)
@click.option("-o", "--output", metavar="FILE", help="Write records to FILE instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option(
    "--resume", is_flag=True, help="Skip inputs already in the -o file and append the rest."
)
@click.option(
    "--long", is_flag=True, help="csv and parquet: one row per prediction, not one per image."
)
@click.option(
    "--embeddings",
    is_flag=True,
    help="Add each image's pooled features (2,048 numbers, the input of fc) to its record "
    "(json, jsonl, parquet).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this process. ray: Ray Data tasks and actors (pip install 'resnext-cli[ray]').",
)
@click.option(
    "--ray-address",
    metavar="ADDRESS",
    help="Ray cluster for --engine ray, or 'local' [default: the running cluster, else a "
    "private Ray on 127.0.0.1].",
)
@run_options
def classify(
    console: Console,
    inputs: tuple[str, ...],
    fmt: str,
    output: str | None,
    force: bool,
    resume: bool,
    long: bool,
    embeddings: bool,
    quiet: bool,
    min_probability: float | None,
    report: str | None,
    engine: str,
    ray_address: str | None,
    **options: Any,
) -> int:
    """Classify images and print the top-k ImageNet labels of each.

    INPUT is an image file, a folder (walked recursively), a quoted glob such as
    'photos/**/*.jpg', an http(s) URL, or - for standard input: image bytes, or a
    list of paths and URLs, one per line.
    """
    from resnext_cli.cli.checks import check_classify_outputs, check_engine, check_model_options
    from resnext_cli.outputs.sinks import OutputRequest, Outputs
    from resnext_cli.run.classify import run_classify

    console.quiet = quiet
    check_engine(engine, ray_address=ray_address, **options)
    check_classify_outputs(
        output=output,
        fmt=fmt,
        force=force,
        resume=resume,
        long=long,
        report=report,
        stdout_is_terminal=console.stdout_is_terminal,
    )
    config = Config(**options, embeddings=embeddings)
    check_model_options(config)
    request = OutputRequest(output, fmt, force, resume, long, report, embeddings=embeddings)
    outputs = Outputs.open(request, stdout_is_terminal=console.stdout_is_terminal)
    engine_options = {"address": ray_address} if engine == "ray" else {}
    return run_classify(
        config,
        inputs,
        outputs,
        console,
        engine_kind=engine,
        min_probability=min_probability,
        engine_options=engine_options,
    )


@cli.command(name="sort")
@click.argument("paths", nargs=-1, metavar="SRC... DEST")
@click.option("--copy", "copy_", is_flag=True, help="Copy files (the default).")
@click.option("--link", is_flag=True, help="Hard-link files (else symlink them).")
@click.option("--move", is_flag=True, help="Move files, journaled and undoable.")
@click.option(
    "--by",
    type=click.Choice(["label", "index", "category"]),
    default="label",
    show_default=True,
    help="Folder per top-1 label, per class index, or per top category (the default "
    "categories, or --categories FILE).",
)
@click.option(
    "--from",
    "records",
    metavar="RECORDS",
    type=click.Path(dir_okay=False),
    help="File the images by the records of an earlier 'classify -o RECORDS' run; no model.",
)
@click.option(
    "--unreviewed",
    type=click.Choice(UNREVIEWED),
    help="With a report's reviewed file (--from): refuse images not reviewed yet "
    "(the default), or file them by the model's top-1.",
    default=None,
)
@click.option(
    "--root",
    "roots",
    metavar="FOLDER",
    multiple=True,
    type=click.Path(file_okay=False),
    help="With --from: take files only from inside FOLDER (repeatable; default: the folder "
    "holding RECORDS).",
)
@click.option("-n", "--dry-run", is_flag=True, help="Print the plan on stdout; touch nothing.")
@click.option("--resume", is_flag=True, help="Finish an interrupted sort into DEST.")
@click.option("--undo", is_flag=True, help="Put back every file sorted into DEST.")
@run_options
def sort_command(
    console: Console,
    paths: tuple[str, ...],
    copy_: bool,
    link: bool,
    move: bool,
    by: str,
    records: str | None,
    unreviewed: str | None,
    roots: tuple[str, ...],
    dry_run: bool,
    resume: bool,
    undo: bool,
    quiet: bool,
    min_probability: float | None,
    report: str | None,
    **options: Any,
) -> int:
    """Classify images and file each one into DEST/<top-1 label>/.

    SRC takes what classify takes (files, folders, globs, -); with --from RECORDS, give only
    DEST: a record is filed only when its file lies inside a --root FOLDER (by default the
    folder holding RECORDS), carries the size and mtime_ns classify wrote, and still has
    them (a file swapped for a link is not filed). With --from a report's reviewed file
    (NAME.reviewed.jsonl), images go by the labels a person chose, skipped ones to
    DEST/_skipped/. --dry-run with --undo or --resume prints the steps they would take.
    Images under --min-probability go to DEST/_uncertain/, unreadable ones to
    DEST/_failed/. Names are made safe for every file system and nothing is overwritten: a
    clash gets a number, 'cat (1).jpg'; a file already filed from the same source with the
    same bytes is skipped. Every step is journaled in DEST first, so an interrupted sort can
    be finished with --resume DEST or rolled back with --undo DEST.
    Exit status: 0 when every image was classified and filed, 1 when some could not be
    classified (they are in _failed/) or some file could not be handled, 2 for usage errors.
    """
    from resnext_cli.cli.checks import check_model_options, check_sort
    from resnext_cli.run.sort import SortRequest, run_sort

    console.quiet = quiet
    modes = [m for m, on in (("copy", copy_), ("link", link), ("move", move)) if on]
    if len(modes) > 1:
        raise ConfigError(f"give one of --copy, --link, --move, not {' and '.join(modes)}")
    check_sort(given_options(), records=records, resume=resume, undo=undo)
    if by == "category" and options["categories"] is None and records is None:
        options["categories"] = "default"  # filing by category needs them: no need to ask
    if records is None and not (resume or undo):
        check_model_options(Config(**options))
    request = SortRequest(
        paths=paths,
        mode=modes[0] if modes else "copy",
        by=by,
        records=records,
        unreviewed=unreviewed,
        dry_run=dry_run,
        resume=resume,
        undo=undo,
        min_probability=min_probability,
        report=report,
        roots=roots,
    )
    return run_sort(request, options, console)


@cli.command()
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
def models(console: Console, fmt: str) -> int:
    """List the models and weights tags, with accuracy, size, file and cache state."""
    from resnext_cli.model.registry import all_weights
    from resnext_cli.outputs.writers import models_json, models_table

    rows = all_weights(include_quantized=True)
    if fmt == "json":
        console.stdout.write(models_json(rows) + "\n")
    else:
        models_table(rows, console.stdout, is_terminal=console.stdout_is_terminal)
    return 0


@cli.command()
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
def download(
    console: Console, model: str, weights: str, quantized: bool, offline: bool, quiet: bool
) -> int:
    """Fetch weights into torch's hub cache ahead of time and print the file's path."""
    from resnext_cli.model.registry import resolve_weights
    from resnext_cli.model.weights import fetch

    console.quiet = quiet
    info = resolve_weights(model, weights, quantized=quantized)
    with console.loading(f"{info.model} ({info.tag})") as progress:
        path = fetch(info.url, offline=offline, progress=progress)
    console.stdout.write(f"{path}\n")
    return 0


@cli.command()
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
def quantize(
    console: Console,
    photos: tuple[str, ...],
    output: str,
    force: bool,
    runtime: str,
    quiet: bool,
    **options: Any,
) -> int:
    """Make INT8 weights for the CPU by calibrating on your own photos.

    Post-training quantization: the float model observes PHOTOS, is converted to INT8,
    and is checked against the float model on them (top-1 agreement is printed); under
    90% agreement nothing is saved (exit status 1) unless --force. Use the result with:
    resnext classify --checkpoint FILE --quantized. With --runtime openvino the result is
    an OpenVINO INT8 model calibrated with NNCF.
    """
    from resnext_cli.cli.checks import check_model_options, check_quantize

    console.quiet = quiet
    config = Config(**options)
    check_model_options(config)
    check_quantize(output=output, force=force, photos=photos)
    from resnext_cli.run.quantize import QuantizeRequest, run_quantize  # imports torch

    request = QuantizeRequest(photos, output, force, runtime=runtime)
    return run_quantize(request, config, console)


@cli.command()
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
def learn(
    console: Console,
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
    """Teach it your own classes: a new head on ResNeXt's features, fitted on the CPU.

    FOLDER holds one subfolder of images per class, as 'resnext sort' writes them (its
    _uncertain/ and _failed/ are left out); the subfolder names become the labels. The
    backbone stays frozen: each image's pooled features are computed once and cached
    (beside the weights), so after moving a few misfiled photos a re-learn computes only
    those. A share of each class (--holdout) scores the model first, then it is fitted
    on every image and saved with its class names: resnext classify --checkpoint FILE.
    """
    from resnext_cli.run.learn import LearnRequest, run_learn

    console.quiet = quiet
    if clear_cache:
        from resnext_cli.model.feature_cache import cache_root, clear

        entries, size = clear()
        console.note(
            f"removed {entries} cached features ({size / 1e6:.1f} MB) from '{cache_root()}'"
        )
        if folder is None and records is None:
            return 0
    if folder is not None and records is not None:
        raise click.UsageError("give FOLDER or --from FILE, not both")
    if folder is None and records is None:
        raise click.UsageError("give FOLDER (one subfolder per class) or --from FILE")
    if output is None:
        raise click.UsageError("give -o FILE: where to save the learned model")
    config = Config(**options)
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


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise Terminated


def main(argv: list[str] | None = None, *, console: Console | None = None) -> None:
    """Run the command line; the one place errors become messages and exit codes."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or bool(os.environ.get("RESNEXT_DEBUG"))
    signal.signal(signal.SIGTERM, _on_sigterm)
    console = console or Console.from_sys()
    console.debug = debug
    try:
        result = cli.main(args=args, prog_name="resnext", standalone_mode=False, obj=console)
        code = int(result) if isinstance(result, int) else 0
        console.stdout.flush()  # a pipe's last bytes: a reader gone by now is caught below
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = ExitStatus.USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        code = ExitStatus.INTERRUPTED
    except Terminated:
        code = ExitStatus.TERMINATED
    except (BrokenPipeError, ReaderGone):
        code = _reader_gone()
    except ResnextError as exc:
        if debug:
            raise
        console.error(str(exc))
        code = exc.exit_status
    except Exception as exc:
        if debug:
            raise
        console.error(
            f"unexpected {exc.__class__.__name__}: {exc} (run with --debug for a traceback)"
        )
        code = ExitStatus.SOME_FAILED
    sys.exit(code)


def _reader_gone() -> int:
    """The reader of stdout went away (`| head -1`): stop at once and quietly, as Unix
    tools do; point stdout at /dev/null so Python's exit flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return ExitStatus.OK
