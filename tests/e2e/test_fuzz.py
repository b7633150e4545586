"""Arbitrary bytes as image files: every file ends as exactly one record, never a crash."""

from __future__ import annotations

import io
import itertools
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from resnext_cli import Classifier
from resnext_cli.errors import INPUT_ERROR_TYPES, InputError
from resnext_cli.imaging.preprocess import DecodeOptions, decode
from resnext_cli.results import Classified, Failed
from tests.conftest import natural_image

# Hostile files make Pillow warn (odd TIFF tags, bad EXIF, huge headers); expected here.
pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning:PIL", "ignore::PIL.Image.DecompressionBombWarning"
)
# Small limits keep a mutated header from asking for a huge (but legal) picture.
MAX_PIXELS = 1 << 20
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,  # no example database in the checkout
    suppress_health_check=[HealthCheck.too_slow],
)


def _seed_files() -> dict[str, bytes]:
    """One small valid file per format Pillow can write here, to mutate."""
    picture = natural_image(5, (40, 30))
    out: dict[str, bytes] = {}
    for fmt, mode in [
        ("PNG", "RGBA"),
        ("JPEG", "RGB"),
        ("GIF", "P"),
        ("TIFF", "RGB"),
        ("WEBP", "RGB"),
        ("BMP", "RGB"),
        ("ICO", "RGBA"),
        ("PPM", "RGB"),
        ("TGA", "RGB"),
        ("PCX", "RGB"),
        ("SGI", "RGB"),
        ("JPEG2000", "RGB"),
    ]:
        buf = io.BytesIO()
        try:
            picture.convert(mode).save(buf, fmt)
        except (OSError, KeyError, ValueError):  # a codec this Pillow lacks
            continue
        out[fmt] = buf.getvalue()
    return out


SEEDS = _seed_files()


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    """A valid file of some format, then cut short, overwritten or spliced into."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    how = draw(st.sampled_from(["cut", "overwrite", "splice"]))
    if how == "cut":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if how == "overwrite":
        for _ in range(draw(st.integers(1, 12))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    at = draw(st.integers(0, len(data)))
    return bytes(data[:at]) + draw(st.binary(min_size=1, max_size=64)) + bytes(data[at:])


any_file = st.one_of(st.binary(max_size=4096), damaged_images())


def test_the_seed_files_are_images() -> None:
    # Otherwise the mutations start from nothing worth mutating.
    assert {"PNG", "JPEG", "GIF", "TIFF", "BMP"} <= set(SEEDS)
    for fmt, data in SEEDS.items():
        assert Image.open(io.BytesIO(data)).format == fmt


@FUZZ
@given(data=any_file)
def test_decode_returns_rgb_or_raises_a_typed_error(data: bytes) -> None:
    try:
        img = decode(io.BytesIO(data), "fuzz", DecodeOptions(max_pixels=MAX_PIXELS))
    except InputError as exc:
        assert exc.error_type in INPUT_ERROR_TYPES
        assert exc.message
    else:
        assert img.mode == "RGB"
        assert img.width * img.height <= MAX_PIXELS


@pytest.fixture(scope="module")
def classifier(checkpoint: Path) -> Classifier:
    """The real pipeline and the real network (resnext50 from the seeded checkpoint)."""
    return Classifier(
        checkpoint=str(checkpoint), topk=1, batch_size=2, workers=2, max_pixels=MAX_PIXELS
    )


@pytest.fixture(scope="module")
def categories() -> list[str]:
    """ImageNet's class names as torchvision's metadata has them: the independent reference."""
    from torchvision.models import ResNeXt50_32X4D_Weights

    names: list[str] = ResNeXt50_32X4D_Weights.DEFAULT.meta["categories"]
    return names


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


SUFFIXES = [".jpg", ".png", ".gif", ".tif", ".webp", ".bmp", ".JPEG"]


def test_every_seed_format_and_odd_shape_reaches_the_network(
    classifier: Classifier, categories: list[str], scratch: Path
) -> None:
    # The fuzzed files below may all fail to decode; these are sure to be classified.
    folder = Path(tempfile.mkdtemp(dir=scratch))
    suffixes = {"JPEG2000": "jp2", "JPEG": "jpg", "TIFF": "tif"}
    for fmt, data in SEEDS.items():
        (folder / f"seed.{suffixes.get(fmt, fmt.lower())}").write_bytes(data)
    for w, h in [(1, 1), (300, 1)]:
        natural_image(w + h, (max(w, 2), max(h, 2))).resize((w, h)).save(folder / f"{w}x{h}.png")
    records = list(classifier.classify([str(folder)]))
    assert len(records) == len(SEEDS) + 2
    for record in records:
        assert isinstance(record, Classified), record
        [top] = record.predictions
        assert top.label == categories[top.index] and 1e-3 <= top.probability <= 1.0


# Few examples: each classified picture goes through the whole resnext50 on the CPU.
@settings(FUZZ, max_examples=12)
@given(files=st.lists(st.tuples(any_file, st.sampled_from(SUFFIXES)), min_size=1, max_size=3))
def test_every_file_in_a_folder_gets_one_record(
    classifier: Classifier,
    categories: list[str],
    scratch: Path,
    files: list[tuple[bytes, str]],
) -> None:
    folder = Path(tempfile.mkdtemp(dir=scratch))
    names = []
    for number, (data, suffix) in zip(itertools.count(), files):
        path = folder / f"{number:02d}{suffix}"
        path.write_bytes(data)
        names.append(str(path))
    records = list(classifier.classify([str(folder)]))
    assert [r.input for r in records] == names
    for record in records:
        if isinstance(record, Failed):
            assert record.error_type in INPUT_ERROR_TYPES
            continue
        assert isinstance(record, Classified)
        [top] = record.predictions
        assert 0 <= top.index < 1000 and top.label == categories[top.index]
        # A top-1 of 1000 softmax probabilities is at least 1/1000, never NaN.
        assert 1e-3 <= top.probability <= 1.0, record
