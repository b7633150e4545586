"""The tensor decode path (decode_jpeg, orient, resize, crop) against the Pillow path, on CPU."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps
from torchvision.io import decode_jpeg

from resnext_cli.imaging.preprocess import DecodeOptions, Preprocess, decode
from resnext_cli.imaging.tensor_decode import (
    Budget,
    JpegInfo,
    decode_batch,
    gpu_decodable,
    jpeg_header,
    orient,
)
from tests.helpers import _component_ids, _scan_start, _without_jfif, jpeg, photo, with_segment

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:torchvision", "ignore::UserWarning:PIL"
)


CPU = torch.device("cpu")
WEIGHTS = torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V2
BIG = 1 << 30

# What the tensor path may differ from the Pillow path by, in uint8 levels of the
# 224x224 crops (both decode with libjpeg-turbo on CPU; the resize kernels differ).
# Measured on these photos: mean 0.0006-0.002, max 1-2.
MEAN_LEVELS = 0.05
MAX_LEVELS = 3
# ... and in the test checkpoint's probabilities (fp32): measured up to 0.0022 (its fc
# is scaled to peak, so one level on 0.1% of the pixels moves a probability that much).
MAX_DP = 0.01


def exif_block(orientation: int, order: str, kind: int = 3) -> bytes:
    """An Exif APP1 payload with one IFD0 entry (the orientation), written by hand."""
    e = "<" if order == "II" else ">"
    head = (b"II*\x00" if order == "II" else b"MM\x00*") + struct.pack(e + "I", 8)
    value = struct.pack(e + "H", orientation) + b"\x00\x00" if kind == 3 else b"\x00" * 4
    if kind == 4:
        value = struct.pack(e + "I", orientation)
    entry = struct.pack(e + "HHI", 0x0112, kind, 1) + value
    return b"Exif\x00\x00" + head + struct.pack(e + "H", 1) + entry + struct.pack(e + "I", 0)


def pillow_crop(data: bytes, options: DecodeOptions | None = None) -> torch.Tensor:
    """The Pillow path: preprocess.decode and the weights' transforms, uint8 CHW."""
    return Preprocess(WEIGHTS)(decode(io.BytesIO(data), "x.jpg", options or DecodeOptions()))


def tensor_crops(
    datas: list[bytes],
    max_pixels: int = BIG,
    *,
    device: torch.device = CPU,
    budget: Budget | None = None,
) -> list[torch.Tensor | None]:
    """decode_batch with the weights' resize and crop (and their antialias setting)."""
    pre = Preprocess(WEIGHTS)
    return decode_batch(
        datas,
        device=device,
        resize_size=pre.resize_size[0],
        crop_size=pre.crop_size[0],
        antialias=bool(pre.antialias),
        max_pixels=max_pixels,
        budget=budget,
    )


# -- headers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "save", "sof", "components", "decodable"),
    [
        ("RGB", {}, 0xC0, 3, True),
        ("RGB", {"progressive": True}, 0xC2, 3, False),
        ("L", {}, 0xC0, 1, True),
        ("CMYK", {}, 0xC0, 4, False),
    ],
)
def test_header_of_generated_jpegs(
    mode: str, save: dict[str, object], sof: int, components: int, decodable: bool
) -> None:
    info = jpeg_header(jpeg(photo(1, (123, 45), mode), **save))
    assert info is not None
    assert (info.sof, info.precision, info.components) == (sof, 8, components)
    assert (info.width, info.height, info.orientation) == (123, 45, 1)
    assert info.progressive == (sof == 0xC2)
    assert gpu_decodable(info, BIG) is decodable


def test_a_one_pixel_jpeg_goes_to_the_tensor_decoder() -> None:
    info = jpeg_header(jpeg(photo(4, (1, 1))))
    assert info is not None and (info.width, info.height) == (1, 1)
    assert gpu_decodable(info, max_pixels=1)
    assert not gpu_decodable(info, max_pixels=0)


def test_pixel_limit_and_rgb_coded() -> None:
    info = jpeg_header(jpeg(photo(1, (100, 50))))
    assert info is not None
    assert gpu_decodable(info, 5000)
    assert not gpu_decodable(info, 4999)
    rgb_coded = JpegInfo(0xC0, 8, 100, 50, 3, adobe_transform=0)
    assert not gpu_decodable(rgb_coded, BIG)
    assert not gpu_decodable(JpegInfo(0xC0, 12, 100, 50, 3), BIG)
    assert not gpu_decodable(JpegInfo(0xC0, 8, 100, 0, 3), BIG)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_written_by_pillow(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    info = jpeg_header(jpeg(photo(2, (64, 48)), exif=exif))
    assert info is not None and info.orientation == orientation


@pytest.mark.parametrize("order", ["II", "MM"])
@pytest.mark.parametrize(("orientation", "kind"), [(6, 3), (8, 3), (3, 4), (5, 4)])
def test_orientation_both_byte_orders_as_pillow_reads_them(
    order: str, orientation: int, kind: int
) -> None:
    data = with_segment(jpeg(photo(2, (64, 48))), 0xE1, exif_block(orientation, order, kind))
    info = jpeg_header(data)
    assert info is not None and info.orientation == orientation
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == orientation


def test_orientation_from_xmp_and_damaged_exif_as_pillow_does() -> None:
    base = jpeg(photo(2, (64, 48)))
    xmp = b'http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><rdf:Description tiff:Orientation="6"/>'
    only_xmp = with_segment(base, 0xE1, xmp)
    info = jpeg_header(only_xmp)
    assert info is not None and info.orientation == 6
    assert decode(io.BytesIO(only_xmp), "x", DecodeOptions()).size == (48, 64)
    # A TIFF header Pillow rejects: it leaves the picture as stored, XMP or not.
    damaged = with_segment(only_xmp, 0xE1, b"Exif\x00\x00XX*\x00\x08\x00\x00\x00")
    info = jpeg_header(damaged)
    assert info is not None and info.orientation == 1
    assert decode(io.BytesIO(damaged), "x", DecodeOptions()).size == (64, 48)
    # An EXIF orientation tag wins over XMP's.
    both = with_segment(only_xmp, 0xE1, exif_block(3, "MM"))
    info = jpeg_header(both)
    assert info is not None and info.orientation == 3


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        b"\xff\xd8\xff\xd9",
        jpeg(photo(3, (40, 30)))[:20],
    ],
)
def test_header_of_non_jpegs_is_none(data: bytes) -> None:
    assert jpeg_header(data) is None


