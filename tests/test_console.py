"""console.py: escaping, bars, names cut in the middle, which streams are terminals, stdout
passed above a live display, the messages on stderr, and the progress bar's rate and ETA."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from rich.console import Console as RichConsole
from rich.progress import Progress, Task
from rich.theme import Theme

from resnext_cli.console import (
    AboveLive,
    Console,
    EtaColumn,
    RateColumn,
    bar,
    middle_ellipsis,
    printable,
    same_terminal,
)


@pytest.fixture(autouse=True)
def _no_terminal_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich reads these when a console is built: each test says what its streams are."""
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)


# --- printable ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("photos/img_0008.jpg", "photos/img_0008.jpg"),
        ("café 日本.jpg", "café 日本.jpg"),
        ("a\x1b[31mb.jpg", "a\\x1b[31mb.jpg"),
        ("a\rb", "a\\rb"),
        ("café\n", "café\\n"),  # printable non-ASCII stays as it is next to an escape
        ("日本\t\x7f", "日本\\t\\x7f"),
        ("x\u200by\u2028", "x\\u200by\\u2028"),
    ],
)
def test_printable_escapes_only_what_a_terminal_would_act_on(text: str, shown: str) -> None:
    assert printable(text) == shown


# --- bar ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "width", "track", "drawn"),
    [
        (0.0, 4, "", ""),
        (0.0, 4, "·", "····"),
        (1.0, 4, "", "████"),
        (1.0, 4, "·", "████"),
        (0.5, 4, "", "██"),
        (0.5, 4, "·", "██··"),
        (0.3, 2, "", "▋"),  # 4.8 eighths: 5
        (0.3, 2, "·", "▋·"),
        (1.5, 4, "", "████"),  # clamped
        (1.5, 4, "·", "████"),
        (-0.5, 4, "", ""),
        (-0.5, 4, "·", "····"),
    ],
)
def test_bar_in_eighths_clamped_with_its_track(
    fraction: float, width: int, track: str, drawn: str
) -> None:
    assert bar(fraction, width, track=track) == drawn


# --- middle_ellipsis ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "width", "shown"),
    [
        ("photos/img_0008.jpg", 40, "photos/img_0008.jpg"),
        ("photos/holiday/img_0008.jpg", 16, "photos/…0008.jpg"),
        ("abcde", 5, "abcde"),  # exactly the width
        ("abcdef", 5, "ab…ef"),  # one cell over
        ("abcdef", 3, "a…f"),
        ("abcdef", 2, "…f"),
        ("abcdef", 1, "…"),
        ("abcdef", 0, ""),
        ("", 0, ""),
        ("日本語", 6, "日本語"),
        ("日本語", 5, "日…語"),
        ("日本語", 4, "…語"),  # 日 does not fit in the one cell left
        ("日本語", 2, "…"),
        ("日本語のファイル名.jpg", 10, "日本語…jpg"),  # 10 cells: 6 + 1 + 3
    ],
)
def test_middle_ellipsis_keeps_both_ends(text: str, width: int, shown: str) -> None:
    assert middle_ellipsis(text, width) == shown


# --- terminals -----------------------------------------------------------------------------


class Stream(io.StringIO):
    """Text kept in memory, on a file descriptor that says what the stream is."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def fileno(self) -> int:
        return self.fd


@dataclass
class Fds:
    tty: int  # a pseudo-terminal
    same_tty: int  # another descriptor of that same terminal
    other_tty: int  # another pseudo-terminal
    pipe: int  # not a terminal


@pytest.fixture
def fds() -> Iterator[Fds]:
    master, slave = os.openpty()
    other_master, other_slave = os.openpty()
    read, write = os.pipe()
    dup = os.dup(slave)
    try:
        yield Fds(tty=slave, same_tty=dup, other_tty=other_slave, pipe=write)
    finally:
        for fd in (master, slave, other_master, other_slave, read, write, dup):
            os.close(fd)


class NoFileno(io.StringIO):
    """Says it is a terminal, but has no descriptor to show for it."""

    def __init__(self, error: type[Exception]) -> None:
        super().__init__()
        self.error = error

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        raise self.error("no descriptor")


class Disowned(Stream):
    """On a terminal's descriptor, but says it is no terminal."""

    def isatty(self) -> bool:
        return False


