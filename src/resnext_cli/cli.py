"""The `resnext` command: parse options, build a config, call the library, write records.

Nothing heavy is imported at module level: `resnext --help`, `resnext models` and shell
completion must not load torch, torchvision or Pillow.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .config import DEFAULT_MAX_PIXELS, PRECISIONS, Config
from .errors import (
    ExitStatus,
    OutputError,
    ResnextError,
    Terminated,
)
from .output import FORMATS, Writer, make_writer, printable, require_pyarrow, resolve_format
from .registry import MODELS, all_weights, resolve_weights
from .results import Failed, Record, apply_threshold
from .summary import RunSummary
from .weights import OFFLINE_ENV, cached_path, fetch

if TYPE_CHECKING:
    from .engine import Classifier
    from .ray_engine import RayClassifier
    from .sort import Outcome
    from .sources import Source

err = Console(stderr=True, highlight=False, soft_wrap=True)

MODEL_HELP = f"ResNeXt variant: {', '.join(MODELS)} (or 50, 101, 101-64)."


def say(message: str, *, style: str = "") -> None:
    """Print one line of untrusted text on stderr."""
    err.print(Text(printable(message), style=style))


def warn(message: str) -> None:
    """Print a warning on stderr."""
    say(f"warning: {message}", style="yellow")


@contextmanager
def download_bar(enabled: bool) -> Iterator[Callable[[int, int | None], None]]:
    """Yield a progress callback that draws a rich download bar on stderr."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("downloading weights"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, disable=not enabled, transient=True) as bar:
        task = bar.add_task("download", total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _debug_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--debug", is_flag=True, help="Show tracebacks on errors.", expose_value=False
    )(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="resnext")
def cli() -> None:
    """Classify images with torchvision's ResNeXt models.

    Run `resnext classify IMAGE` to see the top-5 ImageNet labels of an image.
    """


def _check_output(path: str | None, *, force: bool, resume: bool, fmt: str) -> set[str]:
    """Refuse a clobber before any work; with --resume, return the inputs already done."""
    if path is None or path == "-":
        if resume:
            raise OutputError("--resume needs -o FILE (the file to continue)")
        return set()
    target = Path(path)
    if resume:
        if fmt != "jsonl":
            raise OutputError(f"--resume works with jsonl output, not {fmt} (use -f jsonl)")
        return _recorded_inputs(target) if target.exists() else set()
    if target.exists() and not force:
        raise OutputError(
            f"output file '{path}' exists (use --force to overwrite it, or --resume to continue it)"
        )
    return set()


def _open_output(path: str | None, *, resume: bool) -> IO[str]:
    # A file name that is not UTF-8 (an old archive's) is written as a \udcXX escape,
    # which JSON reads back as the same name, instead of ending the run.
    if path is None or path == "-":
        if isinstance(sys.stdout, io.TextIOWrapper):
            sys.stdout.reconfigure(errors="backslashreplace")
        return sys.stdout
    mode = "a" if resume else "w"
    return Path(path).open(mode, encoding="utf-8", errors="backslashreplace", newline="")


def _recorded_inputs(target: Path) -> set[str]:
    """Read the inputs a JSON Lines file already has; cut off a half-written last line."""
    data = target.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with target.open("r+b") as fh:
            fh.truncate(end)
    done: set[str] = set()
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            done.add(json.loads(line)["input"])
        except (ValueError, KeyError, TypeError):
            raise OutputError(
                f"'{target}' line {number} is not a result record (cannot --resume it)"
            ) from None
    return done


