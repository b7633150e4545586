"""results.py: the JSON shape of a record (as the README shows it), read back, thresholded."""

from __future__ import annotations

import json

import pytest

from resnext_cli.results import (
    CategoryScore,
    Classified,
    Failed,
    FileFacts,
    Prediction,
    apply_threshold,
    record_from_dict,
)

SAMOYED = Prediction("Samoyed", 258, 0.8846)
DOG = Classified("dog.jpg", "resnext50_32x4d", "IMAGENET1K_V2", (SAMOYED,), path="/home/me/dog.jpg")


def test_a_classified_record_is_the_readmes_json() -> None:
    out = DOG.to_dict()
    # The README's example, key for key and in its order.
    assert json.dumps(out) == (
        '{"input": "dog.jpg", "path": "/home/me/dog.jpg", "model": "resnext50_32x4d", '
        '"weights": "IMAGENET1K_V2", "predictions": [{"label": "Samoyed", "index": 258, '
        '"probability": 0.8846}]}'
    )
    assert DOG.ok and DOG.top1 == SAMOYED


def test_a_failed_record_is_the_readmes_json() -> None:
    failed = Failed("x.jpg", "not_found", "no such file: 'x.jpg'", path="/home/me/x.jpg")
    assert json.dumps(failed.to_dict()) == (
        '{"input": "x.jpg", "path": "/home/me/x.jpg", '
        '"error": {"type": "not_found", "message": "no such file: \'x.jpg\'"}}'
    )
    assert not failed.ok


def test_optional_keys_appear_only_when_set_and_in_their_place() -> None:
    url = Classified("https://example.com/cat.png", "m", "w", (Prediction("tabby", 281, 0.5),))
    assert list(url.to_dict()) == ["input", "model", "weights", "predictions"]  # no path
    full = Classified(
        "a.jpg",
        "m",
        "w",
        (Prediction("tabby", 281, 0.5),),
        path="/p/a.jpg",
        checkpoint="mine.pth",
        uncertain=False,
        precision="bf16",
        file=FileFacts(12, 34),
        categories=(CategoryScore("cats", 0.75),),
        embedding=(0.5, 1.0),
        runtime="torch",
    ).to_dict()
    assert list(full) == [
        "input",
        "path",
        "size",
        "mtime_ns",
        "model",
        "weights",
        "checkpoint",
        "precision",
        "runtime",
        "categories",
        "predictions",
        "uncertain",
        "embedding",
    ]
    assert (full["size"], full["mtime_ns"], full["uncertain"]) == (12, 34, False)
    assert full["categories"] == [{"name": "cats", "probability": 0.75}]
    assert full["embedding"] == [0.5, 1.0]
    failed = Failed("b.jpg", "truncated", "cut", path="/p/b.jpg", file=FileFacts(5, 6))
    assert list(failed.to_dict()) == ["input", "path", "size", "mtime_ns", "error"]


def test_records_read_back_as_they_were_written() -> None:
    full = Classified(
        "a.jpg",
        "m",
        "w",
        (Prediction("tabby", 281, 0.5), Prediction("tiger cat", 282, 0.25)),
        path="/p/a.jpg",
        checkpoint="mine.pth",
        uncertain=True,
        precision="int8",
        file=FileFacts(12, 34),
        categories=(CategoryScore("cats", 0.75),),
        embedding=(0.5, 1.0),
        runtime="openvino",
    )
    failed = Failed("b.jpg", "truncated", "cut", path="/p/b.jpg", file=FileFacts(5, 6))
    for record in (DOG, full, failed):
        assert record_from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_file_facts_need_both_the_size_and_the_mtime() -> None:
    head = {"input": "a.jpg", "path": "/p/a.jpg"}
    error = {"error": {"type": "t", "message": "m"}}
    for half in ({"size": 12}, {"mtime_ns": 34}, {"size": 12, "mtime_ns": None}):
        assert record_from_dict({**head, **half, **error}).file is None
    both = record_from_dict({**head, "size": 12, "mtime_ns": 34, **error})
    assert both.file == FileFacts(12, 34)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({"input": "a.jpg", "weights": "w", "predictions": []}, "KeyError: 'model'"),
        ({"input": "a.jpg", "error": {"type": "not_found"}}, "KeyError: 'message'"),
        (["a.jpg"], "AttributeError"),
        (
            {"input": "a", "model": "m", "weights": "w", "predictions": [{"label": "x"}]},
            "KeyError: 'index'",
        ),
    ],
)
def test_what_is_not_a_record_is_a_value_error(data: object, why: str) -> None:
    with pytest.raises(ValueError) as info:
        record_from_dict(data)
    assert str(info.value).startswith(f"not a result record ({why}")


def test_a_threshold_marks_top1_below_it_uncertain() -> None:
    # No --min-probability: the record as it is, with no "uncertain" key.
    assert apply_threshold(DOG, None) is DOG
    assert "uncertain" not in apply_threshold(DOG, None).to_dict()
    assert apply_threshold(DOG, 0.9).to_dict()["uncertain"] is True  # 0.8846 < 0.9
    assert apply_threshold(DOG, 0.8846).to_dict()["uncertain"] is False  # not below
    assert apply_threshold(DOG, 0.5).to_dict()["uncertain"] is False
    failed = Failed("x.jpg", "not_found", "gone")
    assert apply_threshold(failed, 0.9) is failed