def test_same_terminal_only_for_two_streams_on_one_terminal(fds: Fds) -> None:
    assert same_terminal(Stream(fds.tty), Stream(fds.same_tty)) is True
    assert same_terminal(Stream(fds.tty), Stream(fds.tty)) is True
    assert same_terminal(Stream(fds.tty), Stream(fds.other_tty)) is False
    assert same_terminal(Stream(fds.tty), Stream(fds.pipe)) is False
    assert same_terminal(Stream(fds.pipe), Stream(fds.tty)) is False
    assert same_terminal(Stream(fds.pipe), Stream(fds.pipe)) is False  # one pipe: no terminal
    assert same_terminal(io.StringIO(), io.StringIO()) is False


def test_same_terminal_needs_both_to_say_they_are_terminals(fds: Fds) -> None:
    assert same_terminal(Disowned(fds.tty), Stream(fds.same_tty)) is False
    assert same_terminal(Stream(fds.tty), Disowned(fds.same_tty)) is False


@pytest.mark.parametrize("error", [io.UnsupportedOperation, OSError, ValueError])
def test_same_terminal_is_false_without_a_descriptor(fds: Fds, error: type[Exception]) -> None:
    assert same_terminal(NoFileno(error), Stream(fds.tty)) is False
    assert same_terminal(Stream(fds.tty), NoFileno(error)) is False


def test_on_in_memory_streams_nothing_is_a_terminal() -> None:
    stdin, stdout, stderr = io.BytesIO(), io.StringIO(), io.StringIO()
    console = Console.on(stdin, stdout, stderr)
    assert (console.stdin, console.stdout) == (stdin, stdout)
    assert console.stdin_is_terminal is False
    assert console.stdout_is_terminal is False
    assert console.err_is_terminal is False


def test_on_passes_the_facts_and_the_rich_options_on() -> None:
    console = Console.on(
        io.BytesIO(),
        io.StringIO(),
        io.StringIO(),
        stdin_is_terminal=True,
        force_terminal=True,
        width=33,
    )
    assert console.stdin_is_terminal is True
    assert console.err_is_terminal is True
    assert console.width == 33


def test_on_asks_stdout_whether_it_is_a_terminal(fds: Fds) -> None:
    assert Console.on(io.BytesIO(), Stream(fds.tty), io.StringIO()).stdout_is_terminal is True
    assert Console.on(io.BytesIO(), Stream(fds.pipe), io.StringIO()).stdout_is_terminal is False
    closed = io.StringIO()
    closed.close()  # isatty() raises ValueError
    assert Console.on(io.BytesIO(), closed, io.StringIO()).stdout_is_terminal is False
    no_isatty = object()  # AttributeError
    assert Console.on(io.BytesIO(), no_isatty, io.StringIO()).stdout_is_terminal is False  # type: ignore[arg-type]


def test_from_sys_uses_the_process_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stdin:
        def __init__(self, tty: bool) -> None:
            self.buffer = io.BytesIO(b"cat.jpg\n")
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    stdout, stderr = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    for tty in (True, False):
        stdin = Stdin(tty)
        monkeypatch.setattr(sys, "stdin", stdin)
        console = Console.from_sys()
        assert (console.stdin, console.stdout) == (stdin.buffer, stdout)
        assert console.stdin_is_terminal is tty
        console.say("hello")
        assert stderr.getvalue() == "hello\n"
        stderr.seek(0)
        stderr.truncate()


# --- stdout above the live display -------------------------------------------------------