_RUN_OPTIONS = [
    click.option("-m", "--model", default="resnext50_32x4d", show_default=True, help=MODEL_HELP),
    click.option(
        "-w",
        "--weights",
        default="DEFAULT",
        show_default=True,
        help="torchvision weights tag: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2.",
    ),
    click.option(
        "--checkpoint",
        metavar="PATH|URL",
        help="State dict in torchvision's layout to use instead of the weights.",
    ),
    click.option(
        "--labels",
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="Class names, one per line (default: the 1000 ImageNet classes).",
    ),
    click.option(
        "-k",
        "--topk",
        default=5,
        show_default=True,
        type=int,
        help="How many classes to report per image.",
    ),
    click.option(
        "-b", "--batch-size", type=int, help="Images per batch [default: 8 on CPU, 64 on CUDA]."
    ),
    click.option(
        "--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."
    ),
    click.option(
        "--precision",
        default="auto",
        show_default=True,
        type=click.Choice(PRECISIONS),
        help="auto: bf16 on CUDA (else fp16) and on CPUs with native bf16, else fp32.",
    ),
    click.option(
        "--exact",
        is_flag=True,
        help="The reference pipeline: fp32, full-size decoding, no EXIF rotation, plain RGB.",
    ),
    click.option("--workers", type=int, help="Decoding threads [default: cores, up to 8]."),
    click.option(
        "--timeout", default=10.0, show_default=True, type=float, help="Seconds to wait for a URL."
    ),
    click.option(
        "--max-pixels",
        default=DEFAULT_MAX_PIXELS,
        show_default=True,
        type=int,
        help="Refuse images with more pixels (decompression bombs).",
    ),
    click.option(
        "--allow-truncated",
        is_flag=True,
        help="Classify what decodes of a truncated file instead of failing it.",
    ),
    click.option(
        "--offline",
        is_flag=True,
        envvar=OFFLINE_ENV,
        help=f"Never use the network for weights (also {OFFLINE_ENV}=1).",
    ),
    click.option(
        "--min-probability",
        type=click.FloatRange(0, 1),
        metavar="P",
        help="Mark results whose top-1 probability is below P as uncertain.",
    ),
    click.option(
        "--report",
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="Also write a self-contained HTML report of every image to FILE.",
    ),
    click.option("-q", "--quiet", is_flag=True, help="No progress, warnings or summary on stderr."),
]


