"""preprocess.py's functions in-process: pixel budgets, scaling rules, errors, crops.

Expected values come from Pillow and torchvision themselves or from arithmetic written
out here (the documented rules), never from preprocess's own expressions.
"""

from __future__ import annotations

import errno
import io
import struct
import threading
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from resnext_cli.errors import InputError
from resnext_cli.imaging import preprocess
from resnext_cli.imaging.preprocess import DecodeOptions, Preprocess, decode, limit_aspect, to_rgb
from tests.conftest import natural_image

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning:PIL", "ignore::PIL.Image.DecompressionBombWarning"
)
EXIF_ORIENTATION = 0x0112
TRUNCATED = "'x' is truncated or damaged ({}); --allow-truncated keeps what decodes"


def encode(img: Image.Image, fmt: str = "PNG", **save: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def decode_bytes(data: bytes, **options: Any) -> Image.Image:
    return decode(io.BytesIO(data), "x", DecodeOptions(**options))


def error_of(fp: Any, **options: Any) -> tuple[str, str]:
    with pytest.raises(InputError) as info:
        decode(fp, "x", DecodeOptions(**options))
    return info.value.error_type, info.value.message


def gray_row(img: Image.Image) -> list[int]:
    """The one row of an RGB image whose three bands are equal, as gray values."""
    pixels = np.asarray(img)
    assert pixels.shape[0] == 1 and img.mode == "RGB"
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    return [int(v) for v in pixels[0, :, 0]]


def half_up(value: float) -> int:
    """Round half up, as the documented 8-bit scaling does (127.5 -> 128)."""
    return int(np.floor(value + 0.5))


# -- formats: WMF is refused like EPS -------------------------------------------------


def placeable_wmf() -> bytes:
    """A Windows metafile with a valid placeable header (20x15 at 1440 units an inch)."""
    words = [0xCDD7, 0x9AC6, 0, 0, 0, 400, 300, 1440, 0, 0]
    checksum = 0
    for word in words:
        checksum ^= word
    header = struct.pack("<HHHhhhhHHHH", *words, checksum)
    return header + b"\x01\x00\x09\x00\x00\x03" + bytes(40)


def test_a_windows_metafile_is_not_an_image() -> None:
    data = placeable_wmf()
    assert Image.open(io.BytesIO(data)).format == "WMF"  # Pillow would take it
    assert error_of(io.BytesIO(data)) == ("not_an_image", "'x' is not an image Pillow can read")


# -- pixel limits: Pillow's own refusal, lifted for one call --------------------------


def test_pillows_refusal_stands_up_to_twice_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = encode(Image.new("RGB", (50, 50)))  # 2500 pixels, over Pillow's 2 x 1000
    # --max-pixels at exactly twice Pillow's limit: Pillow's own refusal, from the header.
    assert error_of(io.BytesIO(data), max_pixels=2000) == (
        "too_large",
        "'x' has 2500 pixels, over the 2000 limit (raise the limit with --max-pixels)",
    )
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_a_higher_limit_lifts_pillows_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    fits = encode(Image.new("RGB", (48, 50), (4, 5, 6)))  # 2400 pixels
    img = decode_bytes(fits, max_pixels=2500)
    assert img.size == (48, 50) and img.getpixel((0, 0)) == (4, 5, 6)
    # Lifted to --max-pixels, not removed: Pillow still refuses over twice that.
    huge = encode(Image.new("RGB", (100, 100)))  # 10000 pixels > 2 x 2500
    assert error_of(io.BytesIO(huge), max_pixels=2500) == (
        "too_large",
        "'x' has 10000 pixels, over the 2500 limit (raise the limit with --max-pixels)",
    )
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_a_higher_limit_still_refuses_vector_formats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert error_of(io.BytesIO(placeable_wmf()), max_pixels=5000) == (
        "not_an_image",
        "'x' is not an image Pillow can read",
    )


def test_pillows_limit_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    data = encode(Image.new("RGB", (50, 50), (1, 2, 3)))
    assert decode_bytes(data).getpixel((49, 49)) == (1, 2, 3)
    assert error_of(io.BytesIO(data), max_pixels=2000) == (
        "too_large",
        "'x' is 50x50 = 2500 pixels, over the 2000 limit (raise the limit with --max-pixels)",
    )
    assert Image.MAX_IMAGE_PIXELS is None


def test_a_pillow_refusal_without_a_pixel_count() -> None:
    class Bomb(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise Image.DecompressionBombError("too big")

    assert error_of(Bomb(b""), max_pixels=1000) == (
        "too_large",
        "'x' has more than 1000 pixels (raise the limit with --max-pixels)",
    )


# -- deep pixels: 16-bit, 32-bit and float scaled onto 0..255 -------------------------


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16_bit_pixels_are_divided_by_257_even_when_dark(mode: str) -> None:
    values = [0, 100, 255, 257 * 77, 65535]
    dtype = ">u2" if mode == "I;16B" else "<u2"
    img = Image.frombytes(mode, (5, 1), np.array(values, dtype=dtype).tobytes())
    assert gray_row(to_rgb(img)) == [half_up(v / 257) for v in values]  # 0, 0, 1, 77, 255


def test_16_bit_png_of_dark_values() -> None:
    data = encode(Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint16)))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert gray_row(decode_bytes(data)) == [0, 0, 1]  # 128 / 257 = 0.498, 255 / 257 = 0.99


