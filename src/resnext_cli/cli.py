"""The `resnext` command: parse options, build a config, call the library, write records.

Nothing heavy is imported at module level: `resnext --help`, `resnext models` and shell
completion must not load torch, torchvision or Pillow.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Any

import click
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
from .output import FORMATS, make_writer, printable, resolve_format
from .registry import MODELS, all_weights, resolve_weights
from .results import Failed
from .summary import RunSummary
from .weights import OFFLINE_ENV, cached_path, fetch

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
    if path is None or path == "-":
        return sys.stdout
    return Path(path).open("a" if resume else "w", encoding="utf-8", newline="")


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


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("-m", "--model", default="resnext50_32x4d", show_default=True, help=MODEL_HELP)
@click.option(
    "-w",
    "--weights",
    default="DEFAULT",
    show_default=True,
    help="torchvision weights tag: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2.",
)
@click.option(
    "--checkpoint",
    metavar="PATH|URL",
    help="State dict in torchvision's layout to use instead of the weights.",
)
@click.option(
    "--labels",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Class names, one per line (default: the 1000 ImageNet classes).",
)
@click.option(
    "-k",
    "--topk",
    default=5,
    show_default=True,
    type=int,
    help="How many classes to report per image.",
)
@click.option(
    "-b", "--batch-size", type=int, help="Images per batch [default: 8 on CPU, 64 on CUDA]."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option(
    "--precision",
    default="auto",
    show_default=True,
    type=click.Choice(PRECISIONS),
    help="auto: fp32 on CPU, bf16/fp16 on CUDA.",
)
@click.option(
    "--exact",
    is_flag=True,
    help="The reference pipeline: fp32, full-resolution decoding, no EXIF rotation.",
)
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
@click.option("--workers", type=int, help="Decoding threads [default: cores, up to 8].")
@click.option(
    "--timeout", default=10.0, show_default=True, type=float, help="Seconds to wait for a URL."
)
@click.option(
    "--max-pixels",
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    type=int,
    help="Refuse images with more pixels (decompression bombs).",
)
@click.option(
    "--allow-truncated",
    is_flag=True,
    help="Classify what decodes of a truncated file instead of failing it.",
)
@click.option(
    "--offline",
    is_flag=True,
    envvar=OFFLINE_ENV,
    help=f"Never use the network for weights (also {OFFLINE_ENV}=1).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress, warnings or summary on stderr.")
@_debug_option
def classify(
    inputs: tuple[str, ...],
    fmt: str,
    output: str | None,
    force: bool,
    resume: bool,
    quiet: bool,
    **options: Any,
) -> int:
    """Classify images and print the top-k ImageNet labels of each.

    INPUT is an image file, a folder (walked recursively), a quoted glob such as
    'photos/**/*.jpg', an http(s) URL, or - for standard input: image bytes, or a
    list of paths and URLs, one per line.
    """
    from .engine import Classifier
    from .sources import iter_sources

    config = Config(**options)
    fmt = resolve_format(fmt, is_terminal=sys.stdout.isatty(), output_name=output)
    done = _check_output(output, force=force, resume=resume, fmt=fmt)
    note = (lambda _m: None) if quiet else warn
    with download_bar(enabled=not quiet and err.is_terminal) as progress:
        classifier = Classifier(config, download_progress=progress)
    summary = RunSummary(device=str(classifier.device), precision=classifier.precision)
    sources = iter_sources(inputs, stdin=sys.stdin.buffer, warn=note)
    if done:
        sources = (s for s in sources if s.input not in done)
    show_progress = not quiet and err.is_terminal and not (fmt == "table" and output is None)
    stream = _open_output(output, resume=resume)
    writer = make_writer(fmt, stream, console=Console(file=stream, highlight=False))
    try:
        with _progress(show_progress) as tick:
            for record in classifier.classify_sources(sources):
                writer.write(record)
                summary.add(record)
                tick()
                if isinstance(record, Failed) and not quiet:
                    say(f"error: {record.message}", style="red")
    except (KeyboardInterrupt, Terminated):
        where = f" to '{output}' (--resume continues)" if output else ""
        say(f"interrupted: {summary.total} records written{where}", style="yellow")
        raise
    finally:
        writer.close()
        if stream is not sys.stdout:
            stream.close()
    summary.finished = time.perf_counter()
    if summary.total == 0:
        if done:
            say(f"nothing left to do: all inputs are already in '{output}'")
            return ExitStatus.OK
        say("error: no input matched (give image files, folders, globs or URLs)", style="red")
        return ExitStatus.USAGE
    if not quiet and (summary.total > 1 or summary.failed):
        say(summary.line(), style="dim")
    return summary.exit_status


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[], None]]:
    """Yield a callback that counts finished images on a stderr status line."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.completed} images"), TimeElapsedColumn())
    with Progress(*columns, console=err, disable=not enabled, transient=True) as bar:
        task = bar.add_task("classify", total=None)
        yield lambda: bar.advance(task)


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
    table = Table(title="ResNeXt weights (ImageNet-1K, from torchvision's metadata)")
    for name, justify in [
        ("model", "left"),
        ("weights", "left"),
        ("acc@1", "right"),
        ("acc@5", "right"),
        ("params", "right"),
        ("GFLOPs", "right"),
        ("size", "right"),
        ("preprocess", "left"),
        ("cached", "center"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for w in rows:
        table.add_row(
            w.model,
            w.tag + (" (default)" if w.is_default else ""),
            f"{w.acc1:.2f}",
            f"{w.acc5:.2f}",
            f"{w.params / 1e6:.1f}M",
            f"{w.gflops:.2f}",
            f"{w.file_size_mb:.0f} MB",
            f"resize {w.resize_size}, crop {w.crop_size}",
            "yes" if cached_path(w.url).is_file() else "",
        )
    Console(highlight=False).print(table)
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