def _run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Apply the options classify and sort share: model, inputs, threshold, report."""
    f = _debug_option(f)  # listed last in --help
    for option in reversed(_RUN_OPTIONS):
        f = option(f)
    return f


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "-f",
    "--format",
    "fmt",
    default="auto",
    show_default=True,
    type=click.Choice(FORMATS),
    help="auto: a table on a terminal, else JSON Lines.",
)
@click.option("-o", "--output", metavar="FILE", help="Write records to FILE instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option(
    "--resume", is_flag=True, help="Skip inputs already in the -o file and append the rest."
)
@click.option(
    "--long",
    is_flag=True,
    help="csv and parquet: one row per prediction instead of one row per image.",
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
@_run_options
def classify(
    inputs: tuple[str, ...],
    fmt: str,
    output: str | None,
    force: bool,
    resume: bool,
    long: bool,
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
    from .shards import ShardWriter, check_folder, is_folder_output
    from .sources import iter_sources

    config = Config(**options)
    fmt = resolve_format(fmt, is_terminal=sys.stdout.isatty(), output_name=output)
    if fmt == "parquet":
        if output is None or output == "-":
            raise OutputError("parquet cannot go to a terminal or a pipe (give -o FILE.parquet)")
        require_pyarrow()
    # -o DIR/ with -f parquet: shards, each complete as it appears, resumable.
    folder = Path(output) if output and fmt == "parquet" and is_folder_output(output) else None
    if folder is not None:
        done = check_folder(folder, force=force, resume=resume)
    else:
        done = _check_output(output, force=force, resume=resume, fmt=fmt)
    _check_report(report, force=force)
    note = (lambda _m: None) if quiet else warn
    classifier, summary = _load(
        config, quiet=quiet, min_probability=min_probability, engine=engine, address=ray_address
    )
    if engine == "ray":  # also lists s3:// and gs:// URIs
        from .ray_engine import iter_sources
    sources = iter_sources(inputs, stdin=sys.stdin.buffer, warn=note)
    if done:
        sources = (s for s in sources if s.input not in done)
    show_progress = not quiet and err.is_terminal and not (fmt == "table" and output is None)
    reports = _report_writer(report, inputs, classifier, min_probability)
    stream = sys.stdout if fmt == "parquet" else _open_output(output, resume=resume)
    writer: Writer
    if folder is not None:
        uncertain = min_probability is not None
        writer = ShardWriter(folder, topk=config.topk, long=long, uncertain=uncertain)
    else:
        writer = make_writer(
            fmt,
            stream,
            console=Console(file=stream, highlight=False),
            topk=config.topk,
            long=long,
            uncertain=min_probability is not None,
            path=Path(output) if output else None,
        )
    sinks = [writer, *reports]
    try:
        _drive(classifier, sources, sinks, summary, quiet=quiet, progress=show_progress)
    except (KeyboardInterrupt, Terminated):
        where = f" to '{output}' (--resume continues)" if output else ""
        say(f"interrupted: {summary.total} records written{where}", style="yellow")
        raise
    finally:
        for sink in sinks:
            sink.close()
        if stream is not sys.stdout:
            stream.close()
    summary.finished = time.perf_counter()
    if summary.total == 0:
        if done:
            say(f"nothing left to do: all inputs are already in '{output}'")
            return ExitStatus.OK
        say("error: no input matched (give image files, folders, globs or URLs)", style="red")
        return ExitStatus.USAGE
    _print_summary(summary, quiet=quiet, report=report)
    return summary.exit_status


def _check_report(path: str | None, *, force: bool) -> None:
    if path is not None and Path(path).exists() and not force:
        raise OutputError(f"report file '{path}' exists (use --force to overwrite it)")


def _load(
    config: Config,
    *,
    quiet: bool,
    min_probability: float | None,
    engine: str = "local",
    address: str | None = None,
) -> tuple[Classifier | RayClassifier, RunSummary]:
    """Load the model (drawing a download bar if weights must be fetched)."""
    from .engine import Classifier

    classifier: Classifier | RayClassifier
    with download_bar(enabled=not quiet and err.is_terminal) as progress:
        if engine == "ray":
            from .ray_engine import RayClassifier

            classifier = RayClassifier(config, address=address, download_progress=progress)
        else:
            classifier = Classifier(config, download_progress=progress)
    summary = RunSummary(
        device=str(classifier.device),
        precision=classifier.precision,
        min_probability=min_probability,
    )
    return classifier, summary


def _report_writer(
    path: str | None,
    inputs: tuple[str, ...],
    classifier: Classifier | RayClassifier,
    min_probability: float | None,
) -> list[Writer]:
    if path is None:
        return []
    from .report import HtmlReportWriter

    cfg = classifier.config
    context = {
        "model": f"{cfg.model} ({cfg.checkpoint or cfg.weights})",
        "device": f"{classifier.device}, {classifier.precision}",
    }
    if min_probability is not None:
        context["min_probability"] = f"{min_probability:g}"
    title = "resnext: " + " ".join(inputs)
    title = title if len(title) <= 100 else title[:99] + "…"
    return [HtmlReportWriter(Path(path), title=title, context=context, max_pixels=cfg.max_pixels)]


def _drive(
    classifier: Classifier | RayClassifier,
    sources: Iterable[Source],
    sinks: list[Writer],
    summary: RunSummary,
    *,
    quiet: bool,
    progress: bool,
) -> None:
    """Classify *sources* into every sink, counting each record in *summary*."""
    with _progress(progress) as tick:
        for result in classifier.classify_sources(sources):
            record = apply_threshold(result, summary.min_probability)
            for sink in sinks:
                sink.write(record)
            summary.add(record)
            tick()
            if isinstance(record, Failed) and not quiet:
                say(f"error: {record.message}", style="red")


def _print_summary(summary: RunSummary, *, quiet: bool, report: str | None) -> None:
    if quiet:
        return
    if summary.total > 1:
        err.print(summary.render())
    elif summary.failed:
        say(summary.line(), style="dim")
    if report is not None:
        say(f"report: {report} ({summary.total} images)")


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[], None]]:
    """Yield a callback that counts finished images on a stderr status line."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.completed} images"), TimeElapsedColumn())
    with Progress(*columns, console=err, disable=not enabled, transient=True) as bar:
        task = bar.add_task("classify", total=None)
        yield lambda: bar.advance(task)


# Test hook: seconds to pause after each file a sort places, so a test can kill it midway.
SORT_STEP_DELAY_ENV = "RESNEXT_TEST_SORT_STEP_DELAY"


