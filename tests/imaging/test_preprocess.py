"""preprocess.py's functions in-process: each mode to RGB as a person sees it, EXIF
orientation, broken files, pixel budgets and memory, scaling rules, errors, crops.

Expected values come from Pillow and torchvision themselves or from arithmetic written
out here (the documented rules), never from preprocess's own expressions.
"""

from __future__ import annotations

import errno
import io
import random
import struct
import threading
import tracemalloc
from collections.abc import Callable
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
from tests.conftest import EPS, PDF, SVG, natural_image, oriented_png, png_with_header

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


Pixel = tuple[int, ...]


def decode_error(data: bytes, **options: Any) -> InputError:
    with pytest.raises(InputError) as info:
        decode_bytes(data, **options)
    return info.value


def grid(img: Image.Image) -> list[list[Pixel]]:
    width, height = img.size
    return [[img.getpixel((x, y)) for x in range(width)] for y in range(height)]  # type: ignore[misc]


def row(img: Image.Image) -> list[Pixel]:
    assert img.size[1] == 1
    return grid(img)[0]


def assert_close(got: list[Pixel], want: list[Pixel], tol: int = 0) -> None:
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w) and all(abs(a - b) <= tol for a, b in zip(g, w, strict=True)), (
            got,
            want,
        )


def gray(*values: int) -> list[Pixel]:
    return [(v, v, v) for v in values]


def over_white(value: int, alpha: int) -> int:
    """A channel *value* at *alpha*, composited onto white."""
    return round((value * alpha + 255 * (255 - alpha)) / 255)


# -- modes: each converted to RGB as a person sees it -----------------------------------


def test_grayscale_and_bilevel() -> None:
    gray_img = Image.new("L", (4, 1))
    gray_img.putdata([0, 1, 128, 255])
    assert row(decode_bytes(encode(gray_img, "PNG"))) == gray(0, 1, 128, 255)
    bilevel = Image.new("1", (2, 1))
    bilevel.putdata([0, 255])
    assert row(decode_bytes(encode(bilevel, "PNG"))) == gray(0, 255)


def palette_image() -> Image.Image:
    img = Image.new("P", (3, 1))
    img.putpalette([10, 20, 30, 200, 100, 50, 0, 90, 180])
    img.putdata([0, 1, 2])
    return img


def test_palette_without_and_with_transparency() -> None:
    img = palette_image()
    assert row(decode_bytes(encode(img, "PNG"))) == [(10, 20, 30), (200, 100, 50), (0, 90, 180)]
    # Entry 1 is transparent: white, not the (200, 100, 50) stored under it.
    assert row(decode_bytes(encode(img, "PNG", transparency=1))) == [
        (10, 20, 30),
        (255, 255, 255),
        (0, 90, 180),
    ]
    assert row(decode_bytes(encode(img, "GIF", transparency=1)))[1] == (255, 255, 255)
    # Per-entry alpha (tRNS with one byte per palette entry): 255, 128 and 0.
    partial = row(decode_bytes(encode(img, "PNG", transparency=bytes([255, 128, 0]))))
    half = tuple(over_white(c, 128) for c in (200, 100, 50))
    assert_close(partial, [(10, 20, 30), half, (255, 255, 255)], tol=1)


def test_gray_and_rgb_with_a_transparent_colour() -> None:
    gray_img = Image.new("L", (2, 1))
    gray_img.putdata([7, 90])
    assert row(decode_bytes(encode(gray_img, "PNG", transparency=7))) == gray(255, 90)
    rgb = Image.new("RGB", (2, 1), (10, 20, 30))
    rgb.putpixel((1, 0), (1, 2, 3))
    got = row(decode_bytes(encode(rgb, "PNG", transparency=(1, 2, 3))))
    assert got == [(10, 20, 30), (255, 255, 255)]


