"""What the arguments alone decide, checked before torch is imported or a model loads.

Each check raises the typed error the later stage would raise, with the same words, so a
mistake is said once and at once: a missing checkpoint, a top-k past the labels, an
output that exists, calibration photos that are not there.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from resnext_cli.errors import CheckpointError, ConfigError, OutputError
from resnext_cli.inputs.sources import iter_sources
from resnext_cli.model.categories import Categories
from resnext_cli.model.labels import load_labels
from resnext_cli.outputs.writers import known_suffix
from resnext_cli.run.config import Config
from resnext_cli.run.plan import refuse_pairs, weights_for

NO_PHOTO = "no photo to calibrate with (give --calibrate with a folder of your photos)"
FORMAT_NAMES = "jsonl, json, csv, parquet or table"


def check_model_options(config: Config) -> None:
    """The labels, categories and checkpoint the config names, and -k against the labels."""
    refuse_pairs(config)
    weights_for(config)  # unknown weights, or no INT8 weights of the model
    labels = load_labels(config.labels)
    # With both --labels and --checkpoint, whether they agree is known once the checkpoint
    # is read: that check comes first there, then this one.
    decisive = config.labels is None or config.checkpoint is None
    if decisive and config.topk > len(labels):
        raise ConfigError(
            f"--topk {config.topk} is more than the {len(labels)} classes (lower --topk)"
        )
    if config.categories is not None:
        Categories.for_labels(config.categories, labels)
    check_checkpoint(config.checkpoint)


def check_checkpoint(name: str | None) -> None:
    """A local checkpoint must be a file (a URL is fetched later)."""
    if name is None or name.startswith(("http://", "https://")):
        return
    if not Path(name).is_file():
        raise CheckpointError(f"checkpoint '{name}' does not exist (give a file)")


def check_classify_outputs(
    *,
    output: str | None,
    fmt: str,
    force: bool,
    resume: bool,
    long: bool,
    report: str | None,
    stdout_is_terminal: bool,
) -> None:
    """The output options of classify, each pair that cannot work together refused."""
    to_file = output not in (None, "-")
    if force and resume:
        raise ConfigError(
            "give --force (write the -o file anew) or --resume (continue it), not both"
        )
    if force and not to_file and report is None:
        raise ConfigError("--force overwrites the -o or --report file: give one of them")
    if fmt == "auto" and to_file and not resume:
        assert output is not None
        target = Path(output)
        if known_suffix(output) is None and not (target.is_dir() or _is_stream(target)):
            raise ConfigError(
                f"cannot tell the format of '{output}' from its name (give -f "
                f"{FORMAT_NAMES}, or name it .jsonl, .json, .csv or .parquet)"
            )
    if long:
        chosen = fmt
        if fmt == "auto":
            chosen = (known_suffix(output) or "jsonl") if to_file else "table"
            if not to_file and not stdout_is_terminal:
                chosen = "jsonl"
        if chosen not in ("csv", "parquet"):
            raise ConfigError(
                f"--long shapes csv and parquet rows, not {chosen} (give -f csv or -f parquet)"
            )
    report_path = Path(report) if report is not None else None
    if (
        report_path
        and not (force or resume)
        and report_path.exists()
        and not report_path.is_dir()
        and not (to_file and os.path.realpath(report_path) == os.path.realpath(str(output)))
    ):
        # After an interrupted run, --resume keeps what was done; --force starts again.
        hint = ", or --resume to continue the run" if to_file else ""
        raise OutputError(f"report file '{report}' exists (use --force to overwrite it{hint})")


def _is_stream(path: Path) -> bool:
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def check_quantize(*, output: str, force: bool, photos: Iterable[str]) -> None:
    """The -o file and the calibration photos of quantize."""
    out = Path(output)
    if out.exists() and not force:
        raise OutputError(f"output file '{out}' exists (use --force to overwrite it)")
    if not out.parent.is_dir():
        raise OutputError(f"cannot write '{out}': folder '{out.parent}' does not exist")
    # The walk stops at the first photo that is there: a folder of thousands costs nothing.
    if not any(source.error is None for source in iter_sources(photos)):
        raise ConfigError(NO_PHOTO)


def check_engine(engine: str, *, ray_address: str | None, **options: object) -> None:
    """Options that mean something to one engine only."""
    if engine != "ray":
        if ray_address is not None:
            raise ConfigError("--ray-address is for --engine ray (add --engine ray, or drop it)")
        return
    if options.get("workers") is not None:
        raise ConfigError("--engine ray decodes in Ray tasks, not threads; drop --workers")
    if options.get("decode") == "gpu":
        raise ConfigError("--engine ray decodes in CPU tasks; drop --decode gpu")
    device = options.get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(
            f"--engine ray places models itself: use --device auto, cpu or cuda, not '{device}'"
        )


# What sort does with each kind of run: --from files by records (no model), --resume and
# --undo read DEST's journal (no model, no SRC, no filing options).
_NO_MODEL = (
    "--model",
    "--weights",
    "--checkpoint",
    "--labels",
    "--topk",
    "--batch-size",
    "--device",
    "--precision",
    "--exact",
    "--quantized",
    "--decode",
    "--categories",
    "--workers",
    "--timeout",
    "--max-pixels",
    "--allow-truncated",
    "--offline",
)
_JOURNAL_ONLY = ("--dry-run", "--quiet", "--debug", "--resume", "--undo")


def check_sort(given: Iterable[str], *, records: str | None, resume: bool, undo: bool) -> None:
    """Refuse sort's options that the chosen kind of run would ignore (*given*: the long
    names of the options on the command line)."""
    given = list(given)
    if resume or undo:
        flag = "--undo" if undo else "--resume"
        extra = [name for name in given if name not in _JOURNAL_ONLY]
        if extra:
            raise ConfigError(
                f"{flag} follows DEST's journal and takes only DEST; drop {', '.join(extra)}"
            )
        return
    if records is not None:
        extra = [name for name in given if name in _NO_MODEL]
        if extra:
            raise ConfigError(
                f"--from files by the records' labels without a model; drop {', '.join(extra)}"
            )
