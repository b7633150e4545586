"""cli/main.py: the exit codes of its error boundary, --version, and a light start-up."""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from resnext_cli.console import Console
from resnext_cli.errors import ConfigError, EngineError, ReaderGone, Terminated


def test_exit_codes(checkpoint, folder, tmp_path, resnext) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resnext("classify", folder, "--checkpoint", checkpoint).code == 0
    assert resnext("classify", folder, tmp_path / "gone.jpg", "--checkpoint", checkpoint).code == 1
    nothing = resnext("classify", empty, "--checkpoint", checkpoint)
    assert nothing.code == 2
    assert nothing.stderr.splitlines() == [
        f"warning: no images found in folder '{empty}'",
        "error: no input matched (give image files, folders, globs or URLs)",
    ]
    usage = resnext("classify", "--model", "resnext51", folder)
    assert usage.code == 2
    assert usage.stderr.strip() == (
        "error: unknown model 'resnext51' (choose from: resnext50_32x4d, resnext101_32x8d, "
        "resnext101_64x4d)"
    )
    assert resnext("classify").code == 2  # missing INPUT is a usage error


def test_version(resnext) -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    run = resnext("--version")
    assert run.code == 0 and run.stdout.strip() == f"resnext, version {declared}"


@pytest.mark.parametrize(
    "args", [["--help"], ["classify", "--help"], ["models"], ["models", "-f", "json"]]
)
def test_light_commands_do_not_import_torch(args) -> None:
    # Make torch, torchvision and PIL unimportable: these commands must still work.
    code = (
        "import sys\n"
        "for m in ('torch', 'torchvision', 'PIL', 'numpy'): sys.modules[m] = None\n"
        "from resnext_cli.cli.main import main\n"
        f"main({args!r})\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout.strip()


def test_shell_completion_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "for m in ('torch', 'torchvision', 'PIL'): sys.modules[m] = None\n"
        "from resnext_cli.cli.main import main\n"
        "main([])\n"
    )
    env = {"_RESNEXT_COMPLETE": "bash_complete", "COMP_WORDS": "resnext cl", "COMP_CWORD": "1"}
    import os

    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert "plain,classify" in run.stdout, run.stderr


# -- the error boundary, in-process: a stand-in command raises what a real one could ------


@dataclasses.dataclass
class Ran:
    """One in-process main() with its own Console: what each stream received."""

    code: object
    stdout: str  # the Console's stdout
    stderr: str  # the Console's stderr (the tool's own messages)
    click_stderr: str  # sys.stderr (click's own messages)


