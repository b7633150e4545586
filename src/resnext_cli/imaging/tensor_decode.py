"""JPEG bytes to upright, resized, centre-cropped uint8 tensors, in batches, on any device.

The tensor twin of preprocess.decode + Preprocess for the JPEGs a GPU decoder takes:
``torchvision.io.decode_jpeg`` on a list (nvjpeg on CUDA, libjpeg-turbo on CPU, which is
how the tests check it everywhere), then each step of the Pillow path in the same order:
EXIF orientation, limit_aspect, shorter side to resize_size, centre crop.

Where it differs from Pillow, and by how much (measured in tests/imaging/test_tensor_decode.py):

- Decoding: on CPU both are libjpeg-turbo, so pixels are identical; nvjpeg's IDCT and
  chroma upsampling differ from libjpeg's by a level or two.
- Resizing: Pillow resamples in uint8 with its own antialiasing filter; torch's uint8
  antialiased bilinear kernel on CPU follows Pillow's closely, and on CUDA it resamples
  in float32 and rounds back, a level or so apart.
- JPEG draft decoding (Pillow's DCT scaling of large photos, DecodeOptions.draft_min_side)
  has no counterpart: the tensor path decodes at full size, so on phone-sized photos it
  resizes from more pixels than the Pillow path does.

Everything the decoder cannot take (progressive, CMYK, 12-bit, arithmetic-coded, RGB-coded
JPEGs, other formats, more than max_pixels, a file the decoder rejects) comes back as
None, for the Pillow path to handle with its usual error records. So does every file
whose structure is not whole: `jpeg_header` walks the markers through EOI, the scans'
entropy-coded data included, because libjpeg raises on a cut file where nvJPEG's
hardware decoder can return a silently partial picture (NVIDIA/DALI#3113). Pillow then
fails it, or keeps what decodes under --allow-truncated, exactly as with --decode cpu.

On CUDA every decode call first waits for the work already queued on the current
stream: torchvision allocates decode_jpeg's outputs on that stream but writes them from
nvJPEG's own, ordered only one way, so memory freed by queued kernels could be written
before they ran (pytorch/vision#9606, meta-pytorch/torchcodec#1634).
"""

from __future__ import annotations

import logging
import math
import re
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from resnext_cli.imaging.preprocess import MAX_ASPECT, middle_box

# decode_jpeg warns on every call that torchvision's image decoding moves to TorchCodec.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")

# SOF markers with Huffman coding: 0xC0 baseline, 0xC1 extended sequential, 0xC2
# progressive, 0xC3 lossless; 0xC5-0xC7 hierarchical; 0xC9-0xCF arithmetic coding.
# 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) share the range but are not frames.
_SEQUENTIAL = frozenset({0xC0, 0xC1})
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SOS, _EOI, _DNL, _APP1, _APP14 = 0xDA, 0xD9, 0xDC, 0xE1, 0xEE
# Markers without a length field: TEM and the restart markers RST0-7.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})

# A 0xFF in a scan's entropy-coded data that is not a stuffed zero: a restart marker, a
# fill byte, or the marker that ends the scan. (This pattern is searched 30 times faster
# by re than one that also excludes restarts and fills: those few are skipped in Python.)
_SCAN_FF = re.compile(rb"\xff[^\x00]")
# Component IDs 'R', 'G', 'B': libjpeg reads such a frame as RGB when no JFIF or Adobe
# marker says otherwise; nvJPEG takes it for YCbCr.
_RGB_IDS = (0x52, 0x47, 0x42)

_EXIF = b"Exif\x00\x00"
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')
_ORIENTATION_TAG = 0x0112
# TIFF's integer types as Pillow reads them -> size and signedness: SHORT, LONG, SBYTE,
# SSHORT, SLONG, and IFD and LONG8, which Pillow reads as unsigned longs.
_INT_TYPES = {
    3: (2, False),
    4: (4, False),
    6: (1, True),
    8: (2, True),
    9: (4, True),
    13: (4, False),
    16: (8, False),
}
# Every type Pillow loads, with its size: a tag of another type counts as absent.
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_TYPE_SIZES |= {13: 4, 16: 8}