def test_16_bit_png_with_a_transparent_value() -> None:
    img = Image.fromarray(np.array([[0, 30000, 65535, 257 * 40]], dtype=np.uint16))
    data = encode(img, transparency=30000)
    opened = Image.open(io.BytesIO(data))
    assert (opened.mode, opened.info["transparency"]) == ("I;16", 30000)
    # PNG's tRNS for grey: pixels of that value are fully transparent, so white here.
    assert gray_row(decode_bytes(data)) == [0, 255, 255, 40]


def int32_tiff(values: list[int]) -> bytes:
    return encode(Image.fromarray(np.array([values], dtype=np.int32)), "TIFF")


def float_tiff(values: list[float]) -> bytes:
    return float_tiff_of(np.array([values], dtype=np.float32))


def float_tiff_of(values: np.ndarray[Any, Any]) -> bytes:
    return encode(Image.fromarray(values), "TIFF")


def test_the_16_bit_range_ends_at_65535() -> None:
    # Up to 65535 the values are 16-bit data (/ 257); one more, and they are stretched
    # from their minimum to their maximum (* 255 / 65536): 64893 falls either side of .5.
    assert gray_row(decode_bytes(int32_tiff([0, 64893, 65535]))) == [0, 253, 255]
    assert 64893 / 257 > 252.5 > 64893 * 255 / 65536
    assert gray_row(decode_bytes(int32_tiff([0, 64893, 65536]))) == [0, 252, 255]


@pytest.mark.parametrize(
    ("values", "want"),
    [
        ([0, 128, 256], [0, 0, 1]),  # one over 255: 16-bit data, / 257
        ([0, 300, 1000], [0, 1, 4]),  # from 0, within 65535: / 257, not stretched
        ([1000, 30000, 65535], [4, 117, 255]),  # up to 65535 exactly: / 257
        ([1000, 30000, 65536], [0, 115, 255]),  # one over: stretched from 1000 to 65536
    ],
)
def test_the_16_bit_range_of_32_bit_pixels(values: list[int], want: list[int]) -> None:
    low, high = values[0], values[-1]
    if high <= 65535:
        assert want == [half_up(v / 257) for v in values]
    else:
        assert want == [half_up((v - low) * 255 / (high - low)) for v in values]
    assert gray_row(decode_bytes(int32_tiff(values))) == want


@pytest.mark.parametrize("value", [-5, 100_000])
def test_a_constant_image_out_of_range_is_black(value: int) -> None:
    assert gray_row(decode_bytes(int32_tiff([value] * 3))) == [0, 0, 0]


