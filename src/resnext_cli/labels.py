"""The class names: the bundled ImageNet list or a user's file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import ConfigError

_BUNDLED = "imagenet_classes.txt"


def _bundled_text() -> str:
    packaged = resources.files("resnext_cli") / "data" / _BUNDLED
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    # A source checkout (editable install) keeps the file at the repository root.
    checkout = Path(__file__).resolve().parents[2] / "data" / _BUNDLED
    return checkout.read_text(encoding="utf-8")


def _parse(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def imagenet_labels() -> tuple[str, ...]:
    """Return the 1000 ImageNet class names bundled with the tool."""
    return _parse(_bundled_text())


def load_labels(path: str | Path | None = None) -> tuple[str, ...]:
    """Return class names from *path* (one per line), or the bundled ImageNet ones."""
    if path is None:
        return imagenet_labels()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read labels file '{path}': {exc.__class__.__name__} "
            "(give a UTF-8 text file with one class name per line)"
        ) from exc
    labels = _parse(text)
    if not labels:
        raise ConfigError(f"labels file '{path}' is empty (give one class name per line)")
    return labels
