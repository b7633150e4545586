"""The terminal a command talks to: its streams, what they are, and what it draws on stderr.

Commands get one `Console` (tests build their own around in-memory streams), so nothing
reads sys.stdin or writes sys.stdout behind their backs. Payload goes to `stdout`;
messages, progress and the summary go to `err`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

from rich.console import Console as RichConsole
from rich.text import Text


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


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


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

    @classmethod
    def from_sys(cls) -> Console:
        """The process's own streams."""
        return cls(
            stdin=sys.stdin.buffer,
            stdout=sys.stdout,
            err=RichConsole(stderr=True, highlight=False, soft_wrap=True),
            stdin_is_terminal=_is_tty(sys.stdin),
            stdout_is_terminal=_is_tty(sys.stdout),
        )

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
        status = self.err.status(Text(f"loading {what}…")) if self._drawing() else None
        if status is not None:
            status.start()

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
        finally:
            if "progress" in bar:
                bar["progress"].stop()
            if status is not None:
                status.stop()

    @contextmanager
    def counting(
        self, what: str = "classifying"
    ) -> Iterator[tuple[Callable[[], None], Callable[[int], None]]]:
        """Yield (tick, set_total): a bar with done/total, rate and ETA once the total is
        known, a counter with the rate until then (or for good, for stdin)."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            SpinnerColumn(),
            TextColumn(what, markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.err, disable=not self._drawing(), transient=True) as p:
            task = p.add_task("classify", total=None, rate="")

            def tick() -> None:
                p.advance(task)
                speed = p.tasks[0].speed
                p.update(task, rate=f"{speed:.1f} img/s" if speed else "")

            def set_total(total: int) -> None:
                p.update(task, total=total)

            yield tick, set_total
