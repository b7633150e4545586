"""The `resnext` command: the group, its commands attached, and the one error boundary.

The commands live by family in cli/classify.py, cli/learn.py and cli/weights.py. Nothing
heavy is imported at module level: `resnext --help`, `resnext models` and shell completion
must not load torch, torchvision or Pillow. Only the entry point imports this module.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

import click

from resnext_cli import __version__
from resnext_cli.cli.classify import classify, sort_command
from resnext_cli.cli.learn import learn, quantize
from resnext_cli.cli.weights import download, models
from resnext_cli.console import Console
from resnext_cli.errors import ExitStatus, ReaderGone, ResnextError, Terminated


class _Group(click.Group):
    """Click turns a broken pipe into exit 1; a reader that went away is no failure."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise ReaderGone from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="resnext")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Classify images with torchvision's ResNeXt models.

    Run `resnext classify IMAGE` to see the top-5 ImageNet labels of an image.
    """
    if ctx.obj is None:
        ctx.obj = Console.from_sys()


for _command in (classify, sort_command, models, download, quantize, learn):
    cli.add_command(_command)


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise Terminated


def main(argv: list[str] | None = None, *, console: Console | None = None) -> None:
    """Run the command line; the one place errors become messages and exit codes."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or bool(os.environ.get("RESNEXT_DEBUG"))
    signal.signal(signal.SIGTERM, _on_sigterm)
    console = console or Console.from_sys()
    console.debug = debug
    try:
        result = cli.main(args=args, prog_name="resnext", standalone_mode=False, obj=console)
        code = int(result) if isinstance(result, int) else 0
        console.stdout.flush()  # a pipe's last bytes: a reader gone by now is caught below
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = ExitStatus.USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        code = ExitStatus.INTERRUPTED
    except Terminated:
        code = ExitStatus.TERMINATED
    except (BrokenPipeError, ReaderGone):
        code = _reader_gone()
    except ResnextError as exc:
        if debug:
            raise
        console.error(str(exc))
        code = exc.exit_status
    except Exception as exc:
        if debug:
            raise
        console.error(
            f"unexpected {exc.__class__.__name__}: {exc} (run with --debug for a traceback)"
        )
        code = ExitStatus.SOME_FAILED
    sys.exit(code)


def _reader_gone() -> int:
    """The reader of stdout went away (`| head -1`): stop at once and quietly, as Unix
    tools do; point stdout at /dev/null so Python's exit flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return ExitStatus.OK
