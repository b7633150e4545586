"""cli/main.py: the exit codes of its error boundary, --version, and a light start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


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