@pytest.mark.parametrize(("value", "want"), [(7.0, 7), (0.5, 128), (300.0, 1)])
def test_a_constant_float_image(value: float, want: int) -> None:
    # 7 is within 0..255: as it is; 0.5 within 0..1: * 255; 300 within 0..65535: / 257.
    assert gray_row(decode_bytes(float_tiff([value] * 3))) == [want] * 3


def test_a_float_image_with_nothing_finite() -> None:
    nan, inf = float("nan"), float("inf")
    assert gray_row(decode_bytes(float_tiff([nan, nan]))) == [0, 0]
    assert gray_row(decode_bytes(float_tiff([nan, inf, -inf]))) == [0, 255, 0]


def test_a_float_image_just_over_one_is_not_a_unit_image() -> None:
    assert gray_row(decode_bytes(float_tiff([0.0, 1.0001, 1.0]))) == [0, 1, 1]
    # Below zero: stretched from -0.5 to 1, so 0 is a third of the way up.
    assert gray_row(decode_bytes(float_tiff([-0.5, 0.0, 1.0]))) == [0, 85, 255]


def test_a_very_tall_thin_float_image_converts_in_one_pass() -> None:
    # A 1 x 1,000,000 float image: the strips tile it once (at most a million pixels
    # each), where strips starting on every row would convert it a million times over.
    values = np.linspace(0, 1, 1_000_000, dtype=np.float32).reshape(-1, 1)
    data = float_tiff_of(values)
    box: list[Image.Image] = []
    worker = threading.Thread(target=lambda: box.append(decode_bytes(data)), daemon=True)
    worker.start()
    worker.join(60)
    assert box, "still converting after 60 s"
    got = np.asarray(box[0])[:, 0, 0]
    assert got.shape == (1_000_000,)
    assert (got[0], got[499_999], got[-1]) == (0, half_up(499_999 / 999_999 * 255), 255)


# -- alpha: every mode with an alpha band is composited onto white ----------------------


def test_palette_with_alpha_is_composited_onto_white() -> None:
    img = Image.new("PA", (3, 1))
    img.putpalette([200, 100, 50] * 256)
    img.putdata([(0, 0), (0, 255), (0, 128)])  # type: ignore[list-item]
    half = tuple(round((c * 128 + 255 * 127) / 255) for c in (200, 100, 50))
    got = list(to_rgb(img).get_flattened_data())
    assert got[:2] == [(255, 255, 255), (200, 100, 50)]
    assert all(abs(a - b) <= 1 for a, b in zip(got[2], half, strict=True))


def test_premultiplied_alpha_is_composited_onto_white() -> None:
    # Premultiplied colour c at alpha a over white: c + 255 - a.
    img = Image.new("RGBa", (2, 1))
    img.putdata([(0, 0, 0, 0), (50, 25, 10, 128)])  # type: ignore[list-item]
    got = list(to_rgb(img).get_flattened_data())
    want = [(255, 255, 255), (50 + 127, 25 + 127, 10 + 127)]
    for g, w in zip(got, want, strict=True):
        assert all(abs(a - b) <= 1 for a, b in zip(g, w, strict=True)), (got, want)


# -- EXIF: no orientation tag, no turn ------------------------------------------------


def test_exif_without_an_orientation_tag_keeps_the_stored_pixels() -> None:
    stored = Image.new("RGB", (3, 2))
    stored.putdata([(10 * x, 50 * y, 7) for y in range(2) for x in range(3)])
    exif = Image.Exif()
    exif[0x010F] = "a camera maker"
    img = decode_bytes(encode(stored, exif=exif))
    assert img.get_flattened_data() == stored.get_flattened_data()


# -- JPEG draft decoding: only when asked, never with --exact -------------------------


