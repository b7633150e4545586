"""Bytes to an upright RGB image to uint8 pixels, with the weights' own transforms."""

from __future__ import annotations

import functools
import io
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageMode, UnidentifiedImageError

from resnext_cli.errors import InputError
from resnext_cli.imaging.budget import Reservation, decode_cost
from resnext_cli.imaging.limits import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    import torch

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
EXIF_ORIENTATION = 0x0112

# Formats Pillow recognises but that are not raster images it can decode by itself:
# EPS runs Ghostscript (an attack surface for hostile files), WMF/EMF are vector drawings.
_REFUSED_FORMATS = frozenset({"EPS", "WMF"})

# Longest side an image may have, as a multiple of its shortest, before preprocessing.
# The centre crop only ever sees the middle of an image, but Resize scales the whole of
# it first: a 1x20000 strip would become 232x4,640,000 pixels (gigabytes) on the way.
MAX_ASPECT = 16

# Hostile files make Pillow warn (bad EXIF, odd TIFF tags, pixel counts near the limit);
# each becomes an error record or is harmless, so the warnings would only be noise.
# A global filter, because warnings.catch_warnings is not safe in decoding threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", category=UserWarning, module="PIL")


@dataclass(frozen=True)
class DecodeOptions:
    """How files become images.

    The defaults are resnext's own decoding; the reference pipeline (``--exact``, decided
    in the plan) is ``upright=False, plain_rgb=True`` at full size.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_truncated: bool = False
    # Smallest side JPEG draft decoding may shrink to (0: decode at full size).
    draft_min_side: int = 0
    # Turn photos upright by their EXIF orientation.
    upright: bool = True
    # Convert exactly as `Image.open(f).convert("RGB")`: alpha dropped, not composited onto
    # white, deep pixels clipped rather than scaled.
    plain_rgb: bool = False


_LIMIT_LOCK = threading.Lock()


@functools.cache
def _readable_formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in Image.ID if f not in _REFUSED_FORMATS)


def _open(fp: BinaryIO, max_pixels: int) -> Image.Image:
    """Image.open, letting Pillow's own bomb check through up to *max_pixels*.

    Pillow refuses more than twice its MAX_IMAGE_PIXELS while reading the header; a
    higher --max-pixels lifts that global for this one call (decode checks the size
    itself right after), under a lock, and puts it back.
    """
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is None or max_pixels <= 2 * pillow_limit:
        return Image.open(fp, formats=_readable_formats())
    with _LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            return Image.open(fp, formats=_readable_formats())
        finally:
            Image.MAX_IMAGE_PIXELS = saved


# Pixels converted at a time: a strip of a deep image costs tens of megabytes in float64,
# where the whole image at once cost gigabytes.
_STRIP_PIXELS = 1 << 20

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _strips(img: Image.Image) -> Iterator[tuple[int, int, int, int]]:
    """Boxes of whole rows covering *img*, about _STRIP_PIXELS pixels each."""
    width, height = img.size
    rows = max(1, _STRIP_PIXELS // max(1, width))
    for top in range(0, height, rows):
        yield (0, top, width, min(height, top + rows))


def _in_strips(img: Image.Image, convert: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """Convert *img* a strip at a time into one preallocated RGB image (paste makes it RGB)."""
    out = Image.new("RGB", img.size)
    for box in _strips(img):
        out.paste(convert(img.crop(box)), box[:2])
    return out


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    """Map 16-bit, 32-bit integer and float pixels onto 0..255 instead of clipping.

    16-bit data is divided by 257 (65535 -> 255). 32-bit integers and floats are read
    by their range: within 0..1 (floats only) times 255, within 0..255 as they are,
    within 0..65535 divided by 257, anything else stretched from its own minimum to
    its maximum. NaN becomes 0 and infinities are left out of the range, then clipped;
    a transparent value (a 16-bit grey PNG's tRNS) becomes white.
    Works in strips: the result is RGB, and memory never holds a float64 copy of it all.
    """

    def scaled(data: Any) -> Any:
        return data / 257

    if not img.mode.startswith("I;16"):
        low, high = np.inf, -np.inf
        for box in _strips(img):
            data = np.asarray(img.crop(box))
            finite = data[np.isfinite(data)]
            if finite.size:
                low, high = min(low, float(finite.min())), max(high, float(finite.max()))
        # A float image with nothing finite leaves low = inf, high = -inf, which the 0..1
        # range takes: NaN becomes 0 and infinities 0 or 255, as in any other image.
        if img.mode == "F" and low >= 0 and high <= 1:

            def scaled(data: Any) -> Any:
                return data * 255

        elif low >= 0 and high <= 255:

            def scaled(data: Any) -> Any:
                return data

        elif low >= 0 and high <= 65535:
            pass  # / 257, as 16-bit data
        elif high > low:
            factor = 255 / (high - low)

            def scaled(data: Any) -> Any:
                return (data - low) * factor

        else:

            def scaled(data: Any) -> Any:
                return np.zeros_like(data)

    # A 16-bit grey PNG may name one value transparent (tRNS): white, as in 8-bit images.
    key = img.info.get("transparency")

    def convert(strip: Image.Image) -> Image.Image:
        raw = np.asarray(strip)
        pixels = np.clip(np.floor(np.nan_to_num(scaled(raw.astype(np.float64))) + 0.5), 0, 255)
        if isinstance(key, int):
            pixels[raw == key] = 255
        return Image.fromarray(pixels.astype(np.uint8))  # 2-D uint8: mode L

    return _in_strips(img, convert)


def _onto_white(strip: Image.Image) -> Image.Image:
    rgba = strip.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba)  # opaque: pasted into RGB, the same colours


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB the way a person sees the picture.

    Transparent pixels are composited onto white, whatever colour hides under them;
    16-bit, 32-bit and float pixels are scaled into 0..255 (see _scale_to_8bit).
    Both work in strips, so the cost is the image and its RGB copy, no more.
    """
    if img.mode.startswith("I") or img.mode == "F":
        return _scale_to_8bit(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return _in_strips(img, _onto_white)
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


def _orientation(img: Image.Image) -> Image.Transpose | None:
    """The transpose its EXIF orientation asks for; a damaged EXIF block asks for none."""
    try:
        return _TRANSPOSE.get(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:
        return None


def bytes_per_pixel(mode: str) -> int:
    """Bytes a decoded pixel of *mode* holds: bands times bytes per band (RGB: 3)."""

    info = ImageMode.getmode(mode)  # every mode a Pillow image can have
    return len(info.bands) * np.dtype(info.typestr).itemsize


def _damaged(name: str, exc: Exception) -> InputError:
    """Type an error Pillow raised while reading a file it recognised."""
    text = str(exc) or exc.__class__.__name__
    if len(text) > 120:  # some decoders quote the junk they choked on
        text = text[:117] + "..."
    if isinstance(exc, MemoryError):
        return InputError("too_large", f"'{name}' needs more memory than there is to decode")
    if isinstance(exc, OSError) and exc.errno is not None:  # the disk failed, not the data
        return InputError("unreadable", f"cannot read '{name}': {exc.strerror or text}")
    lowered = text.lower()
    if "not available" in lowered or "unsupported" in lowered or "not supported" in lowered:
        return InputError("unreadable", f"cannot decode '{name}': {text}")
    return InputError(
        "truncated",
        f"'{name}' is truncated or damaged ({text}); --allow-truncated keeps what decodes",
    )


def _too_many_pixels(name: str, limit: int, size: tuple[int, int] | str) -> InputError:
    """The error for an image over the pixel limit; *size* is its size or Pillow's refusal."""
    if isinstance(size, tuple):
        width, height = size
        what = f"'{name}' is {width}x{height} = {width * height} pixels, over the {limit} limit"
    elif match := re.search(r"\((\d+) pixels\)", size):  # "Image size (N pixels) exceeds..."
        what = f"'{name}' has {match.group(1)} pixels, over the {limit} limit"
    else:
        what = f"'{name}' has more than {limit} pixels"
    return InputError("too_large", f"{what} (raise the limit with --max-pixels)")


def _is_empty(fp: BinaryIO) -> bool:
    try:
        return fp.seek(0, io.SEEK_END) == 0
    except (OSError, ValueError):
        return False


def _too_deep(name: str, img: Image.Image, max_pixels: int) -> InputError | None:
    """The error for an image whose decoded pixels outweigh the largest RGB image allowed.

    The budget is --max-pixels pixels of 8-bit RGB (3 bytes each): 16-bit, float, CMYK
    or RGBA pixels take more bytes each, so fewer of them fit.
    """
    width, height = img.size
    per_pixel = bytes_per_pixel(img.mode)
    needed, budget = width * height * per_pixel, 3 * max_pixels
    if needed <= budget:
        return None
    return InputError(
        "too_large",
        f"'{name}' is {width}x{height} {img.mode} pixels of {per_pixel} bytes = {needed} "
        f"bytes decoded, over the {budget}-byte limit (3 bytes per pixel of --max-pixels; "
        "raise the limit with --max-pixels)",
    )


def decode(
    fp: BinaryIO, name: str, options: DecodeOptions, reservation: Reservation | None = None
) -> Image.Image:
    """Open and fully decode one image (its first frame) into RGB, or raise an InputError.

    With a *reservation*, the pixels are decoded only once its budget holds their cost
    (read from the header); the caller gives it back when the picture is gone.
    """
    # Pillow reads this globally; every thread of a run sets the same value.
    ImageFile.LOAD_TRUNCATED_IMAGES = options.allow_truncated
    try:
        img = _open(fp, options.max_pixels)
    except UnidentifiedImageError:
        if _is_empty(fp):
            raise InputError("not_an_image", f"'{name}' is an empty file") from None
        raise InputError("not_an_image", f"'{name}' is not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(name, options.max_pixels, str(exc)) from None
    except Exception as exc:
        raise _damaged(name, exc) from None
    width, height = img.size
    if width * height > options.max_pixels:
        raise _too_many_pixels(name, options.max_pixels, img.size)
    if options.draft_min_side and img.format == "JPEG":
        side = options.draft_min_side
        img.draft(None, (side, side))  # scale only; the mode stays
    if (too_deep := _too_deep(name, img, options.max_pixels)) is not None:
        raise too_deep
    if reservation is not None:
        reservation.need(decode_cost(*img.size, img.mode))
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(name, options.max_pixels, str(exc)) from None
    except Exception as exc:
        raise _damaged(name, exc) from None
    mode = img.mode
    try:
        transpose = _orientation(img) if options.upright else None
        rgb = img.convert("RGB") if options.plain_rgb else to_rgb(img)
        del img  # a deep original is freed before the turned copy is made
        return rgb if transpose is None else rgb.transpose(transpose)
    except (ValueError, OSError) as exc:
        raise InputError(
            "unreadable", f"cannot convert '{name}' from {mode} pixels to RGB: {exc}"
        ) from None


def middle_box(
    width: int, height: int, max_aspect: int = MAX_ASPECT
) -> tuple[int, int, int, int] | None:
    """The (left, top, right, bottom) middle of an image whose long side exceeds
    *max_aspect* times its short one, or None when it does not."""
    short = min(width, height)
    if max(width, height) <= max_aspect * short:
        return None
    keep = max_aspect * short
    if width > height:
        left = (width - keep) // 2
        return left, 0, left + keep, height
    top = (height - keep) // 2
    return 0, top, width, top + keep


def limit_aspect(img: Image.Image, max_aspect: int = MAX_ASPECT) -> Image.Image:
    """Crop the middle of an image whose long side exceeds *max_aspect* times its short one."""
    box = middle_box(*img.size, max_aspect)
    return img if box is None else img.crop(box)


# torchvision's InterpolationMode values as Pillow's resampling filters (its
# pil_modes_mapping), so that cropping needs no torchvision.
_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


def _resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """torchvision's Resize(int) output (width, height): the short side to *short_side*,
    the long one scaled and truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(short_side * long / short)
    return (short_side, new_long) if width <= height else (new_long, short_side)


def _center_crop(img: Image.Image, width: int, height: int) -> Image.Image:
    """torchvision's CenterCrop on a Pillow image: padded with black first where smaller."""
    w, h = img.size
    if width > w or height > h:
        left = (width - w) // 2 if width > w else 0
        top = (height - h) // 2 if height > h else 0
        right = (width - w + 1) // 2 if width > w else 0
        bottom = (height - h + 1) // 2 if height > h else 0
        padded = Image.new(img.mode, (w + left + right, h + top + bottom))
        padded.paste(img, (left, top))
        img, (w, h) = padded, padded.size
        if (w, h) == (width, height):
            return img
    top = round((h - height) / 2.0)
    left = round((w - width) / 2.0)
    return img.crop((left, top, left + width, top + height))


class Preprocess:
    """The weights' own transforms(), split where a batch pipeline wants it.

    Per image, in a decoding thread: Resize and CenterCrop on the PIL image, then the
    uint8 pixels (a quarter of the float size to queue, pin and copy), in Pillow and
    numpy alone (`pixels`), for both runtimes. Per batch, on the model's device: scale
    to [0, 1] and Normalize. The arithmetic is torchvision's ImageClassification step for
    step (``to(float) / 255``, ``sub_(mean)``, ``div_(std)``), so the result is bit for bit
    the same.
    """

    def __init__(self, weights: object | None = None, **settings: Any) -> None:
        """Take the settings of torchvision *weights* (their transforms()), or the
        settings themselves as keywords (see `from_settings`)."""
        if weights is not None:
            factory: Callable[[], Any] = weights.transforms  # type: ignore[attr-defined]
            reference = factory()
            settings = {
                "resize_size": reference.resize_size[0],
                "crop_size": reference.crop_size[0],
                "interpolation": reference.interpolation.value,
                "antialias": reference.antialias,
                "mean": reference.mean,
                "std": reference.std,
            }
        self.resize_size: list[int] = [int(settings["resize_size"])]
        self.crop_size: list[int] = [int(settings["crop_size"])]
        # InterpolationMode's value: 'bilinear'.
        self.interpolation_name: str = str(settings["interpolation"])
        self.antialias: bool | None = settings["antialias"]
        self.mean: list[float] = [float(m) for m in settings["mean"]]
        self.std: list[float] = [float(s) for s in settings["std"]]

    @classmethod
    def from_settings(
        cls,
        *,
        resize_size: int,
        crop_size: int,
        interpolation: str,
        antialias: bool | None,
        mean: tuple[float, ...] | list[float],
        std: tuple[float, ...] | list[float],
    ) -> Preprocess:
        """The transforms from their settings (the registry's snapshot): no torchvision."""
        return cls(
            resize_size=resize_size,
            crop_size=crop_size,
            interpolation=interpolation,
            antialias=antialias,
            mean=mean,
            std=std,
        )

    @property
    def interpolation(self) -> Any:
        """Resize's torchvision InterpolationMode (imports torchvision)."""
        from torchvision.transforms import InterpolationMode

        return InterpolationMode(self.interpolation_name)

    def pixels(self, img: Image.Image) -> np.ndarray[Any, np.dtype[np.uint8]]:
        """Resize and centre-crop one image; return its uint8 CHW pixels as numpy.

        The same pixels as torchvision's resize, center_crop and pil_to_tensor: Pillow
        does the work in both.
        """
        # Images longer than MAX_ASPECT to one are first cropped to their middle, which
        # is all the centre crop keeps anyway.
        img = limit_aspect(img)
        size = _resized_size(*img.size, self.resize_size[0])
        if size != img.size:
            # Pillow always antialiases (self.antialias is for the tensor decoder's resize).
            img = img.resize(size, _PIL_FILTERS[self.interpolation_name])
        crop = self.crop_size[0]
        img = _center_crop(img, crop, crop)
        hwc: np.ndarray[Any, np.dtype[np.uint8]] = np.asarray(img)
        if hwc.ndim == 2:
            hwc = hwc[:, :, None]
        return np.ascontiguousarray(hwc.transpose(2, 0, 1))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Resize and centre-crop one image; return its uint8 CHW pixels as a tensor."""
        import torch

        return torch.from_numpy(self.pixels(img))

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """Turn a uint8 NCHW batch into the normalised float batch the model takes."""
        import torch

        x = batch.to(torch.float32) / 255.0
        mean = x.new_tensor(self.mean).view(-1, 1, 1)  # x's dtype and device
        std = x.new_tensor(self.std).view(-1, 1, 1)
        return x.sub_(mean).div_(std)
