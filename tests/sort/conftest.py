"""Fixtures of the sort tests: a folder of photos (sort never decodes them) and planted DESTs."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnext_cli.results import Record
from tests.helpers import labelled, seen, threshold


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Files with distinct bytes (sort never decodes them), two with the same name."""
    root = tmp_path / "photos"
    for rel in ["a.jpg", "b.jpg", "c.png", "sub/a.jpg", "sub/d.jpg", "broken.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(f"bytes of {rel}\n".encode() * 50)
    return root


@pytest.fixture
def shared(photos: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A shared DEST holding a file, and a folder of someone else's, outside any sort."""
    dest, other = tmp_path / "shared", tmp_path / "other"
    (dest / "x").mkdir(parents=True)
    (dest / "x" / "payload.txt").write_bytes(b"planted content")
    other.mkdir()
    (other / "secret.txt").write_bytes(b"someone's secret")
    return photos, dest, other


@pytest.fixture
def outside_links(photos: Path, tmp_path: Path) -> tuple[Path, list[Record]]:
    """A file link and a folder link in SRC, both leading outside it."""
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.jpg").write_bytes(b"outside file" * 10)
    (outside / "dir" / "deep.jpg").write_bytes(b"outside folder" * 10)
    (photos / "link.jpg").symlink_to(outside / "secret.jpg")
    (photos / "linked").symlink_to(outside / "dir")
    (photos / "target.jpg").write_bytes(b"a file only a link names" * 10)
    (photos / "inner.jpg").symlink_to(photos / "target.jpg")  # a link that stays inside
    extra = [seen(photos / "link.jpg", "x"), seen(photos / "linked" / "deep.jpg", "x")]
    return outside, [*threshold(labelled(photos)), *extra, seen(photos / "inner.jpg", "y")]
