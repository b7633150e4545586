"""Bad option values: one line on stderr, exit 2, and no image read or output written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
import torch
from click.testing import CliRunner

MODELS = "resnext50_32x4d, resnext101_32x8d, resnext101_64x4d"


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every input the engine tries to open during a run."""
    import resnext_cli.run.pipeline

    opened: list[str] = []
    real = resnext_cli.run.pipeline.open_source

    def spy(source: Any, **kwargs: Any) -> Any:
        opened.append(source.input)
        return real(source, **kwargs)

    monkeypatch.setattr(resnext_cli.run.pipeline, "open_source", spy)
    return opened


@pytest.fixture
def image(make_image: Callable[..., Path]) -> Path:
    return make_image("photo.png", seed=1, size=(64, 64))


def refused(
    resnext: Callable[..., Any], reads: list[str], image: Path, out: Path, *args: str | Path
) -> str:
    """Run classify with *args*; check it stopped before work; return its one stderr line."""
    run = resnext("classify", image, "-o", out, *args)
    assert run.code == 2, run
    assert run.stdout == ""
    assert reads == [], "an image was read before the options were checked"
    assert not out.exists(), "the output file was created before the options were checked"
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run
    assert "Traceback" not in run.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "resnext51"], f"unknown model 'resnext51' (choose from: {MODELS})"),
        (
            ["-w", "IMAGENET1K_V9"],
            "unknown weights 'IMAGENET1K_V9' for resnext50_32x4d "
            "(choose from: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2)",
        ),
        (
            ["-m", "101-64", "-w", "IMAGENET1K_V2"],
            "unknown weights 'IMAGENET1K_V2' for resnext101_64x4d "
            "(choose from: DEFAULT, IMAGENET1K_V1)",
        ),
        (["-k", "0"], "--topk must be at least 1, not 0"),
        (["-b", "0"], "--batch-size must be at least 1, not 0"),
        (["--workers", "-1"], "--workers must be 0 or more, not -1"),
        (["--timeout", "0"], "--timeout must be a positive number of seconds, not 0"),
        (["--timeout", "nan"], "--timeout must be a positive number of seconds, not nan"),
        (["--timeout", "inf"], "--timeout must be a positive number of seconds, not inf"),
        (["--max-pixels", "0"], "--max-pixels must be at least 1, not 0"),
    ],
)
def test_bad_values_before_the_model_loads(
    resnext: Callable[..., Any],
    reads: list[str],
    image: Path,
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    # No checkpoint and no cached weights: these fail before anything is fetched.
    line = refused(resnext, reads, image, tmp_path / "out.jsonl", *args)
    assert line == f"error: {message}"


def test_topk_above_the_class_count(
    resnext: Callable[..., Any], reads: list[str], image: Path, tmp_path: Path, checkpoint: Path
) -> None:
    line = refused(
        resnext, reads, image, tmp_path / "out.jsonl", "--checkpoint", checkpoint, "-k", "1001"
    )
    assert line == "error: --topk 1001 is more than the 1000 classes (lower --topk)"


@pytest.fixture
def bad_checkpoints(tmp_path: Path) -> dict[str, Path]:
    files = {
        "text": tmp_path / "notes.pth",
        "list": tmp_path / "list.pth",
        "no_tensors": tmp_path / "hparams.pth",
    }
    files["text"].write_text("not a checkpoint at all\n")
    torch.save([torch.zeros(2)], files["list"])
    torch.save({"lr": 0.1, "epochs": 90}, files["no_tensors"])
    return files


def test_checkpoint_that_is_not_a_state_dict(
    resnext: Callable[..., Any],
    reads: list[str],
    image: Path,
    tmp_path: Path,
    bad_checkpoints: dict[str, Path],
) -> None:
    out = tmp_path / "out.jsonl"
    text, listed, hparams = bad_checkpoints.values()
    line = refused(resnext, reads, image, out, "--checkpoint", text)
    assert line.startswith(f"error: cannot load checkpoint '{text}': ")
    assert line.endswith(" (give a state dict saved with torch.save)")
    assert refused(resnext, reads, image, out, "--checkpoint", listed) == (
        f"error: checkpoint '{listed}' is not a state dict (expected a mapping of parameter "
        "names to tensors, or one under 'state_dict' or 'model')"
    )
    assert refused(resnext, reads, image, out, "--checkpoint", hparams) == (
        f"error: checkpoint '{hparams}' holds no tensors (give a model state dict)"
    )
    missing = tmp_path / "nope.pth"
    assert refused(resnext, reads, image, out, "--checkpoint", missing) == (
        f"error: checkpoint '{missing}' does not exist (give a file)"
    )


def test_checkpoint_of_another_architecture(
    resnext: Callable[..., Any], reads: list[str], image: Path, tmp_path: Path, checkpoint: Path
) -> None:
    line = refused(
        resnext, reads, image, tmp_path / "out.jsonl", "-m", "101", "--checkpoint", checkpoint
    )
    assert line.startswith(f"error: checkpoint '{checkpoint}' does not fit resnext101_32x8d: ")
    assert "missing keys (first: " in line
    assert line.endswith(" (check --model matches the checkpoint)")


def test_checkpoint_and_labels_disagree(
    resnext: Callable[..., Any], reads: list[str], image: Path, tmp_path: Path, checkpoint: Path
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    line = refused(
        resnext,
        reads,
        image,
        tmp_path / "out.jsonl",
        "--checkpoint",
        checkpoint,
        "--labels",
        labels,
    )
    assert line == (
        f"error: checkpoint '{checkpoint}' has 1000 classes but labels file '{labels}' has 3 "
        "(give --labels FILE with 1000 lines)"
    )


def test_an_existing_output_file_is_not_overwritten(
    resnext: Callable[..., Any], reads: list[str], image: Path, tmp_path: Path, checkpoint: Path
) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text('{"input": "kept"}\n')
    run = resnext("classify", image, "--checkpoint", checkpoint, "-o", out)
    assert run.code == 2
    assert run.stderr.splitlines() == [
        f"error: output file '{out}' exists (use --force to overwrite it, "
        "or --resume to continue it)"
    ]
    assert reads == []
    assert out.read_text() == '{"input": "kept"}\n'
    forced = resnext("classify", image, "--checkpoint", checkpoint, "-o", out, "--force")
    assert forced.code == 0, forced
    assert reads == [str(image)]
    assert '"kept"' not in out.read_text()


def test_resume_needs_a_jsonl_file(
    resnext: Callable[..., Any], reads: list[str], image: Path, tmp_path: Path
) -> None:
    run = resnext("classify", image, "--resume")
    assert (run.code, run.stderr.splitlines()) == (
        2,
        ["error: --resume needs -o FILE (the file to continue)"],
    )
    csv = tmp_path / "out.csv"
    assert refused(resnext, reads, image, csv, "--resume") == (
        "error: --resume works with jsonl output, not csv (use -f jsonl)"
    )
    assert reads == []


# -- the option builders themselves, applied at test time to commands made here (the
# package applies them once at import, where a mutation run cannot see them) --


def _command(*decorators: Callable[..., Any]) -> tuple[click.Command, list[dict[str, Any]]]:
    """A click command with *decorators* applied, recording the keywords it is called with."""
    seen: list[dict[str, Any]] = []

    def body(**kwargs: Any) -> None:
        kwargs.pop("console", None)
        seen.append(kwargs)

    f: Callable[..., Any] = body
    for decorate in reversed(decorators):
        f = decorate(f)
    return click.command()(f), seen


def test_debug_is_a_flag_with_its_help_that_the_command_never_sees() -> None:
    from resnext_cli.cli.options import debug_option

    command, seen = _command(debug_option)
    (param,) = command.params
    assert (param.opts, param.is_flag, param.help, param.expose_value) == (  # type: ignore[attr-defined]
        ["--debug"], True, "Show tracebacks on errors.", False,
    )  # fmt: skip
    result = CliRunner().invoke(command, ["--debug"])
    assert (result.exit_code, seen) == (0, [{}])
    assert "--debug  Show tracebacks on errors." in CliRunner().invoke(command, ["--help"]).output


def test_learn_takes_classifys_model_and_decoding_options_only() -> None:
    from resnext_cli.cli.options import learn_options

    command, _ = _command(learn_options)
    names = [p.name for p in command.params]
    assert names == [
        "model", "weights", "checkpoint", "batch_size", "device", "precision", "exact",
        "decode", "workers", "max_pixels", "allow_truncated", "offline", "quiet", "debug",
    ]  # fmt: skip


def test_an_option_decorators_name_and_none_for_a_decorator_that_declares_none() -> None:
    from resnext_cli.cli.options import _name

    assert _name(click.option("-x", "--max-things", type=int)) == "max_things"
    assert _name(click.option("--b", "--a-b", "c")) == "c"
    assert _name(lambda f: f) is None


def test_given_options_are_those_typed_not_defaults_environment_or_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from resnext_cli.cli.options import given_options

    got: list[list[str]] = []

    @click.command()
    @click.argument("inputs", nargs=-1)
    @click.option("-a", "--alpha", default=1)
    @click.option("-b", "--beta", default=2)
    @click.option("--gamma", envvar="RESNEXT_TEST_GAMMA")
    @click.option("--flag", is_flag=True)
    def command(**_: Any) -> None:
        got.append(given_options())

    monkeypatch.setenv("RESNEXT_TEST_GAMMA", "from the environment")
    assert CliRunner().invoke(command, ["x.png", "-b", "3", "--flag"]).exit_code == 0
    assert CliRunner().invoke(command, ["y.png"]).exit_code == 0
    assert got == [["--beta", "--flag"], []]