# Decoded pixels resized together in one call: same-sized images are stacked, in chunks
# of at most this many pixels, so a batch of phone photos never becomes one huge float
# tensor inside the resize.
_CHUNK_PIXELS = 1 << 26

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JpegInfo:
    """What a JPEG's markers say, read without decoding it."""

    sof: int  # the frame marker's second byte: 0xC0 baseline, 0xC2 progressive, ...
    precision: int  # bits per sample
    width: int
    height: int
    components: int  # 1 grey, 3 YCbCr (or RGB), 4 CMYK or YCCK
    orientation: int = 1  # EXIF orientation as Pillow reads it: 1 (as stored) to 8
    adobe_transform: int | None = None  # APP14 Adobe colour transform, when present
    # Every scan's data ends in a marker and the file reaches EOI (not cut, not damaged
    # in its markers; what the entropy-coded bits say is only known by decoding them).
    complete: bool = True
    component_ids: tuple[int, ...] = ()

    @property
    def progressive(self) -> bool:
        """Whether the frame is progressive (nvjpeg's batched decoder refuses it)."""
        return self.sof in _PROGRESSIVE

    @property
    def rgb_ids(self) -> bool:
        """Whether libjpeg may read the samples as RGB by their IDs (no Adobe marker)."""
        return self.component_ids == _RGB_IDS and self.adobe_transform is None


def jpeg_header(data: bytes) -> JpegInfo | None:
    """Read a JPEG's frame header and orientation; None for anything else or damaged."""
    if data[:2] != b"\xff\xd8":
        return None
    frame: tuple[int, int, int, int, int] | None = None
    ids: tuple[int, ...] = ()
    exif: bytes | None = None
    xmp: bytes | None = None
    adobe: int | None = None
    pos, end = 2, len(data)
    while True:
        if pos >= end or data[pos] != 0xFF:
            return None  # junk between segments: leave it to Pillow's judgement
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            return None
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker in (0x00, 0xD8, 0xD9) or pos + 2 > end:
            return None  # a stuffed byte, a second SOI, or EOI before any scan
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > end:
            return None
        body = data[pos + 2 : pos + length]
        pos += length
        if marker == _SOS:
            break
        if marker in _FRAMES:
            # A frame header: 6 bytes, then 3 per component (T.81: at least one).
            if frame is not None or len(body) < 6 or not 0 < body[5] <= (len(body) - 6) // 3:
                return None
            height = int.from_bytes(body[1:3], "big")
            width = int.from_bytes(body[3:5], "big")
            frame = (marker, body[0], width, height, body[5])
            ids = tuple(body[6 + 3 * c] for c in range(body[5]))
        elif marker == _APP1 and body.startswith(_EXIF):
            # Pillow keeps the first Exif segment and appends the others' payloads.
            exif = body if exif is None else exif + body[6:]
        elif marker == _APP1 and body.startswith(_XMP):
            xmp = body[len(_XMP) :]  # the last one wins, as in Pillow
        elif marker == _APP14 and body.startswith(b"Adobe") and len(body) >= 12:
            adobe = body[11]
    if frame is None:
        return None
    sof, precision, width, height, components = frame
    return JpegInfo(
        sof=sof,
        precision=precision,
        width=width,
        height=height,
        components=components,
        orientation=_orientation(exif, xmp),
        adobe_transform=adobe,
        complete=_reaches_eoi(data, pos),
        component_ids=ids,
    )


