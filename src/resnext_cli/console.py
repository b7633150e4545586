"""The terminal a command talks to: its streams, what they are, and what it draws on stderr.

Commands get one `Console` (tests build their own around in-memory streams), so nothing
reads sys.stdin or writes sys.stdout behind their backs. Payload goes to `stdout`;
messages, progress and the summary go to `err`.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, cast

from rich.ansi import AnsiDecoder
from rich.cells import cell_len
from rich.console import Console as RichConsole
from rich.progress import ProgressColumn, Task
from rich.text import Text

# A rate (and an ETA from it) is shown only once it means something: the first batch
# arrives all at once, and a rate over its few milliseconds claims thousands of images
# a second.
RATE_AFTER_SECONDS = 2.0
RATE_AFTER_IMAGES = 2


def printable(text: str) -> str:
    """Escape control and other unprintable characters of untrusted text for a terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


_EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(fraction: float, width: int, *, track: str = "") -> str:
    """A horizontal bar of *fraction* of *width* cells, in eighths of a cell; *track* fills
    the rest of the width (probability bars) or nothing (histograms)."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    drawn = "█" * full + (_EIGHTHS[part] if part else "")
    return drawn + track * (width - len(drawn)) if track else drawn


def middle_ellipsis(text: str, width: int) -> str:
    """*text* in at most *width* terminal cells, its middle left out: 'photos/…/img_8.jpg'."""
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    pieces = _drawn_together(text)
    head, tail = "", ""
    keep = width - 1
    left, right = 0, len(pieces)
    # Alternate ends, the tail first: a file name's end (its number, its extension) says most.
    # Each end is measured whole: a character can widen its neighbour ('❤' + U+FE0F).
    while left < right:
        piece = pieces[right - 1]
        if cell_len(head) + cell_len(piece + tail) > keep:
            break
        tail, right = piece + tail, right - 1
        piece = pieces[left]
        if left >= right or cell_len(head + piece) + cell_len(tail) > keep:
            break
        head, left = head + piece, left + 1
    return head + "…" + tail


def _drawn_together(text: str) -> list[str]:
    """*text* in the pieces a terminal draws as one, so a cut never strands half of one: a
    character with the marks after it (an accent, U+FE0F), a skin tone with its emoji, and
    characters joined by U+200D (a family)."""
    pieces: list[str] = []
    for ch in text:
        joins = (
            unicodedata.category(ch) in ("Mn", "Me")
            or "\U0001f3fb" <= ch <= "\U0001f3ff"
            or ch == "\u200d"
            or (pieces and pieces[-1].endswith("\u200d"))
        )
        if pieces and joins:
            pieces[-1] += ch
        else:
            pieces.append(ch)
    return pieces


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def same_terminal(a: Any, b: Any) -> bool:
    """Whether two streams are the same terminal (stdout and stderr of a shell, mostly)."""
    if not (_is_tty(a) and _is_tty(b)):
        return False
    try:
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (AttributeError, ValueError, OSError):
        return False
    return (sa.st_dev, sa.st_ino, sa.st_rdev) == (sb.st_dev, sb.st_ino, sb.st_rdev)


class AboveLive(io.TextIOBase):
    """stdout when it is the terminal stderr draws on: while a live display (the progress
    bar, the loading spinner) is up, whole lines go through the stderr console, which
    prints them above the display, as rich's own stdout redirection does; otherwise they
    go straight to stdout. Either way no line is shared with the bar."""

    def __init__(self, stdout: IO[str], err: RichConsole, live: Callable[[], bool]) -> None:
        super().__init__()
        self._stdout = stdout
        self._err = err
        self._live = live
        self._pending = ""
        self._decoder = AnsiDecoder()

    def write(self, text: str) -> int:
        if not self._live():
            self._flush_pending()
            return self._stdout.write(text)
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        if lines:
            with self._err:
                self._err.print(
                    Text("\n").join(self._decoder.decode_line(line) for line in lines),
                    soft_wrap=True,
                )
        return len(text)

    def _flush_pending(self) -> None:
        if self._pending:
            self._stdout.write(self._pending)
            self._pending = ""

    def flush(self) -> None:
        self._flush_pending()
        self._stdout.flush()

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._stdout.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stdout, "encoding", "utf-8") or "utf-8"

    def writable(self) -> bool:
        return True


@dataclass
class Console:
    """stdin, stdout and stderr of one command, with the facts commands decide on."""

    stdin: BinaryIO
    stdout: IO[str]
    err: RichConsole
    stdin_is_terminal: bool = False
    stdout_is_terminal: bool = False
    quiet: bool = False
    debug: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _live: int = field(default=0, repr=False)  # live displays up on `err`

    @classmethod
    def from_sys(cls) -> Console:
        """The process's own streams."""
        return cls.on(
            sys.stdin.buffer, sys.stdout, sys.stderr, stdin_is_terminal=_is_tty(sys.stdin)
        )

    @classmethod
    def on(
        cls,
        stdin: BinaryIO,
        stdout: IO[str],
        stderr: IO[str],
        *,
        stdin_is_terminal: bool = False,
        **rich: Any,
    ) -> Console:
        """A console on these streams; when stdout is the terminal stderr draws on, its
        lines pass above the live display (*rich*: options for the stderr console)."""
        err = RichConsole(file=stderr, highlight=False, soft_wrap=True, **rich)
        console = cls(
            stdin=stdin,
            stdout=stdout,
            err=err,
            stdin_is_terminal=stdin_is_terminal,
            stdout_is_terminal=_is_tty(stdout),
        )
        if err.is_terminal and same_terminal(stdout, stderr):
            console.stdout = cast(IO[str], AboveLive(stdout, err, lambda: console._live > 0))
        return console

    @property
    def err_is_terminal(self) -> bool:
        """Whether stderr is a terminal (progress is drawn only there)."""
        return self.err.is_terminal

    @property
    def width(self) -> int:
        """Columns of the stderr terminal."""
        return self.err.width

    def say(self, message: str, *, style: str = "") -> None:
        """Print one line of untrusted text on stderr."""
        self.err.print(Text(printable(message), style=style))

    def note(self, message: str, *, style: str = "") -> None:
        """Say something unless --quiet."""
        if not self.quiet:
            self.say(message, style=style)

    def warn(self, message: str) -> None:
        """A warning on stderr, unless --quiet."""
        self.note(f"warning: {message}", style="yellow")

    def error(self, message: str) -> None:
        """An error line on stderr (also under --quiet)."""
        self.say(f"error: {message}", style="red")

    def _drawing(self) -> bool:
        return not self.quiet and self.err_is_terminal

    @contextmanager
    def loading(self, what: str) -> Iterator[Callable[[int, int | None], None]]:
        """Show 'loading …' while a model loads; yield a download-progress callback that
        draws a bar only once bytes actually arrive."""
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        bar: dict[str, Any] = {}
        drawing = self._drawing()
        status = self.err.status(Text(f"loading {what}…")) if drawing else None
        if status is not None:
            status.start()
        self._live += drawing

        def stop() -> None:
            if "progress" in bar:
                bar.pop("progress").stop()
            if status is not None:
                status.stop()

        def update(done: int, total: int | None) -> None:
            if not self._drawing():
                return
            if "progress" not in bar:
                if status is not None:
                    status.stop()
                columns = (
                    TextColumn("downloading weights"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                )
                progress = Progress(*columns, console=self.err, transient=True)
                progress.start()
                bar["progress"], bar["task"] = progress, progress.add_task("download", total=total)
            bar["progress"].update(bar["task"], completed=done, total=total)

        try:
            yield update
        except KeyboardInterrupt:
            stop()  # the spinner goes first: the message gets a line of its own
            self.say(f"interrupted while loading {what}: nothing was done", style="yellow")
            raise
        finally:
            stop()
            self._live -= drawing

    @contextmanager
    def counting(
        self, what: str = "classifying"
    ) -> Iterator[tuple[Callable[[], None], Callable[[int], None]]]:
        """Yield (tick, set_total): a bar with done/total, rate and ETA once the total is
        known, a counter until then (or for good, for stdin); the rate and the ETA only
        once they mean something."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = (
            SpinnerColumn(),
            TextColumn(what, markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            EtaColumn(),
        )
        drawing = self._drawing()
        with Progress(*columns, console=self.err, disable=not drawing, transient=True) as p:
            task = p.add_task("classify", total=None)
            self._live += drawing

            def tick() -> None:
                p.advance(task)

            def set_total(total: int) -> None:
                p.update(task, total=total)

            try:
                yield tick, set_total
            finally:
                self._live -= drawing


def rate(task: Task) -> float | None:
    """Images a second since the task started, once that means something (else None)."""
    elapsed = task.elapsed
    if elapsed is None or elapsed < RATE_AFTER_SECONDS or task.completed < RATE_AFTER_IMAGES:
        return None
    return task.completed / elapsed


class RateColumn(ProgressColumn):
    """'12.3 img/s', blank until the rate means something."""

    def render(self, task: Task) -> Text:
        r = rate(task)
        return Text("" if r is None else f"{r:.1f} img/s", style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """'eta 0:01:02' from the run's own rate, blank until it means something."""

    def render(self, task: Task) -> Text:
        r = rate(task)
        if r is None or task.total is None or r <= 0:
            return Text("")
        left = max(0.0, task.total - task.completed) / r
        minutes, seconds = divmod(round(left), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"eta {hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")