_SEEDS = [
    jpeg(photo(4, (40, 30))),
    jpeg(photo(4, (40, 30)), progressive=True),
    jpeg(photo(4, (30, 40), "L")),
    with_segment(jpeg(photo(4, (40, 30))), 0xE1, exif_block(6, "MM")),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


FUZZ = settings(max_examples=300, deadline=None, database=None)


@FUZZ
@given(st.one_of(st.binary(max_size=300), mutated(), st.binary().map(lambda b: b"\xff\xd8" + b)))
def test_hostile_headers_never_raise(data: bytes) -> None:
    info = jpeg_header(data)
    assert info is None or isinstance(info, JpegInfo)
    if info is not None:
        assert 1 <= info.orientation <= 8
        gpu_decodable(info, BIG)


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mutated())
def test_hostile_jpegs_decode_or_fall_back(data: bytes) -> None:
    good = jpeg(photo(5, (40, 30)))
    out = tensor_crops([good, data, good], max_pixels=1 << 20)
    assert out[0] is not None and out[2] is not None
    assert torch.equal(out[0], out[2])
    assert out[1] is None or out[1].shape == (3, 224, 224)


# -- pixels ------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_exif_transpose(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = jpeg(photo(6, (60, 40)), exif=exif)
    info = jpeg_header(data)
    assert info is not None
    stored = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    ours = orient(stored, info.orientation).permute(1, 2, 0).numpy()
    reference = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert ours.shape == reference.shape
    # Both are libjpeg-turbo: the same pixels, only moved.
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1


def _parity_set() -> list[bytes]:
    """Photos of several shapes: landscape, portrait, odd, over-long, grey, rotated."""
    rotated = Image.Exif()
    rotated[0x0112] = 6
    mirrored = Image.Exif()
    mirrored[0x0112] = 7
    return [
        jpeg(photo(10, (500, 375))),
        jpeg(photo(11, (375, 500))),
        jpeg(photo(12, (517, 333))),
        jpeg(photo(13, (4000, 120))),  # longer than 16:1: the middle is kept
        jpeg(photo(14, (400, 300), "L")),
        jpeg(photo(15, (500, 375)), exif=rotated),
        jpeg(photo(16, (300, 451)), exif=mirrored),
        jpeg(photo(17, (232, 240))),
        jpeg(photo(18, (4001, 120))),  # an odd excess: the middle box rounds as Pillow's
        # One stored size in all eight orientations, in one batch: 5 to 8 swap the sides,
        # so they are resized in other groups than 1 to 4.
        *(jpeg(photo(19, (90, 60)), exif=_oriented(k)) for k in range(1, 9)),
    ]