def _reaches_eoi(data: bytes, pos: int) -> bool:
    """Whether the scan starting at *pos*, and any segments and scans after it, end in EOI.

    The entropy-coded data of each scan runs to the first marker that is not a stuffed
    zero or a restart; what follows must be segments (tables, DNL, further scans of a
    sequential frame) until EOI. Anything else (the file ends, junk between segments, a
    second frame or SOI) is a damaged file for Pillow to judge.
    """
    end = len(data)
    while True:
        while True:
            match = _SCAN_FF.search(data, pos)
            if match is None:
                return False  # cut inside a scan
            pos = match.start() + 1  # at the byte after 0xFF
            if data[pos] != 0xFF and not 0xD0 <= data[pos] <= 0xD7:
                break  # the marker that ends the scan
        while True:
            marker = data[pos]
            pos += 1
            if marker == _EOI:
                return True
            if marker in _FRAMES or marker in _STANDALONE or marker in (0x00, 0xD8):
                return False
            if pos + 2 > end:
                return False
            length = int.from_bytes(data[pos : pos + 2], "big")
            if length < 2 or pos + length > end:
                return False
            pos += length
            if marker == _SOS:
                break  # another scan's data follows
            if pos >= end or data[pos] != 0xFF:
                return False
            while pos < end and data[pos] == 0xFF:
                pos += 1
            if pos >= end:
                return False


def _orientation(exif: bytes | None, xmp: bytes | None) -> int:
    """The orientation Pillow's exif_transpose would apply, 1 when it would apply none."""
    value = _exif_orientation(exif) if exif is not None else None
    if value is None and xmp is not None and (match := _XMP_ORIENTATION.search(xmp)):
        value = int(match[2])
    return value if value is not None and 1 <= value <= 8 else 1


def _exif_orientation(exif: bytes) -> int | None:
    """IFD0's orientation tag as the Pillow path reads it; None when the tag is absent.

    Pillow 13 reads the entries in order, keeps the first of each tag (later ones are not
    counted), skips a value whose size (with the values at offsets read before it) is
    more than the block holds, and stops at an entry or a value it cannot read whole,
    keeping the tags before it. A damaged TIFF header makes it give up on the block (the
    picture stays as stored, 1).
    """
    tiff = re.sub(b"^(Exif\x00\x00){1,2}", b"", exif)
    if not tiff:
        return None
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return 1
    order: Literal["little", "big"] = "little" if tiff[:2] == b"II" else "big"
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return None
    count = int.from_bytes(tiff[ifd : ifd + 2], order)
    stored = 0  # bytes of the values stored at offsets so far
    seen: set[int] = set()  # the tags read so far: a tag's later entries are skipped
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if entry + 12 > len(tiff):
            return None
        tag = int.from_bytes(tiff[entry : entry + 2], order)
        kind = int.from_bytes(tiff[entry + 2 : entry + 4], order)
        if tag in seen or kind not in _TYPE_SIZES:
            continue  # a tag read before, or a type Pillow does not load: skipped
        size = int.from_bytes(tiff[entry + 4 : entry + 8], order) * _TYPE_SIZES[kind]
        value = tiff[entry + 8 : entry + 8 + size]
        if size > 4:  # stored elsewhere, at an offset
            stored += size
            if stored > len(tiff):
                continue  # more than the block holds: Pillow skips the tag
            offset = int.from_bytes(tiff[entry + 8 : entry + 12], order)
            value = tiff[offset : offset + size]
            if len(value) != size:
                return None  # a cut value: Pillow stops reading here
        if not value:
            continue  # no values: Pillow keeps nothing of the tag
        if tag == _ORIENTATION_TAG:
            return _orientation_value(kind, value, order)
        seen.add(tag)
    return None


def _orientation_value(kind: int, value: bytes, order: Literal["little", "big"]) -> int:
    """The orientation a tag's (first) value stands for: Pillow looks it up among 1..8 by
    equality, so 6, 6/1 and 6.0 all turn the picture; text or bytes turn nothing."""
    if kind in _INT_TYPES:
        width, signed = _INT_TYPES[kind]
        return int.from_bytes(value[:width], order, signed=signed)
    if kind in (5, 10):  # RATIONAL, SRATIONAL
        signed = kind == 10
        top = int.from_bytes(value[:4], order, signed=signed)
        bottom = int.from_bytes(value[4:8], order, signed=signed)
        return top // bottom if bottom and top % bottom == 0 else 1
    if kind in (11, 12):  # FLOAT, DOUBLE
        width = 4 if kind == 11 else 8
        (number,) = struct.unpack(
            ("<" if order == "little" else ">") + "fd"[kind - 11], value[:width]
        )
        return int(number) if math.isfinite(number) and number.is_integer() else 1
    return 1


