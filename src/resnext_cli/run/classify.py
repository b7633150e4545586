"""One run of a command: sources into an engine, records into outputs, counted in a summary.

The CLI builds a config, the outputs and a console, and calls `run_classify` or
`run_sort`; these choose the engine from ENGINES, drive it, and return the exit status.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from resnext_cli.console import Console
from resnext_cli.errors import ConfigError, ExitStatus, Terminated
from resnext_cli.outputs.summary import RunSummary
from resnext_cli.results import Failed, Record, apply_threshold
from resnext_cli.run.config import Config
from resnext_cli.run.plan import weights_for

if TYPE_CHECKING:
    from resnext_cli.inputs.sources import Source
    from resnext_cli.outputs.sinks import Outputs
    from resnext_cli.run.engine import Engine
    from resnext_cli.run.plan import Plan

NO_INPUT = "no input matched (give image files, folders, globs or URLs)"


@dataclass(frozen=True)
class EngineKind:
    """How to build one engine and expand its inputs (imported only when chosen)."""

    build: Callable[..., Engine]
    iter_sources: Callable[[], Callable[..., Iterator[Source]]]


def _local_engine(config: Config, **options: Any) -> Engine:
    from resnext_cli.run.engine import local_engine

    return local_engine(config, **options)


def _ray_engine(config: Config, **options: Any) -> Engine:
    from resnext_cli.run.ray_engine import RayEngine

    return RayEngine(config, **options)


def _local_sources() -> Callable[..., Iterator[Source]]:
    from resnext_cli.inputs.sources import iter_sources

    return iter_sources


def _object_sources() -> Callable[..., Iterator[Source]]:
    from resnext_cli.inputs.objects import iter_sources

    return iter_sources


# The engines by name: small functions, so type checkers and the import graph see them.
ENGINES = {
    "local": EngineKind(_local_engine, _local_sources),
    "ray": EngineKind(_ray_engine, _object_sources),
}


def expand(
    kind: str, inputs: Iterable[str], console: Console, *, max_stdin_bytes: int
) -> Iterator[Source]:
    """The engine's input expansion over *inputs*, warnings on the console."""
    iter_sources = ENGINES[kind].iter_sources()
    if "-" in inputs and console.stdin_is_terminal:
        console.note(
            "reading paths, URLs or image bytes from standard input (end with Ctrl-D)",
            style="dim",
        )
    sources: Iterator[Source] = iter_sources(
        inputs, stdin=console.stdin, warn=console.warn, max_stdin_bytes=max_stdin_bytes
    )
    return sources


