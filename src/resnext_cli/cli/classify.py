"""`resnext classify` and `resnext sort`: classify images, and file them by their labels.

torch loads inside the commands, never at import: their --help stays light.
Each command only declares its options; a plain function below (_classify, _sort) does its
work, so a test or the mutation tool (which leaves decorated functions alone) reaches it.
"""

from __future__ import annotations

from typing import Any

import click

from resnext_cli.cli.options import given_options, run_options
from resnext_cli.console import Console
from resnext_cli.errors import ConfigError
from resnext_cli.outputs.writers import FORMATS
from resnext_cli.reviewed import UNREVIEWED
from resnext_cli.run.config import Config


@click.command()
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
def classify(console: Console, **params: Any) -> int:
    """Classify images and print the top-k ImageNet labels of each.

    INPUT is an image file, a folder (walked recursively), a quoted glob such as
    'photos/**/*.jpg', an http(s) URL, or - for standard input: image bytes, or a
    list of paths and URLs, one per line.
    """
    return _classify(console, **params)


@click.command(name="sort")
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
def sort_command(console: Console, **params: Any) -> int:
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
    return _sort(console, **params)


def _classify(
    console: Console,
    *,
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


def _sort(
    console: Console,
    *,
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
    from resnext_cli.cli.checks import check_model_options, check_sort
    from resnext_cli.run.sort import SortRequest, run_sort

    console.quiet = quiet
    modes = [m for m, on in (("copy", copy_), ("link", link), ("move", move)) if on]
    if len(modes) > 1:
        raise ConfigError(f"give one of --copy, --link, --move, not {' and '.join(modes)}")
    check_sort(given_options(), records=records, resume=resume, undo=undo)
    if by == "category" and options["categories"] is None and records is None:
        options["categories"] = "default"  # filing by category needs them: no need to ask
    config = None
    if records is None and not (resume or undo):
        config = Config(**options)
        check_model_options(config)
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
    return run_sort(request, config, console)
