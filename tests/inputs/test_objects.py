"""inputs/objects.py: object-store URIs listed lazily, sorted and filtered, read with a cap."""

from __future__ import annotations

import io
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


# -- each answer in its exact shape --------------------------------------------------------


def _source_facts(source: Source) -> tuple[str, str | None, str | None, str | None]:
    error = source.error
    return (
        source.input,
        source.url,
        None if error is None else error.error_type,
        None if error is None else error.message,
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("s3://bucket/a.jpg", True),
        ("GS://bucket/a.jpg", True),
        ("gcs://bucket", True),
        ("s3://bucket/odd://name.jpg", True),  # the scheme is before the first '://'
        ("s3", False),  # a local file named s3
        ("gs", False),
        ("http://host/s3://x.jpg", False),
        ("photos/s3://x.jpg", False),
    ],
)
def test_which_inputs_are_object_uris(spec: str, expected: bool) -> None:
    assert objects.is_object_uri(spec) is expected


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/photos/", ("s3://bucket", "bucket/photos", "")),
        ("s3://bucket/photos/X/", ("s3://bucket", "bucket/photos/X", "")),  # only '/' goes
        ("S3://bucket/a b ", ("s3://bucket", "bucket/a b ", "")),  # spaces are the name's
        (
            "s3://bucket/key?region=eu-west-1",
            ("s3://bucket?region=eu-west-1", "bucket/key", "?region=eu-west-1"),
        ),
    ],
)
def test_a_uri_splits_into_its_file_system_key_and_query(uri: str, expected: Any) -> None:
    assert objects._split(uri) == expected


