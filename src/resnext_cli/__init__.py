"""Classify images with torchvision's ResNeXt models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from resnext_cli.run.engine import Classifier, classify

__all__ = ["Classifier", "__version__", "classify"]


def __getattr__(name: str) -> Any:
    # The engine imports torch: load it only when the Python API is used.
    if name in ("Classifier", "classify"):
        from resnext_cli.run import engine

        return getattr(engine, name)
    raise AttributeError(name)
