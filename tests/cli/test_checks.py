"""cli/checks.py: the checks made from the arguments alone, before a model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnext_cli.cli.checks import check_classify_outputs
from resnext_cli.outputs.writers import resolve_format


@pytest.mark.parametrize(
    ("fmt", "output", "resume", "written_as"),
    [
        ("csv", "out.txt", False, "csv"),  # -f names the format: any file name goes
        ("jsonl", "results", False, "jsonl"),
        ("auto", "mine.dat", True, "jsonl"),  # --resume continues JSON Lines, any name
        ("auto", "OUT.CSV", False, "csv"),
        ("auto", "-", False, "jsonl"),  # stdout, a pipe
    ],
)
def test_an_output_name_the_tool_does_not_know_needs_a_format(
    fmt: str, output: str, resume: bool, written_as: str, tmp_path: Path
) -> None:
    check_classify_outputs(
        output=output,
        fmt=fmt,
        force=False,
        resume=resume,
        long=False,
        report=None,
        stdout_is_terminal=False,
    )
    assert resolve_format(fmt, is_terminal=False, output_name=output) == written_as