def _oriented(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_crops_match_the_pillow_path() -> None:
    datas = _parity_set()
    ours = tensor_crops(datas)
    for data, crop in zip(datas, ours, strict=True):
        assert crop is not None
        reference = pillow_crop(data)
        assert crop.dtype == torch.uint8 and crop.shape == reference.shape == (3, 224, 224)
        diff = (crop.int() - reference.int()).abs()
        assert diff.float().mean().item() < MEAN_LEVELS
        assert diff.max().item() <= MAX_LEVELS


def test_phone_photo_against_draft_decoding() -> None:
    """Pillow's draft decoding (the Classifier's default) shrinks in the DCT; ours does not."""
    data = jpeg(photo(20, (2016, 1512)))  # drafted to 1008x756, twice the resize target
    (crop,) = tensor_crops([data])
    assert crop is not None
    full = (crop.int() - pillow_crop(data).int()).abs().float()
    drafted = pillow_crop(data, DecodeOptions(draft_min_side=464))
    draft = (crop.int() - drafted.int()).abs().float()
    assert full.mean().item() < MEAN_LEVELS and full.max().item() <= MAX_LEVELS
    # Two antialiased reductions of the same picture. Measured: mean 0.26 levels, max 3.
    assert draft.mean().item() < 1.0
    assert draft.max().item() <= 10


def test_same_top5_as_the_pillow_path(checkpoint: Path) -> None:
    # Built here with torchvision itself: the library's loaders are moving (engine ->
    # pipeline), and the network is all this test needs.
    model = torchvision.models.resnext50_32x4d()
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    model.eval()
    pre = Preprocess(WEIGHTS)
    datas = _parity_set()
    ours = tensor_crops(datas)
    assert all(crop is not None for crop in ours)
    reference = torch.stack([pillow_crop(d) for d in datas])
    with torch.inference_mode():
        p_ref = model(pre.normalize(reference)).softmax(1)
        p_ours = model(pre.normalize(torch.stack(ours))).softmax(1)  # type: ignore[arg-type]
    for a, b in zip(p_ref, p_ours, strict=True):
        assert a.topk(5).indices.tolist() == b.topk(5).indices.tolist()
    assert (p_ref - p_ours).abs().max().item() < MAX_DP
    # The checkpoint is peaked, so top-5 agreement says something.
    assert p_ref.max(1).values.min().item() > 0.05


# -- batches with inputs the tensor path refuses ------------------------------------------


def test_undecodable_inputs_are_none_in_place() -> None:
    png = io.BytesIO()
    photo(30, (50, 40)).save(png, "PNG")
    good = jpeg(photo(31, (300, 250)))
    grey = jpeg(photo(32, (250, 300), "L"))
    datas = [
        good,
        jpeg(photo(33, (300, 250)), progressive=True),
        png.getvalue(),
        jpeg(photo(34, (300, 250), "CMYK")),
        b"",
        grey,
        jpeg(photo(35, (600, 500))),  # over the pixel limit below
    ]
    out = tensor_crops(datas, max_pixels=100_000)
    assert [t is not None for t in out] == [True, False, False, False, False, True, False]
    for data, crop in ((good, out[0]), (grey, out[5])):
        assert crop is not None
        assert (crop.int() - pillow_crop(data).int()).abs().max().item() <= MAX_LEVELS


def test_a_corrupt_jpeg_does_not_spoil_the_batch() -> None:
    goods = [jpeg(photo(40 + i, (320 + 8 * i, 240))) for i in range(5)]
    truncated = goods[0][: len(goods[0]) // 2]  # the header parses; the decoder fails
    assert jpeg_header(truncated) is not None
    datas = [goods[0], goods[1], truncated, goods[2], goods[3], truncated, goods[4]]
    together = tensor_crops(datas)
    assert together[2] is None and together[5] is None
    alone = [tensor_crops([g])[0] for g in goods]
    kept = [t for i, t in enumerate(together) if i not in (2, 5)]
    for a, b in zip(kept, alone, strict=True):
        assert a is not None and b is not None and torch.equal(a, b)


def test_whole_files_are_complete_and_cut_ones_are_not() -> None:
    whole = jpeg(photo(50, (200, 150)))
    info = jpeg_header(whole)
    assert info is not None and info.complete and gpu_decodable(info, BIG)
    # Trailing bytes after EOI are ignored by libjpeg as by us.
    info = jpeg_header(whole + b"trailing junk")
    assert info is not None and info.complete
    body = _scan_start(whole)
    cuts = {
        "in the scan": whole[: (body + len(whole)) // 2],
        "just before EOI": whole[:-2],
        "half of EOI": whole[:-1],
        # The scan ends in a marker that cannot follow it (a second SOI).
        "a second SOI": whole[:-2] + b"\xff\xd8",
        # A segment after the scan whose length runs past the end.
        "a cut segment": whole[:-2] + b"\xff\xfe\x01\x00abc",
    }
    for what, data in cuts.items():
        info = jpeg_header(data)
        assert info is not None, what  # the header is fine
        assert not info.complete, what
        assert not gpu_decodable(info, BIG), what


def test_restart_markers_stuffed_bytes_and_several_scans_are_whole() -> None:
    # Restart markers inside the scan (Pillow's restart_marker_blocks) and a grey frame.
    restarts = jpeg(photo(51, (160, 120)), restart_marker_blocks=1)
    assert b"\xff\xd0" in restarts[_scan_start(restarts) :]
    info = jpeg_header(restarts)
    assert info is not None and info.complete and gpu_decodable(info, BIG)
    # A sequential JPEG whose scan is followed by a table and an empty-bodied comment
    # before EOI (libjpeg reads tables between scans).
    whole = jpeg(photo(52, (160, 120)))
    tail = whole[:-2] + b"\xff\xfe\x00\x02" + b"\xff\xff\xff\xd9"
    info = jpeg_header(tail)
    assert info is not None and info.complete
    # Progressive files have many scans: the walk reaches their EOI too.
    progressive = jpeg(photo(53, (160, 120)), progressive=True)
    info = jpeg_header(progressive)
    assert info is not None and info.complete and info.progressive
    assert not jpeg_header(progressive[:-300]).complete  # type: ignore[union-attr]


def test_rgb_component_ids_without_adobe_go_to_pillow() -> None:
    base = _without_jfif(jpeg(photo(54, (64, 48))))
    rgb = _component_ids(base, b"RGB")
    info = jpeg_header(rgb)
    assert info is not None and info.component_ids == (0x52, 0x47, 0x42)
    assert info.rgb_ids and not gpu_decodable(info, BIG)
    # libjpeg reads it as RGB: decoding it as YCbCr (nvJPEG) gives other colours.
    as_rgb = np.asarray(Image.open(io.BytesIO(rgb)).convert("RGB")).astype(int)
    as_ycc = np.asarray(Image.open(io.BytesIO(base)).convert("RGB")).astype(int)
    assert np.abs(as_rgb - as_ycc).mean() > 10
    # With an Adobe marker saying YCbCr (transform 1), the IDs no longer decide.
    adobe = with_segment(rgb, 0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01")
    info = jpeg_header(adobe)
    assert info is not None and info.adobe_transform == 1 and not info.rgb_ids
    assert gpu_decodable(info, BIG)
    # The usual IDs 1, 2, 3 are YCbCr everywhere.
    info = jpeg_header(base)
    assert info is not None and info.component_ids == (1, 2, 3) and gpu_decodable(info, BIG)


# -- batches: one call per image after a failure; out-of-memory backs off once ----------


def test_a_failed_batch_is_retried_per_image(monkeypatch: pytest.MonkeyPatch) -> None:
    import resnext_cli.imaging.tensor_decode as td

    goods = [jpeg(photo(60 + i, (200, 150))) for i in range(5)]
    real = td._decode_jpeg
    calls: list[int] = []
    bad = bytes(goods[3])

    def decode(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        calls.append(len(datas))
        if any(bytes(d.numpy()) == bad for d in datas):
            raise RuntimeError("nvjpeg: bad data")  # what decode_jpeg raises on a list
        return real(datas, device)

    monkeypatch.setattr(td, "_decode_jpeg", decode)
    out = tensor_crops(goods)
    # One call for the batch, then one per image: not halves (which would be 1+2+2+2).
    assert calls == [5, 1, 1, 1, 1, 1]
    assert [c is None for c in out] == [False, False, False, True, False]
    monkeypatch.setattr(td, "_decode_jpeg", real)
    for data, crop in zip(goods, out, strict=True):
        if crop is not None:
            alone = tensor_crops([data])[0]
            assert alone is not None and torch.equal(crop, alone)
    calls.clear()
    monkeypatch.setattr(td, "_decode_jpeg", decode)
    assert tensor_crops([goods[3]]) == [None]
    assert calls == [1]  # a batch of one that failed is not tried again


def test_out_of_memory_in_resizing_backs_off_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import resnext_cli.imaging.tensor_decode as td

    datas = [jpeg(photo(70 + i, (200, 150))) for i in range(6)]
    reference = tensor_crops(datas)
    real = td._resize_crop
    sizes: list[int] = []

    def tight(images: torch.Tensor, *args: object) -> torch.Tensor:
        sizes.append(len(images))
        if len(images) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(images, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(td, "_resize_crop", tight)
    budget = td.Budget(chunk_pixels=6 * 200 * 150)  # all six in one chunk at first
    with caplog.at_level(logging.DEBUG, logger="resnext_cli"):
        out = tensor_crops(datas, budget=budget)
    # Six at once failed; the chunk halved to three, and every picture was cropped.
    assert sizes == [6, 3, 3]
    assert budget.chunk_pixels == 3 * 200 * 150 and budget.backed_off
    for a, b in zip(out, reference, strict=True):
        assert a is not None and b is not None and torch.equal(a, b)
    assert [r.getMessage() for r in caplog.records] == [
        "out of GPU memory while turning, stacking or resizing decoded JPEGs: resizing at "
        "most 90000 pixels at a time from now on"
    ]
    # The next batch starts at the smaller chunk: no new failure, no new message.
    sizes.clear()
    tensor_crops(datas[:4], budget=budget)
    assert sizes == [3, 1] and len(caplog.records) == 1
    # A second out-of-memory after the back-off is the batch's failure (Pillow takes it).
    monkeypatch.setattr(td, "_resize_crop", lambda *a: (_ for _ in ()).throw(
        torch.OutOfMemoryError("CUDA out of memory")))  # fmt: skip
    with pytest.raises(torch.OutOfMemoryError):
        tensor_crops(datas[:1], budget=budget)


def test_each_cuda_decode_waits_for_the_current_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA faked: the current stream is synchronised right before every decode call."""
    import torchvision.io

    events: list[str] = []

    class Stream:
        def synchronize(self) -> None:
            events.append("sync")

    def fake_decode(datas: list[torch.Tensor], mode: object, device: object) -> list[torch.Tensor]:
        assert str(device) == "cuda"
        events.append(f"decode {len(datas)}")
        return [decode_jpeg(d) for d in datas]  # the CPU decoder stands in for nvJPEG

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torchvision.io, "decode_jpeg", fake_decode)
    goods = [jpeg(photo(80 + i, (120, 90))) for i in range(3)]
    cut = goods[0][:-1]  # not whole: never sent
    out = tensor_crops([goods[0], cut, goods[1], goods[2]], device=torch.device("cuda"))
    assert events == ["sync", "decode 3"]
    assert [c is None for c in out] == [False, True, False, False]


# -- the same files get the same records' types with --decode gpu as with --decode cpu ------


def _hostile_jpegs(folder: Path) -> list[Path]:
    """Whole, cut and damaged JPEGs, as files."""
    whole = jpeg(photo(90, (320, 240)))
    body = _scan_start(whole)
    flipped = bytearray(whole)
    for at in range(body + 40, len(whole) - 40, 97):  # corrupt scan bytes, markers kept
        if 0xFF not in (flipped[at - 1], flipped[at]):
            flipped[at] = 0x55 if flipped[at] != 0x55 else 0x56
    files = {
        "whole.jpg": whole,
        "cut_in_scan.jpg": whole[: (body + len(whole)) // 2],
        "no_eoi.jpg": whole[:-2],
        "junk_for_eoi.jpg": whole[:-2] + b"\xff\xd8\xff\xd9",
        "corrupt_scan.jpg": bytes(flipped),
        "cut_in_header.jpg": whole[: body - 20],
        "other.jpg": jpeg(photo(91, (240, 320))),
    }
    paths = []
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


@pytest.mark.parametrize("allow_truncated", [False, True])
def test_gpu_route_fails_the_same_files_as_the_cpu_route(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allow_truncated: bool
) -> None:
    """A fake GPU decoder that, like nvJPEG's hardware path, returns a picture for any
    input: the structure check keeps every cut file from it, so error types match."""
    import dataclasses

    import resnext_cli.imaging.tensor_decode as td
    from resnext_cli import Classifier
    from resnext_cli.results import Failed
    from resnext_cli.run.engine import LocalEngine

    paths = _hostile_jpegs(tmp_path)
    names = [str(p) for p in paths]
    clf = Classifier(
        checkpoint=str(checkpoint), precision="fp32", workers=0, allow_truncated=allow_truncated
    )
    cpu = list(clf.classify(names))
    sent: list[bytes] = []

    def partial(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        out = []
        for d in datas:
            sent.append(bytes(d.numpy()))
            info = jpeg_header(sent[-1])
            assert info is not None
            out.append(torch.full((3, info.height, info.width), 128, dtype=torch.uint8))
        return out

    monkeypatch.setattr(td, "_decode_jpeg", partial)
    plan = dataclasses.replace(clf.plan, decode_on="gpu")
    engine = LocalEngine(dataclasses.replace(clf.loaded, plan=plan))
    gpu = list(engine.classify_sources(clf._sources(names, stdin=None, warn=None)))
    assert [r.input for r in gpu] == names
    kinds = [(type(r).__name__, getattr(r, "error_type", None)) for r in gpu]
    assert kinds == [(type(r).__name__, getattr(r, "error_type", None)) for r in cpu]
    # Only the whole files reached the (fake) GPU decoder: corrupt scan bytes keep the
    # markers whole, so that one goes too, as to libjpeg, which decodes it with warnings.
    whole = {p.name for p in paths if p.name in ("whole.jpg", "corrupt_scan.jpg", "other.jpg")}
    assert sorted(sent) == sorted(p.read_bytes() for p in paths if p.name in whole)
    failed = {Path(r.input).name: r.error_type for r in cpu if isinstance(r, Failed)}
    if allow_truncated:
        assert failed == {"cut_in_header.jpg": "truncated"}
    else:
        assert failed == {
            "cut_in_scan.jpg": "truncated",
            "no_eoi.jpg": "truncated",
            "junk_for_eoi.jpg": "truncated",
            "cut_in_header.jpg": "truncated",
        }


# -- EXIF orientation against Pillow's own reading ------------------------------------

_SMALL_JPEG = jpeg(photo(3, (16, 16)))
# TIFF field types (1 BYTE ... 12 DOUBLE, 13 IFD) and one Pillow does not know.
_KINDS = st.sampled_from([3, 3, 3, 4, 1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 99])


@st.composite
def ifd0(draw: st.DrawFn) -> bytes:
    """An Exif block with an IFD0 of a few entries, orientation tags among them, each value
    inline or at an offset (in range or not), sometimes cut short."""
    e = draw(st.sampled_from(["<", ">"]))
    start = draw(st.sampled_from([8, 8, 8, 8, 10, 4000]))
    n = draw(st.integers(1, 3))
    after = (start if start < 100 else 8) + 2 + 12 * n + 4  # where values at an offset go
    entries, values = [], b""
    for _ in range(n):
        tag = draw(st.sampled_from([0x0112, 0x0112, 0x0112, 0x010F]))
        kind = draw(_KINDS)
        count = draw(st.sampled_from([1, 1, 1, 1, 0, 2, 3, 5]))
        number = draw(st.integers(0, 9))
        if kind in (5, 10, 12) and count == 1 and draw(st.booleans()):
            # A number stored at an offset: a ratio (9/3, 5/0) or a double.
            below = draw(st.sampled_from([1, 3, 0, 2]))
            stored = (
                struct.pack(e + "d", number / draw(st.sampled_from([1, 1, 2])))
                if kind == 12
                else struct.pack(e + "II", number * below, below)
            )
            value = struct.pack(e + "I", after + len(values))
            values += stored
        elif kind == 11 and draw(st.booleans()):
            value = struct.pack(e + "f", number / draw(st.sampled_from([1, 1, 4])))
        elif draw(st.integers(0, 3)):
            packed = struct.pack(e + "H", number) + b"\x00\x00"
            value = packed if kind == 3 else struct.pack(e + "I", number)
        else:
            value = draw(st.binary(min_size=4, max_size=4))
        entries.append(struct.pack(e + "HHI", tag, kind, count) + value)
    head = (b"II*\x00" if e == "<" else b"MM\x00*") + struct.pack(e + "I", start)
    body = head + b"\x00" * (start - 8 if start < 100 else 0)
    body += struct.pack(e + "H", n) + b"".join(entries) + struct.pack(e + "I", 0) + values
    body += draw(st.binary(max_size=24))
    if not draw(st.integers(0, 4)):
        body = body[: draw(st.integers(0, len(body)))]
    return b"Exif\x00\x00" + body


def _ifd(order: str, *entries: tuple[int, int, int, bytes | int], tail: bytes = b"") -> bytes:
    """An Exif block of one IFD: (tag, type, count, value) entries, a value of more than
    four bytes stored after the IFD, in order, then *tail*; a value given as a number is
    an offset written as it is (pointing anywhere)."""
    e = "<" if order == "II" else ">"
    after = 8 + 2 + 12 * len(entries) + 4
    table, stored = b"", b""
    for tag, kind, count, value in entries:
        if isinstance(value, int):
            table += struct.pack(e + "HHII", tag, kind, count, value)
        elif len(value) > 4:
            table += struct.pack(e + "HHII", tag, kind, count, after + len(stored))
            stored += value
        else:
            table += struct.pack(e + "HHI", tag, kind, count) + value.ljust(4, b"\x00")
    head = (b"II*\x00" if order == "II" else b"MM\x00*") + struct.pack(e + "I", 8)
    return (
        b"Exif\x00\x00"
        + head
        + struct.pack(e + "H", len(entries))
        + table
        + (b"\x00" * 4)
        + stored
        + tail
    )


def _p(order: str, fmt: str, *values: float) -> bytes:
    return struct.pack(("<" if order == "II" else ">") + fmt, *values)


_BLOB = (0x010F, 1, 40, b"y" * 40)  # 40 bytes stored after an IFD of 4 entries, at 62


def _double(order: str, value: float) -> tuple[int, int, int, bytes]:
    return (0x0112, 12, 1, _p(order, "d", value))


def _cases() -> list[bytes]:
    """Hand-made IFDs for each way of writing an orientation and each way of damaging it."""
    out = []
    for o in ("II", "MM"):
        out += [
            _ifd(o, (0x0112, 3, 1, _p(o, "H", 6))),  # SHORT
            _ifd(o, (0x0112, 8, 1, _p(o, "h", 5))),  # SSHORT
            _ifd(o, (0x0112, 9, 1, _p(o, "i", 7))),  # SLONG
            _ifd(o, (0x0112, 6, 1, _p(o, "b", 2))),  # SBYTE
            _ifd(o, (0x0112, 13, 1, _p(o, "I", 8))),  # IFD, read as a LONG
            _ifd(o, (0x0112, 16, 1, _p(o, "Q", 3))),  # LONG8, at an offset
            _ifd(o, (0x0112, 1, 1, b"\x06")),  # BYTE: bytes, not a number
            _ifd(o, (0x0112, 5, 1, _p(o, "II", 12, 2))),  # RATIONAL 12/2
            _ifd(o, (0x0112, 5, 1, _p(o, "II", 7, 2))),  # 7/2: no orientation
            _ifd(o, (0x0112, 5, 1, _p(o, "II", 6, 0))),  # 6/0
            _ifd(o, (0x0112, 10, 1, _p(o, "ii", -12, -2))),  # SRATIONAL -12/-2
            _ifd(o, (0x0112, 10, 1, _p(o, "ii", 12, -2))),  # -6
            _ifd(o, (0x0112, 11, 1, _p(o, "f", 6.0))),  # FLOAT
            _ifd(o, (0x0112, 11, 1, _p(o, "f", 6.5))),
            _ifd(o, (0x0112, 12, 1, _p(o, "d", 8.0))),  # DOUBLE, at an offset
            _ifd(o, (0x0112, 12, 1, _p(o, "d", float("nan")))),
            _ifd(o, (0x0112, 3, 2, _p(o, "HH", 3, 6))),  # two values: the first counts
            _ifd(o, (0x0112, 3, 0, b""), (0x0112, 3, 1, _p(o, "H", 3))),  # none, then 3
            _ifd(o, (0x0112, 99, 1, _p(o, "H", 6)), (0x0112, 3, 1, _p(o, "H", 3))),
            _ifd(o, (0x0112, 3, 1, _p(o, "H", 3)), (0x0112, 3, 1, _p(o, "H", 6))),  # first
            _ifd(o, (0x010F, 3, 1, _p(o, "H", 1)), (0x0112, 3, 1, _p(o, "H", 5))),
            # A value larger than the whole block is skipped; the next entry counts.
            _ifd(o, (0x010F, 1, 4000, b"x" * 5), (0x0112, 3, 1, _p(o, "H", 6))),
            # Values at offsets add up past the block: the second is skipped too.
            _ifd(o, (0x010F, 1, 60, b"x" * 60), (0x0112, 12, 1, _p(o, "d", 6.0))),
            _ifd(o, (0x010F, 1, 30, b"x" * 30), (0x0112, 12, 1, _p(o, "d", 6.0))),
            # Three tags share one 40-byte value: 120 bytes counted, more than the block
            # holds, so the third and the orientation after it are skipped ...
            _ifd(o, _BLOB, (0x0110, 1, 40, 62), (0x0111, 1, 40, 62), _double(o, 6.0)),
            # ... but a tag's later entries are skipped before they are counted.
            _ifd(o, _BLOB, (0x010F, 1, 40, 62), (0x010F, 1, 40, 62), _double(o, 6.0)),
            # Five bytes are stored at an offset, here past the block: reading stops.
            _ifd(o, (0x010F, 1, 5, 900), (0x0112, 3, 1, _p(o, "H", 6))),
        ]
        cut = _ifd(o, (0x010F, 2, 8, b"Camera\x00\x00"), (0x0112, 3, 1, _p(o, "H", 6)))
        out += [cut[:-8], cut[:-3]]  # the first value cut: reading stops there
        whole = _ifd(o, (0x0112, 3, 1, _p(o, "H", 6)), (0x010F, 3, 1, _p(o, "H", 1)))
        out += [whole[: len(whole) - 4 - 6], whole[:14], whole[:13], whole[:12]]
    return out


@pytest.mark.parametrize("block", _cases())
def test_each_way_of_writing_an_orientation_is_read_as_pillow_does(block: bytes) -> None:
    _check_orientation(block)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(ifd0())
def test_the_header_reads_exif_orientation_as_pillow_does(block: bytes) -> None:
    _check_orientation(block)


def _check_orientation(block: bytes) -> None:
    data = with_segment(_SMALL_JPEG, 0xE1, block)
    with Image.open(io.BytesIO(data)) as img:
        try:
            tag = img.getexif().get(0x0112, 1)
            # Pillow's path turns the picture for a value equal to 2..8 (an int, a ratio or
            # a float); a tuple, text, bytes or anything else leave it as stored.
            expected = next((k for k in range(2, 9) if tag == k), 1)
        except Exception:  # Pillow gives up on the block: the picture stays as stored
            expected = 1
    info = jpeg_header(data)
    assert info is not None and info.orientation == expected


# -- marker walk: boundaries, checked against Pillow where it reads the same thing ---------

_W = jpeg(photo(7, (16, 16)))
_SOS_AT = _W.index(b"\xff\xda")
_SOF_AT = _W.index(b"\xff\xc0")
_SOF_LEN = int.from_bytes(_W[_SOF_AT + 2 : _SOF_AT + 4], "big")
_SOF = _W[_SOF_AT : _SOF_AT + 2 + _SOF_LEN]  # 17 bytes: 2 + length 15 = 2 + 6 + 3 * 3


def _seg(marker: int, body: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body


def _after_soi(segment: bytes) -> bytes:
    return _W[:2] + segment + _W[2:]


def _after_scan(tail: bytes) -> bytes:
    """The 16x16 JPEG with its EOI replaced by *tail* (the scan ends in the tail's marker)."""
    assert _W.endswith(b"\xff\xd9")
    return _W[:-2] + tail


def _pillow_reads(data: bytes) -> tuple[tuple[int, int] | None, bool]:
    """Pillow's size of a file (None when it cannot open it) and whether it decodes whole,
    truncated images not allowed (preprocess.decode leaves the global as its options say)."""
    try:
        img = Image.open(io.BytesIO(data))
    except Exception:
        return None, False
    allowed = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with img:
            size = img.size
            img.load()
    except OSError:
        return size, False
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = allowed
    return size, True


def test_the_fixture_jpeg_is_what_the_cases_assume() -> None:
    assert _SOF_LEN == 2 + 6 + 3 * 3 and _W[_SOF_AT + 9] == 3
    assert _pillow_reads(_W) == ((16, 16), True)


@pytest.mark.parametrize(
    ("data", "complete"),
    [
        # A restart marker between header segments has no length: it is skipped.
        pytest.param(_after_soi(b"\xff\xd0"), True, id="RST0 after SOI"),
        # A segment length of exactly 2 (an empty comment) is a whole segment.
        pytest.param(_after_soi(b"\xff\xfe\x00\x02"), True, id="empty COM"),
        # Fill bytes 0xFF before EOI at the very end of the data.
        pytest.param(_after_scan(b"\xff\xff\xd9"), True, id="fill before EOI"),
        # The data ends exactly where an SOS segment (of length 2, or the real one) ends.
        pytest.param(_W[:_SOS_AT] + b"\xff\xda\x00\x02", False, id="SOS of length 2 at end"),
        pytest.param(_W[: _scan_start(_W)], False, id="cut right after SOS"),
        # After the scan, markers that cannot follow it: a second SOI (with a length-like
        # 00 02 after it), a second frame, an SOS of length 0.
        pytest.param(_after_scan(b"\xff\xd8\x00\x02\xff\xd9"), False, id="scan, SOI"),
        pytest.param(_after_scan(_SOF + b"\xff\xd9"), False, id="scan, second SOF"),
        pytest.param(_after_scan(b"\xff\xda\x00\x00\xff\xd9"), False, id="scan, SOS len 0"),
    ],
)
def test_header_walk_boundaries_agree_with_pillow(data: bytes, complete: bool) -> None:
    size, decodes = _pillow_reads(data)
    assert (size, decodes) == ((16, 16), complete)  # the case is what it says
    info = jpeg_header(data)
    assert info is not None
    assert (info.width, info.height, info.components, info.sof) == (16, 16, 3, 0xC0)
    assert info.component_ids == (1, 2, 3)
    assert info.complete is decodes


@pytest.mark.parametrize(
    "data",
    [
        # Fill bytes up to the very end: no marker.
        pytest.param(b"\xff\xd8\xff\xff", id="fill to end"),
        # A second SOI, or EOI, before the frame (followed by bytes a length could be read from).
        pytest.param(_after_soi(b"\xff\xd8\x00\x02"), id="second SOI"),
        pytest.param(_after_soi(b"\xff\xd9\x00\x02"), id="EOI before frame"),
        # An SOS whose length is below 2, or runs past the end of the data.
        pytest.param(_W[:_SOS_AT] + b"\xff\xda\x00\x00" + _W[_scan_start(_W) :], id="SOS len 0"),
        pytest.param(
            _W[:_SOS_AT] + b"\xff\xda\x01\x00" + _W[_scan_start(_W) :][:20], id="SOS long"
        ),
        # A frame header shorter than 6 bytes, one byte short of its 3 components, or two.
        pytest.param(_after_soi(_seg(0xC0, b"\x08\x00\x10\x00\x10")), id="SOF of 5 bytes"),
        pytest.param(
            _W[:_SOF_AT] + _seg(0xC0, _SOF[4:-1]) + _W[_SOF_AT + len(_SOF) :], id="SOF 1 short"
        ),
        pytest.param(_after_soi(_SOF), id="two SOFs"),
    ],
)
def test_headers_pillow_cannot_read_whole_are_none(data: bytes) -> None:
    assert _pillow_reads(data)[1] is False
    assert jpeg_header(data) is None


def test_a_stuffed_zero_between_header_segments_is_not_a_marker() -> None:
    # T.81 B.1.1.2: 0xFF00 is no marker; the walk leaves such a file to Pillow (which
    # skips the two bytes as junk), even with a length-like 00 02 after it.
    assert jpeg_header(_after_soi(b"\xff\x00\x00\x02")) is None


def test_a_frame_of_no_components_is_no_jpeg() -> None:
    # Six bytes of frame header and Nf = 0 (T.81 allows 1 to 255): Pillow cannot open it.
    data = _after_soi(_seg(0xC0, b"\x08\x00\x10\x00\x10\x00"))
    assert _pillow_reads(data) == (None, False)
    assert jpeg_header(data) is None


@pytest.mark.parametrize(
    "tail",
    [
        # A marker, or a whole segment, with nothing after it: no EOI.
        pytest.param(b"\xff\xfe", id="marker at end"),
        pytest.param(b"\xff\xfe\x00\x02", id="COM ends at end"),
        pytest.param(b"\xff\xfe\x00\x02\xff\xff", id="COM, fill bytes to end"),
        # A stuffed zero after a segment is junk between segments, not a marker.
        pytest.param(b"\xff\xfe\x00\x02\xff\x00\x00\x02\xff\xd9", id="COM, FF00"),
        # Junk (not 0xFF) right after a segment.
        pytest.param(b"\xff\xfe\x00\x02AB\xff\xd9", id="COM, junk"),
    ],
)
def test_files_without_eoi_after_their_segments_are_not_complete(tail: bytes) -> None:
    # T.81 B.2.1: after the last scan come only marker segments, then EOI (libjpeg makes
    # up a missing EOI and skips junk with a warning; the walk sends such files to Pillow).
    info = jpeg_header(_after_scan(tail))
    assert info is not None and (info.width, info.height) == (16, 16)
    assert not info.complete and not gpu_decodable(info, BIG)
    whole = jpeg_header(_after_scan(b"\xff\xfe\x00\x02\xff\xd9"))  # the same, with EOI
    assert whole is not None and whole.complete


@pytest.mark.parametrize(
    "segment",
    [
        pytest.param(_seg(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01"), id="Adobe, 12 bytes"),
        pytest.param(_seg(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x02extra"), id="Adobe, longer"),
        pytest.param(_seg(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00"), id="Adobe, 11 bytes"),
        pytest.param(_seg(0xEE, b"NotAdobe\x00\x00\x00\x01"), id="APP14, not Adobe"),
        pytest.param(_seg(0xED, b"Adobe\x00\x64\x00\x00\x00\x00\x01"), id="APP13 'Adobe'"),
    ],
)
def test_adobe_transform_is_read_as_pillow_does(segment: bytes) -> None:
    data = _after_soi(segment)
    with Image.open(io.BytesIO(data)) as img:
        expected = img.info.get("adobe_transform")
    info = jpeg_header(data)
    assert info is not None and info.adobe_transform == expected
    assert expected in (None, 1, 2)


# -- orientation from several segments, XMP and EXIF blocks at their boundaries ------------

_XMP6 = b'http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta tiff:Orientation="6"/>'


def _with_segments(*segments: tuple[int, bytes]) -> bytes:
    """_SMALL_JPEG with the segments after SOI, in order."""
    data = _SMALL_JPEG
    for marker, body in reversed(segments):
        data = with_segment(data, marker, body)
    return data


def _pillow_orientation(data: bytes) -> int:
    """What Pillow's exif_transpose would turn by: a value equal to 2..8, else 1."""
    with Image.open(io.BytesIO(data)) as img:
        try:
            tag = img.getexif().get(0x0112, 1)
        except Exception:
            return 1
    return next((k for k in range(2, 9) if tag == k), 1)


def _tiff_head(o: str) -> bytes:
    return (b"II*\x00" if o == "II" else b"MM\x00*") + _p(o, "I", 8)


def _segment_cases() -> list[object]:
    out: list[object] = []
    for o in ("II", "MM"):
        ifd = _p(o, "H", 1) + _p(o, "HHI", 0x0112, 3, 1) + _p(o, "H", 6) + bytes(6)
        out += [
            # Pillow keeps the first Exif segment and appends the next ones' payloads.
            pytest.param(
                [(0xE1, exif_block(6, o)), (0xE1, exif_block(3, o))], 6, id=f"{o} two Exifs"
            ),
            # The TIFF header (8 bytes) in one segment, IFD0 in the next.
            pytest.param(
                [(0xE1, b"Exif\x00\x00" + _tiff_head(o)), (0xE1, b"Exif\x00\x00" + ifd)],
                6,
                id=f"{o} IFD0 in the second Exif",
            ),
            # A TIFF block of exactly 8 bytes has no IFD0: XMP's orientation counts.
            pytest.param(
                [(0xE1, b"Exif\x00\x00" + _tiff_head(o)), (0xE1, _XMP6)],
                6,
                id=f"{o} 8-byte TIFF, XMP",
            ),
        ]
    out += [
        pytest.param([(0xE1, _XMP6)], 6, id="XMP"),
        pytest.param([(0xE1, _XMP6.replace(b'"6"', b'"9"'))], 1, id="XMP 9"),
        pytest.param([(0xE1, _XMP6.replace(b'"6"', b'"0"'))], 1, id="XMP 0"),
        pytest.param([(0xE1, _XMP6.replace(b'="6"', b">8<"))], 8, id="XMP element 8"),
        # XMP is read from APP1 only: not from a comment or another APP1 payload.
        pytest.param([(0xFE, _XMP6)], 1, id="XMP in COM"),
        pytest.param([(0xE2, _XMP6)], 1, id="XMP in APP2"),
        pytest.param([(0xE1, b"x" * 40 + b'<x tiff:Orientation="6"/>')], 1, id="other APP1 text"),
    ]
    return out


@pytest.mark.parametrize(("segments", "expected"), _segment_cases())
def test_orientation_from_several_segments_is_read_as_pillow_does(
    segments: list[tuple[int, bytes]], expected: int
) -> None:
    data = _with_segments(*segments)
    assert _pillow_orientation(data) == expected  # the case is what it says
    info = jpeg_header(data)
    assert info is not None and info.orientation == expected


def _boundary_blocks() -> list[object]:
    out: list[object] = []
    for o in ("II", "MM"):
        short6 = (0x0112, 3, 1, _p(o, "H", 6))
        make = (0x010F, 3, 1, _p(o, "H", 1))
        ratio = (0x0112, 5, 1, _p(o, "II", 12, 2))
        table = _ifd(o, make)[:-4]  # one entry, without the next-IFD offset
        entry6 = _p(o, "HHI", 0x0112, 3, 1) + _p(o, "H", 6) + bytes(2)
        out += [
            # The values at offsets add up to exactly the block's 46 bytes: all are read;
            # one byte more and the orientation (the last of them) is skipped.
            pytest.param(_ifd(o, (0x010F, 1, 38, 0), ratio), 6, id=f"{o} values fill block"),
            pytest.param(_ifd(o, (0x010F, 1, 39, 0), ratio), 1, id=f"{o} values 1 over"),
            # The entry table ends exactly at the block's end (no next-IFD offset) ...
            pytest.param(_ifd(o, short6)[:-4], 6, id=f"{o} table ends at block end"),
            pytest.param(_ifd(o, make, short6)[:-4], 6, id=f"{o} 2-entry table at end"),
            # ... or two bytes before the end of its last entry, whose value is cut.
            pytest.param(_ifd(o, make, short6)[:-6], 1, id=f"{o} last entry cut"),
            # An orientation entry right after a one-entry table is not in the table.
            pytest.param(table + entry6 + bytes(4), 1, id=f"{o} entry after the table"),
            # Two values: the first counts (RATIONAL 12/2, then 1/1; DOUBLE 6.0, then 1.0).
            pytest.param(
                _ifd(o, (0x0112, 5, 2, _p(o, "IIII", 12, 2, 1, 1))), 6, id=f"{o} 2 RATIONALs"
            ),
            pytest.param(
                _ifd(o, (0x0112, 10, 2, _p(o, "iiii", -12, -2, 1, 1))), 6, id=f"{o} 2 SRATIONALs"
            ),
            pytest.param(_ifd(o, (0x0112, 12, 2, _p(o, "dd", 6.0, 1.0))), 6, id=f"{o} 2 DOUBLEs"),
            # A LONG8 of 8, signed values of -8 and 8, and an unsigned 9.
            pytest.param(_ifd(o, (0x0112, 16, 1, _p(o, "Q", 8))), 8, id=f"{o} LONG8 8"),
            pytest.param(_ifd(o, (0x0112, 8, 1, _p(o, "h", -8))), 1, id=f"{o} SSHORT -8"),
            pytest.param(_ifd(o, (0x0112, 9, 1, _p(o, "i", 8))), 8, id=f"{o} SLONG 8"),
            pytest.param(_ifd(o, (0x0112, 4, 1, _p(o, "I", 9))), 1, id=f"{o} LONG 9"),
            pytest.param(_ifd(o, (0x0112, 3, 1, _p(o, "H", 1))), 1, id=f"{o} SHORT 1"),
        ]
    # Entries whose bytes, read at other offsets than 12 apart, would hold an orientation
    # of 3: an UNDEFINED value 01 12 00 03, and a tag 0 of type BYTE whose count is 3 << 16.
    out.append(
        pytest.param(
            _ifd(
                "MM",
                (0x010F, 7, 4, _p("MM", "HH", 0x0112, 3)),
                (0x0000, 1, 3 << 16, 0),
                (0x0112, 3, 1, _p("MM", "H", 6)),
            ),
            6,
            id="MM misaligned orientation",
        )
    )
    return out


@pytest.mark.parametrize(("block", "expected"), _boundary_blocks())
def test_exif_block_boundaries_are_read_as_pillow_does(block: bytes, expected: int) -> None:
    assert _pillow_orientation(with_segment(_SMALL_JPEG, 0xE1, block)) == expected
    _check_orientation(block)


# -- pixels: the antialias switch, the aspect limit, the resize chunk ---------------------


def _plain_bilinear(data: bytes, resize: int, crop: int) -> torch.Tensor:
    """Bilinear without antialiasing in plain torch: shorter side to *resize*, centre *crop*."""
    image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)).float()[None]
    height, width = image.shape[-2:]
    assert height < width and (resize * width // height - crop) % 2 == 0
    size = (resize, resize * width // height)
    out = torch.nn.functional.interpolate(image, size=size, mode="bilinear", antialias=False)
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    return out[0, :, top : top + crop, left : left + crop].round().clamp(0, 255)


def test_antialias_is_on_by_default_and_off_when_asked() -> None:
    data = jpeg(photo(22, (600, 448)))  # resized down by about 2: aliasing shows
    pre = Preprocess(WEIGHTS)
    resize, crop = pre.resize_size[0], pre.crop_size[0]
    (default,) = decode_batch(
        [data], device=CPU, resize_size=resize, crop_size=crop, max_pixels=BIG
    )
    (aliased,) = decode_batch(
        [data], device=CPU, resize_size=resize, crop_size=crop, max_pixels=BIG, antialias=False
    )
    assert default is not None and aliased is not None
    reference = pillow_crop(data)  # Pillow's resize is always antialiased
    near = (default.int() - reference.int()).abs()
    assert near.float().mean().item() < MEAN_LEVELS and near.max().item() <= MAX_LEVELS
    plain = _plain_bilinear(data, resize, crop)
    assert (aliased.float() - plain).abs().max().item() <= 1
    # The two differ by far more than the tolerance: the switch is seen.
    assert (aliased.int() - reference.int()).abs().max().item() > 5 * MAX_LEVELS


def test_limit_aspect_uses_the_given_ratio() -> None:
    from resnext_cli.imaging import preprocess
    from resnext_cli.imaging.tensor_decode import limit_aspect

    image = torch.arange(3 * 2 * 11, dtype=torch.uint8).reshape(3, 2, 11)
    ours = limit_aspect(image, max_aspect=2)
    # At most 2:1: the middle 4 of 11 columns, from column (11 - 4) // 2 = 3.
    assert torch.equal(ours, image[:, :, 3:7])
    pil = Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB")
    theirs = np.asarray(preprocess.limit_aspect(pil, max_aspect=2))
    assert np.array_equal(ours.permute(1, 2, 0).numpy(), theirs)
    assert torch.equal(limit_aspect(image), image)  # 11:2 is within the default 16:1


def test_a_chunk_smaller_than_one_picture_resizes_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import resnext_cli.imaging.tensor_decode as td

    datas = [jpeg(photo(75 + i, (200, 150))) for i in range(3)]
    real = td._resize_crop
    sizes: list[int] = []

    def counted(images: torch.Tensor, resize: int, crop: int, antialias: bool) -> torch.Tensor:
        sizes.append(len(images))
        return real(images, resize, crop, antialias)

    monkeypatch.setattr(td, "_resize_crop", counted)

    def sizes_with(chunk: int) -> list[int]:
        sizes.clear()
        out = tensor_crops(datas, budget=td.Budget(chunk_pixels=chunk))
        assert all(c is not None for c in out)
        return list(sizes)

    for chunk in (200 * 150, 200 * 150 + 1, 2 * 200 * 150 - 1, 100):
        # Never more pixels in one call than the chunk, and at least one picture.
        assert sizes_with(chunk) == [1, 1, 1], chunk
    assert sizes_with(2 * 200 * 150) == [2, 1]


def test_a_back_off_below_two_pixels_still_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    import resnext_cli.imaging.tensor_decode as td

    datas = [jpeg(photo(85 + i, (1, 1))) for i in range(3)]  # one pixel each
    real = td._resize_crop
    sizes: list[int] = []

    def tight(images: torch.Tensor, resize: int, crop: int, antialias: bool) -> torch.Tensor:
        sizes.append(len(images))
        if len(images) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(images, resize, crop, antialias)

    monkeypatch.setattr(td, "_resize_crop", tight)
    budget = td.Budget(chunk_pixels=3)  # three one-pixel pictures in one call at first
    out = tensor_crops(datas, budget=budget)
    # Three pixels halved is one: one picture per call from then on.
    assert budget.chunk_pixels == 1 and sizes == [3, 1, 1, 1]
    assert all(c is not None and c.shape == (3, 224, 224) for c in out)


def test_cuda_decode_waits_for_the_stream_of_its_own_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CUDA faked, with cuda:0 current: decoding on cuda:1 waits for cuda:1's stream,
    where torchvision allocates decode_jpeg's outputs."""
    import torchvision.io

    synced: list[str] = []

    class Stream:
        def __init__(self, device: torch.device | None) -> None:
            self.device = torch.device("cuda:0") if device is None else torch.device(device)

        def synchronize(self) -> None:
            synced.append(str(self.device))

    def fake_decode(datas: list[torch.Tensor], mode: object, device: object) -> list[torch.Tensor]:
        assert str(device) == "cuda:1"
        return [decode_jpeg(d) for d in datas]

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream(device))
    monkeypatch.setattr(torchvision.io, "decode_jpeg", fake_decode)
    out = tensor_crops([jpeg(photo(95, (120, 90)))], device=torch.device("cuda:1"))
    assert synced == ["cuda:1"] and out[0] is not None
