"""model/labels.py: the bundled ImageNet names and a user's --labels file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from resnext_cli.errors import ConfigError
from resnext_cli.model import labels as labels_module
from resnext_cli.model.labels import MAX_LABELS_BYTES, imagenet_labels, load_labels
from tests.helpers import run_within

GIVE = "give a UTF-8 text file with one class name per line"


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "labels.txt"
    path.write_bytes(data)
    return path


def test_the_bundled_names_are_imagenets_thousand() -> None:
    labels = imagenet_labels()
    # The first, 258th and last ImageNet-1k classes, from torchvision's metadata.
    assert (len(labels), labels[0], labels[258], labels[999]) == (
        1000,
        "tench",
        "Samoyed",
        "toilet tissue",
    )
    assert load_labels(None) == labels


def test_lines_end_at_newline_only(tmp_path: Path) -> None:
    # A lone carriage return, a form feed, a vertical tab and U+2028 stay inside a label;
    # '\r\n' ends a line like '\n'; blank lines and surrounding spaces go.
    data = "a\rb\r\nc\x0cd\n\n  e\x0bf \n g\u2028h\n".encode()
    assert load_labels(write(tmp_path, data)) == ("a\rb", "c\x0cd", "e\x0bf", "g\u2028h")


def test_a_byte_order_mark_is_not_a_label(tmp_path: Path) -> None:
    assert load_labels(write(tmp_path, b"\xef\xbb\xbfcat\ndog\n")) == ("cat", "dog")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "labels file '{path}' is empty (give one class name per line)"),
        (b"\n \n\r\n", "labels file '{path}' is empty (give one class name per line)"),
        (b"caf\xe9\n", "cannot read labels file '{path}': UnicodeDecodeError (" + GIVE + ")"),
    ],
    ids=["empty", "blank-lines", "latin-1"],
)
def test_unusable_files_are_refused(tmp_path: Path, data: bytes, message: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_labels(path)
    assert str(info.value) == message.format(path=path)


def test_the_size_cap_is_ten_mebibytes(tmp_path: Path) -> None:
    assert MAX_LABELS_BYTES == 10 * 1024 * 1024  # the README's "at most 10 MB"
    at_cap = write(tmp_path, (b"x" * 1023 + b"\n") * (10 * 1024))
    assert len(load_labels(at_cap)) == 10 * 1024
    over = write(tmp_path, at_cap.read_bytes() + b"y")
    with pytest.raises(ConfigError) as info:
        load_labels(over)
    assert str(info.value) == (
        f"labels file '{over}' is over the {10 << 20}-byte limit (give one class name per line)"
    )


def test_a_pipe_is_refused_without_waiting(tmp_path: Path) -> None:
    # A FIFO opened for reading with no writer would wait for ever; the file is opened
    # without blocking and refused by what fstat says of the open file.
    fifo = tmp_path / "labels.fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        load_labels(fifo)
    assert str(info.value) == (
        f"labels file '{fifo}' is not a regular file (a pipe, socket or device); {GIVE}"
    )


def test_a_missing_file_names_the_os_reason(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError) as info:
        load_labels(missing)
    assert str(info.value) == (f"cannot read labels file '{missing}': FileNotFoundError ({GIVE})")
    assert not os.path.exists(missing)


def test_a_folder_is_refused_as_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_labels(tmp_path)
    assert str(info.value) == f"labels file '{tmp_path}' is a folder ({GIVE})"


def test_an_installed_packages_data_comes_before_the_checkouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wheel ships data/ inside the package; a checkout keeps it at the repository root.
    package = tmp_path / "resnext_cli"
    (package / "data").mkdir(parents=True)
    (package / "data" / "imagenet_classes.txt").write_text("tench from the wheel\n")
    monkeypatch.setattr(labels_module.resources, "files", lambda name: package)
    assert imagenet_labels() == ("tench from the wheel",)
    (package / "data" / "imagenet_classes.txt").unlink()
    assert imagenet_labels()[:2] == ("tench", "goldfish")  # the checkout's data/


LABELS_CAP = 10 << 20  # the README: a labels file of at most 10 MB


# -- labels files: --labels is read whole, so it is checked first ------------------------


def labels_error(path: str | Path) -> str:
    def attempt() -> str:
        with pytest.raises(ConfigError) as info:
            load_labels(path)
        return str(info.value)

    return run_within(10, attempt)


def test_labels_from_a_pipe_or_a_device_are_refused(tmp_path: Path, device_node) -> None:
    fifo = tmp_path / "labels.fifo"
    os.mkfifo(fifo)
    for path in (fifo, device_node("zero")):
        assert labels_error(path) == (
            f"labels file '{path}' is not a regular file (a pipe, socket or device); {GIVE}"
        )
    assert labels_error(tmp_path) == f"labels file '{tmp_path}' is a folder ({GIVE})"


def test_a_huge_labels_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    with path.open("wb") as fh:
        fh.truncate(LABELS_CAP + 1)  # sparse: no disk used
    assert labels_error(path) == (
        f"labels file '{path}' is over the {LABELS_CAP}-byte limit (give one class name per line)"
    )
    path.write_bytes(b"cat\n" * (LABELS_CAP // 4))  # exactly at the limit
    assert len(load_labels(path)) == LABELS_CAP // 4


def test_labels_split_at_line_ends_only(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    text = "\ufeffform\ffeed\r\nvertical\vtab\nline\u2028separator\nnext\x85line\r\n\n  padded  \n"
    path.write_bytes(text.encode("utf-8"))
    assert load_labels(path) == (
        "form\ffeed",
        "vertical\vtab",
        "line\u2028separator",
        "next\x85line",
        "padded",
    )
