"""sort/plan.py: the filing plan (names, clashes, skips, roots) and records read from a file."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from resnext_cli import sort as sorting
from resnext_cli.results import CategoryScore, Classified, Failed, FileFacts, Prediction, Record
from resnext_cli.sort import (
    SortError,
    execute,
    folder_for,
    make_plan,
)
from tests.helpers import LEADS_OUT, labelled, placed, plant, seen, threshold, tree

# -- plans ---------------------------------------------------------------------------------


def test_plan_names_clashes_and_skips(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    (dest / "CRANE").mkdir(parents=True)
    (dest / "CRANE" / "B.JPG").write_bytes(b"someone else's file")
    (dest / "tabby, tabby cat").write_bytes(b"a file where a folder would go")
    records = threshold(labelled(photos))
    records += [
        Classified("https://example.test/x.jpg", "m", "w", (Prediction("x", 1, 0.9),)),
        Failed(str(photos / "gone.jpg"), "not_found", "gone", path=str(photos / "gone.jpg")),
        seen(photos / "a.jpg", "again"),
        seen(dest / "CRANE" / "B.JPG", "crane"),
    ]
    plan = make_plan(records, dest)
    assert {s.target: s.source for s in plan.steps} == {
        "tabby, tabby cat (1)/a.jpg": (photos / "a.jpg").absolute(),
        "tabby, tabby cat (1)/a (1).jpg": (photos / "sub/a.jpg").absolute(),
        "CRANE/b (1).jpg": (photos / "b.jpg").absolute(),
        "CRANE/d.jpg": (photos / "sub/d.jpg").absolute(),
        "_uncertain/c.png": (photos / "c.png").absolute(),
        "_failed/broken.jpg": (photos / "broken.jpg").absolute(),
    }
    assert plan.skipped == [
        ("https://example.test/x.jpg", "not a file (a URL or standard input)"),
        (str(photos / "gone.jpg"), "no such file"),
        (str(photos / "a.jpg"), "given twice"),
        (str(dest / "CRANE" / "B.JPG"), "already inside the destination"),
    ]
    assert not (dest / "_failed").exists()  # planning touches nothing


def test_a_folder_name_taken_twice_by_files(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    dest.mkdir()
    for name in ("crane", "CRANE (1)"):
        (dest / name).write_bytes(b"a file where a folder would go")
    plan = make_plan([seen(photos / "b.jpg", "Crane")], dest)
    assert [s.target for s in plan.steps] == ["Crane (2)/b.jpg"]
    # and a file name taken twice in a folder
    other = tmp_path / "other"
    (other / "crane").mkdir(parents=True)
    (other / "crane" / "b.jpg").write_bytes(b"someone else's b.jpg")
    (other / "crane" / "B (1).JPG").write_bytes(b"and another")
    plan = make_plan([seen(photos / "b.jpg", "Crane")], other)
    assert [s.target for s in plan.steps] == ["crane/b (2).jpg"]


def test_make_plan_refuses_an_unknown_mode_or_key(photos: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        make_plan([], tmp_path, mode="teleport")
    assert str(caught.value) == "unknown mode 'teleport'"
    with pytest.raises(ValueError) as caught:
        make_plan([], tmp_path, by="colour")
    assert str(caught.value) == "unknown key 'colour'"


def test_a_skipped_record_does_not_end_the_plan(photos: Path, tmp_path: Path) -> None:
    dest, outside = tmp_path / "sorted", tmp_path / "outside"
    (dest / "x").mkdir(parents=True)
    (dest / "x" / "in.jpg").write_bytes(b"already in DEST")
    outside.mkdir()

    def records() -> Iterator[Record]:
        yield seen(dest / "x" / "in.jpg", "x")
        yield seen(photos / "a.jpg", "y")
        (dest / "Crane").symlink_to(outside)  # made in DEST while the plan is being made
        yield seen(photos / "b.jpg", "Crane")
        yield seen(photos / "c.png", "z")

    plan = make_plan(records(), dest)
    assert plan.skipped == [
        (str(dest / "x" / "in.jpg"), "already inside the destination"),
        (str(photos / "b.jpg"), "folder 'Crane' leads outside the destination"),
    ]
    assert [s.target for s in plan.steps] == ["y/a.jpg", "z/c.png"]


def test_a_file_renumbered_twice_is_found_again_through_the_journal(
    photos: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "sorted"
    plan = make_plan(threshold(labelled(photos)), dest)
    (dest / "tabby, tabby cat").mkdir(parents=True)
    (dest / "tabby, tabby cat" / "a (1).jpg").write_bytes(b"arrived meanwhile")
    execute(plan)  # sub/a.jpg, planned as 'a (1).jpg', went to 'a (1) (1).jpg'
    again = make_plan(threshold(labelled(photos)), dest)
    assert again.steps == []
    assert (str(photos / "sub/a.jpg"), "tabby, tabby cat/a (1) (1).jpg") in again.already


def test_by_index(photos: Path, tmp_path: Path) -> None:
    plan = make_plan(threshold(labelled(photos))[:5], tmp_path / "s", by="index")
    assert sorted(s.target for s in plan.steps) == [
        "1/a (1).jpg",
        "1/a.jpg",
        "1/b.jpg",
        "134/d.jpg",
        "_uncertain/c.png",
    ]


def test_files_named_one_by_one_belong_to_their_own_folder(outside_links, photos, tmp_path) -> None:
    outside, records = outside_links  # as if listed on standard input: no SRC folder named
    plan = make_plan(records, tmp_path / "sorted", mode="move")
    assert plan.skipped == [(str(photos / "link.jpg"), LEADS_OUT)]
    # A path named as it is, through a folder link, is taken from where it leads.
    assert {s.source: s.home for s in plan.steps}[outside / "dir" / "deep.jpg"] == outside / "dir"


def test_roots_for() -> None:
    specs = ["photos", "-", "https://x/y.jpg", str(Path("https://x/z.jpg")), "a/*/b.jpg"]
    specs += ["**/*.jpg", "c.jpg", "/abs/[ab]/x.png"]
    assert sorting.roots_for(specs) == [
        Path("photos"),
        Path("a"),
        Path("."),
        Path("c.jpg"),
        Path("/abs"),
    ]


def test_a_file_filed_under_a_clash_number_is_found_again(photos: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    plan = make_plan(threshold(labelled(photos)), dest)
    (dest / "Crane").mkdir(parents=True)
    (dest / "Crane" / "b.jpg").write_bytes(b"arrived meanwhile")
    execute(plan)  # b.jpg went to 'Crane/b (1).jpg'
    again = make_plan(threshold(labelled(photos)), dest)
    assert again.steps == [] and (str(photos / "b.jpg"), "Crane/b (1).jpg") in again.already


# -- records from an earlier classify --------------------------------------------------------


def facts(path: Path) -> FileFacts:
    st = path.stat()
    return FileFacts(st.st_size, st.st_mtime_ns)


def recorded(photos: Path) -> list[Record]:
    """Records as classify writes them now: with size, mtime_ns and categories."""
    records: list[Record] = []
    for record in labelled(photos):
        assert record.path is not None
        file = facts(Path(record.path))
        if isinstance(record, Classified):
            top = record.top1
            cats = (CategoryScore(f"group of {top.label}", min(1.0, top.probability + 0.05)),)
            record = replace(record, file=file, categories=cats, precision="fp32")
        else:
            record = replace(record, file=file)
        records.append(record)
    return [
        *records,
        Classified("https://example.test/x.jpg", "m", "w", (Prediction("x", 1, 0.9),)),
    ]


def write_records(records: list[Record], path: Path, form: str) -> None:
    dicts = [r.to_dict() for r in records]
    if form == "jsonl":
        text = "".join(json.dumps({**d, "future key": [1]}) + "\n" for d in dicts)
    elif form == "json":
        from resnext_cli.outputs.writers import JsonArrayWriter

        stream = io.StringIO()
        writer = JsonArrayWriter(stream)
        for record in records:
            writer.write(record)
        writer.close()
        text = stream.getvalue()
    else:  # as jq or a person would indent it
        text = json.dumps(dicts, indent=2)
    path.write_text(text)


@pytest.mark.parametrize("form", ["jsonl", "json", "indented"])
def test_records_read_back_are_the_records_written(photos, tmp_path, form) -> None:
    records = recorded(photos)
    path = tmp_path / "r.out"
    write_records(records, path, form)
    assert sorting.records_from_file(path) == (records, [])


def test_records_of_changed_or_missing_files_are_not_filed(photos, tmp_path) -> None:
    records = recorded(photos)
    write_records(records, tmp_path / "r.jsonl", "jsonl")
    (photos / "a.jpg").write_bytes(b"other bytes")  # size changed
    st = (photos / "b.jpg").stat()
    os.utime(photos / "b.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # only mtime
    (photos / "c.png").unlink()
    (photos / "sub" / "d.jpg").unlink()
    (photos / "sub" / "d.jpg").mkdir()
    kept, changed = sorting.records_from_file(tmp_path / "r.jsonl")
    again = "changed since it was classified (classify it again)"
    assert changed == [
        (str(photos / "a.jpg"), again),
        (str(photos / "b.jpg"), again),
        (str(photos / "c.png"), "no such file (moved or deleted since it was classified)"),
        (str(photos / "sub/d.jpg"), "not a regular file"),
    ]
    assert [r.input for r in kept] == [
        str(photos / "sub/a.jpg"),
        str(photos / "broken.jpg"),
        "https://example.test/x.jpg",
    ]
    # make_plan checks the same facts, for fresh records too
    (photos / "sub" / "a.jpg").write_bytes(b"changed after reading the records")
    plan = make_plan(kept, tmp_path / "sorted")
    assert plan.skipped == [
        (str(photos / "sub/a.jpg"), again),
        ("https://example.test/x.jpg", "not a file (a URL or standard input)"),
    ]
    assert [s.target for s in plan.steps] == ["_failed/broken.jpg"]


def test_records_from_a_file_are_sorted_as_fresh_ones(photos, tmp_path) -> None:
    write_records(recorded(photos), tmp_path / "r.json", "json")
    before = tree(photos)
    records, changed = sorting.records_from_file(tmp_path / "r.json")
    assert changed == []
    dest = tmp_path / "sorted"
    execute(make_plan(records, dest, mode="move", min_probability=0.5))
    assert tree(dest) == placed(photos, before) and tree(photos) == set()


ERR = '{"input": "a", "error": {"type": "t", "message": "m"}}'
PRED = (
    '"model": "m", "weights": "w", "predictions": [{"label": "x", "index": 1, "probability": 0.5}]'
)
BOM = b"\xef\xbb\xbf"

NOT_RECORDS = [
    ("input,path,label_1\nx,/x,cat\n", 1, "not JSON"),
    (b"\xff\xd8\xff\xe0 a jpeg", 1, "not JSON"),
    ('{"input": "a", "path": "/a", "predictions": []}\n', 1, "no 'predictions' and no 'error'"),
    (
        "\n\n" + '{"input": "a", "path": "rel/a.jpg", "error": {"type": "t", "message": "m"}}',
        3,
        "'path' is not an absolute path",
    ),
    ('{"input": "a", "error": {"type": "t"}}', 1, "'error' needs a 'type' and a 'message'"),
    (
        '{"input": "a", "model": "m", "weights": "w", "predictions": [{"label": "x", "index": "1",'
        ' "probability": 0.5}]}',
        1,
        "a prediction needs a 'label', an 'index' (0 or more) and a 'probability' (0 to 1)",
    ),
    (
        '{"input": "a", "model": "m", "weights": "w", "predictions": [{"label": "x", "index": 1,'
        ' "probability": 0.5}], "size": "12"}',
        1,
        "'size' is not a whole number",
    ),
    (
        '{"input": "a", "predictions": [{"label": "x", "index": 1, "probability": 0.5}]}',
        1,
        "no 'model'",
    ),
    ("[5]", 1, "not a JSON object"),
    (
        '[\n  {"input": "a", "error": {"type": "t", "message": "m"}},\n  {"input": 3}\n]',
        3,
        "no 'input'",
    ),
    (
        '[\n  {"input": "a", "error": {"type": "t", "message": "m"}}\n  {"input": "b"}',
        3,
        "expected ',' or ']'",
    ),
    (
        '[\n  {"input": "a", "error": {"type": "t", "message": "m"}},\n  {"input": "b"',
        3,
        "not JSON",
    ),
    (
        '[\n  {"input": "a", "error": {"type": "t", "message": "m"}}\n] trailing',
        3,
        "the JSON array does not end with ']'",
    ),
    (
        '{"input": "a", "error": {"type": "t", "message": "m"}}\n["a list"]\n',
        2,
        "not a JSON object",
    ),
    (
        '{"input": "a", "model": "m", "weights": "w", "predictions": [{"label": "x", "index": 1,'
        ' "probability": "0.5"}]}',
        1,
        "a prediction needs a 'label', an 'index' (0 or more) and a 'probability' (0 to 1)",
    ),
    (
        '{"input": "a", "model": "m", "weights": "w", "predictions": [{"label": "x", "index": 1,'
        ' "probability": true}]}',
        1,
        "a prediction needs a 'label', an 'index' (0 or more) and a 'probability' (0 to 1)",
    ),
    ('{"input": "a", ' + PRED + ', "mtime_ns": "12"}', 1, "'mtime_ns' is not a whole number"),
    ('{"input": "a", ' + PRED + ', "uncertain": "yes"}', 1, "'uncertain' is not true or false"),
    (
        '{"input": "a", ' + PRED + ', "categories": [{"name": "c", "probability": "0.5"}]}',
        1,
        "a category needs a 'name' and a 'probability' (0 to 1)",
    ),
    (
        '{"input": "a", ' + PRED + ', "categories": "c"}',
        1,
        "a category needs a 'name' and a 'probability' (0 to 1)",
    ),
    (
        '{"input": "a", ' + PRED + ', "categories": [5]}',
        1,
        "a category needs a 'name' and a 'probability' (0 to 1)",
    ),
    (ERR + "\n\ufeff" + ERR + "\n", 2, "not JSON"),  # a byte order mark only starts a file
    (b"\n[\n  " + ERR.encode() + b',\n  {"input": "\xff"}\n]\n', 4, "not UTF-8"),
    ("\n[\n  " + ERR + ",\n  5\n]", 4, "not a JSON object"),
    (json.dumps([json.loads(ERR), json.loads(ERR), 5], indent=2), 16, "not a JSON object"),
    ("[\n  ", 2, "the JSON array does not end with ']'"),
    ("[" + ERR, 1, "expected ',' or ']'"),
    ("[" + ERR + ",", 1, "the JSON array does not end with ']'"),
    ("[" + ERR + "]x", 1, "the JSON array does not end with ']'"),
]


@pytest.mark.parametrize(("text", "line", "why"), NOT_RECORDS)
def test_a_file_that_is_not_records_is_refused(tmp_path, text, line, why) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(SortError) as caught:
        sorting.records_from_file(path)
    assert str(caught.value) == (
        f"'{path}' line {line} is not a record of 'resnext classify' ({why}); give the "
        "JSON Lines or JSON file that 'resnext classify -o' wrote"
    )


def test_records_files_that_are_empty_missing_or_not_files(tmp_path) -> None:
    give = "(give the file 'resnext classify -o' wrote)"
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "empty.json").write_text("[]\n")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    cases = {
        "empty.jsonl": f"'{tmp_path / 'empty.jsonl'}' holds no records {give}",
        "empty.json": f"'{tmp_path / 'empty.json'}' holds no records {give}",
        "gone.jsonl": f"cannot read records file '{tmp_path / 'gone.jsonl'}' "
        f"(no such file or directory) {give}",
        "fifo": f"records file '{tmp_path / 'fifo'}' is not a regular file {give}",
        "folder": f"records file '{tmp_path / 'folder'}' is not a regular file {give}",
    }
    for name, message in cases.items():
        with pytest.raises(SortError) as caught:
            sorting.records_from_file(tmp_path / name)
        assert str(caught.value) == message


def test_records_files_in_every_layout_are_read(tmp_path: Path, monkeypatch) -> None:
    failed = Failed("a", "t", "m")
    one = json.dumps(failed.to_dict()).encode()
    layouts = {
        "bom.jsonl": BOM + one + b"\n" + one + b"\n",
        "bom.json": BOM + b"\n[\n  " + one + b",\n  " + one + b"\n]\n",
        "compact.json": b"[" + one + b"," + one + b"]",
        "spaced.json": b" " * 4095 + b"[" + one + b", " + one + b"]",
    }
    for name, data in layouts.items():
        (tmp_path / name).write_bytes(data)
        assert sorting.records_from_file(tmp_path / name) == ([failed, failed], []), name
    # A line of 16 MiB, its newline counted, is read; one byte more is refused.
    line = 16 << 20
    (tmp_path / "long.jsonl").write_bytes(b" " * (line - len(one) - 1) + one + b"\n")
    assert sorting.records_from_file(tmp_path / "long.jsonl") == ([failed], [])
    (tmp_path / "long.jsonl").write_bytes(b" " * (line - len(one)) + one + b"\n")
    with pytest.raises(SortError) as caught:
        sorting.records_from_file(tmp_path / "long.jsonl")
    assert str(caught.value) == (
        f"'{tmp_path / 'long.jsonl'}' line 1 is not a record of 'resnext classify' (the line "
        "is too long); give the JSON Lines or JSON file that 'resnext classify -o' wrote"
    )
    # A JSON array is read whole, so it has a size limit (256 MiB; 40 bytes here).
    import resnext_cli.records

    monkeypatch.setattr(resnext_cli.records, "MAX_ARRAY", 40)
    (tmp_path / "array.json").write_bytes(b"[" + json.dumps({"input": "x" * 25}).encode() + b"]")
    with pytest.raises(SortError, match=r"line 1 .*\(no 'predictions' and no 'error'\)"):
        sorting.records_from_file(tmp_path / "array.json")  # 40 bytes: read
    (tmp_path / "array.json").write_bytes(b"[" + json.dumps({"input": "x" * 26}).encode() + b"]")
    with pytest.raises(SortError) as caught:
        sorting.records_from_file(tmp_path / "array.json")
    assert str(caught.value) == (
        f"records file '{tmp_path / 'array.json'}' is too large to read as one JSON array "
        "(classify with -f jsonl)"
    )


def test_a_record_whose_path_cannot_be_looked_at(photos: Path, tmp_path: Path) -> None:
    inside_a_file = photos / "a.jpg" / "x.jpg"
    record = Failed(str(inside_a_file), "t", "m", path=str(inside_a_file))
    write_records([record], tmp_path / "r.jsonl", "jsonl")
    assert sorting.records_from_file(tmp_path / "r.jsonl") == (
        [],
        [(str(inside_a_file), "not a directory")],
    )


def test_by_category(photos: Path, tmp_path: Path) -> None:
    records = recorded(photos)
    plan = make_plan(records, tmp_path / "s", by="category")
    assert sorted(s.target for s in plan.steps) == [
        "_failed/broken.jpg",
        "group of Crane/b.jpg",
        "group of Crane/c.png",  # 'crane' joins 'Crane', as labels do
        "group of Crane/d.jpg",
        "group of tabby, tabby cat/a (1).jpg",
        "group of tabby, tabby cat/a.jpg",
    ]
    c = records[2]  # top-1 'crane' at 0.2, its category at 0.25
    assert folder_for(c, by="label", min_probability=0.24) == "_uncertain"
    assert folder_for(c, by="category", min_probability=0.24) == "group of crane"
    assert folder_for(c, by="category", min_probability=0.3) == "_uncertain"
    exactly = replace(c, categories=(CategoryScore("birds", 0.5),))
    assert folder_for(exactly, by="category", min_probability=0.5) == "birds"  # not below
    # A record's own top-1 mark does not make its category uncertain.
    assert folder_for(replace(c, uncertain=True), by="category") == "group of crane"
    assert folder_for(records[5], by="category") == "_failed"
    with pytest.raises(SortError) as caught:
        make_plan(labelled(photos), tmp_path / "s", by="category")
    assert str(caught.value) == (
        "--by category needs records with categories (classify with --categories)"
    )


def test_filing_many_files_of_one_name_is_linear(tmp_path: Path, monkeypatch) -> None:
    import resnext_cli.sort.plan as plan_module

    calls = 0
    real = plan_module.numbered

    def counted(name: str, number: int) -> str:
        nonlocal calls
        calls += 1
        return real(name, number)

    monkeypatch.setattr(plan_module, "numbered", counted)
    records = []
    for i in range(2000):
        folder = tmp_path / "src" / str(i)
        folder.mkdir(parents=True)
        (folder / "IMG_0001.jpg").write_bytes(str(i).encode())
        records.append(
            Classified(
                str(folder),
                "m",
                "w",
                (Prediction("cat", 1, 0.9),),
                path=str(folder / "IMG_0001.jpg"),
            )
        )
    plan = make_plan(records, tmp_path / "sorted", sources=[tmp_path / "src"])
    names = [s.target for s in plan.steps]
    assert names[:3] == ["cat/IMG_0001.jpg", "cat/IMG_0001 (1).jpg", "cat/IMG_0001 (2).jpg"]
    assert len(set(names)) == 2000
    assert calls < 3 * 2000  # one new name each (quadratic would be about 2,000,000)


def test_a_reviewed_record_with_a_problem_names_the_export(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    line = {"input": "a", "reviewed": "bogus", "model_label": "x"}
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(SortError) as caught:
        sorting.records_from_file(path)
    assert str(caught.value) == (
        f"'{path}' line 1 is not a reviewed record ('reviewed' is not one of accepted, "
        "corrected, skipped or null); give the file the report's 'export decisions' wrote"
    )


def _failing_on(monkeypatch, name: str, bad: Path) -> None:
    """Make os.<name> raise an OSError without strerror for *bad* only."""
    real = getattr(os, name)

    def fake(path, *args, **kwargs):
        if os.fspath(path) == str(bad):
            raise OSError("odd failure")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, name, fake)


def test_a_record_whose_file_cannot_be_looked_at_without_a_reason(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    record = Failed(str(photos / "a.jpg"), "t", "m", path=str(photos / "a.jpg"))
    write_records([record], tmp_path / "r.jsonl", "jsonl")
    _failing_on(monkeypatch, "stat", photos / "a.jpg")
    assert sorting.records_from_file(tmp_path / "r.jsonl") == (
        [],
        [(str(photos / "a.jpg"), "odd failure")],
    )


def test_a_strict_plan_says_why_each_file_is_not_the_one_classified(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    records = [
        replace(seen(photos / name, "x"), file=facts(photos / name))
        for name in ["a.jpg", "b.jpg", "c.png", "sub/a.jpg", "sub/d.jpg"]
    ]
    inside_a_file = photos / "broken.jpg" / "x.jpg"
    records.append(replace(seen(inside_a_file, "x"), file=FileFacts(1, 1)))
    (photos / "a.jpg").unlink()
    (photos / "b.jpg").unlink()
    (photos / "b.jpg").symlink_to(photos / "broken.jpg")
    (photos / "c.png").unlink()
    (photos / "c.png").mkdir()
    (photos / "sub/a.jpg").write_bytes(b"other bytes")
    _failing_on(monkeypatch, "lstat", photos / "sub/d.jpg")
    plan = make_plan(records, tmp_path / "sorted", strict=True, sources=[photos])
    assert plan.skipped == [
        (str(photos / "a.jpg"), "no such file (moved or deleted since it was classified)"),
        (str(photos / "b.jpg"), "a symbolic link now, not the file that was classified"),
        (str(photos / "c.png"), "not a regular file"),
        (str(photos / "sub/a.jpg"), "changed since it was classified (classify it again)"),
        (str(photos / "sub/d.jpg"), "odd failure"),
        (str(inside_a_file), "not a directory"),
    ]
    assert plan.steps == []


def test_a_file_under_no_named_root_belongs_to_its_own_folder(photos: Path) -> None:
    from resnext_cli.sort.plan import _Roots

    roots = _Roots([photos / "sub"])
    assert roots.home(photos / "sub" / "d.jpg", move=False) == (photos / "sub").resolve()
    assert roots.home(photos / "a.jpg", move=False) == photos.resolve()  # own_folder by default
    assert roots.home(photos / "a.jpg", move=True) == photos.resolve()
    assert roots.home(photos / "a.jpg", move=False, own_folder=False) is None


def test_a_strict_plan_goes_on_past_a_file_outside_the_folders_given(
    photos: Path, tmp_path: Path
) -> None:
    names = ["a.jpg", "sub/d.jpg", "b.jpg", "sub/a.jpg"]
    records = [replace(seen(photos / n, "x"), file=facts(photos / n)) for n in names]
    plan = make_plan(records, tmp_path / "sorted", strict=True, sources=[photos / "sub"])
    outside = "outside the folders given (add --root FOLDER to file from there)"
    assert plan.skipped == [(str(photos / "a.jpg"), outside), (str(photos / "b.jpg"), outside)]
    assert [s.target for s in plan.steps] == ["x/d.jpg", "x/a.jpg"]


@pytest.mark.parametrize(
    ("tail", "found"),
    [
        ([{"op": "done", "n": 0}], True),
        ([{"op": "done", "n": 0}, {"op": "undone", "n": 0}], False),  # put back since
        ([], False),  # begun, never finished
    ],
    ids=["done", "undone", "pending"],
)
def test_only_a_filing_done_and_not_undone_is_looked_for_where_the_journal_says(
    photos: Path, tmp_path: Path, tail: list[dict], found: bool
) -> None:
    # 'a (1) (1).jpg' is a name only the journal leads to: its listing key is 'a (1).jpg'.
    dest, source = tmp_path / "sorted", photos.resolve() / "a.jpg"
    begin = {"op": "begin", "mode": "copy", "time": "t", "dest": str(dest.resolve())}
    begin["src"] = [str(photos.resolve())]
    step = {"op": "step", "n": 0, "mode": "copy", "src": str(source), "dst": "x/a (1) (1).jpg"}
    plant(dest, begin, step, *tail)
    (dest / "x").mkdir()
    (dest / "x" / "a (1) (1).jpg").write_bytes(b"bytes of a.jpg\n" * 50)
    plan = make_plan([seen(photos / "a.jpg", "x")], dest)
    if found:
        assert (plan.steps, plan.already) == ([], [(str(photos / "a.jpg"), "x/a (1) (1).jpg")])
    else:
        assert ([s.target for s in plan.steps], plan.already) == (["x/a.jpg"], [])


def test_a_link_in_dest_is_not_taken_for_the_file_it_leads_to(tmp_path: Path) -> None:
    photos, dest = tmp_path / "photos", tmp_path / "sorted"
    photos.mkdir()
    source = photos / "a.jpg"
    # The link's own size (the length of what it holds) is the file's: only its kind differs.
    source.write_bytes(b"x" * len(os.fsencode(str(source))))
    (dest / "x").mkdir(parents=True)
    (dest / "x" / "a.jpg").symlink_to(source)
    plan = make_plan([seen(source, "x")], dest)
    assert ([s.target for s in plan.steps], plan.already) == (["x/a (1).jpg"], [])