class _Collect:
    """A writer that keeps the records, for sort to plan with."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def write(self, record: Record) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


@cli.command(name="sort")
@click.argument("paths", nargs=-1, required=True, metavar="SRC... DEST")
@click.option("--copy", "mode", flag_value="copy", default=True, help="Copy files (the default).")
@click.option("--link", "mode", flag_value="link", help="Hard-link files (else symlink them).")
@click.option("--move", "mode", flag_value="move", help="Move files, journaled and undoable.")
@click.option(
    "--by",
    type=click.Choice(["label", "index"]),
    default="label",
    show_default=True,
    help="Folder per top-1 label, or per class index.",
)
@click.option("-n", "--dry-run", is_flag=True, help="Print the plan on stdout; touch nothing.")
@click.option("--resume", is_flag=True, help="Finish an interrupted sort into DEST.")
@click.option("--undo", is_flag=True, help="Put back every file sorted into DEST.")
@_run_options
def sort_command(
    paths: tuple[str, ...],
    mode: str,
    by: str,
    dry_run: bool,
    resume: bool,
    undo: bool,
    quiet: bool,
    min_probability: float | None,
    report: str | None,
    **options: Any,
) -> int:
    """Classify images and file each one into DEST/<top-1 label>/.

    SRC takes what classify takes (files, folders, globs, -). Images under
    --min-probability go to DEST/_uncertain/, unreadable ones to DEST/_failed/. Names
    are made safe for every file system and nothing is overwritten: a clash gets a
    number, 'cat (1).jpg'. Every step is journaled in DEST first, so an interrupted
    sort can be finished with --resume DEST or rolled back with --undo DEST.
    """
    from . import sort as sorting
    from .sources import iter_sources

    if resume or undo:
        if resume and undo:
            raise click.UsageError("give --resume or --undo, not both")
        if len(paths) != 1:
            raise click.UsageError(f"--{'undo' if undo else 'resume'} takes only DEST")
        dest = Path(paths[0])
        outcome = (sorting.undo if undo else sorting.resume)(dest, on_step=_step_hook())
        verb = "put back" if undo else "finished"
        return _sort_report(outcome, dest, verb=verb, quiet=quiet)
    if len(paths) < 2:
        raise click.UsageError("give the images to sort and then DEST")
    inputs, dest = paths[:-1], Path(paths[-1])
    if dest.exists() and not dest.is_dir():
        raise sorting.SortError(f"destination '{dest}' is not a folder (give a folder)")
    if sorting.unfinished(dest):
        raise sorting.SortError(sorting.unfinished_message(dest))
    _check_report(report, force=False)
    config = Config(**options)
    note = (lambda _m: None) if quiet else warn
    classifier, summary = _load(config, quiet=quiet, min_probability=min_probability)
    sources = iter_sources(inputs, stdin=sys.stdin.buffer, warn=note)
    collect = _Collect()
    sinks = [collect, *_report_writer(report, inputs, classifier, min_probability)]
    try:
        show = not quiet and err.is_terminal
        _drive(classifier, sources, sinks, summary, quiet=quiet, progress=show)
    finally:
        for sink in sinks:
            sink.close()
    summary.finished = time.perf_counter()
    if summary.total == 0:
        say("error: no input matched (give image files, folders, globs or URLs)", style="red")
        return ExitStatus.USAGE
    plan = sorting.make_plan(collect.records, dest, mode=mode, by=by)
    if not quiet:
        for name, reason in plan.skipped:
            warn(f"not sorted: '{name}': {reason}")
    if dry_run or not plan.steps:
        for step in plan.steps:
            click.echo(f"{mode} {printable(step.input)} -> {printable(str(dest / step.target))}")
        _print_summary(summary, quiet=quiet, report=report)
        return summary.exit_status
    try:
        outcome = sorting.execute(plan, on_step=_step_hook())
    except (KeyboardInterrupt, Terminated):
        say(f"interrupted: {sorting.unfinished_message(dest)}", style="yellow")
        raise
    _print_summary(summary, quiet=quiet, report=report)
    verb = {"copy": "copied", "link": "linked", "move": "moved"}[mode]
    return max(summary.exit_status, _sort_report(outcome, dest, verb=verb, quiet=quiet))


def _step_hook() -> Callable[[object], None] | None:
    delay = float(os.environ.get(SORT_STEP_DELAY_ENV) or 0)
    return (lambda _step: time.sleep(delay)) if delay > 0 else None


def _sort_report(outcome: Outcome, dest: Path, *, verb: str, quiet: bool) -> int:
    """Say what a sort, resume or undo did; 1 when some file could not be handled."""
    for step, problem in outcome.problems:
        say(f"error: '{step.source}': {problem}", style="red")
    if not quiet:
        where = f"into {outcome.folders} folders in" if verb != "put back" else "from"
        say(f"{verb} {len(outcome.done)} files {where} '{dest}'")
    return ExitStatus.SOME_FAILED if outcome.problems else ExitStatus.OK


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
@_debug_option
def models(fmt: str) -> int:
    """List the models and weights tags, with accuracy, size and cache state."""
    rows = all_weights()
    if fmt == "json":
        payload = [
            {
                "model": w.model,
                "weights": w.tag,
                "default": w.is_default,
                "acc@1": w.acc1,
                "acc@5": w.acc5,
                "params": w.params,
                "gflops": w.gflops,
                "file_size_mb": w.file_size_mb,
                "resize": w.resize_size,
                "crop": w.crop_size,
                "cached": cached_path(w.url).is_file(),
                "url": w.url,
            }
            for w in rows
        ]
        click.echo(json.dumps(payload, indent=2))
        return 0
    table = Table(
        title="ResNeXt weights (ImageNet-1K, torchvision's metadata)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
        pad_edge=False,
    )
    for name, justify in [
        ("model", "left"),
        ("weights", "left"),
        ("acc@1", "right"),
        ("acc@5", "right"),
        ("params", "right"),
        ("GFLOPs", "right"),
        ("MB", "right"),
        ("resize", "right"),
        ("cached", "center"),
    ]:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for w in rows:
        table.add_row(
            w.model,
            w.tag + (" *" if w.is_default else ""),
            f"{w.acc1:.2f}",
            f"{w.acc5:.2f}",
            f"{w.params / 1e6:.1f}M",
            f"{w.gflops:.2f}",
            f"{w.file_size_mb:.0f}",
            f"{w.resize_size}/{w.crop_size}",
            "yes" if cached_path(w.url).is_file() else "",
        )
    table.caption = "* the DEFAULT weights of each model"
    console = Console(highlight=False)
    if not console.is_terminal:  # rich assumes 80 columns for a pipe; the table needs 86
        console.width = 100
    console.print(table)
    return 0


@cli.command()
@click.option("-m", "--model", default="resnext50_32x4d", show_default=True, help=MODEL_HELP)
@click.option("-w", "--weights", default="DEFAULT", show_default=True, help="Weights tag.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_debug_option
def download(model: str, weights: str, quiet: bool) -> int:
    """Fetch weights into torch's hub cache ahead of time and print the file's path."""
    info = resolve_weights(model, weights)
    with download_bar(enabled=not quiet and err.is_terminal) as progress:
        path = fetch(info.url, progress=progress)
    click.echo(str(path))
    return 0


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> None:
    """Run the command line; the one place errors become messages and exit codes."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or bool(os.environ.get("RESNEXT_DEBUG"))
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = cli.main(args=args, prog_name="resnext", standalone_mode=False)
        code = int(result) if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = ExitStatus.USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        code = ExitStatus.INTERRUPTED
    except Terminated:
        code = ExitStatus.TERMINATED
    except ResnextError as exc:
        if debug:
            raise
        say(f"error: {exc}", style="red")
        code = exc.exit_status
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as Unix tools do.
        sys.stderr.close()
        code = ExitStatus.OK
    except Exception as exc:
        if debug:
            raise
        say(
            f"error: unexpected {exc.__class__.__name__}: {exc} (run with --debug for a traceback)",
            style="red",
        )
        code = ExitStatus.SOME_FAILED
    sys.exit(code)
