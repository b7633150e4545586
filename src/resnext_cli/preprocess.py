"""Bytes to an upright RGB image to a tensor, with the weights' own transforms."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, cast

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .config import DEFAULT_MAX_PIXELS
from .errors import InputError

if TYPE_CHECKING:
    import torch

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


@dataclass(frozen=True)
class DecodeOptions:
    """How files become images."""

    exact: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_truncated: bool = False
    # Smallest side JPEG draft decoding may shrink to (0: decode at full size).
    draft_min_side: int = 0


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    """Map 16-bit, 32-bit integer and float pixels onto 0..255 instead of clipping.

    16-bit data is divided by 257 (65535 -> 255); 32-bit integers already in 0..255 or
    0..65535 are taken as 8- or 16-bit; floats in 0..1 are scaled by 255; anything else
    is stretched from its own minimum and maximum.
    """
    if img.mode.startswith("I;16"):
        return img.convert("I").point(lambda v: v / 257).convert("L")
    low, high = cast("tuple[float, float]", img.getextrema())
    if img.mode == "I" and low >= 0 and high <= 255:
        return img.convert("L")
    if img.mode == "I" and low >= 0 and high <= 65535:
        return img.point(lambda v: v / 257).convert("L")
    if img.mode == "F" and low >= 0 and high <= 1:
        return img.point(lambda v: v * 255).convert("L")
    if high == low:
        return Image.new("L", img.size, 0)
    scale = 255 / (high - low)
    return img.convert("F").point(lambda v: (v - low) * scale).convert("L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB the way a person sees the picture."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _scale_to_8bit(img).convert("RGB")
    if img.mode in _ALPHA_MODES or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def decode(fp: BinaryIO, name: str, options: DecodeOptions) -> Image.Image:
    """Open and fully decode one image into RGB, or raise a typed InputError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except UnidentifiedImageError:
        raise InputError("not_an_image", f"'{name}' is not an image Pillow can read") from None
    except Image.DecompressionBombError:
        raise InputError("too_large", f"'{name}' has too many pixels") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError("unreadable", f"cannot open '{name}': {exc}") from None
    width, height = img.size
    if width * height > options.max_pixels:
        raise InputError(
            "too_large",
            f"'{name}' is {width}x{height} = {width * height} pixels, over the "
            f"{options.max_pixels} limit (raise it with --max-pixels)",
        )
    if options.draft_min_side and img.format == "JPEG" and not options.exact:
        side = options.draft_min_side
        img.draft(img.mode, (side, side))
    # Pillow reads this flag globally; every thread of a run sets the same value.
    ImageFile.LOAD_TRUNCATED_IMAGES = options.allow_truncated
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc)
        if "truncated" in text or "broken" in text or isinstance(exc, EOFError):
            raise InputError(
                "truncated",
                f"'{name}' is truncated or damaged (--allow-truncated classifies what decodes)",
            ) from None
        raise InputError("unreadable", f"cannot decode '{name}': {text}") from None
    if options.exact:
        # The reference pipeline: exactly what `Image.open(f).convert("RGB")` gives.
        return img.convert("RGB")
    return to_rgb(ImageOps.exif_transpose(img))


def build_transform(weights: object) -> Callable[[Image.Image], torch.Tensor]:
    """Return torchvision's own preprocessing for a Weights enum member."""
    transforms: Callable[[], Callable[[Image.Image], torch.Tensor]]
    transforms = weights.transforms  # type: ignore[attr-defined]
    return transforms()
