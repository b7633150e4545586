"""Parquet shards in a folder: `-f parquet -o DIR/`, written as records complete, resumable."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from resnext_cli.outputs import shards
from resnext_cli.results import Classified, Prediction
from tests.conftest import run_resnext

pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

PREDICTIONS = (
    Prediction("tabby", 281, 0.5),
    Prediction("lynx", 287, 0.25),
    Prediction("tiger cat", 282, 0.125),
    Prediction("Egyptian cat", 285, 0.0625),
)


def classified(n: int, **more: Any) -> Classified:
    """A record made by hand: img{n}.jpg with the four PREDICTIONS."""
    return Classified(f"img{n}.jpg", "m", "w", PREDICTIONS, path=f"/photos/img{n}.jpg", **more)


def write(folder: Path, count: int, **options: Any) -> None:
    writer = shards.ShardWriter(folder, **options)
    for n in range(count):
        writer.write(classified(n))
    writer.close()


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


def test_dash_is_stdout_even_beside_a_folder_named_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-").mkdir()
    assert not shards.is_folder_output("-")
    assert shards.is_folder_output("./-")  # the folder, named so that it is not "-"


def test_shards_are_listed_in_numeric_order_regular_files_only(tmp_path: Path) -> None:
    for number in (100000, 7, 99999, 10000):  # names sort otherwise as text: 100000 first
        (tmp_path / f"part-{number:05d}.parquet").write_bytes(b"")
    (tmp_path / "part-00008.parquet").symlink_to(tmp_path / "part-00007.parquet")
    (tmp_path / "part-00009.parquet").mkdir()
    assert [p.name for p in shards.shards(tmp_path)] == [
        "part-00007.parquet",
        "part-10000.parquet",
        "part-99999.parquet",
        "part-100000.parquet",
    ]


def test_a_shard_removed_while_the_folder_is_listed_is_not_a_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("part-00000.parquet", "part-00001.parquet"):
        (tmp_path / name).write_bytes(b"")
    listed = Path.iterdir

    def listed_then_removed(self: Path) -> Any:
        names = list(listed(self))
        (self / "part-00001.parquet").unlink()  # gone between the listing and its check
        return iter(names)

    monkeypatch.setattr(Path, "iterdir", listed_then_removed)
    assert shards.shards(tmp_path) == [tmp_path / "part-00000.parquet"]


def test_a_damaged_shard_stops_a_resume_with_its_name(tmp_path: Path) -> None:
    bad = tmp_path / "part-00000.parquet"
    bad.write_bytes(b"PAR1 not a table PAR1")
    with pytest.raises(pa.ArrowInvalid):  # what pyarrow itself says of such a file
        pq.read_table(bad)
    with pytest.raises(shards.OutputError) as caught:
        shards.check_folder(tmp_path, force=False, resume=True)
    assert str(caught.value) == (
        f"shard '{bad}' is not a result table (ArrowInvalid); move it away to --resume"
    )


def test_a_writer_numbers_its_shards_consecutively_from_zero(tmp_path: Path) -> None:
    write(tmp_path / "out", 5, records=2)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert [r["input"] for r in rows(tmp_path / "out")] == [f"img{n}.jpg" for n in range(5)]


def test_a_resumed_writer_goes_on_after_the_last_shard_and_replaces_nothing(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("part-00000.parquet", "part-00005.parquet"):  # 1 to 4 were moved away
        (out / name).write_bytes(b"an earlier run's")
    writer = shards.ShardWriter(out, records=1)
    (out / "part-00006.parquet").write_bytes(b"taken meanwhile")  # after the writer looked
    for n in range(3):
        writer.write(classified(n))
    writer.close()
    assert sorted(p.name for p in out.iterdir()) == [
        f"part-0000{i}.parquet" for i in (0, 5, 6, 7, 8, 9)
    ]
    assert (out / "part-00006.parquet").read_bytes() == b"taken meanwhile"
    assert [pq.read_table(out / f"part-0000{i}.parquet").column("input").to_pylist()
            for i in (7, 8, 9)] == [["img0.jpg"], ["img1.jpg"], ["img2.jpg"]]  # fmt: skip


def test_an_unfinished_shard_has_a_temporary_name_resume_removes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    writer = shards.ShardWriter(out, records=2)
    writer.write(classified(0))
    [temp] = list(out.iterdir())
    # The module's promise: .resnext-tmp-part-00000.parquet-XXXXXXXX, 8 hex digits.
    assert re.fullmatch(r"\.resnext-tmp-part-00000\.parquet-[0-9a-f]{8}", temp.name), temp
    crashed = tmp_path / "crashed"  # as a killed run leaves it
    crashed.mkdir()
    shutil.copyfile(temp, crashed / temp.name)
    assert shards.check_folder(crashed, force=False, resume=True) == set()
    assert list(crashed.iterdir()) == []
    writer.close()
    assert [p.name for p in out.iterdir()] == ["part-00000.parquet"]


def test_a_shard_gets_the_permissions_the_umask_leaves(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write(tmp_path / "out", 1)
    finally:
        os.umask(old)
    mode = (tmp_path / "out" / "part-00000.parquet").stat().st_mode
    assert stat.S_IMODE(mode) == 0o644  # 0o666 less the umask, like any file written


@pytest.mark.parametrize("planted", ["link", "file"])
def test_a_name_planted_at_the_temporary_name_is_never_written_into(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    tokens = iter(["0badf00d", "feedface"])
    monkeypatch.setattr(shards.secrets, "token_hex", lambda nbytes=None: next(tokens))
    trap = out / ".resnext-tmp-part-00000.parquet-0badf00d"  # the first name it will draw
    if planted == "link":
        trap.symlink_to(victim)
    else:
        trap.write_bytes(b"keep me")
    write(out, 1)
    assert victim.read_bytes() == b"keep me"
    assert trap.is_symlink() if planted == "link" else trap.read_bytes() == b"keep me"
    assert [r["input"] for r in rows(out)] == ["img0.jpg"]  # written under the next name


def test_a_writer_writes_the_table_it_was_asked_for(tmp_path: Path) -> None:
    wide = tmp_path / "wide"
    writer = shards.ShardWriter(wide, topk=3, uncertain=True, embeddings=True)
    writer.write(classified(0, uncertain=True, embedding=(0.5, -1.25, 2.0)))
    writer.close()
    [row] = rows(wide)
    assert set(row) == {
        "input", "path", "label_1", "probability_1", "label_2", "probability_2",
        "label_3", "probability_3", "uncertain", "error_type", "error", "embedding",
    }  # fmt: skip
    assert (row["input"], row["path"]) == ("img0.jpg", "/photos/img0.jpg")
    assert (row["label_3"], row["probability_3"]) == ("tiger cat", 0.125)
    assert row["uncertain"] is True
    assert row["embedding"] == [0.5, -1.25, 2.0]

    write(tmp_path / "long", 1, long=True)
    table = rows(tmp_path / "long")  # one row per prediction, ranked from 1
    assert [(r["rank"], r["index"], r["label"], r["probability"]) for r in table] == [
        (1, 281, "tabby", 0.5),
        (2, 287, "lynx", 0.25),
        (3, 282, "tiger cat", 0.125),
        (4, 285, "Egyptian cat", 0.0625),
    ]
    assert "uncertain" not in table[0] and "embedding" not in table[0]