def test_draft_decoding_only_without_exact() -> None:
    data = encode(natural_image(8, (1000, 800)), "JPEG", quality=90)
    # JPEG scales by 1/2, 1/4 or 1/8; 1/4 is the smallest that keeps both sides >= 200.
    assert decode_bytes(data, draft_min_side=200).size == (250, 200)
    # --exact is drafting's 0 in the plan (see test_plan): the full picture, as the reference.
    assert decode_bytes(data, draft_min_side=0, upright=False, plain_rgb=True).size == (1000, 800)
    assert decode_bytes(data).size == (1000, 800)  # nothing asked, nothing drafted
    assert decode_bytes(data).size == (1000, 800)
    png = encode(natural_image(8, (1000, 800)))
    assert decode_bytes(png, draft_min_side=200).size == (1000, 800)


# -- errors while reading: the disk, memory, the decoder ------------------------------


class FailingFile(io.BytesIO):
    """Image bytes that raise *exc* once a read reaches *at*."""

    def __init__(self, data: bytes, at: int, exc: BaseException) -> None:
        super().__init__(data)
        self.at, self.exc = at, exc

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= self.at:
            raise self.exc
        return super().read(size)


PNG = encode(natural_image(9, (64, 48)))
# Opening reads up to the first IDAT chunk's header; decoding reads on from there.
AT_OPEN, AT_LOAD = 0, PNG.index(b"IDAT") + 4


READ_ERRORS: list[tuple[BaseException, str, str]] = [
    (OSError(errno.EIO, "Input/output error"), "unreadable", "cannot read 'x': Input/output error"),
    (MemoryError(), "too_large", "'x' needs more memory than there is to decode"),
    (OSError("decoder jpeg2k not available"), "unreadable", "cannot decode 'x': {}"),
    (ValueError("mode Not Supported here"), "unreadable", "cannot decode 'x': {}"),
    (OSError("UNSUPPORTED layout"), "unreadable", "cannot decode 'x': {}"),
    (RuntimeError(), "truncated", TRUNCATED.format("RuntimeError")),
    (SyntaxError("broken data stream"), "truncated", TRUNCATED),
    (ValueError("y" * 120), "truncated", TRUNCATED),  # 120 characters: whole
    (ValueError("y" * 121), "truncated", TRUNCATED.format("y" * 117 + "...")),
]


@pytest.mark.parametrize("at", [AT_OPEN, AT_LOAD])
@pytest.mark.parametrize(("exc", "error_type", "message"), READ_ERRORS)
def test_errors_while_reading(at: int, exc: BaseException, error_type: str, message: str) -> None:
    if at == AT_LOAD:
        assert Image.open(io.BytesIO(PNG[:AT_LOAD])).size == (64, 48)  # opens without more
    assert error_of(FailingFile(PNG, at, exc)) == (error_type, message.format(exc))


def test_a_refusal_to_decode_from_pillow_itself() -> None:
    bmp = bytearray(encode(Image.new("RGB", (4, 4)), "BMP"))
    struct.pack_into("<I", bmp, 30, 7)  # the compression field: no such method
    assert error_of(io.BytesIO(bytes(bmp))) == (
        "unreadable",
        "cannot decode 'x': Unsupported BMP compression (7)",
    )


def test_a_pillow_refusal_while_decoding() -> None:
    exc = Image.DecompressionBombError(
        "Image size (5000 pixels) exceeds limit of 2000 pixels, could be decompression bomb"
    )
    assert error_of(FailingFile(PNG, AT_LOAD, exc), max_pixels=4000) == (
        "too_large",
        "'x' has 5000 pixels, over the 4000 limit (raise the limit with --max-pixels)",
    )
    bare = Image.DecompressionBombError("too big")
    assert error_of(FailingFile(PNG, AT_LOAD, bare), max_pixels=4000) == (
        "too_large",
        "'x' has more than 4000 pixels (raise the limit with --max-pixels)",
    )