def gpu_decodable(info: JpegInfo, max_pixels: int) -> bool:
    """Whether the batched tensor decoder takes this JPEG: whole, 8-bit sequential, grey or YCbCr.

    A file that is not whole always goes to Pillow, which fails it as truncated or, under
    --allow-truncated, keeps what decodes: the same record as --decode cpu gives.
    """
    return (
        info.complete
        # R, G, B component IDs without an Adobe marker: RGB to libjpeg, YCbCr to nvJPEG.
        and not (info.components == 3 and info.rgb_ids)
        and info.sof in _SEQUENTIAL
        and info.precision == 8
        and info.components in (1, 3)
        # An Adobe transform of 0 marks RGB-coded samples that nvjpeg would take for YCbCr.
        and not (info.components == 3 and info.adobe_transform == 0)
        # Height 0 defers it to a DNL marker after the scan; nvjpeg does not read one.
        and 0 < info.width * info.height <= max_pixels
        # Over-long pictures are cropped to MAX_ASPECT after decoding, as limit_aspect does,
        # and max_pixels bounds what the decoder allocates first.
    )


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn a CHW image upright as PIL.ImageOps.exif_transpose does for *orientation*."""
    if orientation == 2:  # FLIP_LEFT_RIGHT
        return image.flip(-1)
    if orientation == 3:  # ROTATE_180
        return image.flip(-2, -1)
    if orientation == 4:  # FLIP_TOP_BOTTOM
        return image.flip(-2)
    if orientation == 5:  # TRANSPOSE
        return image.transpose(-2, -1)
    if orientation == 6:  # ROTATE_270, counter-clockwise: a quarter turn clockwise
        return image.rot90(-1, (-2, -1))
    if orientation == 7:  # TRANSVERSE
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # ROTATE_90, counter-clockwise
        return image.rot90(1, (-2, -1))
    return image


def limit_aspect(image: torch.Tensor, max_aspect: int = MAX_ASPECT) -> torch.Tensor:
    """Keep the middle of an over-long CHW image, the box preprocess.limit_aspect crops."""
    height, width = image.shape[-2:]
    box = middle_box(int(width), int(height), max_aspect)
    if box is None:
        return image
    left, top, right, bottom = box
    return image[..., top:bottom, left:right]


def _decode_jpeg(
    datas: list[torch.Tensor], device: torch.device
) -> list[torch.Tensor]:  # pragma: no cover - replaced in tests that fake the GPU
    """torchvision's decode_jpeg on a list, after the current stream's queued work.

    The wait is the one torchvision's maintainers advise (pytorch/vision#9606): the
    outputs are allocated on the current stream and written from nvJPEG's own.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))


