"""Where records go: -o/-f/--force/--resume/--report turned into writers, checked first.

Every rule about output files lives here. Before the model loads, `Outputs.open` refuses
what cannot work (a clobber, a file that is not this tool's results, two runs on one
file, the results and the report on one path, a missing or unwritable folder) and claims
and locks the -o file or folder and the report through files.OutputTarget, the one way
of writing; nothing is written to a file until it is known to be this tool's output, and
an old file is cut only when the first record is written. Then `start` makes the
writers. A run that found no input removes the empty file it created and publishes
nothing.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from resnext_cli import records
from resnext_cli.errors import OutputError
from resnext_cli.files import FileProblem, OutputTarget
from resnext_cli.imaging.limits import DEFAULT_MAX_PIXELS
from resnext_cli.outputs.shards import ShardWriter, check_folder, is_folder_output
from resnext_cli.outputs.writers import Writer, make_writer, require_pyarrow, resolve_format
from resnext_cli.results import Record


@dataclass(frozen=True)
class OutputRequest:
    """What the user asked for: -o, -f, --force, --resume, --long, --report."""

    output: str | None = None
    fmt: str = "auto"
    force: bool = False
    resume: bool = False
    long: bool = False
    report: str | None = None
    # --embeddings: records carry feature vectors, which only json, jsonl and parquet hold.
    embeddings: bool = False


# The formats that can hold a record's --embeddings vector.
EMBEDDING_FORMATS = ("json", "jsonl", "parquet")


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return a.samefile(b)
    return os.path.realpath(a) == os.path.realpath(b)


def _os_reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def read_records(path: Path) -> tuple[list[Record], int]:
    """Read a JSON Lines results file without changing it; return the records and the
    length of its complete lines (a half-written last line, a crash's trace, is left out).

    The one records reader (records.py) checks every line as `sort --from` does.
    """
    try:
        found = records.read_records(path, torn_tail=True, arrays=False)
    except FileProblem as exc:
        raise OutputError(f"cannot read '{path}': {exc.reason} (check the file)") from None
    except records.RecordsProblem as exc:
        if exc.detail == "does not end in result records":
            raise OutputError(
                f"'{path}' does not end in result records (cannot --resume it; "
                "give the -o file of an earlier run)"
            ) from None
        raise OutputError(
            f"'{path}' line {exc.line} is not a result record ({exc.detail}) (cannot --resume "
            "it; give the -o file of an earlier run)"
        ) from None
    return [entry.record for entry in found.entries], found.end


@dataclass
class Outputs:
    """The checked output of one run: the open -o file, the done inputs, the writers."""

    request: OutputRequest
    fmt: str
    stream: IO[str] | None = None  # the -o file (None: stdout, or parquet)
    folder: Path | None = None  # -f parquet -o DIR/
    done: set[str] = field(default_factory=set)
    previous: list[Record] = field(default_factory=list)
    writers: list[Writer] = field(default_factory=list)
    target: OutputTarget | None = None  # the -o file or folder, claimed and locked
    report: OutputTarget | None = None  # the --report file, claimed and locked
    _report_writer: Writer | None = None  # the report's writer, to name it when it fails

    @classmethod
    def open(cls, request: OutputRequest, *, stdout_is_terminal: bool) -> Outputs:
        """Check everything about the outputs and open the -o file, before any work."""
        req = request
        fmt = resolve_format(req.fmt, is_terminal=stdout_is_terminal, output_name=req.output)
        to_file = req.output is not None and req.output != "-"
        if req.resume and not to_file:
            raise OutputError("--resume needs -o FILE (the file to continue)")
        if req.embeddings and fmt not in EMBEDDING_FORMATS:
            raise OutputError(
                f"--embeddings go into json, jsonl or parquet output, not {fmt} "
                "(give -f jsonl, or -o FILE.jsonl or FILE.parquet)"
            )
        if fmt == "parquet":
            if not to_file:
                raise OutputError(
                    "parquet cannot go to a terminal or a pipe (give -o FILE.parquet)"
                )
            require_pyarrow()
        out = cls(req, fmt)
        out._check_report()
        if not to_file:
            return out
        assert req.output is not None
        target = Path(req.output)
        try:
            if fmt == "parquet" and is_folder_output(req.output):
                out.folder = target
                out.target = OutputTarget.claim(target, force=req.force, folder=True)
                out.done = check_folder(target, force=req.force, resume=req.resume)
            else:
                out._open_file(target, fmt)
        except BaseException:
            out.release()
            raise
        return out

    def _check_report(self) -> None:
        req = self.request
        if req.report is None:
            return
        report = Path(req.report)
        if req.output not in (None, "-") and _same(report, Path(str(req.output))):
            raise OutputError(
                f"the report and the results would both be '{req.report}' "
                "(give --report another file)"
            )
        # With --resume the report is made anew from every record, the old ones included.
        self.report = OutputTarget.claim(report, force=req.force, what="report", keep=req.resume)

    def _open_file(self, target: Path, fmt: str) -> None:
        req = self.request
        if req.resume and fmt != "jsonl":
            raise OutputError(f"--resume works with jsonl output, not {fmt} (use -f jsonl)")
        self.target = claimed = OutputTarget.claim(
            target,
            force=req.force,
            keep=req.resume,
            exists_hint="use --force to overwrite it, or --resume to continue it",
        )
        if claimed.kind == "stream":
            if req.resume:
                raise OutputError(f"cannot --resume '{target}': it is not a regular file")
        elif fmt == "parquet":
            return  # written whole under a temporary name, published at the end
        cut: int | None = 0
        if req.resume and claimed.kind == "file":
            self.previous, cut = read_records(target)  # refuses before anything is written
            self.done = {r.input for r in self.previous}
        # Cut (a torn last line, or --force) only when the first record is written.
        raw = claimed.stream(cut_at=cut)
        self.stream = io.TextIOWrapper(
            io.BufferedWriter(raw),
            encoding="utf-8",
            errors="backslashreplace",
            newline="",
            write_through=True,
        )

    def release(self) -> None:
        """Unlock the outputs and remove this run's temporary files (nothing is published)."""
        for target in (self.target, self.report):
            if target is not None:
                target.release()

    def start(
        self,
        *,
        stdout: IO[str],
        topk: int,
        uncertain: bool,
        report_title: str = "",
        report_context: dict[str, str] | None = None,
        report_labels: Sequence[str] = (),
        max_pixels: int | None = None,
        allow_truncated: bool = False,
        caption: str | None = None,
        results: bool = True,
    ) -> None:
        """Make the writers (after the model loaded: the report names its plan)."""
        req = self.request
        kw: dict[str, Any] = {"topk": topk, "long": req.long, "uncertain": uncertain}
        if req.embeddings:
            kw["embeddings"] = True
        if not results:
            pass
        elif self.folder is not None:
            replace = req.force and not req.resume
            self.writers.append(ShardWriter(self.folder, replace=replace, **kw))
        else:
            stream = self.stream or stdout
            if stream is stdout and isinstance(stdout, io.TextIOWrapper):
                # A file name that is not UTF-8 is written as a \udcXX escape, which
                # JSON reads back as the same name, instead of ending the run.
                stdout.reconfigure(errors="backslashreplace")
            path = Path(req.output) if req.output not in (None, "-") else None
            console = Console(file=stream, highlight=False)
            if self.fmt == "parquet" and self.target is not None:
                self.writers.append(_Published(self.target, self.fmt, kw))
            else:
                self.writers.append(
                    make_writer(
                        self.fmt,
                        stream,
                        console=console,
                        path=path,
                        caption=caption,
                        terminal=_is_terminal(stream),
                        **kw,
                    )
                )
        if req.report is not None:
            from resnext_cli.outputs.report import HtmlReportWriter

            report = HtmlReportWriter(
                Path(req.report),
                target=self.report,
                title=report_title,
                context=report_context or {},
                # what the review's relabel box offers: the model's labels and categories
                labels=report_labels,
                max_pixels=max_pixels if max_pixels is not None else DEFAULT_MAX_PIXELS,
                # Pillow's truncation switch is global: thumbnails follow the run's.
                allow_truncated=allow_truncated,
            )
            for record in self.previous:  # a resumed run's report covers the whole run
                report.write(record)
            self.writers.append(report)
            self._report_writer = report

    def _failed(self, exc: OSError, writer: object = None) -> OutputError:
        """The place that failed, named: the report, the -o file or standard output."""
        report = writer is not None and writer is self._report_writer
        where = self.request.report if report else self.request.output or "standard output"
        option = "--report" if report else "-o"
        return OutputError(
            f"cannot write to '{where}': {_os_reason(exc)} "
            f"(what was written is kept; free space or give another {option}, then --resume)"
        )

    def write(self, record: Record) -> None:
        """Write one record to every writer."""
        for writer in self.writers:
            try:
                writer.write(record)
            except BrokenPipeError:
                raise
            except OSError as exc:  # a full disk, a dead network mount: the place, not input
                raise self._failed(exc, writer) from None

    def close(self, *, nothing_written: bool = False) -> None:
        """Finish every writer and close the file; remove a file this run made for nothing."""
        writer: object = None
        try:
            if not nothing_written:
                for writer in self.writers:
                    writer.close()
            writer = None
            if self.stream is not None:
                self.stream.close()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc, writer) from None
        finally:
            if self.stream is not None:
                with contextlib.suppress(OSError):
                    self.stream.close()
            if nothing_written and self.target is not None:
                self.target.remove_if_created()
            self.release()


class _Published:
    """A whole-file writer (parquet -o FILE) written under a temporary name, then published."""

    def __init__(self, target: OutputTarget, fmt: str, kw: dict[str, Any]) -> None:
        self._target = target
        self._temp = target.temporary()
        self._writer = make_writer(fmt, io.StringIO(), path=self._temp, **kw)

    def write(self, record: Record) -> None:
        self._writer.write(record)

    def close(self) -> None:
        self._writer.close()
        self._target.publish(self._temp)


def _is_terminal(stream: IO[str]) -> bool:
    """Whether *stream* is a terminal (stdout, or -o naming one)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False
