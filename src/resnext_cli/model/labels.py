"""The class names: the bundled ImageNet list or a user's file."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from resnext_cli.errors import ConfigError
from resnext_cli.files import FileProblem, read_user_file

_BUNDLED = "imagenet_classes.txt"
# Far more than any label list needs (ImageNet-21k's names take about 300 KB); a cap
# keeps a mistaken --labels (a video, /dev/zero) from filling memory.
MAX_LABELS_BYTES = 10 << 20
_GIVE = "give a UTF-8 text file with one class name per line"
# O_NONBLOCK: a FIFO swapped in after the stat must not wait for a writer.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def bundled_text(name: str) -> str:
    """A data file shipped with the tool (package data in a wheel, data/ in a checkout)."""
    packaged = resources.files("resnext_cli") / "data" / name
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    # A source checkout (editable install) keeps the file at the repository root.
    checkout = Path(__file__).resolve().parents[3] / "data" / name
    return checkout.read_text(encoding="utf-8")


def _parse(text: str) -> tuple[str, ...]:
    # Lines end at '\n' only (strip() takes a '\r\n' line's '\r'): str.splitlines would
    # also split a label at a form feed, a vertical tab or a Unicode line separator in it.
    lines = (line.strip() for line in text.split("\n"))
    return tuple(line for line in lines if line)


def imagenet_labels() -> tuple[str, ...]:
    """Return the 1000 ImageNet class names bundled with the tool."""
    return _parse(bundled_text(_BUNDLED))


def _read(path: str | Path) -> bytes:
    """The bytes of a regular labels file of at most MAX_LABELS_BYTES, or a ConfigError."""
    try:
        return read_user_file(path, max_bytes=MAX_LABELS_BYTES)  # the one safe opener
    except FileProblem as exc:
        if exc.kind == "folder":
            raise ConfigError(f"labels file '{path}' is a folder ({_GIVE})") from None
        if exc.kind == "not_regular":
            raise ConfigError(
                f"labels file '{path}' is not a regular file (a pipe, socket or device); {_GIVE}"
            ) from None
        if exc.kind == "too_large":
            raise ConfigError(
                f"labels file '{path}' is over the {MAX_LABELS_BYTES}-byte limit "
                "(give one class name per line)"
            ) from None
        raise ConfigError(f"cannot read labels file '{path}': {exc.cause} ({_GIVE})") from None


def load_labels(path: str | Path | None = None) -> tuple[str, ...]:
    """Return class names from *path* (one per line), or the bundled ImageNet ones."""
    if path is None:
        return imagenet_labels()
    try:
        text = _read(path).decode("utf-8-sig")  # -sig: a byte-order mark is not a label
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"cannot read labels file '{path}': {exc.__class__.__name__} ({_GIVE})"
        ) from exc
    labels = _parse(text)
    if not labels:
        raise ConfigError(f"labels file '{path}' is empty (give one class name per line)")
    return labels
