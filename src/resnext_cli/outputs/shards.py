"""Parquet shards in a folder (`-f parquet -o DIR/`): written as records complete, resumable.

Each shard is output.ParquetWriter's table in a file of its own, part-00000.parquet,
part-00001.parquet, ... of up to SHARD_RECORDS records. A shard is written under a
'.partial' name and renamed when it is complete, so the folder never shows half a shard:
a run that is killed loses only the shard it was writing, and --resume redoes those
inputs. Shards suit a run over millions of images, on either engine.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from resnext_cli.errors import OutputError
from resnext_cli.outputs.writers import ParquetWriter, require_pyarrow
from resnext_cli.results import Record

SHARD_RECORDS = 10_000
_SHARD = re.compile(r"^part-(\d{5,})\.parquet$")
_PARTIAL = ".partial"


def is_folder_output(output: str | None) -> bool:
    """Whether -o names a folder of shards: it ends with '/' or is an existing folder."""
    if output is None or output == "-":
        return False
    return output.endswith(("/", os.sep)) or Path(output).is_dir()


def shards(folder: Path) -> list[Path]:
    """The complete shards in *folder*, in order."""
    found = [p for p in folder.iterdir() if _SHARD.match(p.name)]
    return sorted(found, key=lambda p: int(p.name[5:].split(".")[0]))


def _partials(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(f".parquet{_PARTIAL}")]


def recorded_inputs(folder: Path) -> set[str]:
    """Read the inputs the complete shards of *folder* hold."""
    pq = require_pyarrow()
    done: set[str] = set()
    for shard in shards(folder):
        try:
            done.update(pq.read_table(shard, columns=["input"]).column("input").to_pylist())
        except (OSError, ValueError, KeyError) as exc:
            raise OutputError(
                f"shard '{shard}' is not a result table ({exc.__class__.__name__}); "
                "move it away to --resume"
            ) from None
    return done


def check_folder(folder: Path, *, force: bool, resume: bool) -> set[str]:
    """Refuse to mix runs before any work; with --resume, return the inputs already done."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"'{folder}' is a file (give a folder for parquet shards, -o DIR/)")
    if not folder.exists():
        return set()
    if resume:
        for partial in _partials(folder):  # cut off by a crash: redo its inputs
            partial.unlink()
        return recorded_inputs(folder)
    existing = shards(folder)
    if existing and not force:
        raise OutputError(
            f"folder '{folder}' has {len(existing)} shards (use --force to replace them, "
            "or --resume to continue)"
        )
    for path in [*existing, *_partials(folder)]:
        path.unlink()
    return set()


class ShardWriter:
    """Write records into part-NNNNN.parquet files of up to *records* records each."""

    def __init__(
        self,
        folder: Path,
        *,
        records: int | None = None,
        topk: int = 5,
        long: bool = False,
        uncertain: bool = False,
        embeddings: bool = False,
    ) -> None:
        require_pyarrow()
        folder.mkdir(parents=True, exist_ok=True)
        self._folder = folder
        self._records = records or SHARD_RECORDS
        self._topk, self._long, self._uncertain = topk, long, uncertain
        self._embeddings = embeddings
        taken = [int(p.name[5:].split(".")[0]) for p in shards(folder)]
        self._next = max(taken, default=-1) + 1
        self._current: ParquetWriter | None = None
        self._count = 0

    def _name(self) -> str:
        return f"part-{self._next:05d}.parquet"

    def write(self, record: Record) -> None:
        if self._current is None:
            partial = self._folder / (self._name() + _PARTIAL)
            self._current = ParquetWriter(
                partial,
                topk=self._topk,
                long=self._long,
                uncertain=self._uncertain,
                embeddings=self._embeddings,
            )
        self._current.write(record)
        self._count += 1
        if self._count >= self._records:
            self._finish()

    def _finish(self) -> None:
        assert self._current is not None
        self._current.close()
        partial = self._folder / (self._name() + _PARTIAL)
        os.replace(partial, self._folder / self._name())
        self._current, self._count = None, 0
        self._next += 1

    def close(self) -> None:
        if self._current is not None:
            self._finish()
