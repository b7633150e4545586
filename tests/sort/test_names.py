"""sort/names.py: safe folder and file names, clash numbers, the folder a record goes to."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resnext_cli import sort as sorting
from resnext_cli.sort import (
    folder_for,
    safe_name,
)
from tests.helpers import seen, threshold

# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("tabby, tabby cat", "tabby, tabby cat"),
        ("jack-o'-lantern", "jack-o'-lantern"),
        ("a/b\\c", "a_b_c"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("..", "_"),
        ("", "_"),
        ("   ", "_"),
        (".hidden", "hidden"),
        (". .x", "x"),
        ("a\u00a0b", "a b"),
        ("\ud7fc", "_"),
        ('say "cheese"', "say _cheese_"),
        ("a<b>c:d|e?f*g", "a_b_c_d_e_f_g"),
        ("nul\x00byte\x1b[31m", "nul_byte_[31m"),
        ("trailing. . ", "trailing"),
        ("CON", "_CON"),
        ("com1.txt", "_com1.txt"),
        ("Lpt9", "_Lpt9"),
        ("CON .txt", "_CON .txt"),
        ("conX.txt", "conX.txt"),
        ("x" * 239 + ".y", "x" * 239),  # cut to 240 bytes, then the trailing dot goes
        ("x" * 238 + " .y", "x" * 238),
        ("console", "console"),
        ("\u202egpj.exe", "_gpj.exe"),
        ("cafe\u0301", "caf\u00e9"),
        ("line\nbreak", "line_break"),
    ],
)
def test_safe_name(text: str, name: str) -> None:
    assert safe_name(text) == name


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_label_is_one_name_inside_dest(text: str) -> None:
    name = safe_name(text)
    assert name and name == safe_name(name)  # idempotent
    assert not set(name) & set('/\\<>:"|?*\x00') and name.isprintable()
    assert not name.startswith(".") and not name.endswith((".", " "))
    assert len(name.encode("utf-8")) <= 240
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp).resolve()
        (dest / name).mkdir()
        assert [p.name for p in dest.iterdir()] == [name]
        assert (dest / name).resolve().parent == dest


def test_special_folders_and_keys(photos: Path) -> None:
    assert folder_for(seen(photos / "a.jpg", "_Failed")) == "_Failed (label)"
    assert folder_for(seen(photos / "a.jpg", "crane", index=134), by="index") == "134"
    assert folder_for(threshold([seen(photos / "a.jpg", "crane", p=0.1)])[0]) == "_uncertain"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("IMG_0001.jpg", "IMG_0001.jpg"),
        ("y" * 236 + ".png", "y" * 236 + ".png"),  # 240 bytes: short enough as it is
        ("y" * 237 + ".png", "y" * 120 + ".png"),  # 241: the stem is cut to 120 bytes
        ("x" * 300 + ".jpg", "x" * 120 + ".jpg"),
        ("\u00e9" * 200 + ".jpeg", "\u00e9" * 60 + ".jpeg"),  # 2 bytes a letter
        ("a" + "\u00e9" * 200 + ".jpg", "a" + "\u00e9" * 59 + ".jpg"),  # no half letter
        ("w" * 300 + ".j:g", "w" * 120 + ".j_g"),
        ("a" * 250 + "." + "b" * 15, "a" * 120 + "." + "b" * 15),  # a 16-character suffix
        ("a" * 250 + "." + "b" * 16, ("a" * 250 + "." + "b" * 16)[:240]),  # 17: not one
        ("z" * 300, "z" * 240),
        ("z" * 300 + ".", "z" * 240),
        ("\u00e9" * 300, "\u00e9" * 120),
        ("CON" + "." * 300 + ".jpg", "_CON.jpg"),
        ("." * 300 + ".jpg", "jpg"),  # leading dots go; what is left has no extension
        ("...", "image"),
        (" " * 300 + ".jpg", "image.jpg"),  # nothing left of the stem
    ],
)
def test_safe_file_name_keeps_the_extension_of_a_long_name(name: str, expected: str) -> None:
    assert sorting.safe_file_name(name) == expected


def test_clash_numbers() -> None:
    assert sorting.numbered("cat.jpg", 2) == "cat (2).jpg"
    assert sorting.numbered("Crane", 1) == "Crane (1)"
    assert sorting.numbered("a.tar.gz", 12) == "a.tar (12).gz"


def test_a_probability_equal_to_the_threshold_is_not_below_it(photos: Path) -> None:
    record = seen(photos / "a.jpg", "crane", p=0.5)
    assert folder_for(record, min_probability=0.5) == "crane"
    assert folder_for(record, by="index", min_probability=0.5) == "1"
    assert folder_for(record, min_probability=0.5000001) == "_uncertain"