def test_stdout_on_the_terminal_stderr_draws_on_goes_above_the_live_display(fds: Fds) -> None:
    stdout, stderr = Stream(fds.tty), Stream(fds.same_tty)
    console = Console.on(io.BytesIO(), stdout, stderr, force_terminal=True, color_system=None)
    console.stdout.write("before\n")
    assert (stdout.getvalue(), stderr.getvalue()) == ("before\n", "")
    with console.counting() as (tick, _):
        console.stdout.write("cat.jpg cat\n")
        tick()
        assert "cat.jpg cat\n" in stderr.getvalue()  # printed above the bar
    console.stdout.write("after\n")
    with console.loading("resnext50") as _:
        console.stdout.write("loaded\n")
        assert "loaded\n" in stderr.getvalue()
    assert stdout.getvalue() == "before\nafter\n"
    assert "before" not in stderr.getvalue()
    assert "after" not in stderr.getvalue()


def test_stdout_elsewhere_is_left_alone(fds: Fds) -> None:
    # stderr a terminal, stdout not; two terminals; one terminal stderr is not drawn on
    for stdout, stderr, terminal in (
        (io.StringIO(), Stream(fds.tty), True),
        (Stream(fds.pipe), Stream(fds.tty), True),
        (Stream(fds.tty), Stream(fds.other_tty), True),
        (Stream(fds.tty), Stream(fds.same_tty), False),
    ):
        console = Console.on(
            io.BytesIO(), stdout, stderr, force_terminal=terminal, color_system=None
        )
        assert console.stdout is stdout
        with console.counting() as _:
            console.stdout.write("cat.jpg cat\n")
        assert stdout.getvalue() == "cat.jpg cat\n"
        assert "cat.jpg" not in stderr.getvalue()


def test_quiet_draws_no_progress_and_passes_stdout_straight(fds: Fds) -> None:
    stdout, stderr = Stream(fds.tty), Stream(fds.same_tty)
    console = Console.on(io.BytesIO(), stdout, stderr, force_terminal=True, color_system=None)
    console.quiet = True
    with console.counting() as (tick, set_total):
        set_total(2)
        console.stdout.write("cat.jpg cat\n")
        tick()
    with console.loading("resnext50") as update:
        update(10, 100)
    assert (stdout.getvalue(), stderr.getvalue()) == ("cat.jpg cat\n", "")


def above(
    live: list[bool], *, width: int = 80, color: bool = False
) -> tuple[AboveLive, io.StringIO, io.StringIO]:
    stdout, err = io.StringIO(), io.StringIO()
    rich = RichConsole(
        file=err, width=width, force_terminal=color, color_system="standard" if color else None
    )
    return AboveLive(stdout, rich, lambda: live[0]), stdout, err


def test_above_live_writes_straight_through_without_a_display() -> None:
    stream, stdout, err = above([False])
    assert stream.write("cat.jpg cat\npart") == 16
    assert (stdout.getvalue(), err.getvalue()) == ("cat.jpg cat\npart", "")


def test_above_live_prints_whole_lines_above_the_display() -> None:
    live = [True]
    stream, stdout, err = above(live)
    assert stream.write("a b") == 3
    assert (stdout.getvalue(), err.getvalue()) == ("", "")  # half a line waits
    assert stream.write(" c\nd\ne") == 6
    assert (stdout.getvalue(), err.getvalue()) == ("", "a b c\nd\n")
    live[0] = False
    stream.write("f\n")  # the display is gone: the rest of the line, then this
    assert (stdout.getvalue(), err.getvalue()) == ("ef\n", "a b c\nd\n")
    live[0] = True
    stream.write("g\n")  # nothing left over from before
    stream.write("\n")
    assert (stdout.getvalue(), err.getvalue()) == ("ef\n", "a b c\nd\ng\n\n")


def test_above_live_keeps_the_order_on_one_terminal() -> None:
    live = [True]
    buffer = io.StringIO()
    stream = AboveLive(buffer, RichConsole(file=buffer, color_system=None), lambda: live[0])
    print("one", file=stream)
    stream.write("tw")
    live[0] = False
    print("o", file=stream)
    live[0] = True
    print("three", file=stream)
    assert buffer.getvalue() == "one\ntwo\nthree\n"


def test_above_live_flush_writes_the_line_so_far() -> None:
    stream, stdout, err = above([True])
    stream.write("cat.jpg\ndog")
    stream.flush()
    stream.flush()
    assert (stdout.getvalue(), err.getvalue()) == ("dog", "cat.jpg\n")
    stream.write(".jpg\n")
    assert (stdout.getvalue(), err.getvalue()) == ("dog", "cat.jpg\n.jpg\n")


