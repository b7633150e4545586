"""inputs/objects.py: object-store URIs listed lazily, sorted and filtered, read with a cap."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from resnext_cli.errors import InputError
from resnext_cli.inputs import objects
from resnext_cli.inputs.sources import Source
from tests.helpers import write_images


class CountingFS:
    """A pyarrow file system over a folder that records which prefixes were listed."""

    def __init__(self, root: Path) -> None:
        from pyarrow import fs

        self.fs = fs.SubTreeFileSystem(str(root), fs.LocalFileSystem())
        self.listed: list[str] = []

    def get_file_info(self, what: Any) -> Any:
        if not isinstance(what, str):
            self.listed.append(what.base_dir)
        return self.fs.get_file_info(what)

    def open_input_stream(self, path: str) -> Any:
        return self.fs.open_input_stream(path)


@pytest.fixture
def bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, CountingFS]]:
    """s3://bucket/... served from tmp_path/bucket through pyarrow's LocalFileSystem."""
    pytest.importorskip("pyarrow")
    store = CountingFS(tmp_path)
    roots: list[str] = []

    def filesystem(root: str) -> CountingFS:
        roots.append(root)
        return store

    monkeypatch.setattr(objects, "_filesystem", filesystem)
    yield tmp_path / "bucket", store
    assert all(r == "s3://bucket" for r in roots), roots


def test_object_uris_are_listed_lazily_sorted_and_filtered(
    bucket: tuple[Path, CountingFS],
) -> None:
    root, store = bucket
    photos = root / "photos"
    write_images(photos / "sub", 1)
    for name in ("b.jpg", "a.PNG", "notes.txt", ".hidden.jpg"):
        (photos / name).write_bytes(b"x")
    sources = objects.iter_sources(["s3://bucket/photos"])
    first = next(sources)
    assert first == Source(input="s3://bucket/photos/a.PNG", url="s3://bucket/photos/a.PNG")
    assert store.listed == ["bucket/photos"]  # the sub-prefix is not listed yet
    rest = [s.input for s in sources]
    assert rest == ["s3://bucket/photos/b.jpg", "s3://bucket/photos/sub/img00.png"]
    assert store.listed == ["bucket/photos", "bucket/photos/sub"]


def test_object_uri_errors_and_stdin_lists(bucket: tuple[Path, CountingFS]) -> None:
    root, _ = bucket
    write_images(root, 1)
    warnings: list[str] = []
    listing = b"s3://bucket/img00.png\ns3://bucket/missing/\n"
    import io

    sources = list(objects.iter_sources(["-"], stdin=io.BytesIO(listing), warn=warnings.append))
    assert [s.input for s in sources] == ["s3://bucket/img00.png", "s3://bucket/missing/"]
    assert sources[0].error is None
    assert sources[1].error is not None and sources[1].error.error_type == "not_found"
    assert objects.read_object("s3://bucket/img00.png", 1 << 20)[:4] == b"\x89PNG"
    with pytest.raises(InputError) as exc:
        objects.read_object("s3://bucket/img00.png", 10)
    assert exc.value.error_type == "too_large"
    with pytest.raises(InputError) as exc:
        objects.read_object("s3://bucket/nope.png", 1 << 20)
    assert exc.value.error_type == "not_found"