def test_alpha_is_composited_onto_white() -> None:
    la = Image.new("LA", (3, 1))
    la.putdata([(100, 0), (100, 255), (0, 128)])
    assert_close(row(decode_bytes(encode(la, "PNG"))), gray(255, 100, over_white(0, 128)), tol=1)
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(10, 200, 30, 0), (10, 200, 30, 255), (0, 0, 0, 64)])
    got = row(decode_bytes(encode(rgba, "PNG")))
    assert_close(got, [(255, 255, 255), (10, 200, 30), gray(over_white(0, 64))[0]], tol=1)


def test_exact_keeps_the_reference_conversion() -> None:
    # --exact is torchvision's loader: convert("RGB") drops alpha, showing the hidden colour.
    rgba = Image.new("RGBA", (1, 1), (10, 200, 30, 0))
    assert row(decode_bytes(encode(rgba, "PNG"), upright=False, plain_rgb=True)) == [(10, 200, 30)]


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk(fmt: str) -> None:
    cmyk = Image.new("CMYK", (16, 16), (10, 200, 30, 60))
    img = decode_bytes(encode(cmyk, fmt))
    want = tuple(round((255 - c) * (255 - 60) / 255) for c in (10, 200, 30))
    assert_close([img.getpixel((8, 8))], [want], tol=1 if fmt == "TIFF" else 6)  # type: ignore[list-item]