def test_above_live_does_not_wrap_long_lines() -> None:
    stream, _, err = above([True], width=10)
    stream.write("photos/holiday/img_0008.jpg cat\n")
    assert err.getvalue() == "photos/holiday/img_0008.jpg cat\n"


def test_above_live_keeps_the_colours_of_a_line() -> None:
    stream, _, err = above([True], color=True)
    stream.write("\x1b[31mcat\x1b[0m 0.9\n")
    assert err.getvalue() == "\x1b[31mcat\x1b[0m 0.9\n"
    plain, _, plain_err = above([True])
    plain.write("\x1b[31mcat\x1b[0m 0.9\n")
    assert plain_err.getvalue() == "cat 0.9\n"


def test_above_live_is_a_terminal_stream(fds: Fds) -> None:
    stream = AboveLive(Stream(fds.tty), RichConsole(file=io.StringIO()), lambda: False)
    assert stream.isatty() is True
    assert stream.writable() is True
    assert stream.fileno() == fds.tty
    assert stream.encoding == "utf-8"
    latin = io.TextIOWrapper(io.BytesIO(), encoding="latin-1")
    assert AboveLive(latin, RichConsole(file=io.StringIO()), lambda: False).encoding == "latin-1"


# --- messages ------------------------------------------------------------------------------


def messages(*, terminal: bool, quiet: bool = False) -> tuple[Console, io.StringIO]:
    err = io.StringIO()
    console = Console.on(
        io.BytesIO(),
        io.StringIO(),
        err,
        force_terminal=terminal,
        color_system="standard" if terminal else None,
        width=40,
    )
    console.quiet = quiet
    return console, err


def say_everything(console: Console) -> None:
    console.say("plain [bold]x[/]")
    console.say("styled", style="green")
    console.note("a note")
    console.note("a green note", style="green")
    console.warn("3 files skipped")
    console.error("can't read 'cat.jpg'")


def test_messages_without_a_terminal_are_plain_text() -> None:
    console, err = messages(terminal=False)
    say_everything(console)
    assert err.getvalue() == (
        "plain [bold]x[/]\n"
        "styled\n"
        "a note\n"
        "a green note\n"
        "warning: 3 files skipped\n"
        "error: can't read 'cat.jpg'\n"
    )


def test_messages_on_a_terminal_have_their_colours_and_nothing_else() -> None:
    console, err = messages(terminal=True)
    say_everything(console)
    assert err.getvalue() == (
        "plain [bold]x[/]\n"
        "\x1b[32mstyled\x1b[0m\n"
        "a note\n"
        "\x1b[32ma green note\x1b[0m\n"
        "\x1b[33mwarning: 3 files skipped\x1b[0m\n"
        "\x1b[31merror: can't read 'cat.jpg'\x1b[0m\n"
    )


def test_no_color_leaves_the_colours_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    console, err = messages(terminal=True)
    console.warn("3 files skipped")
    console.error("can't read 'cat.jpg'")
    assert err.getvalue() == "warning: 3 files skipped\nerror: can't read 'cat.jpg'\n"


def test_quiet_keeps_only_errors_and_what_is_said() -> None:
    console, err = messages(terminal=True, quiet=True)
    say_everything(console)
    assert err.getvalue() == (
        "plain [bold]x[/]\n\x1b[32mstyled\x1b[0m\n\x1b[31merror: can't read 'cat.jpg'\x1b[0m\n"
    )


@pytest.mark.parametrize("terminal", [False, True])
def test_messages_escape_control_characters(terminal: bool) -> None:
    console, err = messages(terminal=terminal)
    console.say("a\x1b[2Jb\r.jpg")
    console.note("c\x07.jpg")
    console.warn("d\x1b]0;title\x07.jpg")
    console.error("e\rf\n.jpg")
    red, yellow, reset = ("\x1b[31m", "\x1b[33m", "\x1b[0m") if terminal else ("", "", "")
    assert err.getvalue() == (
        "a\\x1b[2Jb\\r.jpg\n"
        "c\\x07.jpg\n"
        f"{yellow}warning: d\\x1b]0;title\\x07.jpg{reset}\n"
        f"{red}error: e\\rf\\n.jpg{reset}\n"
    )


