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
        ('{"input": "x", "predictions": []}', "no 'predictions' and no 'error'"),
        ('{"input": "x", "model": 5, "weights": "w", "predictions": [{"label": "a", '
         '"index": 1, "probability": 0.5}]}', "'model' is not text"),
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