@pytest.fixture(autouse=True)
def _sigterm_restored() -> Iterator[None]:
    """main() installs its SIGTERM handler in this process: put the old one back."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[Console], Any]], None]:
    """Attach `resnext probe [--debug]`, whose body is *action(console)*, to the group."""
    from resnext_cli.cli.main import cli
    from resnext_cli.cli.options import debug_option

    def install(action: Callable[[Console], Any]) -> None:
        @click.command(name="probe")
        @debug_option
        @click.pass_obj
        def command(console: Console) -> Any:
            return action(console)

        monkeypatch.setitem(cli.commands, "probe", command)

    return install


def run_main(*args: str, console: Console | None = None) -> Ran:
    from click.testing import CliRunner

    from resnext_cli.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    own = Console.on(io.BytesIO(), out, err) if console is None else console
    with CliRunner().isolation() as (_, click_err, _):
        with pytest.raises(SystemExit) as stopped:
            main(list(args), console=own)
        click_text = click_err.getvalue().decode()
    return Ran(stopped.value.code, out.getvalue(), err.getvalue(), click_text)


def fail_with(exc: BaseException) -> Callable[[Console], Any]:
    def action(_console: Console) -> Any:
        raise exc

    return action


def test_a_commands_int_result_is_the_exit_status_and_none_is_zero(probe) -> None:
    probe(lambda console: 3)
    assert run_main("probe").code == 3
    probe(lambda console: None)
    assert run_main("probe").code == 0
    probe(lambda console: "3")  # only an int is a status
    assert run_main("probe").code == 0


def test_the_given_console_is_the_commands_and_debug_is_set_on_it(probe) -> None:
    seen: list[tuple[bool, bool]] = []
    out, err = io.StringIO(), io.StringIO()
    mine = Console.on(io.BytesIO(), out, err)

    def action(console: Console) -> int:
        seen.append((console is mine, console.debug))
        console.stdout.write("payload\n")
        return 0

    probe(action)
    assert run_main("probe", console=mine).code == 0
    assert run_main("probe", "--debug", console=mine).code == 0
    assert seen == [(True, False), (True, True)]
    assert out.getvalue() == "payload\npayload\n"


def test_without_a_console_main_uses_the_process_streams(probe, monkeypatch) -> None:
    from click.testing import CliRunner

    from resnext_cli.cli.main import main

    probe(lambda console: console.stdout.write("on sys.stdout\n") and 4)
    with CliRunner().isolation() as (out, _, _):
        with pytest.raises(SystemExit) as stopped:
            main(["probe"])
        assert out.getvalue().decode() == "on sys.stdout\n"
    assert stopped.value.code == 4


def test_argv_none_reads_sys_argv_after_the_program_name(probe, monkeypatch) -> None:
    from click.testing import CliRunner

    from resnext_cli.cli.main import main

    probe(lambda console: 6)
    monkeypatch.setattr(sys, "argv", ["resnext", "probe"])
    with CliRunner().isolation(), pytest.raises(SystemExit) as stopped:
        main(console=Console.on(io.BytesIO(), io.StringIO(), io.StringIO()))
    assert stopped.value.code == 6


def test_the_output_is_flushed_inside_the_boundary(probe) -> None:
    class Pipe(io.StringIO):
        flushed = 0

        def flush(self) -> None:
            Pipe.flushed += 1
            if Pipe.flushed == 1:  # the first flush meets the closed pipe
                raise BrokenPipeError(32, "Broken pipe")

    err = io.StringIO()
    probe(lambda console: 5)
    ran = run_main("probe", console=Console.on(io.BytesIO(), Pipe(), err))
    assert Pipe.flushed == 1
    assert ran.code == 0  # the reader went away while the last bytes went out: no failure
    assert err.getvalue() == ""


def test_click_exit_keeps_its_status(probe) -> None:
    probe(lambda console: click.get_current_context().exit(5))
    assert run_main("probe").code == 5


def test_click_errors_are_shown_by_click_with_their_status(probe) -> None:
    probe(fail_with(click.ClickException("nope")))
    ran = run_main("probe")
    assert (ran.code, ran.click_stderr, ran.stderr) == (1, "Error: nope\n", "")

    class Four(click.ClickException):
        exit_code = 4

    probe(fail_with(Four("four")))
    ran = run_main("probe")
    assert (ran.code, ran.click_stderr) == (4, "Error: four\n")

    class Three(click.UsageError):
        exit_code = 3  # a usage error is always 2, whatever it says

    probe(fail_with(Three("bad usage")))
    ran = run_main("probe")
    assert ran.code == 2
    assert ran.click_stderr.splitlines() == [
        "Usage: resnext probe [OPTIONS]",
        "Try 'resnext probe --help' for help.",
        "",
        "Error: bad usage",
    ]
    ran = run_main("nope")
    assert ran.code == 2
    assert ran.click_stderr.splitlines()[-1] == "Error: No such command 'nope'."


@pytest.mark.parametrize(
    ("raised", "status", "said"),
    [
        (KeyboardInterrupt(), 130, "\n"),  # click ends the ^C line
        (click.exceptions.Abort(), 130, ""),
        (Terminated(), 143, ""),
        (BrokenPipeError(32, "Broken pipe"), 0, ""),
        (ReaderGone(), 0, ""),
    ],
    ids=["ctrl_c", "click_abort", "terminated", "broken_pipe", "reader_gone"],
)
def test_interrupts_and_a_vanished_reader_exit_quietly(probe, raised, status, said) -> None:
    probe(fail_with(raised))
    ran = run_main("probe")
    assert (ran.code, ran.stdout, ran.stderr, ran.click_stderr) == (status, "", "", said)


def test_sigterm_raises_terminated_and_exits_143(probe) -> None:
    def action(_console: Console) -> int:
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        handler(signal.SIGTERM, None)
        return 0

    probe(action)
    ran = run_main("probe")
    assert (ran.code, ran.stderr) == (143, "")


def test_the_group_turns_a_broken_pipe_into_reader_gone(probe) -> None:
    from resnext_cli.cli.main import cli

    own = Console.on(io.BytesIO(), io.StringIO(), io.StringIO())
    probe(lambda console: 7)
    assert cli.main(["probe"], standalone_mode=False, obj=own) == 7
    probe(fail_with(BrokenPipeError(32, "Broken pipe")))
    with pytest.raises(ReaderGone) as gone:
        cli.main(["probe"], standalone_mode=False, obj=own)
    assert gone.value.__cause__ is None and gone.value.__suppress_context__


@pytest.mark.parametrize(
    ("raised", "status", "line"),
    [
        (ConfigError("bad value"), 2, "error: bad value"),
        (EngineError("3 records lost"), 1, "error: 3 records lost"),
        (
            ValueError("boom"),
            1,
            "error: unexpected ValueError: boom (run with --debug for a traceback)",
        ),
    ],
    ids=["config", "engine", "unexpected"],
)
def test_errors_are_one_line_with_their_status(probe, monkeypatch, raised, status, line) -> None:
    monkeypatch.setenv("RESNEXT_DEBUG", "")  # empty: not set
    probe(fail_with(raised))
    ran = run_main("probe")
    assert (ran.code, ran.stderr, ran.stdout, ran.click_stderr) == (status, line + "\n", "", "")


@pytest.mark.parametrize(
    "raised", [ConfigError("bad value"), ValueError("boom")], ids=["resnext", "unexpected"]
)
def test_debug_lets_errors_through(probe, monkeypatch, raised) -> None:
    from resnext_cli.cli.main import main

    probe(fail_with(raised))
    own = Console.on(io.BytesIO(), io.StringIO(), io.StringIO())
    with pytest.raises(type(raised)):
        main(["probe", "--debug"], console=own)
    monkeypatch.setenv("RESNEXT_DEBUG", "1")
    with pytest.raises(type(raised)):
        main(["probe"], console=own)
    assert own.debug is True


def test_reader_gone_points_stdout_at_the_null_device(tmp_path, monkeypatch) -> None:
    from resnext_cli.cli.main import _reader_gone

    null = tmp_path / "null"  # a stand-in for os.devnull
    null.write_bytes(b"")
    monkeypatch.setattr(os, "devnull", str(null))
    with open(tmp_path / "stdout", "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        saved = os.dup(stdout.fileno())
        try:
            assert _reader_gone() == 0
            os.write(stdout.fileno(), b"after the reader left")
        finally:
            os.dup2(saved, stdout.fileno())
            os.close(saved)
    assert null.read_bytes() == b"after the reader left"
    assert (tmp_path / "stdout").read_bytes() == b""


def test_reader_gone_without_a_real_stdout_is_still_quiet(tmp_path, monkeypatch) -> None:
    from resnext_cli.cli.main import _reader_gone

    monkeypatch.setattr(os, "devnull", str(tmp_path / "null"))  # no such file: OSError
    with open(tmp_path / "stdout", "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        assert _reader_gone() == 0
    null = tmp_path / "null2"
    null.write_bytes(b"")
    monkeypatch.setattr(os, "devnull", str(null))
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # no file descriptor: ValueError
    assert _reader_gone() == 0
    monkeypatch.setattr(sys, "stdout", object())  # no fileno at all: AttributeError
    assert _reader_gone() == 0
