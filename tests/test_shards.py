"""Parquet shards in a folder: `-f parquet -o DIR/`, written as records complete, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from resnext_cli.outputs import shards

from .conftest import run_resnext

pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def five(make_image: Any, tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i in range(5):
        make_image(f"img{i}.jpg", seed=20 + i, size=(96, 72), folder=root)
    return root


@pytest.fixture(autouse=True)
def small_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards, "SHARD_RECORDS", 2)


def rows(folder: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for shard in shards.shards(folder):
        out += pq.read_table(shard).to_pylist()
    return out


def test_shards_hold_every_record_in_input_order(
    checkpoint: Path, five: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run = run_resnext(
        "classify", five, "--checkpoint", checkpoint, "-f", "parquet", "-o", f"{out}/"
    )
    assert run.code == 0, run
    assert run.stdout == ""
    names = sorted(p.name for p in out.iterdir())
    assert names == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.read_metadata(out / n).num_rows for n in names] == [2, 2, 1]
    jsonl = run_resnext("classify", five, "--checkpoint", checkpoint, "-f", "jsonl").records()
    table = rows(out)
    assert [r["input"] for r in table] == [r["input"] for r in jsonl]
    for row, record in zip(table, jsonl, strict=True):
        assert row["label_1"] == record["predictions"][0]["label"]
        assert row["probability_1"] == record["predictions"][0]["probability"]


def test_existing_shards_need_force_or_resume(checkpoint: Path, five: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["classify", five, "--checkpoint", checkpoint, "-f", "parquet", "-o", out]
    out.mkdir()  # an existing folder takes shards without a trailing slash
    assert run_resnext(*args).code == 0
    again = run_resnext(*args)
    assert again.code == 2, again
    assert again.stderr == (
        f"error: folder '{out}' has 3 shards (use --force to replace them, or --resume to "
        "continue)\n"
    )
    forced = run_resnext(*args, "--force")
    assert forced.code == 0, forced
    assert len(rows(out)) == 5


def test_resume_redoes_only_the_inputs_not_in_a_complete_shard(
    checkpoint: Path, five: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["classify", five, "--checkpoint", checkpoint, "-f", "parquet", "-o", f"{out}/"]
    assert run_resnext(*args).code == 0
    # As a killed run leaves it: the last shard never completed, a partial one remains.
    lost = {r["input"] for r in pq.read_table(out / "part-00002.parquet").to_pylist()}
    (out / "part-00002.parquet").unlink()
    (out / ".resnext-tmp-part-00003.parquet-0badf00d").write_bytes(b"PAR1 cut off")
    (out / "notes.parquet.partial").write_bytes(b"someone else's")  # not this tool's name
    run = run_resnext(*args, "--resume")
    assert run.code == 0, run
    assert sorted(p.name for p in out.iterdir()) == [
        "notes.parquet.partial",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert (out / "notes.parquet.partial").read_bytes() == b"someone else's"
    redone = {r["input"] for r in pq.read_table(out / "part-00002.parquet").to_pylist()}
    assert redone == lost
    inputs = [r["input"] for r in rows(out)]
    assert sorted(inputs) == sorted(str(p) for p in five.iterdir())  # each exactly once
    done = run_resnext(*args, "--resume")
    assert done.code == 0 and "nothing left to do" in done.stderr


def test_a_file_is_not_a_shard_folder(tmp_path: Path) -> None:
    assert shards.is_folder_output(f"{tmp_path}/new/")
    assert shards.is_folder_output(str(tmp_path))
    assert not shards.is_folder_output(str(tmp_path / "out.parquet"))
    assert not shards.is_folder_output("-") and not shards.is_folder_output(None)
    (tmp_path / "x").write_text("")
    with pytest.raises(shards.OutputError, match="is a file"):
        shards.check_folder(tmp_path / "x", force=False, resume=True)
