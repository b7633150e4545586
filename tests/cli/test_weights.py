"""cli/weights.py: `resnext models` lists torchvision's tags with their metadata."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

# torchvision's tags, float then INT8 (torchvision.models.quantization), per model.
TAGS = [
    ("resnext50_32x4d", "IMAGENET1K_V1"),
    ("resnext50_32x4d", "IMAGENET1K_V2"),
    ("resnext101_32x8d", "IMAGENET1K_V1"),
    ("resnext101_32x8d", "IMAGENET1K_V2"),
    ("resnext101_32x8d", "IMAGENET1K_FBGEMM_V1"),
    ("resnext101_32x8d", "IMAGENET1K_FBGEMM_V2"),
    ("resnext101_64x4d", "IMAGENET1K_V1"),
    ("resnext101_64x4d", "IMAGENET1K_FBGEMM_V1"),
]


def test_models_lists_torchvision_metadata(resnext) -> None:
    run = resnext("models", "-f", "json")
    rows = json.loads(run.stdout)
    assert [(r["model"], r["weights"]) for r in rows] == TAGS
    v2 = rows[1]
    assert (v2["acc@1"], v2["default"], v2["cached"]) == (81.198, True, False)
    int8 = rows[5]  # torchvision: ResNeXt101_32X8D_QuantizedWeights.IMAGENET1K_FBGEMM_V2
    assert (int8["acc@1"], int8["quantized"], int8["default"]) == (82.574, True, True)


def test_models_table_shows_every_tag_whole(resnext) -> None:
    run = resnext("models")
    assert run.code == 0
    rows = [line.split() for line in run.stdout.splitlines() if line.startswith("resnext")]
    assert [(r[0], r[1]) for r in rows] == TAGS
    assert [r[2] == "*" for r in rows] == [False, True, False, True, False, True, True, True]
    assert rows[1][3:5] == ["81.20", "95.34"]


# -- the command bodies, in-process: what models prints and what download fetches ---------


def run_on(console, *args: str) -> int:
    """main() on a Console of the test's own; the exit status."""
    from resnext_cli.cli.main import main

    with pytest.raises(SystemExit) as stopped:
        main(list(args), console=console)
    code = stopped.value.code
    assert isinstance(code, int)
    return code


def test_models_json_is_one_document_and_one_newline(resnext) -> None:
    run = resnext("models", "-f", "json")
    assert run.code == 0
    assert run.stdout.endswith("]\n") and not run.stdout.endswith("\n\n")
    assert len(json.loads(run.stdout)) == len(TAGS)


def test_models_table_fits_a_terminal_and_gives_a_pipe_every_column(monkeypatch) -> None:
    from resnext_cli.console import Console

    monkeypatch.setenv("COLUMNS", "80")
    pipe = io.StringIO()
    assert run_on(Console.on(io.BytesIO(), pipe, io.StringIO()), "models") == 0
    assert "not shown" not in pipe.getvalue()
    assert "resnext50_32x4d-1a0047aa.pth" in pipe.getvalue()  # the file column
    assert max(len(line) for line in pipe.getvalue().splitlines()) > 80

    terminal = io.StringIO()
    console = Console.on(io.BytesIO(), terminal, io.StringIO())
    console.stdout_is_terminal = True
    assert run_on(console, "models") == 0
    text = terminal.getvalue()
    assert "not shown: " in text and "(widen or see -f json)" in text
    assert "resnext50_32x4d-1a0047aa.pth" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.fixture
def fetched(monkeypatch, tmp_path) -> dict[str, Any]:
    """Stand in for fetch() and Console.loading: record what download asks for; the
    'downloaded' file is tmp_path/'weights.pth'."""
    from resnext_cli.console import Console
    from resnext_cli.model import weights

    seen: dict[str, Any] = {}

    def progress(done: int, total: int | None) -> None: ...

    @contextlib.contextmanager
    def loading(self, what: str):
        seen["loading"], seen["quiet"] = what, self.quiet
        yield progress

    def fetch(url: str, *, offline: bool = False, progress=None) -> Path:
        seen.update(url=url, offline=offline, progress=progress)
        return tmp_path / "weights.pth"

    monkeypatch.setattr(Console, "loading", loading)
    monkeypatch.setattr(weights, "fetch", fetch)
    seen["the progress"] = progress
    return seen


def test_download_fetches_the_default_weights_and_prints_the_path(
    fetched, tmp_path, resnext
) -> None:
    run = resnext("download")
    assert (run.code, run.stdout, run.stderr) == (0, f"{tmp_path / 'weights.pth'}\n", "")
    assert fetched["url"] == "https://download.pytorch.org/models/resnext50_32x4d-1a0047aa.pth"
    assert fetched["loading"] == "resnext50_32x4d (IMAGENET1K_V2)"
    assert fetched["offline"] is False and fetched["quiet"] is False
    assert fetched["progress"] is fetched["the progress"]


def test_download_of_a_named_model_tag_and_int8(fetched, resnext) -> None:
    run = resnext("download", "-m", "resnext101_64x4d", "-w", "IMAGENET1K_V1", "-q")
    assert run.code == 0, run
    assert fetched["url"] == "https://download.pytorch.org/models/resnext101_64x4d-173b62eb.pth"
    assert fetched["loading"] == "resnext101_64x4d (IMAGENET1K_V1)"
    assert fetched["quiet"] is True
    run = resnext("download", "--model", "resnext101_32x8d", "--quantized", "--offline")
    assert run.code == 0, run
    assert fetched["url"] == (
        "https://download.pytorch.org/models/quantized/resnext101_32x8_fbgemm-ee16d00c.pth"
    )
    assert fetched["loading"] == "resnext101_32x8d (IMAGENET1K_FBGEMM_V2)"
    assert fetched["offline"] is True


def test_download_offline_from_the_environment(fetched, monkeypatch, resnext) -> None:
    monkeypatch.setenv("RESNEXT_OFFLINE", "1")
    assert resnext("download").code == 0
    assert fetched["offline"] is True


def test_download_of_unknown_weights_is_a_usage_error(fetched, resnext) -> None:
    run = resnext("download", "-w", "IMAGENET1K_V9")
    assert run.code == 2
    assert run.stderr == (
        "error: unknown weights 'IMAGENET1K_V9' for resnext50_32x4d "
        "(choose from: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2)\n"
    )
    assert "url" not in fetched