def test_ycbcr() -> None:
    ycc = Image.new("YCbCr", (2, 1))
    ycc.putdata([(128, 128, 128), (100, 150, 90)])
    data = encode(ycc, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "YCbCr"
    y, cb, cr = 100, 150 - 128, 90 - 128  # JFIF's YCbCr to RGB
    want = (y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb)
    got = row(decode_bytes(data))
    assert_close(got, [(128, 128, 128), tuple(round(v) for v in want)], tol=1)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    img = Image.fromarray(np.array([[0, 2570, 257 * 128, 65535, 1000]], dtype=np.uint16))
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    # v / 257, rounded: 1000 / 257 = 3.89.
    assert row(decode_bytes(data)) == gray(0, 10, 128, 255, 4)


@pytest.mark.parametrize(
    ("values", "want"),
    [
        ([0, 17, 255], [0, 17, 255]),  # 8-bit data in a 32-bit file: as it is
        ([0, 257 * 100, 65535], [0, 100, 255]),  # 16-bit data: / 257
        ([-1000, 0, 1000], [0, 128, 255]),  # anything else: stretched, 127.5 -> 128
    ],
)
def test_32_bit_integer_tiff(values: list[int], want: list[int]) -> None:
    data = encode(Image.fromarray(np.array([values], dtype=np.int32)), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert row(decode_bytes(data)) == gray(*want)


@pytest.mark.parametrize(
    ("values", "want"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # 0..1: times 255
        ([0.0, 100.0, 255.0], [0, 100, 255]),  # 0..255: as it is
        ([-2.0, 0.0, 2.0], [0, 128, 255]),  # stretched
        ([float("nan"), 0.0, 1.0, float("inf")], [0, 0, 255, 255]),  # NaN black, inf clipped
    ],
)
def test_float_tiff(values: list[float], want: list[int]) -> None:
    data = encode(Image.fromarray(np.array([values], dtype=np.float32)), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    assert row(decode_bytes(data)) == gray(*want)


def test_to_rgb_leaves_rgb_alone() -> None:
    img = Image.new("RGB", (1, 1), (1, 2, 3))
    assert to_rgb(img) is img


@pytest.mark.parametrize(
    ("fmt", "save"),
    [
        ("GIF", {}),
        ("TIFF", {}),
        ("WEBP", {"lossless": True}),
        ("PNG", {}),  # APNG
    ],
)
def test_multi_frame_files_use_the_first_frame(fmt: str, save: dict[str, Any]) -> None:
    first = Image.new("RGB", (8, 8), (200, 30, 40))
    second = Image.new("RGB", (8, 8), (10, 20, 250))
    data = encode(first, fmt, save_all=True, append_images=[second], **save)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    img = decode_bytes(data)
    assert {p for line in grid(img) for p in line} == {(200, 30, 40)}


# -- EXIF orientation ----------------------------------------------------------------


def displayed(stored: list[list[Pixel]], orientation: int) -> list[list[Pixel]]:
    """What a viewer shows for *stored* pixels, from the EXIF definition of each tag.

    Tag 5: stored row r is shown as column r, stored column c as row c; 6: rows become
    columns from the right; 7: from the right and bottom; 8: columns from the bottom.
    """
    h, w = len(stored), len(stored[0])
    rules: dict[int, tuple[int, int, Callable[[int, int], Pixel]]] = {
        1: (w, h, lambda x, y: stored[y][x]),
        2: (w, h, lambda x, y: stored[y][w - 1 - x]),
        3: (w, h, lambda x, y: stored[h - 1 - y][w - 1 - x]),
        4: (w, h, lambda x, y: stored[h - 1 - y][x]),
        5: (h, w, lambda x, y: stored[x][y]),
        6: (h, w, lambda x, y: stored[h - 1 - x][y]),
        7: (h, w, lambda x, y: stored[h - 1 - x][w - 1 - y]),
        8: (h, w, lambda x, y: stored[x][w - 1 - y]),
    }
    width, height, pick = rules[orientation]
    return [[pick(x, y) for x in range(width)] for y in range(height)]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    stored = Image.new("RGB", (3, 2))
    stored.putdata([(10 * (x + 1), 100 + 50 * y, 7) for y in range(2) for x in range(3)])
    data = oriented_png(stored, orientation)
    assert grid(decode_bytes(data)) == displayed(grid(stored), orientation)
    assert grid(decode_bytes(data, upright=False, plain_rgb=True)) == grid(stored)


def test_exif_rotated_camera_jpeg() -> None:
    # A camera held upright-right: the sensor's pixels are stored rotated, tag 6.
    upright = Image.new("RGB", (64, 32), (255, 0, 0))
    upright.paste((0, 0, 255), (32, 0, 64, 32))  # red left half, blue right half
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 32 wide, 64 tall
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    img = decode_bytes(encode(stored, "JPEG", exif=exif, quality=95))
    assert img.size == (64, 32)
    assert_close([img.getpixel((8, 16)), img.getpixel((56, 16))], [(255, 0, 0), (0, 0, 255)], 8)  # type: ignore[list-item]


def test_damaged_exif_does_not_cost_the_picture() -> None:
    img = Image.new("RGB", (4, 4), (1, 2, 3))
    data = encode(img, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff\x01")
    assert decode_bytes(data).size == (4, 4)


# -- broken files --------------------------------------------------------------------


def test_empty_random_and_vector_files_are_not_images() -> None:
    junk = random.Random(7).randbytes(4096)
    for data in (junk, SVG, PDF, EPS, b"\x00"):
        error = decode_error(data)
        assert (error.error_type, error.message) == (
            "not_an_image",
            "'x' is not an image Pillow can read",
        )
    error = decode_error(b"")
    assert (error.error_type, error.message) == ("not_an_image", "'x' is an empty file")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_files(fmt: str, keep: float) -> None:
    data = encode(natural_image(3, (160, 120)), fmt)
    cut = data[: int(len(data) * keep)]
    error = decode_error(cut)
    assert error.error_type == "truncated"
    assert error.message.startswith("'x' is truncated or damaged (")
    assert error.message.endswith("); --allow-truncated keeps what decodes")
    if keep == 0.9:  # what decodes of the first 90% is a picture of the full size
        assert decode_bytes(cut, allow_truncated=True).size == (160, 120)


def test_damaged_png_data() -> None:
    data = bytearray(encode(natural_image(4, (64, 48)), "PNG"))
    start = data.index(b"IDAT") + 40
    data[start : start + 32] = bytes(32)
    assert decode_error(bytes(data)).error_type == "truncated"


def test_decompression_bomb_is_refused_before_decoding() -> None:
    header = png_with_header(100_000, 100_000)
    error = decode_error(header)
    assert error.error_type == "too_large"
    # The documented default --max-pixels, Pillow's decompression-bomb limit.
    assert error.message == (
        "'x' has 10000000000 pixels, over the 178956970 limit (raise the limit with --max-pixels)"
    )
    # Under Pillow's own refusal but over a lowered limit: refused from the header alone.
    error = decode_error(png_with_header(15_000, 10_000), max_pixels=100_000_000)
    assert error.message == (
        "'x' is 15000x10000 = 150000000 pixels, over the 100000000 limit "
        "(raise the limit with --max-pixels)"
    )
    # A raised limit lets it through to decoding (which finds no pixel data).
    assert decode_error(png_with_header(20_000, 10_000), max_pixels=300_000_000).error_type == (
        "truncated"
    )


def test_max_pixels_small_limits() -> None:
    data = encode(natural_image(1, (64, 64)), "PNG")
    for limit in (4095, 1000):
        error = decode_error(data, max_pixels=limit)
        assert (error.error_type, error.message) == (
            "too_large",
            f"'x' is 64x64 = 4096 pixels, over the {limit} limit "
            "(raise the limit with --max-pixels)",
        )
    assert decode_bytes(data, max_pixels=4096).size == (64, 64)
    # Pillow's own limit is lifted for one call only, never left changed.
    before = Image.MAX_IMAGE_PIXELS
    decode_error(png_with_header(20_000, 10_000), max_pixels=300_000_000)
    assert before == Image.MAX_IMAGE_PIXELS


def test_tiny_and_thin_images() -> None:
    assert row(decode_bytes(encode(Image.new("RGB", (1, 1), (9, 8, 7)), "PNG"))) == [(9, 8, 7)]
    # A strip: red and blue ends, a green middle, which is all the centre crop keeps.
    strip = Image.new("RGB", (6000, 2), (255, 0, 0))
    strip.paste((0, 255, 0), (1000, 0, 5000, 2))
    strip.paste((0, 0, 255), (5000, 0, 6000, 2))
    assert limit_aspect(strip).size == (32, 2)
    assert limit_aspect(strip.transpose(Image.Transpose.ROTATE_90)).size == (2, 32)
    assert limit_aspect(Image.new("RGB", (32, 2))).size == (32, 2)
    transform = Preprocess(torchvision.models.ResNeXt50_32X4D_Weights.DEFAULT)
    resized: list[tuple[int, int]] = []
    real_resize = Image.Image.resize

    def resize(image: Image.Image, size: Any, *args: Any, **kwargs: Any) -> Image.Image:
        resized.append(tuple(size))
        return real_resize(image, size, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image.Image, "resize", resize)
        tensor = transform.normalize(transform(strip)[None])[0]
    # The strip was cut to 32:1 before resizing: a whole 6000 x 2 strip would have been
    # resized to 696,000 x 232 (minutes and gigabytes); the crop makes it 7,424 x 232 at most.
    assert resized and all(w * h <= 232 * 232 * 32 for w, h in resized), resized
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    green = (torch.tensor([0.0, 1.0, 0.0]) - mean) / std
    assert tensor.shape == (3, 224, 224)
    assert torch.allclose(tensor, green[:, None, None].expand(3, 224, 224), atol=1e-5)


# -- memory: one input costs about what the largest allowed 8-bit RGB image costs ----------


@pytest.mark.parametrize(
    ("mode", "per_pixel", "make"),
    [
        ("RGBA", 4, lambda: Image.new("RGBA", (30, 30), (1, 2, 3, 4))),
        ("F", 4, lambda: Image.fromarray(np.ones((30, 30), dtype=np.float32))),
        ("I", 4, lambda: Image.fromarray(np.ones((30, 30), dtype=np.int32))),
        ("CMYK", 4, lambda: Image.new("CMYK", (30, 30), (1, 2, 3, 4))),
    ],
)
def test_deep_pixels_count_against_the_rgb_budget(
    mode: str, per_pixel: int, make: Callable[[], Image.Image]
) -> None:
    # 900 pixels are under a 1000-pixel limit, but at 4 bytes each they outweigh 1000
    # pixels of 8-bit RGB (3000 bytes): refused before decoding, naming the limit.
    data = encode(make(), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == mode
    error = decode_error(data, max_pixels=1000)
    assert (error.error_type, error.message) == (
        "too_large",
        f"'x' is 30x30 {mode} pixels of {per_pixel} bytes = {900 * per_pixel} bytes decoded, "
        "over the 3000-byte limit (3 bytes per pixel of --max-pixels; "
        "raise the limit with --max-pixels)",
    )
    assert decode_bytes(data, max_pixels=1200).size == (30, 30)  # 3600 bytes fit


def test_shallow_pixels_fit_the_rgb_budget() -> None:
    rgb = encode(Image.new("RGB", (30, 30)), "PNG")
    gray16 = encode(Image.fromarray(np.ones((30, 30), dtype=np.uint16)), "PNG")
    assert Image.open(io.BytesIO(gray16)).mode == "I;16"
    for data in (rgb, gray16):
        assert decode_bytes(data, max_pixels=900).size == (30, 30)


def reference_8bit(values: np.ndarray[Any, Any], *, unit_range: bool) -> np.ndarray[Any, Any]:
    """_scale_to_8bit's documented rule, over the whole array at once."""
    data = values.astype(np.float64)
    finite = data[np.isfinite(data)]
    low, high = float(finite.min()), float(finite.max())
    if unit_range and low >= 0 and high <= 1:
        data = data * 255
    elif low >= 0 and high <= 255:
        pass
    elif low >= 0 and high <= 65535:
        data = data / 257
    else:
        data = (data - low) * (255 / (high - low))
    return np.clip(np.floor(np.nan_to_num(data, nan=0.0) + 0.5), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["float", "float-unit", "int32", "uint16"])
def test_deep_pixels_convert_in_strips_as_a_whole(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Strips of 3 rows (a partial one last), with the extremes in different strips.
    monkeypatch.setattr(preprocess, "_STRIP_PIXELS", 3 * 37)
    rng = np.random.default_rng(5)
    values: np.ndarray[Any, Any]
    if kind == "float":
        values = rng.normal(0, 40, (20, 37)).astype(np.float32)
        values[0, 0], values[10, 3], values[19, 36] = np.nan, np.inf, -np.inf
    elif kind == "float-unit":
        values = rng.random((20, 37)).astype(np.float32)
    elif kind == "int32":
        values = rng.integers(-70_000, 90_000, (20, 37)).astype(np.int32)
    else:
        values = rng.integers(0, 65536, (20, 37)).astype(np.uint16)
    data = encode(Image.fromarray(values), "PNG" if kind == "uint16" else "TIFF")
    if kind == "uint16":
        want = np.clip(np.floor(values / 257 + 0.5), 0, 255).astype(np.uint8)
    else:
        want = reference_8bit(values, unit_range=kind == "float-unit")
    got = np.asarray(decode_bytes(data))
    assert got.shape == (20, 37, 3)
    for band in range(3):
        assert np.array_equal(got[:, :, band], want)


def test_alpha_converts_in_strips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preprocess, "_STRIP_PIXELS", 2 * 23)
    rgba = np.random.default_rng(6).integers(0, 256, (9, 23, 4)).astype(np.uint8)
    got = np.asarray(decode_bytes(encode(Image.fromarray(rgba, "RGBA"), "PNG"))).astype(int)
    alpha = rgba[:, :, 3:].astype(int)
    want = (rgba[:, :, :3].astype(int) * alpha + 255 * (255 - alpha)) / 255
    assert np.abs(got - want).max() <= 1


def test_deep_pixels_never_take_a_whole_float64_copy() -> None:
    # A 6-megapixel float TIFF: one float64 copy of it is 48 MB; the old conversion
    # made several at once. numpy reports its buffers to tracemalloc.
    values = np.linspace(-5, 5, 3000 * 2000, dtype=np.float32).reshape(2000, 3000)
    data = encode(Image.fromarray(values), "TIFF")
    tracemalloc.start()
    try:
        img = decode_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert img.size == (3000, 2000)
    assert peak < 3000 * 2000 * 8, f"numpy peaked at {peak / 1e6:.0f} MB"


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