def _decode(datas: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode a list of JPEGs in one call; if that fails, each alone (a bad one is None)."""
    if not datas:
        return []
    try:
        return list(_decode_jpeg(list(datas), device))
    except RuntimeError:  # torch's errors (bad data, nvjpeg, out of memory) are all this
        if len(datas) == 1:
            return [None]
    # The files were checked whole (jpeg_header), so this is rare: one call per image
    # costs n calls, where halving cost about 2*log2(n) per bad file and more to explain.
    out: list[torch.Tensor | None] = []
    for data in datas:
        try:
            out.extend(_decode_jpeg([data], device))
        except RuntimeError:
            out.append(None)
    return out


class Budget:
    """How many decoded pixels are resized in one call; halved once on out-of-memory.

    Kept for a whole run, so one out-of-memory error costs one retry, not every later
    batch sent to Pillow.
    """

    def __init__(self, chunk_pixels: int = _CHUNK_PIXELS) -> None:
        self.chunk_pixels = chunk_pixels
        self.backed_off = False

    def back_off(self) -> bool:
        """Halve the chunk once; False when it was halved already (then give up)."""
        if self.backed_off:
            return False
        self.backed_off = True
        self.chunk_pixels = max(1, self.chunk_pixels // 2)
        log.debug(
            "out of GPU memory while turning, stacking or resizing decoded JPEGs: resizing "
            "at most %d pixels at a time from now on",
            self.chunk_pixels,
        )
        _release_cache()
        return True


def _release_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _resize_crop(
    images: torch.Tensor, resize_size: int, crop_size: int, antialias: bool
) -> torch.Tensor:
    """Resize an NCHW uint8 stack's shorter side, then take its centre (weights' transforms)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    # The same torchvision functions the Pillow path calls, so output sizes and crop
    # offsets come from the same arithmetic; only the resampling itself differs.
    resized = F.resize(
        images, [resize_size], interpolation=InterpolationMode.BILINEAR, antialias=antialias
    )
    cropped: torch.Tensor = F.center_crop(resized, [crop_size, crop_size])
    return cropped


def decode_batch(
    datas: Sequence[bytes],
    *,
    device: torch.device,
    resize_size: int,
    crop_size: int,
    antialias: bool = True,
    max_pixels: int,
    infos: Sequence[JpegInfo | None] | None = None,
    budget: Budget | None = None,
) -> list[torch.Tensor | None]:
    """Decode, orient, resize and crop JPEGs on *device*: uint8 3xHxW, or None for Pillow.

    *infos* are the headers already read (jpeg_header) for *datas*, so nothing is
    parsed twice; *budget* the run's resize chunk, halved once on out-of-memory.
    """
    budget = budget if budget is not None else Budget()
    if infos is None:
        infos = [jpeg_header(data) for data in datas]
    picked = [
        (i, info)
        for i, info in enumerate(infos)
        if info is not None and gpu_decodable(info, max_pixels)
    ]
    encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i, _ in picked]
    decoded: dict[int, tuple[torch.Tensor, JpegInfo]] = {}
    for (i, info), image in zip(picked, _decode(encoded, device), strict=True):
        # A decoder that disagrees with the header has read something else: Pillow decides.
        if image is not None and tuple(image.shape) == (3, info.height, info.width):
            decoded[i] = (image, info)
    del encoded

    out: list[torch.Tensor | None] = [None] * len(datas)
    while True:
        try:
            _crop_all(decoded, out, resize_size, crop_size, antialias, budget.chunk_pixels)
            return out
        except torch.OutOfMemoryError:
            if not budget.back_off():
                raise


def _crop_all(
    decoded: dict[int, tuple[torch.Tensor, JpegInfo]],
    out: list[torch.Tensor | None],
    resize_size: int,
    crop_size: int,
    antialias: bool,
    chunk_pixels: int,
) -> None:
    """Turn, stack, resize and crop the decoded images into *out*, same sizes together."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (image, info) in decoded.items():
        height, width = image.shape[-2:]
        if info.orientation in (5, 6, 7, 8):
            height, width = width, height
        short = min(height, width)  # limit_aspect's arithmetic, before any copy is made
        height, width = min(height, MAX_ASPECT * short), min(width, MAX_ASPECT * short)
        groups.setdefault((height, width), []).append(i)
    for (height, width), members in groups.items():
        step = max(1, chunk_pixels // (height * width))
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            stack = torch.stack(
                [limit_aspect(orient(decoded[i][0], decoded[i][1].orientation)) for i in chunk]
            )
            crops = _resize_crop(stack, resize_size, crop_size, antialias)
            del stack
            for i, crop in zip(chunk, crops, strict=True):
                out[i] = crop
                del decoded[i]  # the full-sized picture is freed as soon as it is cropped
