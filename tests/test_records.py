"""records.py: the one strict reader of result records, for --resume and sort --from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnext_cli.records import RecordsProblem, read_records
from resnext_cli.results import Classified, Failed, FileFacts, Prediction

ONE = Classified(
    "a.jpg", "m", "w", (Prediction("cat", 1, 0.75),), path="/p/a.jpg", file=FileFacts(3, 4)
)


def test_unknown_keys_are_kept_for_callers_that_file_by_them(tmp_path: Path) -> None:
    data = {**ONE.to_dict(), "label": "dog", "reviewed": True}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(data) + "\n")
    (entry,) = read_records(path).entries
    assert entry.record == ONE and entry.line == 1
    assert (entry.data["label"], entry.data["reviewed"]) == ("dog", True)


def test_json_lines_and_arrays_read_the_same(tmp_path: Path) -> None:
    items = [ONE.to_dict(), Failed("b", "truncated", "cut").to_dict()]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (tmp_path / "r.json").write_text(json.dumps(items, indent=2))
    lines = read_records(tmp_path / "r.jsonl")
    array = read_records(tmp_path / "r.json")
    assert [e.record for e in lines.entries] == [e.record for e in array.entries]
    opening = [n for n, text in enumerate((tmp_path / "r.json").read_text().splitlines(), 1)
               if text == "  {"]  # fmt: skip
    assert [e.line for e in array.entries] == opening  # each object's first line
    with pytest.raises(RecordsProblem) as caught:
        read_records(tmp_path / "r.json", arrays=False)
    assert (caught.value.line, caught.value.detail) == (1, "a JSON array, not JSON Lines")


def test_a_torn_tail_is_left_out_only_when_asked_and_only_if_it_is_a_record(tmp_path) -> None:
    whole = json.dumps(ONE.to_dict()) + "\n"
    path = tmp_path / "r.jsonl"
    path.write_text(whole + '{"input": "b.jp')
    found = read_records(path, torn_tail=True)
    assert len(found.entries) == 1 and found.end == len(whole.encode())
    with pytest.raises(RecordsProblem) as caught:
        read_records(path)
    assert (caught.value.line, caught.value.detail) == (2, "not JSON")
    path.write_text(whole + "my notes")
    with pytest.raises(RecordsProblem) as caught:
        read_records(path, torn_tail=True)
    assert (caught.value.line, caught.value.detail) == (2, "does not end in result records")


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ('{"input": 1}', "no 'input'"),
        ('{"input": "x", "path": "rel/a.jpg", "error": {"type": "t", "message": "m"}}',
         "'path' is not an absolute path"),
        ('{"input": "x", "size": "3", "error": {"type": "t", "message": "m"}}',
         "'size' is not a whole number"),
        ('{"input": "x", "mtime_ns": 1.5, "error": {"type": "t", "message": "m"}}',
         "'mtime_ns' is not a whole number"),
        ('{"input": "x", "predictions": []}', "no 'predictions' and no 'error'"),
        ('{"input": "x", "model": 5, "weights": "w", "predictions": [{"label": "a", '
         '"index": 1, "probability": 0.5}]}', "'model' is not text"),
        ('{"input": "x", "weights": "w", "predictions": [{"label": "a", "index": 1, '
         '"probability": 0.5}]}', "no 'model'"),
        ('{"input": "x", "model": "m", "predictions": [{"label": "a", "index": 1, '
         '"probability": 0.5}]}', "no 'weights'"),
        ('{"input": "x", "model": "m", "weights": 5, "predictions": [{"label": "a", '
         '"index": 1, "probability": 0.5}]}', "'weights' is not text"),
        ('{"input": "x", "path": "/p/a\\u0000.jpg", "error": {"type": "t", "message": "m"}}',
         "'path' holds a NUL or a character no file name can have"),
        # A lone high surrogate: no byte string on this system decodes to it.
        ('{"input": "x", "path": "/p/\\ud800.jpg", "error": {"type": "t", "message": "m"}}',
         "'path' holds a NUL or a character no file name can have"),
        ('{"input": "x", "predictions": [{"label": "a", "index": 1, "probability": NaN}]}',
         "NaN is not a number"),
        ('{"input": "x", "predictions": [{"label": "a", "index": 1, "probability": -Infinity}]}',
         "-Infinity is not a number"),
        ("[" * 50_000 + "]" * 50_000, "JSON nested too deeply"),
        ("\ufeff{}", "not JSON"),
    ],
)  # fmt: skip
def test_what_is_not_a_record_is_named_with_its_line(tmp_path, text, detail) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(Failed("ok", "t", "m").to_dict()) + "\n" + text + "\n")
    with pytest.raises(RecordsProblem) as caught:
        read_records(path)
    assert (caught.value.line, caught.value.detail) == (2, detail)


PREDICTION = "a prediction needs a 'label', an 'index' (0 or more) and a 'probability' (0 to 1)"
CATEGORY = "a category needs a 'name' and a 'probability' (0 to 1)"


def classified(**changes: object) -> str:
    """A record line as classify writes it, with *changes* made to its JSON."""
    data = {**ONE.to_dict(), **changes}
    return json.dumps(data)


@pytest.mark.parametrize(
    ("line", "detail"),
    [
        # An integer past a float's range reads as a JSON number and overflowed float().
        (classified().replace('"probability": 0.75', '"probability": 1' + "0" * 400), PREDICTION),
        (classified().replace('"probability": 0.75', '"probability": 1e400'), PREDICTION),
        (classified().replace('"probability": 0.75', '"probability": -1e400'), PREDICTION),
        (classified(predictions=[{"label": "cat", "index": 1, "probability": 1.5}]), PREDICTION),
        (classified(predictions=[{"label": "cat", "index": 1, "probability": -0.01}]), PREDICTION),
        (classified(predictions=[{"label": "cat", "index": -1, "probability": 0.5}]), PREDICTION),
        (classified(categories=[{"name": "cats", "probability": 2}]), CATEGORY),
        (classified(categories=[{"name": "cats", "probability": 1.001}]), CATEGORY),
        (classified(checkpoint={"path": "/x"}), "'checkpoint' is not text"),
        (classified(precision=16), "'precision' is not text"),
        (classified(runtime=["torch"]), "'runtime' is not text"),
        (classified(embedding=5), "'embedding' is not a list of numbers"),
        (classified(embedding=[0.5, "1"]), "'embedding' is not a list of numbers"),
        (classified(embedding=[0.5, True]), "'embedding' is not a list of numbers"),
        (
            classified(embedding=[0.5]).replace("[0.5]", "[1e400]"),
            "'embedding' is not a list of numbers",
        ),
        (
            classified(embedding=[0.5]).replace("[0.5]", "[1" + "0" * 400 + "]"),
            "'embedding' is not a list of numbers",
        ),
    ],
)
def test_every_value_the_tool_reads_back_is_checked(tmp_path: Path, line: str, detail) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(RecordsProblem) as caught:
        read_records(path)
    assert (caught.value.line, caught.value.detail) == (1, detail)


def test_the_edges_of_what_is_a_record(tmp_path: Path) -> None:
    lines = [
        classified(predictions=[{"label": "a", "index": 0, "probability": 0}]),
        classified(predictions=[{"label": "a", "index": 999, "probability": 1}]),
        # Categories sum probabilities in float32: 1 plus rounding is a category's sum.
        classified(categories=[{"name": "cats", "probability": 1.00001}]),
        classified(categories=[{"name": "cats", "probability": 1.0001}]),  # the most it takes
        classified(checkpoint="/w/mine.pth", precision="bf16", runtime="openvino"),
        classified(embedding=[0, -2.5, 1e30]),
    ]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    records = [entry.record for entry in read_records(path).entries]
    assert [r.predictions[0].index for r in records[:2]] == [0, 999]
    assert records[2].categories[0].probability == 1.00001
    assert records[3].categories[0].probability == 1.0001
    assert (records[4].checkpoint, records[4].precision, records[4].runtime) == (
        "/w/mine.pth",
        "bf16",
        "openvino",
    )
    assert records[5].embedding == (0.0, -2.5, 1e30)


def test_a_path_made_of_undecodable_bytes_is_a_name(tmp_path: Path) -> None:
    # Byte 0x80 in a name reads back as U+DC80 (Python's surrogateescape): a real file name.
    path = tmp_path / "r.jsonl"
    data = {**Failed("x", "t", "m").to_dict(), "path": "/p/\udc80.jpg"}
    path.write_text(json.dumps(data) + "\n")
    (entry,) = read_records(path).entries
    assert entry.data["path"] == "/p/\udc80.jpg"


def test_the_problem_reads_as_its_line_and_detail(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(Failed("ok", "t", "m").to_dict()) + "\n" + '{"input": 1}\n')
    with pytest.raises(RecordsProblem) as caught:
        read_records(path)
    assert str(caught.value) == "line 2: no 'input'"


@pytest.mark.parametrize(
    ("text", "line", "detail"),
    [
        ('[\n{"input": "x", "predictions": [{"label": "a", "index": 1, "probability": NaN}]}]',
         2, "not JSON"),
        ("[\n\n" + "[" * 50_000 + "]" * 50_000 + "]", 3, "JSON nested too deeply"),
    ],
)  # fmt: skip
def test_an_array_refuses_what_lines_refuse(tmp_path: Path, text, line, detail) -> None:
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(RecordsProblem) as caught:
        read_records(path)
    assert (caught.value.line, caught.value.detail) == (line, detail)


def test_an_array_after_much_white_space_is_still_an_array(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(" " * 10_000 + "\n" + json.dumps([ONE.to_dict()]))
    assert [e.record for e in read_records(path).entries] == [ONE]
    with pytest.raises(RecordsProblem) as caught:
        read_records(path, arrays=False)
    assert (caught.value.line, caught.value.detail) == (1, "a JSON array, not JSON Lines")


def test_the_end_of_the_whole_lines_counts_every_line(tmp_path: Path) -> None:
    # --resume cuts the file there: all whole lines, before the torn one.
    lines = [json.dumps(Failed(f"{i}.jpg", "t", "m").to_dict()) + "\n" for i in range(3)]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(lines) + '{"input": "3.j')
    found = read_records(path, torn_tail=True)
    assert found.end == sum(len(line.encode()) for line in lines) and len(found.entries) == 3
    path.write_bytes(b"".join(line.encode() for line in lines) + b"\xff\xfe")
    with pytest.raises(RecordsProblem) as caught:
        read_records(path, torn_tail=True)
    assert (caught.value.line, caught.value.detail) == (4, "does not end in result records")