def test_stderr_console_does_not_highlight_numbers_or_quotes() -> None:
    console, err = messages(terminal=True)
    console.err.print("3 images in 2.5 s, 'cat.jpg' at /tmp/x", style="")
    assert err.getvalue() == "3 images in 2.5 s, 'cat.jpg' at /tmp/x\n"


# --- rate and ETA --------------------------------------------------------------------------


def task_at(completed: int, total: int | None, elapsed: float, *, start: bool = True) -> Task:
    """A task *completed* of *total* done, *elapsed* seconds after it started (fake clock)."""
    now = [0.0]
    progress = Progress(get_time=lambda: now[0])
    task_id = progress.add_task("classify", total=total, start=start)
    progress.update(task_id, completed=completed)
    now[0] = elapsed
    return progress.tasks[0]


def test_a_rate_and_an_eta_only_once_they_mean_something() -> None:
    now = [0.0]
    progress = Progress(get_time=lambda: now[0])
    task_id = progress.add_task("classify", total=100)
    task = progress.tasks[0]
    rate, eta = RateColumn(), EtaColumn()
    progress.advance(task_id, 8)  # the first batch, all at once, 0.001 s in
    now[0] = 0.001
    assert (rate.render(task).plain, eta.render(task).plain) == ("", "")
    now[0] = 1.9
    assert rate.render(task).plain == ""
    now[0] = 4.0  # 8 images in 4 s: 2 a second, 92 left: 46 s
    assert (rate.render(task).plain, eta.render(task).plain) == ("2.0 img/s", "eta 0:00:46")
    counted_id = progress.add_task("stdin", total=None)  # no total: no ETA
    progress.advance(counted_id, 8)
    counted = progress.tasks[-1]
    now[0] = 8.0
    assert (rate.render(counted).plain, eta.render(counted).plain) == ("2.0 img/s", "")


@pytest.mark.parametrize(
    ("completed", "total", "elapsed", "shown"),
    [
        (2, 10, 2.0, ("1.0 img/s", "eta 0:00:08")),  # both thresholds exactly
        (2, 10, 1.999, ("", "")),
        (1, 10, 10.0, ("", "")),
        (0, 10, 10.0, ("", "")),
        (3, 10, 2.0, ("1.5 img/s", "eta 0:00:05")),  # 4.67 s rounds up
        (1, 10, 0.5, ("", "")),
        (4, 4, 4.0, ("1.0 img/s", "eta 0:00:00")),  # done
        (5, 4, 5.0, ("1.0 img/s", "eta 0:00:00")),  # more than the total
        (2, 61, 2.0, ("1.0 img/s", "eta 0:00:59")),
        (2, 62, 2.0, ("1.0 img/s", "eta 0:01:00")),
        (2, 3601, 2.0, ("1.0 img/s", "eta 0:59:59")),
        (2, 3602, 2.0, ("1.0 img/s", "eta 1:00:00")),
        (2, 36_002 + 3_661, 2.0, ("1.0 img/s", "eta 11:01:01")),
        (20, 10_000, 2.0, ("10.0 img/s", "eta 0:16:38")),
        (20, None, 2.0, ("10.0 img/s", "")),
    ],
)
def test_rate_and_eta_at_their_boundaries(
    completed: int, total: int | None, elapsed: float, shown: tuple[str, str]
) -> None:
    task = task_at(completed, total, elapsed)
    assert (RateColumn().render(task).plain, EtaColumn().render(task).plain) == shown


def test_no_rate_before_the_task_starts() -> None:
    task = task_at(10, 100, 10.0, start=False)
    assert (RateColumn().render(task).plain, EtaColumn().render(task).plain) == ("", "")