@pytest.mark.parametrize(
    "exc", [ValueError("conversion not supported"), OSError("image file is broken")]
)
def test_a_conversion_that_fails_is_an_error_record(
    exc: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(img: Image.Image) -> Image.Image:
        raise exc

    monkeypatch.setattr(preprocess, "to_rgb", fail)
    data = encode(Image.new("LA", (4, 4)))
    assert error_of(io.BytesIO(data)) == (
        "unreadable",
        f"cannot convert 'x' from LA pixels to RGB: {exc}",
    )


class Unseekable(io.RawIOBase):
    """A stream that cannot seek, like a pipe."""

    def __init__(self, data: bytes) -> None:
        self.inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self.inner.readinto(buffer)


def test_an_unseekable_stream_of_junk_is_not_an_image() -> None:
    assert error_of(Unseekable(b"junk" * 100)) == (
        "not_an_image",
        "'x' is not an image Pillow can read",
    )


# -- limit_aspect: the middle of an over-long picture ----------------------------------


def columns(width: int, height: int) -> Image.Image:
    """Pixel (x, y) is (x, y, 0): a crop shows which columns and rows it kept."""
    img = Image.new("RGB", (width, height))
    img.putdata([(x, y, 0) for y in range(height) for x in range(width)])
    return img


def kept(img: Image.Image) -> tuple[list[int], list[int]]:
    """The columns and rows of columns()'s picture that *img* holds."""
    pixels = np.asarray(img)
    return [int(v) for v in pixels[0, :, 0]], [int(v) for v in pixels[:, 0, 1]]


@pytest.mark.parametrize(
    ("size", "max_aspect", "want_columns", "want_rows"),
    [
        ((40, 2), 16, range(4, 36), range(2)),  # 32 of 40 columns, 4 off each side
        ((41, 2), 16, range(4, 36), range(2)),  # 9 over: 4 off the left, 5 off the right
        ((35, 2), 16, range(1, 33), range(2)),  # 3 over: 1 off the left, 2 off the right
        ((2, 40), 16, range(2), range(4, 36)),
        ((2, 35), 16, range(2), range(1, 33)),
        ((40, 2), 4, range(16, 24), range(2)),
        ((21, 5), 4, range(0, 20), range(5)),
        ((5, 23), 4, range(5), range(1, 21)),
        ((20, 5), 4, range(20), range(5)),  # exactly 4:1: whole
    ],
)
def test_limit_aspect_keeps_the_middle(
    size: tuple[int, int], max_aspect: int, want_columns: range, want_rows: range
) -> None:
    got = limit_aspect(columns(*size), max_aspect)
    assert kept(got) == (list(want_columns), list(want_rows))


# -- Preprocess: the weights' own transforms, whatever they are ------------------------


class OtherWeights:
    """Weights whose transforms differ from ResNeXt's in every setting."""

    @staticmethod
    def transforms() -> ImageClassification:
        return ImageClassification(
            crop_size=200,
            resize_size=210,
            mean=(0.5, 0.4, 0.3),
            std=(0.2, 0.25, 0.3),
            interpolation=InterpolationMode.BICUBIC,
            antialias=False,  # Pillow antialiases anyway; the GPU decoder reads the setting
        )


# The reference transform warns that Pillow antialiases whatever antialias says.
@pytest.mark.filterwarnings("ignore:Anti-alias option is always applied:UserWarning")
@pytest.mark.parametrize("size", [(300, 220), (150, 400)])
def test_preprocess_follows_the_weights_transforms(size: tuple[int, int]) -> None:
    img = natural_image(12, size)
    split = Preprocess(OtherWeights())
    assert (split.resize_size, split.crop_size, split.antialias) == ([210], [200], False)
    crop = split(img)
    assert crop.dtype == torch.uint8 and crop.shape == (3, 200, 200)
    assert torch.equal(split.normalize(crop[None])[0], OtherWeights.transforms()(img))


def test_preprocess_keeps_resnexts_settings() -> None:
    weights = torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V2
    split = Preprocess(weights)
    # torchvision's metadata for these weights: resize 232, crop 224, antialiased bilinear.
    assert (split.resize_size, split.crop_size) == ([232], [224])
    assert (split.interpolation, split.antialias) == (InterpolationMode.BILINEAR, True)
    assert (split.mean, split.std) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