class Store:
    """A pyarrow file system over a folder that can fail a listing or a read, and records
    the sizes it is asked to read."""

    def __init__(self, root: Path, *, refuse: str = "", broken: bool = False) -> None:
        from pyarrow import fs

        self.fs = fs.SubTreeFileSystem(str(root), fs.LocalFileSystem())
        self.refuse, self.broken = refuse, broken
        self.reads: list[int] = []

    def get_file_info(self, what: Any) -> Any:
        if not isinstance(what, str) and what.base_dir == self.refuse:
            raise OSError("access denied")
        return self.fs.get_file_info(what)

    def open_input_stream(self, path: str) -> Any:
        if self.broken:
            raise OSError("connection reset")
        stream = self.fs.open_input_stream(path)
        reads = self.reads

        class Counted:
            def __enter__(self) -> Counted:
                return self

            def __exit__(self, *exc: object) -> None:
                stream.close()

            def read(self, size: int) -> bytes:
                reads.append(size)
                return bytes(stream.read(size))

        return Counted()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A bucket in tmp_path/bucket; set 'store' to a Store (or an exception to raise)."""
    pytest.importorskip("pyarrow")
    (tmp_path / "bucket").mkdir()
    state: dict[str, Any] = {"store": Store(tmp_path), "roots": [], "root": tmp_path}

    def filesystem(root: str) -> Any:
        state["roots"].append(root)
        if isinstance(state["store"], Exception):
            raise state["store"]
        return state["store"]

    monkeypatch.setattr(objects, "_filesystem", filesystem)
    yield state


def test_an_unlistable_uri_is_one_unreadable_record(store: dict[str, Any]) -> None:
    store["store"] = OSError("access denied")
    found = list(objects.iter_sources(["s3://bucket/photos"]))
    assert [_source_facts(s) for s in found] == [
        (
            "s3://bucket/photos",
            "s3://bucket/photos",
            "unreadable",
            "cannot list 's3://bucket/photos': access denied",
        )
    ]


def test_one_object_and_a_missing_one(store: dict[str, Any]) -> None:
    write_images(store["root"] / "bucket", 1)
    found = list(objects.iter_sources(["s3://bucket/img00.png", "s3://bucket/gone.png"]))
    assert [_source_facts(s) for s in found] == [
        ("s3://bucket/img00.png", "s3://bucket/img00.png", None, None),
        (
            "s3://bucket/gone.png",
            "s3://bucket/gone.png",
            "not_found",
            "no such object or prefix: 's3://bucket/gone.png'",
        ),
    ]


def test_a_query_stays_on_every_object_listed(store: dict[str, Any]) -> None:
    """An endpoint given in the query (itself a URL with '://') reaches each child."""
    write_images(store["root"] / "bucket" / "photos", 2)
    query = "?endpoint_override=http://127.0.0.1:9000"
    found = [s.input for s in objects.iter_sources([f"s3://bucket/photos{query}"])]
    assert found == [
        f"s3://bucket/photos/img00.png{query}",
        f"s3://bucket/photos/img01.png{query}",
    ]
    assert set(store["roots"]) == {f"s3://bucket{query}"}


def test_no_images_under_a_prefix_is_said_once_and_only_then(store: dict[str, Any]) -> None:
    bucket = store["root"] / "bucket"
    (bucket / "docs").mkdir()
    (bucket / "docs" / "notes.txt").write_text("x", encoding="utf-8")
    write_images(bucket / "photos", 1)
    warnings: list[str] = []
    found = list(
        objects.iter_sources(["s3://bucket/docs", "s3://bucket/photos"], warn=warnings.append)
    )
    assert [s.input for s in found] == ["s3://bucket/photos/img00.png"]
    assert warnings == ["no images found under 's3://bucket/docs'"]


def test_an_unlistable_prefix_is_said_and_the_others_are_listed(store: dict[str, Any]) -> None:
    bucket = store["root"] / "bucket"
    write_images(bucket / "photos" / "a", 1)
    write_images(bucket / "photos" / "b", 1)
    store["store"] = Store(store["root"], refuse="bucket/photos/a")
    warnings: list[str] = []
    found = [s.input for s in objects.iter_sources(["s3://bucket/photos"], warn=warnings.append)]
    assert found == ["s3://bucket/photos/b/img00.png"]
    assert warnings == ["cannot list 's3://bucket/photos/a': access denied"]


def test_a_prefix_gone_before_it_is_listed_is_nothing_to_say(store: dict[str, Any]) -> None:
    """Object stores list eventually: a prefix deleted meanwhile is empty, not an error."""
    bucket = store["root"] / "bucket"
    write_images(bucket / "photos", 1)
    write_images(bucket / "photos" / "sub", 1)
    warnings: list[str] = []
    sources = objects.iter_sources(["s3://bucket/photos"], warn=warnings.append)
    assert next(sources).input == "s3://bucket/photos/img00.png"
    for name in (bucket / "photos" / "sub").iterdir():
        name.unlink()
    (bucket / "photos" / "sub").rmdir()
    assert list(sources) == []
    assert warnings == []


def test_local_inputs_are_expanded_as_the_local_engine_does(
    store: dict[str, Any], tmp_path: Path
) -> None:
    """Warnings, standard input's cap and missing names: the same as sources.iter_sources."""
    from resnext_cli.inputs import sources

    empty = tmp_path / "empty"
    empty.mkdir()
    missing = str(tmp_path / "missing.jpg")
    image = (write_images(tmp_path / "one", 1)[0]).read_bytes()

    def both(specs: list[str], stdin: bytes = b"", cap: int = 1 << 20) -> list[Any]:
        seen = []
        for expand in (objects.iter_sources, sources.iter_sources):
            warnings: list[str] = []
            found = expand(
                specs, stdin=io.BytesIO(stdin), warn=warnings.append, max_stdin_bytes=cap
            )
            seen.append(([_source_facts(s) for s in found], warnings))
        return seen

    for specs, stdin, cap in (
        ([str(empty)], b"", 1 << 20),
        ([missing], b"", 1 << 20),
        (["-"], image, 10),  # image bytes over the cap
        (["-"], missing.encode() + b"\n", 1 << 20),  # a list naming a missing file
    ):
        ours, theirs = both(specs, stdin, cap)
        assert ours == theirs
        assert ours[0] or ours[1]  # something was said
    ours, _ = both(["-"], image, 10)
    assert ours[0][0][2] is not None  # the cap refused the bytes


def test_an_object_uri_listed_on_standard_input_warns_through_the_run(
    store: dict[str, Any],
) -> None:
    (store["root"] / "bucket" / "docs").mkdir()
    warnings: list[str] = []
    listing = io.BytesIO(b"s3://bucket/docs/\n")
    assert list(objects.iter_sources(["-"], stdin=listing, warn=warnings.append)) == []
    assert warnings == ["no images found under 's3://bucket/docs/'"]


def test_a_read_asks_for_one_byte_over_the_cap_and_no_more(store: dict[str, Any]) -> None:
    (store["root"] / "bucket" / "blob.png").write_bytes(b"x" * 100)
    assert objects.read_object("s3://bucket/blob.png", 100) == b"x" * 100  # exactly the cap
    with pytest.raises(InputError) as exc:
        objects.read_object("s3://bucket/blob.png", 99)
    assert (exc.value.error_type, exc.value.message) == (
        "too_large",
        "'s3://bucket/blob.png' is over the 99-byte download limit",
    )
    assert store["store"].reads == [101, 100]


def test_a_read_that_fails_is_a_failed_download(store: dict[str, Any]) -> None:
    store["store"] = Store(store["root"], broken=True)
    with pytest.raises(InputError) as exc:
        objects.read_object("s3://bucket/blob.png", 100)
    assert (exc.value.error_type, exc.value.message) == (
        "download_failed",
        "cannot read 's3://bucket/blob.png': connection reset",
    )
