"""Where records go: -o/-f/--force/--resume/--report turned into writers, checked first.

Every rule about output files lives here. Before the model loads, `Outputs.open` refuses
what cannot work (a clobber, a file that is not this tool's results, two runs on one
file, the results and the report on one path, a missing or unwritable folder) and takes
an exclusive lock on the -o file; nothing is written to a file until it is known to be
this tool's output. Then `start` makes the writers. A run that found no input removes
the empty file it created.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from resnext_cli.errors import OutputError
from resnext_cli.imaging.limits import DEFAULT_MAX_PIXELS
from resnext_cli.outputs.shards import ShardWriter, check_folder, is_folder_output
from resnext_cli.outputs.writers import Writer, make_writer, require_pyarrow, resolve_format
from resnext_cli.results import Record, record_from_dict


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


def _is_stream(path: Path) -> bool:
    """A character device or a FIFO (/dev/null, a named pipe): written to, never protected."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return a.samefile(b)
    return os.path.realpath(a) == os.path.realpath(b)


def _os_reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def read_records(path: Path) -> tuple[list[Record], int]:
    """Read a JSON Lines results file without changing it; return the records and the
    length of its complete lines (a half-written last line, a crash's trace, is left out).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OutputError(f"cannot read '{path}': {_os_reason(exc)} (check the file)") from None
    end = data.rfind(b"\n") + 1
    records = []
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(record_from_dict(json.loads(line)))
        except ValueError:
            raise OutputError(
                f"'{path}' line {number} is not a result record (cannot --resume it; "
                "give the -o file of an earlier run)"
            ) from None
    if end < len(data):
        try:  # the torn line must at least look like the start of a record
            tail = data[end:].decode("utf-8")
        except UnicodeDecodeError:
            tail = ""
        if not tail.startswith('{"input"'):
            raise OutputError(
                f"'{path}' does not end in result records (cannot --resume it; "
                "give the -o file of an earlier run)"
            )
    return records, end


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
    created: bool = False
    report_existed: bool = False
    lock_fd: int | None = None  # parquet: pyarrow writes by name, this only holds the lock

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
        if fmt == "parquet" and is_folder_output(req.output):
            out.folder = target
            out.done = check_folder(target, force=req.force, resume=req.resume)
        elif _is_stream(target):
            if req.resume:
                raise OutputError(f"cannot --resume '{target}': it is not a regular file")
            out.stream = target.open("w", encoding="utf-8", errors="backslashreplace")
        else:
            out._open_file(target, fmt)
        return out

    def _check_report(self) -> None:
        req = self.request
        if req.report is None:
            return
        report = Path(req.report)
        self.report_existed = report.exists()
        if req.output not in (None, "-") and _same(report, Path(str(req.output))):
            raise OutputError(
                f"the report and the results would both be '{req.report}' "
                "(give --report another file)"
            )
        if report.is_dir():
            raise OutputError(f"report '{report}' is a folder (give a file name)")
        if not report.parent.is_dir():
            raise OutputError(
                f"cannot write report '{report}': folder '{report.parent}' does not exist"
            )
        # With --resume the report is made anew from every record, the old ones included.
        if report.exists() and not (req.force or req.resume):
            raise OutputError(f"report file '{report}' exists (use --force to overwrite it)")

    def _open_file(self, target: Path, fmt: str) -> None:
        req = self.request
        if target.is_dir():
            raise OutputError(f"output '{target}' is a folder (give a file name)")
        if not target.parent.is_dir():
            raise OutputError(f"cannot write '{target}': folder '{target.parent}' does not exist")
        exists = target.exists()
        if req.resume:
            if fmt != "jsonl":
                raise OutputError(f"--resume works with jsonl output, not {fmt} (use -f jsonl)")
        elif exists and not req.force:
            raise OutputError(
                f"output file '{target}' exists (use --force to overwrite it, "
                "or --resume to continue it)"
            )
        end = 0
        if req.resume and exists:
            self.previous, end = read_records(target)  # refuses before anything is written
            self.done = {r.input for r in self.previous}
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o666)
        except OSError as exc:
            raise OutputError(f"cannot write '{target}': {_os_reason(exc)}") from None
        self.created = not exists
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputError(
                f"'{target}' is being written by another resnext run "
                "(wait for it to finish, or give another -o)"
            ) from None
        # Locked and known to be ours: now cut it (a torn last line, or --force).
        os.ftruncate(fd, end if req.resume else 0)
        os.lseek(fd, 0, os.SEEK_END)
        if fmt == "parquet":
            self.lock_fd = fd
            return
        self.stream = open(  # noqa: SIM115 - held open for the run, closed in close()
            fd, "w", encoding="utf-8", errors="backslashreplace", newline=""
        )

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
            self.writers.append(ShardWriter(self.folder, **kw))
        else:
            stream = self.stream or stdout
            if stream is stdout and isinstance(stdout, io.TextIOWrapper):
                # A file name that is not UTF-8 is written as a \udcXX escape, which
                # JSON reads back as the same name, instead of ending the run.
                stdout.reconfigure(errors="backslashreplace")
            path = Path(req.output) if req.output not in (None, "-") else None
            console = Console(file=stream, highlight=False)
            self.writers.append(
                make_writer(self.fmt, stream, console=console, path=path, caption=caption, **kw)
            )
        if req.report is not None:
            from resnext_cli.outputs.report import HtmlReportWriter

            report = HtmlReportWriter(
                Path(req.report),
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

    def _failed(self, exc: OSError) -> OutputError:
        where = self.request.output or "standard output"
        return OutputError(
            f"cannot write to '{where}': {_os_reason(exc)} "
            "(what was written is kept; free space or give another -o, then --resume)"
        )

    def write(self, record: Record) -> None:
        """Write one record to every writer."""
        for writer in self.writers:
            try:
                writer.write(record)
            except BrokenPipeError:
                raise
            except OSError as exc:  # a full disk, a dead network mount: the place, not input
                raise self._failed(exc) from None

    def close(self, *, nothing_written: bool = False) -> None:
        """Finish every writer and close the file; remove a file this run made for nothing."""
        try:
            for writer in self.writers:
                writer.close()
            if self.stream is not None:
                self.stream.close()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc) from None
        finally:
            if self.stream is not None:
                with contextlib.suppress(OSError):
                    self.stream.close()
            if self.lock_fd is not None:
                os.close(self.lock_fd)
            if nothing_written:
                made = [self.request.output] if self.created else []
                if self.request.report is not None and not self.report_existed:
                    made.append(self.request.report)
                for name in made:
                    with contextlib.suppress(OSError, TypeError):
                        Path(str(name)).unlink()