class _ConsoleLog(logging.Handler):
    """The library's log on the console: what a run reports (compile time) always, and
    its choices and back-offs (the JPEG decoder, out-of-memory) under --debug."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.DEBUG if console.debug else logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno <= logging.DEBUG:
            self.console.say(f"debug: {message}")
        else:
            self.console.note(message, style="dim")


def _log_to(console: Console) -> None:
    """Send resnext_cli's log records to *console* (replacing an earlier run's)."""
    logger = logging.getLogger("resnext_cli")
    for handler in [h for h in logger.handlers if isinstance(h, _ConsoleLog)]:
        logger.removeHandler(handler)
    logger.addHandler(_ConsoleLog(console))
    logger.setLevel(logging.DEBUG if console.debug else logging.INFO)


def build_engine(kind: str, config: Config, console: Console, **options: Any) -> Engine:
    """Build the engine of *kind*, showing what loads (and a bar only while downloading)."""
    _log_to(console)
    if config.checkpoint:
        what = f"{config.model} from {config.checkpoint}"
    else:
        what = f"{config.model} ({weights_for(config).tag})"
    with console.loading(what) as progress:
        engine = ENGINES[kind].build(config, download_progress=progress, **options)
    for note in engine.plan.notes:
        console.warn(note)
    if console.debug:
        for choice in engine.plan.choices:
            console.say(f"debug: {choice}")
    if console.debug and engine.plan.precision == "int8":
        from resnext_cli.model.quantized import quantized_engine

        console.say(f"debug: INT8 runs on torch's '{quantized_engine()}' quantized engine")
    return engine


def _countable(inputs: Iterable[str]) -> bool:
    return all(i != "-" and "://" not in i for i in inputs)


class Count(NamedTuple):
    """What the progress bar's total counts: the inputs as the engine expands them, less
    those done before (--resume) and the files inside *skip* (sort's DEST)."""

    kind: str
    inputs: tuple[str, ...]
    done: Collection[str] = frozenset()
    skip: Path | None = None


def _count_in_background(count: Count, set_total: Callable[[int], None]) -> None:
    """Count the inputs in a thread (a second walk), so the bar gets its total and an ETA."""
    if not _countable(count.inputs):
        return
    iter_sources = ENGINES[count.kind].iter_sources()

    def counting() -> None:
        try:
            sources = iter_sources(count.inputs)
            if count.skip is not None:
                sources = _outside(sources, count.skip)
            total = sum(1 for s in sources if s.input not in count.done)
        except Exception:  # a count is a nicety: the run itself reports real problems
            return
        set_total(total)

    threading.Thread(target=counting, name="resnext-count", daemon=True).start()


def drive(
    engine: Engine,
    sources: Iterable[Source],
    write: Callable[[Record], None],
    summary: RunSummary,
    console: Console,
    *,
    count: Count | None = None,
) -> None:
    """Classify *sources*, writing and counting each record; errors said as they come."""
    with console.counting() as (tick, set_total):
        if count is not None:
            _count_in_background(count, set_total)
        for result in engine.classify_sources(sources):
            record = apply_threshold(result, summary.min_probability)
            write(record)
            summary.add(record)
            tick()
            if isinstance(record, Failed):
                console.note(f"error: {record.message}", style="red")


def peek(sources: Iterator[Source]) -> tuple[Iterator[Source] | None, list[Source]]:
    """The same sources, or None when none can be classified, with the inputs already
    known to fail (a missing file): found before any model loads."""
    held: list[Source] = []
    for source in sources:
        held.append(source)
        if source.error is None:
            return itertools.chain(held, sources), []
    return None, held


def refuse(failed: list[Source], console: Console) -> int:
    """Nothing to classify: say each input's problem once (no record, no summary)."""
    for source in failed:
        assert source.error is not None
        console.error(source.error.message)
    return ExitStatus.USAGE


def review_labels(plan: Plan) -> list[str]:
    """The names a report's review can relabel to: the model's labels, then its categories."""
    return [*plan.labels, *(plan.categories.names if plan.categories else ())]


def report_title(inputs: tuple[str, ...]) -> str:
    """The report's title: the command line's inputs, shortened."""
    title = "resnext: " + " ".join(inputs)
    return title if len(title) <= 100 else title[:99] + "…"


def run_classify(
    config: Config,
    inputs: tuple[str, ...],
    outputs: Outputs,
    console: Console,
    *,
    engine_kind: str = "local",
    min_probability: float | None = None,
    engine_options: dict[str, Any] | None = None,
) -> int:
    """Classify *inputs* into *outputs*; return the exit status."""
    sources = expand(engine_kind, inputs, console, max_stdin_bytes=config.max_download_bytes)
    if outputs.done:
        sources = (s for s in sources if s.input not in outputs.done)
    found, failed = peek(iter(sources))
    if found is None:
        outputs.close(nothing_written=not outputs.done)
        if outputs.done and not failed:
            output = outputs.request.output
            console.note(f"nothing left to do: all inputs are already in '{output}'")
            return ExitStatus.OK
        if not failed:
            console.error(NO_INPUT)
        return refuse(failed, console)
    try:
        engine = build_engine(engine_kind, config, console, **(engine_options or {}))
    except BaseException:
        outputs.close(nothing_written=True)
        raise
    plan = engine.plan
    summary = RunSummary(
        where=engine.describe(), min_probability=min_probability, resumed=len(outputs.done)
    )
    context = {"model": plan.source_line(), "device": engine.describe()}
    if min_probability is not None:
        context["min_probability"] = f"{min_probability:g}"
    try:
        outputs.start(
            stdout=console.stdout,
            topk=plan.topk,
            uncertain=min_probability is not None,
            report_title=report_title(inputs),
            report_context=context,
            report_labels=review_labels(plan),
            max_pixels=config.max_pixels,
            allow_truncated=config.allow_truncated,
            caption=plan.model_line(),
        )
        drive(
            engine, found, outputs.write, summary, console,
            count=Count(engine_kind, inputs, outputs.done),
        )  # fmt: skip
    except (KeyboardInterrupt, Terminated):
        output = outputs.request.output
        where = f" to '{output}' (--resume continues)" if output else ""
        console.say(f"interrupted: {summary.total} records written{where}", style="yellow")
        raise
    finally:
        try:
            outputs.close()
        finally:
            engine.close()
    summary.finished = time.perf_counter()
    print_summary(summary, console, report=outputs.request.report)
    return summary.exit_status


def print_summary(summary: RunSummary, console: Console, *, report: str | None) -> None:
    """The end-of-run summary on stderr (a line for one input, the full view for many)."""
    if console.quiet:
        return
    if summary.total > 1 or summary.resumed:
        # A terminal gets it folded at words to its width; a pipe or a log, whole lines.
        console.err.print(summary.render(console.width), soft_wrap=not console.err_is_terminal)
    elif summary.failed:
        console.say(summary.line(), style="dim")
    if report is not None:
        console.say(f"report: {report} ({summary.total + summary.resumed} images)")


# -- sort ----------------------------------------------------------------------------------


class Collect:
    """Keeps the records, for sort to plan with."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def write(self, record: Record) -> None:
        self.records.append(record)


def classify_for_sort(
    config: Config,
    inputs: tuple[str, ...],
    console: Console,
    *,
    min_probability: float | None,
    report: str | None,
    skip: Path | None = None,
) -> tuple[list[Record], RunSummary] | None:
    """Classify what sort will file; None when no input matched.

    Files inside *skip* (DEST, when it lies inside a SRC folder) are passed over: they
    are an earlier sort's copies, not photos to sort again.
    """
    from resnext_cli.outputs.sinks import OutputRequest, Outputs

    sources = expand("local", inputs, console, max_stdin_bytes=config.max_download_bytes)
    folder = Path(os.path.realpath(skip)) if skip is not None and skip.is_dir() else None
    if folder is not None:
        sources = _outside(sources, folder)
    found, failed = peek(sources)
    if found is None:
        if failed:  # each said once, the last as the error that ends the run
            refuse(failed[:-1], console)
            assert failed[-1].error is not None
            raise ConfigError(failed[-1].error.message)
        return None
    outputs = Outputs.open(OutputRequest(report=report), stdout_is_terminal=False)
    try:
        engine = build_engine("local", config, console)
    except BaseException:
        outputs.close(nothing_written=True)  # unlocked, and no temporary file left
        raise
    summary = RunSummary(where=engine.describe(), min_probability=min_probability)
    collect = Collect()
    outputs.start(
        stdout=console.stdout,
        topk=engine.plan.topk,
        uncertain=min_probability is not None,
        report_title=report_title(inputs),
        report_context={"device": engine.describe()},
        report_labels=review_labels(engine.plan),
        max_pixels=config.max_pixels,
        allow_truncated=config.allow_truncated,
        results=False,
    )

    def write(record: Record) -> None:
        collect.write(record)
        outputs.write(record)

    try:
        drive(engine, found, write, summary, console, count=Count("local", inputs, skip=folder))
    except (KeyboardInterrupt, Terminated):
        console.say("interrupted while classifying: nothing was filed yet", style="yellow")
        raise
    finally:
        outputs.close()
    summary.finished = time.perf_counter()
    return collect.records, summary


def _outside(sources: Iterable[Source], folder: Path) -> Iterator[Source]:
    """The sources that are not files inside *folder*."""
    for source in sources:
        if source.path is not None:
            real = Path(os.path.realpath(source.path))
            if real == folder or folder in real.parents:
                continue
        yield source
