"""Parquet shards in a folder (`-f parquet -o DIR/`): written as records complete, resumable.

Each shard is output.ParquetWriter's table in a file of its own, part-00000.parquet,
part-00001.parquet, ... of up to SHARD_RECORDS records. A shard is written under this
tool's own temporary name (``.resnext-tmp-part-00000.parquet-XXXXXXXX``, created
exclusively, never through a link) and linked to its final name when it is complete, so
the folder never shows half a shard and no shard replaces a file: a run that is killed
loses only the shard it was writing, and --resume redoes those inputs (and removes those
temporary files, and nothing else). The folder is locked for the run (sinks claims it
through files.OutputTarget), so two runs never write shards into one folder. Shards suit
a run over millions of images, on either engine.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from pathlib import Path
from typing import BinaryIO

from resnext_cli.errors import OutputError
from resnext_cli.files import CLOEXEC, NOFOLLOW, TEMP_PREFIX
from resnext_cli.outputs.writers import ParquetWriter, require_pyarrow
from resnext_cli.results import Record

SHARD_RECORDS = 10_000
_SHARD = re.compile(r"^part-(\d{5,})\.parquet$")
_TEMP = re.compile(rf"^{re.escape(TEMP_PREFIX)}part-\d{{5,}}\.parquet-[0-9a-f]{{8}}$")


def is_folder_output(output: str | None) -> bool:
    """Whether -o names a folder of shards: it ends with '/' or is an existing folder."""
    if output is None or output == "-":
        return False
    return output.endswith(("/", os.sep)) or Path(output).is_dir()


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def shards(folder: Path) -> list[Path]:
    """The complete shards in *folder*, in order (regular files only, never links)."""
    found = [p for p in folder.iterdir() if _SHARD.match(p.name) and _regular(p)]
    return sorted(found, key=lambda p: int(p.name[5:].split(".")[0]))


def _temporaries(folder: Path) -> list[Path]:
    """This tool's own unfinished shards: its temporary names, nothing else."""
    return [p for p in folder.iterdir() if _TEMP.match(p.name) and _regular(p)]


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
    """Refuse to mix runs before any work; with --resume, return the inputs already done.

    Called with the folder locked: the temporary shards found are no other run's.
    """
    if os.path.lexists(folder) and not folder.is_dir():
        raise OutputError(f"'{folder}' is a file (give a folder for parquet shards, -o DIR/)")
    if not folder.exists():
        return set()
    if resume:
        for temp in _temporaries(folder):  # cut off by a crash: redo its inputs
            temp.unlink()
        return recorded_inputs(folder)
    existing = shards(folder)
    if existing and not force:
        raise OutputError(
            f"folder '{folder}' has {len(existing)} shards (use --force to replace them, "
            "or --resume to continue)"
        )
    return set()  # with --force, ShardWriter removes the old shards at its first record


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
        replace: bool = False,
    ) -> None:
        require_pyarrow()
        folder.mkdir(parents=True, exist_ok=True)
        self._folder = folder
        self._records = records or SHARD_RECORDS
        self._topk, self._long, self._uncertain = topk, long, uncertain
        self._embeddings = embeddings
        # --force: the old shards go when the first new record exists, not before.
        self._replace = replace
        taken = [] if replace else [int(p.name[5:].split(".")[0]) for p in shards(folder)]
        self._next = max(taken, default=-1) + 1
        self._current: ParquetWriter | None = None
        self._temp: tuple[Path, BinaryIO] | None = None
        self._count = 0

    def _name(self) -> str:
        return f"part-{self._next:05d}.parquet"

    def _open_temp(self) -> tuple[Path, BinaryIO]:
        while True:
            temp = self._folder / f"{TEMP_PREFIX}{self._name()}-{secrets.token_hex(4)}"
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, 0o666)
            except FileExistsError:
                continue
            return temp, os.fdopen(fd, "wb")

    def write(self, record: Record) -> None:
        if self._replace:
            for path in [*shards(self._folder), *_temporaries(self._folder)]:
                path.unlink()
            self._replace = False
        if self._current is None:
            self._temp = self._open_temp()
            self._current = ParquetWriter(
                self._temp[1],
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
        assert self._current is not None and self._temp is not None
        temp, fh = self._temp
        try:
            self._current.close()
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            while True:  # never replace: a name taken meanwhile moves the shard on
                try:
                    os.link(temp, self._folder / self._name())
                    break
                except FileExistsError:
                    self._next += 1
        finally:
            fh.close()
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        self._current, self._temp, self._count = None, None, 0
        self._next += 1

    def close(self) -> None:
        if self._current is not None:
            self._finish()