def test_rate_and_eta_take_the_progress_theme_styles() -> None:
    theme = Theme({"progress.data.speed": "magenta", "progress.remaining": "blue"})
    err = io.StringIO()
    console = RichConsole(
        file=err, force_terminal=True, color_system="standard", theme=theme, width=40
    )
    task = task_at(2, 10, 2.0)
    console.print(RateColumn().render(task))
    console.print(EtaColumn().render(task))
    assert err.getvalue() == "\x1b[35m1.0 img/s\x1b[0m\n\x1b[34meta 0:00:08\x1b[0m\n"


@pytest.mark.parametrize("width", range(2, 9))
def test_a_character_that_widens_its_neighbour_never_overflows_the_width(width: int) -> None:
    """U+FE0F makes the heart before it two cells wide: each end is measured whole."""
    from rich.cells import cell_len

    for text in ("abcdef\u2764\ufe0f", "\u2764\ufe0fabcdef", "ab\u2764\ufe0fcd\u2764\ufe0fef"):
        shown = middle_ellipsis(text, width)
        assert cell_len(shown) <= width, (text, width, shown)
    assert middle_ellipsis("abcdef\u2764\ufe0f", 3) == "\u2026\u2764\ufe0f"


@pytest.mark.parametrize(
    ("text", "width", "shown"),
    [
        # the heart and its U+FE0F are cut together: 2 cells, then no room for 'a'
        ("abcdef\u2764\ufe0f", 3, "\u2026\u2764\ufe0f"),
        ("abcdef\u2764\ufe0f", 4, "a\u2026\u2764\ufe0f"),
        # a wide character with a combining accent: both or neither
        ("abcdef\u65e5\u0301", 3, "\u2026\u65e5\u0301"),
        ("abcde\u0301", 3, "a\u2026e\u0301"),
        # two emoji joined by U+200D are one piece of 2 cells (cut apart: a lone joiner)
        ("abcdef\U0001f468\u200d\U0001f469", 4, "a\u2026\U0001f468\u200d\U0001f469"),
        ("abcdef\U0001f468\u200d\U0001f469", 5, "a\u2026f\U0001f468\u200d\U0001f469"),
        # a skin tone stays with its hand, the lightest and the darkest too
        ("\U0001f44d\U0001f3fdabcdef", 5, "\U0001f44d\U0001f3fd\u2026ef"),
        ("abcdef\U0001f44d\U0001f3fb", 3, "\u2026\U0001f44d\U0001f3fb"),
        ("abcdef\U0001f44d\U0001f3ff", 3, "\u2026\U0001f44d\U0001f3ff"),
        # an enclosing mark (U+20E3, category Me) stays with what it encloses
        ("abcdef\u65e5\u20e3", 3, "\u2026\u65e5\u20e3"),
    ],
)
def test_a_cut_never_strands_a_mark_or_a_joiner(text: str, width: int, shown: str) -> None:
    assert middle_ellipsis(text, width) == shown


@pytest.mark.parametrize(
    "text",
    [
        "ab\u2764\ufe0fcd\u2764\ufe0fef.jpg",
        "cafe\u0301-cafe\u0301-cafe\u0301.jpg",
        "\U0001f468\u200d\U0001f469\u200d\U0001f467-\U0001f44d\U0001f3fd-\u65e5\u0301.png",
    ],
)
def test_every_width_keeps_marks_with_their_characters(text: str) -> None:
    """Whatever the width, what follows the ellipsis starts with a character of its own and
    what precedes it does not end in a joiner; the two ends are the text's own ends."""
    import unicodedata

    from rich.cells import cell_len

    for width in range(2, cell_len(text)):
        shown = middle_ellipsis(text, width)
        head, _, tail = shown.partition("\u2026")
        assert cell_len(shown) <= width, (width, shown)
        assert text.startswith(head) and text.endswith(tail), (width, shown)
        if tail:
            assert unicodedata.category(tail[0]) not in ("Mn", "Me"), (width, shown)
            assert tail[0] != "\u200d" and not "\U0001f3fb" <= tail[0] <= "\U0001f3ff"
            assert text[len(text) - len(tail) - 1] != "\u200d", (width, shown)
        assert not head.endswith("\u200d"), (width, shown)
