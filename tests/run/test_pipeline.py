"""The pipeline's GPU-decoding branch, run on the CPU, against the Pillow path."""

from __future__ import annotations

import dataclasses
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnext_cli import Classifier
from resnext_cli.errors import ConfigError, InputError
from resnext_cli.imaging import tensor_decode
from resnext_cli.imaging.budget import DECODING, Reservation
from resnext_cli.imaging.preprocess import DecodeOptions, Preprocess
from resnext_cli.imaging.tensor_decode import jpeg_header
from resnext_cli.inputs.sources import Source
from resnext_cli.model.categories import Categories
from resnext_cli.results import CategoryScore, Classified, Failed, FileFacts, Prediction
from resnext_cli.run import pipeline
from resnext_cli.run.config import Config
from resnext_cli.run.engine import LocalEngine
from resnext_cli.run.network import Model
from resnext_cli.run.pipeline import (
    Encoded,
    _batch_topk,
    _cat,
    _decoded,
    _device_rows,
    _finite_rows,
    _for_gpu,
    _like,
    _normalize,
    _numpy_order,
    _on_cpu,
    _openvino_input,
    _out_of_memory,
    _pooled,
    _probabilities,
    _read_once,
    _scored,
    _softmax_and_pooled,
    _stack,
    _to_device,
    _vector,
    decode_ready,
    features,
    infer,
    make_record,
    prepare,
    probabilities,
    score,
    topk,
)
from resnext_cli.run.plan import MachineFacts, resolve
from tests.helpers import _same_predictions

GPU = MachineFacts(cpu_count=8, cuda_count=1, cuda_bf16=True, cuda_free_bytes=40 << 30)


def test_decode_choice_is_the_plans() -> None:
    assert resolve(Config(), GPU).decode_on == "gpu"
    assert resolve(Config(exact=True), GPU).decode_on == "cpu"  # the reference: Pillow
    assert resolve(Config(decode="cpu"), GPU).decode_on == "cpu"
    assert resolve(Config(), MachineFacts(cpu_count=2)).decode_on == "cpu"
    with pytest.raises(ConfigError) as info:
        resolve(Config(decode="gpu"), MachineFacts(cpu_count=2))
    assert str(info.value) == "--decode gpu needs a CUDA device, not cpu (use --decode auto)"


def test_gpu_branch_matches_the_pillow_path(checkpoint, make_image, tmp_path) -> None:
    inputs = [
        make_image("a.jpg", seed=1, size=(500, 375), quality=92),
        make_image("b.jpg", seed=2, size=(375, 500), quality=92),
        make_image("p.jpg", seed=3, size=(400, 300), quality=92, progressive=True),
        make_image("c.png", seed=4, size=(300, 300)),
    ]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(inputs[0].read_bytes()[:600])
    cut = tmp_path / "cut.jpg"  # a complete header, then the scan stops halfway
    whole = inputs[1].read_bytes()
    cut.write_bytes(whole[: len(whole) * 6 // 10])
    inputs.append(cut)
    names = [str(p) for p in [*inputs, broken]]
    clf = Classifier(checkpoint=str(checkpoint), precision="fp32", workers=0)
    reference = list(clf.classify(names))
    # The GPU branch with the CPU standing in for the GPU: same code, torchvision's decoder.
    plan = dataclasses.replace(clf.plan, decode_on="gpu")
    engine = LocalEngine(dataclasses.replace(clf.loaded, plan=plan))
    prepared = [prepare(Source(input=n, path=p), plan, clf.loaded.transform) for n, p in
                zip(names, [*inputs, broken], strict=True)]  # fmt: skip
    # Whole baseline JPEGs go to the batch decoder; the progressive one, the PNG, the JPEG
    # cut in its scan (no EOI) and the one cut before its first scan take Pillow's path.
    assert [isinstance(p, Encoded) for p in prepared] == [True, True, False, False, False, False]
    got = list(engine.classify_sources(Source(input=n, path=p) for n, p in
                                       zip(names, [*inputs, broken], strict=True)))  # fmt: skip
    for ref, new in zip(reference, got, strict=True):
        assert type(ref) is type(new), new.input
        if isinstance(ref, Failed):
            assert isinstance(new, Failed) and new.error_type == ref.error_type
            continue
        assert isinstance(new, Classified)
        assert [p.index for p in new.predictions] == [p.index for p in ref.predictions]
        for a, b in zip(ref.predictions, new.predictions, strict=True):
            assert a.probability == pytest.approx(b.probability, abs=0.01)


# -- out-of-memory in the model: the batch is halved once, for the rest of the run -----------


def test_out_of_memory_in_the_model_halves_the_batch_once(
    checkpoint, make_image, monkeypatch, caplog
) -> None:
    import logging

    import resnext_cli.run.pipeline as pipeline
    from resnext_cli import Classifier

    paths = [str(make_image(f"{i}.png", seed=i)) for i in range(8)]
    clf = Classifier(checkpoint=str(checkpoint), precision="fp32", workers=0, batch_size=4)
    reference = list(clf.classify(paths))
    real = pipeline.probabilities
    sizes = []

    def tight(model, batch, precision):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(model, batch, precision)

    monkeypatch.setattr(pipeline, "probabilities", tight)
    with caplog.at_level(logging.DEBUG, logger="resnext_cli"):
        got = list(clf.classify(paths))
    # Batch one: 4 fails, then two halves; batch two starts at the halved size. Never 1.
    assert sizes == [4, 2, 2, 2, 2]
    assert clf.loaded.max_batch == 2
    _same_predictions([r.to_dict() for r in got], [r.to_dict() for r in reference])
    assert [r.getMessage() for r in caplog.records] == [
        "out of GPU memory on a batch of 4: the model takes at most 2 images at a time from now on"
    ]


# -- fast unit tests: each step of pipeline.py on its own, with tiny arrays and fakes --------

MEAN = (0.5, 0.25, 0.125)
STD = (0.5, 0.25, 2.0)
LABELS = ("ant", "bee", "cat")


def _plan(**changes):
    plan = resolve(Config(precision="fp32"), MachineFacts(cpu_count=2))
    changes.setdefault("topk", 2)
    return dataclasses.replace(plan, labels=LABELS, **changes)


def _transform(size=2, antialias=True):
    return Preprocess.from_settings(
        resize_size=size,
        crop_size=size,
        interpolation="bilinear",
        antialias=antialias,
        mean=MEAN,
        std=STD,
    )


class TinyNet(torch.nn.Module):
    """torchvision's ResNet shape in miniature: a 1x1 conv to 4 channels, ReLU, mean, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 1, bias=False)
        self.bn1 = torch.nn.Identity()
        self.relu = torch.nn.ReLU()
        self.maxpool = torch.nn.Identity()
        self.layer1 = self.layer2 = self.layer3 = self.layer4 = torch.nn.Identity()
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(4, 3)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor(CONV_W, dtype=torch.float32)[:, :, None, None])
            self.fc.weight.copy_(torch.tensor(FC_W, dtype=torch.float32))
            self.fc.bias.copy_(torch.tensor(FC_B, dtype=torch.float32))
        self.eval()

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


CONV_W = [[1.0, 0.5, -0.25], [-1.0, 0.25, 0.5], [0.5, -0.5, 1.0], [0.25, 0.75, -1.0]]
FC_W = [[0.5, -1.0, 0.25, 2.0], [-0.5, 1.5, 1.0, -1.0], [1.0, 0.0, -2.0, 0.5]]
FC_B = [0.1, -0.2, 0.3]


def _np_normalized(batch) -> np.ndarray:
    x = np.asarray(batch, dtype=np.float64) / 255.0
    return (x - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]


def _np_features(batch) -> np.ndarray:
    x = _np_normalized(batch)
    conv = np.einsum("oc,nchw->nohw", np.array(CONV_W), x)
    return np.maximum(conv, 0).mean(axis=(2, 3))


def _np_softmax(logits) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_probs(batch) -> np.ndarray:
    return _np_softmax(_np_features(batch) @ np.array(FC_W).T + np.array(FC_B))


def _pixels(n, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 2, 2), dtype=np.uint8)


def _model(plan=None, net=None, openvino=None):
    return Model(plan or _plan(), net, _transform(), "tiny", openvino)


class FakeOpenVino:
    """OpenVINO's Network as pipeline.py calls it, with what each call was given."""

    def __init__(self, width: int = 4) -> None:
        self.calls: list[tuple] = []
        self.width = width

    def probabilities(self, arr, precision):
        self.calls.append(("probabilities", arr.copy(), precision))
        return np.arange(arr.shape[0] * 3, dtype=np.float32).reshape(-1, 3) / 10

    def features(self, arr, precision):
        self.calls.append(("features", arr.copy(), precision))
        return np.arange(arr.shape[0] * self.width, dtype=np.float32).reshape(-1, self.width)

    def head(self, feats):
        self.calls.append(("head", feats.copy()))
        return np.concatenate([feats, feats], axis=1)[:, :3] * 2 + 1


def _expected_input(batch) -> np.ndarray:
    return _np_normalized(batch).astype(np.float32)


# -- prepare / _read_once / _for_gpu -------------------------------------------------------


def _jpeg_bytes(size=(4, 2), **save) -> bytes:
    img = Image.fromarray(
        np.random.default_rng(5).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    )
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90, **save)
    return out.getvalue()


def _png_bytes(size=(4, 2)) -> bytes:
    img = Image.fromarray(
        np.random.default_rng(6).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    )
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def _pillow_crop(data: bytes) -> np.ndarray:
    """The 2x2 crop of a 4x2 picture, computed here: its middle two columns, CHW."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    assert img.size == (4, 2)
    return np.asarray(img)[:, 1:3].transpose(2, 0, 1)


def test_prepare_crops_as_tensor_or_numpy(tmp_path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(_png_bytes())
    want = _pillow_crop(path.read_bytes())
    plan, t = _plan(), _transform()
    crop = prepare(Source(input="a", path=path), plan, t)
    assert isinstance(crop, torch.Tensor) and crop.dtype == torch.uint8
    assert crop.numpy().tolist() == want.tolist()
    arr = prepare(Source(input="a", path=path), plan, t, as_numpy=True)
    assert isinstance(arr, np.ndarray) and arr.tolist() == want.tolist()


def test_prepare_passes_the_plans_limits_to_open_source(monkeypatch) -> None:
    seen = []
    real = pipeline.open_source

    def recording(source, **kwargs):
        seen.append(kwargs)
        return real(source, **kwargs)

    monkeypatch.setattr(pipeline, "open_source", recording)
    plan = _plan(timeout=3.5, max_download_bytes=12345)
    crop = prepare(Source(input="p", data=_png_bytes()), plan, _transform())
    assert isinstance(crop, torch.Tensor)
    assert seen == [{"timeout": 3.5, "max_bytes": 12345}]


def test_prepare_with_gpu_decoding_reads_a_baseline_jpeg_only() -> None:
    data = _jpeg_bytes()
    plan = _plan(decode_on="gpu")
    got = prepare(Source(input="j", data=data), plan, _transform())
    assert isinstance(got, Encoded)
    assert got.data == data
    assert got.info == jpeg_header(data) and got.info is not None
    # The same file without GPU decoding: Pillow's crop.
    cpu = prepare(Source(input="j", data=data), _plan(), _transform())
    assert isinstance(cpu, torch.Tensor)
    assert cpu.numpy().tolist() == _pillow_crop(data).tolist()


def test_prepare_with_gpu_decoding_decodes_other_files_with_pillow() -> None:
    png = _png_bytes()
    plan = _plan(decode_on="gpu")
    got = prepare(Source(input="p", data=png), plan, _transform())
    assert isinstance(got, torch.Tensor)
    assert got.numpy().tolist() == _pillow_crop(png).tolist()
    prog = _jpeg_bytes(progressive=True)
    got = prepare(Source(input="q", data=prog), plan, _transform(), as_numpy=True)
    assert isinstance(got, np.ndarray)
    assert got.tolist() == _pillow_crop(prog).tolist()


def test_prepare_with_gpu_decoding_past_the_download_limit_uses_pillow(tmp_path) -> None:
    data = _jpeg_bytes()
    path = tmp_path / "big.jpg"
    path.write_bytes(data)
    plan = _plan(decode_on="gpu", max_download_bytes=len(data) - 1)
    got = prepare(Source(input="big", path=path), plan, _transform())
    assert isinstance(got, torch.Tensor)
    assert got.numpy().tolist() == _pillow_crop(data).tolist()
    plan = _plan(decode_on="gpu", max_download_bytes=len(data))
    assert isinstance(prepare(Source(input="big", path=path), plan, _transform()), Encoded)


def test_prepare_with_gpu_decoding_names_a_bad_file() -> None:
    plan = _plan(decode_on="gpu")
    got = prepare(Source(input="junk.bin", data=b"not an image"), plan, _transform())
    assert isinstance(got, InputError)
    assert (got.error_type, got.message) == (
        "not_an_image",
        "'junk.bin' is not an image Pillow can read",
    )


def test_prepare_gives_the_inputs_error() -> None:
    got = prepare(Source(input="junk.bin", data=b"not an image"), _plan(), _transform())
    assert isinstance(got, InputError)
    assert (got.error_type, got.message) == (
        "not_an_image",
        "'junk.bin' is not an image Pillow can read",
    )


def test_prepare_turns_a_decoder_bug_into_unreadable(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("decoder bug")

    monkeypatch.setattr(pipeline, "decode", broken)
    got = prepare(Source(input="x.png", data=_png_bytes()), _plan(), _transform())
    assert isinstance(got, InputError)
    assert (got.error_type, got.message) == (
        "unreadable",
        "cannot read 'x.png': RuntimeError('decoder bug')",
    )


class Recording(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[tuple] = []

    def read(self, *args):
        self.reads.append(args)
        return super().read(*args)


def test_read_once_of_a_stream_reads_one_past_the_limit() -> None:
    fp = Recording(b"12345")
    assert _read_once(fp, 5) == b"12345"
    assert fp.reads == [(6,)]
    fp = Recording(b"123456")
    assert _read_once(fp, 5) is None
    assert fp.reads == [(6,)]
    assert fp.tell() == 0  # rewound for Pillow


def test_read_once_of_a_file_reads_it_whole_within_the_limit(monkeypatch) -> None:
    fp = Recording(b"12345")
    monkeypatch.setattr(pipeline, "file_facts", lambda of: FileFacts(5, 0) if of is fp else None)
    assert _read_once(fp, 5) == b"12345"
    assert fp.reads == [()]
    fp = Recording(b"12345")
    assert _read_once(fp, 4) is None
    assert fp.reads == []


def test_read_once_of_a_file_that_grew_past_the_limit(monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "file_facts", lambda fp: FileFacts(3, 0))
    fp = Recording(b"1234567")
    fp.seek(2)
    assert _read_once(fp, 4) is None
    assert fp.tell() == 0


def test_for_gpu_takes_only_what_the_gpu_decoder_takes() -> None:
    data = _jpeg_bytes(size=(16, 12))
    got = _for_gpu(data, _plan())
    assert got == Encoded(data, jpeg_header(data))
    assert _for_gpu(_png_bytes(), _plan()) is None
    assert _for_gpu(_jpeg_bytes(progressive=True), _plan()) is None
    small = _plan(decode=DecodeOptions(max_pixels=16 * 12 - 1))
    assert _for_gpu(data, small) is None
    exact = _plan(decode=DecodeOptions(max_pixels=16 * 12))
    assert _for_gpu(data, exact) == Encoded(data, jpeg_header(data))


# -- _decoded ---------------------------------------------------------------------------------


def test_decoded_without_jpegs_passes_the_batch_through(monkeypatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("decode_batch called")

    monkeypatch.setattr(tensor_decode, "decode_batch", never)
    crop, err = torch.zeros(3, 2, 2, dtype=torch.uint8), InputError("unreadable", "x")
    a, b = Source(input="a"), Source(input="b")
    model = _model()
    got = _decoded(model, [(a, crop), (b, err)])
    assert got == [(a, crop), (b, err)]
    assert got[0][1] is crop and got[1][1] is err
    assert model.budget is None
    assert decode_ready(model, [(b, err)]) == [(b, err)]


def test_decoded_sends_the_jpegs_to_the_batch_decoder(monkeypatch) -> None:
    calls = []
    crops = [
        torch.full((3, 2, 2), 7, dtype=torch.uint8),
        torch.full((3, 2, 2), 9, dtype=torch.uint8),
    ]

    def fake(datas, **kwargs):
        calls.append((list(datas), kwargs))
        return crops[: len(datas)]

    monkeypatch.setattr(tensor_decode, "decode_batch", fake)
    j1, j2 = _jpeg_bytes(size=(16, 12)), _jpeg_bytes(size=(12, 16))
    e1, e2 = Encoded(j1, jpeg_header(j1)), Encoded(j2, jpeg_header(j2))
    other = torch.ones(3, 2, 2, dtype=torch.uint8)
    plan = _plan(decode=DecodeOptions(max_pixels=777), device="cpu")
    model = Model(plan, None, _transform(size=2, antialias=None), "tiny")
    model.transform.resize_size = [5]
    model.transform.crop_size = [4]
    s = [Source(input=n) for n in "abc"]
    got = _decoded(model, [(s[0], e1), (s[1], other), (s[2], e2)])
    assert got == [(s[0], crops[0]), (s[1], other), (s[2], crops[1])]
    assert isinstance(model.budget, tensor_decode.Budget)
    assert len(calls) == 1
    datas, kwargs = calls[0]
    assert datas == [j1, j2]
    assert kwargs == {
        "device": torch.device("cpu"),
        "resize_size": 5,
        "crop_size": 4,
        "antialias": False,
        "max_pixels": 777,
        "infos": [e1.info, e2.info],
        "budget": model.budget,
    }
    assert kwargs["budget"] is model.budget
    # The budget is the run's: kept from one batch to the next.
    budget = model.budget
    model.transform.antialias = True
    _decoded(model, [(s[0], e1)])
    assert calls[1][1]["budget"] is budget and calls[1][1]["antialias"] is True


def test_decoded_gives_what_the_gpu_could_not_decode_to_pillow(monkeypatch) -> None:
    j1, j2 = _jpeg_bytes(), _jpeg_bytes(size=(12, 16))
    e1, e2 = Encoded(j1, jpeg_header(j1)), Encoded(j2, jpeg_header(j2))
    crop = torch.full((3, 2, 2), 3, dtype=torch.uint8)
    monkeypatch.setattr(tensor_decode, "decode_batch", lambda datas, **kw: [None, crop])
    asked = []
    real = pipeline.prepare

    def recording(source, plan, transform, **kwargs):
        asked.append((source, plan, transform, kwargs))
        return real(source, plan, transform, **kwargs)

    monkeypatch.setattr(pipeline, "prepare", recording)
    plan = _plan(decode_on="gpu")
    model = Model(plan, None, _transform(), "tiny")
    p1 = Path("one.jpg")
    s1, s2 = Source(input="one", path=p1), Source(input="two")
    got = _decoded(model, [(s1, e1), (s2, e2)])
    assert got[0][0] is s1 and got[1] == (s2, crop)
    assert isinstance(got[0][1], torch.Tensor)
    assert got[0][1].numpy().tolist() == _pillow_crop(j1).tolist()
    assert len(asked) == 1
    source, pillow_plan, transform, kwargs = asked[0]
    assert source == Source(input="one", path=p1, data=j1)
    assert pillow_plan == dataclasses.replace(plan, decode_on="cpu")
    assert transform is model.transform and kwargs == {}


def test_decoded_after_the_batch_decoder_failed_uses_pillow_for_all(monkeypatch, caplog) -> None:
    import logging

    def failing(datas, **kwargs):
        raise RuntimeError("nvjpeg broke")

    monkeypatch.setattr(tensor_decode, "decode_batch", failing)
    j1, big = _jpeg_bytes(), _jpeg_bytes(size=(64, 48))
    bad = big[: len(big) * 3 // 4]
    e1, e2 = Encoded(j1, jpeg_header(j1)), Encoded(bad, jpeg_header(big))
    model = Model(_plan(decode_on="gpu"), None, _transform(), "tiny")
    with caplog.at_level(logging.DEBUG, logger="resnext_cli"):
        got = _decoded(model, [(Source(input="one"), e1), (Source(input="half.jpg"), e2)])
    assert got[0][1].numpy().tolist() == _pillow_crop(j1).tolist()
    err = got[1][1]
    assert isinstance(err, InputError) and err.error_type == "truncated"
    assert "'half.jpg'" in err.message
    assert [r.getMessage() for r in caplog.records] == [
        "the GPU decoder failed on a batch (RuntimeError('nvjpeg broke')): Pillow decodes its JPEGs"
    ]


def test_decoded_refuses_a_decoder_answer_of_the_wrong_length(monkeypatch) -> None:
    monkeypatch.setattr(tensor_decode, "decode_batch", lambda datas, **kw: [])
    j1 = _jpeg_bytes()
    model = Model(_plan(), None, _transform(), "tiny")
    with pytest.raises(ValueError):
        _decoded(model, [(Source(input="one"), Encoded(j1, jpeg_header(j1)))])


# -- stacking and rows ------------------------------------------------------------------------


def test_stack_keeps_numpy_numpy() -> None:
    a, b = _pixels(1)[0], _pixels(1, seed=1)[0]
    got = _stack([a, b], "cpu")
    assert isinstance(got, np.ndarray) and got.shape == (2, 3, 2, 2)
    assert got.tolist() == [a.tolist(), b.tolist()]


def test_stack_of_tensors_moves_only_what_is_not_on_the_cpu(monkeypatch) -> None:
    a, b = torch.from_numpy(_pixels(1)[0]), _pixels(1, seed=1)[0]
    got = _stack([a, b], "meta")  # numpy and torch crops: a tensor, on the CPU
    assert isinstance(got, torch.Tensor) and got.device.type == "cpu"
    assert got.tolist() == [a.tolist(), b.tolist()]
    moves = []
    real = torch.Tensor.to

    def to(self, *args, **kwargs):
        moves.append((self.device.type, args, kwargs))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    # torch.stack on the meta device takes seconds the first time: it is only noted here.
    monkeypatch.setattr(torch, "stack", lambda ts: [(t.device.type, t.shape) for t in ts])
    meta = torch.empty(3, 2, 2, dtype=torch.uint8, device="meta")
    assert _stack([a, meta], "meta") == [("meta", (3, 2, 2))] * 2
    assert moves == [("cpu", ("meta",), {"non_blocking": True}),
                     ("meta", ("meta",), {"non_blocking": True})]  # fmt: skip
    moves.clear()
    assert _stack([a, a], "meta") == [("cpu", (3, 2, 2))] * 2
    assert moves == []


def test_cat() -> None:
    one = np.ones((2, 3))
    assert _cat([one]) is one
    t = torch.ones(2, 3)
    assert _cat([t]) is t
    got = _cat([np.zeros((1, 2)), np.ones((2, 2))])
    assert isinstance(got, np.ndarray) and got.tolist() == [[0, 0], [1, 1], [1, 1]]
    got = _cat([np.zeros((1, 2)), torch.ones(1, 2)])
    assert isinstance(got, torch.Tensor) and got.tolist() == [[0, 0], [1, 1]]


def test_on_cpu_like_and_vector() -> None:
    arr = np.ones((2, 2))
    assert _on_cpu(arr) is arr
    t = torch.ones(2, 2)
    assert _on_cpu(t).device.type == "cpu" and _on_cpu(t).tolist() == t.tolist()
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert _like(np.zeros(1), rows) is rows
    like = _like(torch.zeros(1), rows)
    assert isinstance(like, torch.Tensor) and like.tolist() == rows.tolist()
    like[0, 0] = 42  # the same memory: no copy
    assert rows[0, 0] == 42
    strided = np.arange(8, dtype=np.float64)[::2]
    v = _vector(strided)
    assert v.dtype == np.float32 and v.flags["C_CONTIGUOUS"] and v.tolist() == [0, 2, 4, 6]
    v = _vector(torch.tensor([1.5, 2.5], dtype=torch.float64))
    assert isinstance(v, np.ndarray) and v.dtype == np.float32 and v.tolist() == [1.5, 2.5]


def test_finite_rows() -> None:
    rows = [[1.0, 2.0], [float("nan"), 0.0], [0.0, float("inf")], [-1.0, 0.5]]
    assert _finite_rows(np.array(rows)) == [True, False, False, True]
    assert _finite_rows(torch.tensor(rows)) == [True, False, False, True]
    assert _finite_rows(np.array(rows[1:2])) == [False]


# -- normalising and running the network ------------------------------------------------------


def test_openvino_input_normalises_in_float32() -> None:
    batch = _pixels(2)
    model = _model()
    got = _openvino_input(model, batch)
    assert got.dtype == np.float32 and got.shape == (2, 3, 2, 2)
    np.testing.assert_allclose(got, _np_normalized(batch), rtol=1e-6, atol=1e-6)
    got = _openvino_input(model, torch.from_numpy(batch))
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, _np_normalized(batch), rtol=1e-6, atol=1e-6)


def test_normalize_keeps_mean_and_std_on_the_batchs_device() -> None:
    batch = torch.from_numpy(_pixels(2))
    model = _model()
    got = _normalize(model, batch)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _np_normalized(batch.numpy()), rtol=1e-6, atol=1e-6)
    mean, std = model._norm
    assert mean.shape == std.shape == (3, 1, 1)
    assert mean.flatten().tolist() == list(MEAN) and std.flatten().tolist() == list(STD)
    # Kept: a later batch on the same device uses them as they are.
    model._norm = (torch.zeros(3, 1, 1), torch.full((3, 1, 1), 0.5))
    got = _normalize(model, batch)
    np.testing.assert_allclose(got.numpy(), batch.numpy() / 255.0 / 0.5, rtol=1e-6)
    # Made again for a batch on another device.
    model._norm = (FakeDevice(), FakeDevice())
    got = _normalize(model, batch)
    assert model._norm[0].device.type == "cpu" and model._norm[1].device.type == "cpu"
    np.testing.assert_allclose(got.numpy(), _np_normalized(batch.numpy()), rtol=1e-6, atol=1e-6)


class FakeDevice:
    device = torch.device("cuda", 3)


def test_normalize_makes_mean_and_std_on_the_batchs_device() -> None:
    model = _model()
    with torch.device("meta"):  # what a factory makes without a device of its own
        _normalize(model, torch.from_numpy(_pixels(1)))
    assert model._norm[0].device.type == "cpu" and model._norm[1].device.type == "cpu"


def test_normalize_in_float32_whatever_the_default_dtype() -> None:
    model = _model()
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _normalize(model, torch.from_numpy(_pixels(1)))
    finally:
        torch.set_default_dtype(before)
    assert model._norm[0].dtype == torch.float32 and model._norm[1].dtype == torch.float32


def test_to_device_pins_cpu_batches_for_cuda(monkeypatch) -> None:
    calls = []

    def pin(self):
        calls.append(("pin",))
        return self

    def to(self, *args, **kwargs):
        calls.append(("to", self.device.type, args, kwargs))
        return self

    batch = _pixels(1)
    got = _to_device(_model(_plan(device="cpu")), batch)
    assert isinstance(got, torch.Tensor) and got.tolist() == batch.tolist()
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    monkeypatch.setattr(torch.Tensor, "to", to)
    _to_device(_model(_plan(device="cpu")), batch)
    assert calls == [("to", "cpu", ("cpu",), {})]
    calls.clear()
    _to_device(_model(_plan(device="cuda:1")), torch.from_numpy(batch))
    assert calls == [("pin",), ("to", "cpu", ("cuda:1",), {"non_blocking": True})]
    calls.clear()
    meta = torch.empty(1, 3, 2, 2, device="meta")
    _to_device(_model(_plan(device="cuda:1")), meta)
    assert calls == [("to", "meta", ("cuda:1",), {})]


def test_probabilities_through_openvino() -> None:
    fake = FakeOpenVino()
    model = _model(openvino=fake)
    batch = _pixels(2)
    want = (np.arange(6, dtype=np.float32).reshape(2, 3) / 10).tolist()
    got = probabilities(model, batch, "bf16")
    assert isinstance(got, np.ndarray) and got.tolist() == want
    name, arr, precision = fake.calls[0]
    assert (name, precision) == ("probabilities", "bf16")
    np.testing.assert_allclose(arr, _expected_input(batch), rtol=1e-6, atol=1e-6)
    got = probabilities(model, torch.from_numpy(batch), "fp32")
    assert isinstance(got, torch.Tensor) and got.tolist() == want
    assert fake.calls[-1][0] == "probabilities" and fake.calls[-1][2] == "fp32"
    np.testing.assert_allclose(fake.calls[-1][1], _expected_input(batch), rtol=1e-6, atol=1e-6)


def test_probabilities_of_the_torch_network() -> None:
    model = _model(net=TinyNet())
    batch = _pixels(3)
    got = probabilities(model, batch, "fp32")
    assert got.dtype == torch.float32 and got.shape == (3, 3)
    np.testing.assert_allclose(got.numpy(), _np_probs(batch), rtol=1e-5, atol=1e-6)
    assert model.forward is model.net  # fp32: the plain network, built on first use
    assert got.is_inference()


class Forward:
    def __init__(self, width: int = 3) -> None:
        self.inputs: list[torch.Tensor] = []
        self.width = width

    def __call__(self, x):
        self.inputs.append(x.clone())
        n = x.shape[0]
        return torch.arange(n * self.width, dtype=torch.float64).reshape(n, self.width) / 4


def test_probabilities_use_the_models_forward_pass_channels_last() -> None:
    forward = Forward()
    model = _model(net=TinyNet())
    model.forward = forward
    batch = torch.from_numpy(_pixels(2))
    got = probabilities(model, batch, "fp32")
    assert model.forward is forward and len(forward.inputs) == 1
    x = forward.inputs[0]
    np.testing.assert_allclose(x.numpy(), _np_normalized(batch.numpy()), rtol=1e-6, atol=1e-6)
    # No clone() keeps the layout; the shape says it.
    assert got.dtype == torch.float32
    logits = np.arange(6).reshape(2, 3) / 4
    np.testing.assert_allclose(got.numpy(), _np_softmax(logits), rtol=1e-6)


def test_probabilities_give_the_network_a_channels_last_batch() -> None:
    layouts = []

    def forward(x):
        layouts.append(x.is_contiguous(memory_format=torch.channels_last))
        return torch.zeros(x.shape[0], 3)

    model = _model(net=TinyNet())
    model.forward = forward
    probabilities(model, _pixels(2), "fp32")
    assert layouts == [True]


def test_probabilities_pad_a_short_batch_for_a_compiled_graph() -> None:
    forward = Forward()
    model = _model(_plan(compile=True, batch_size=4), net=TinyNet())
    model.forward = forward
    batch = _pixels(2)
    got = probabilities(model, batch, "fp32")
    x = forward.inputs[0]
    assert x.shape == (4, 3, 2, 2)
    np.testing.assert_allclose(x[:2].numpy(), _np_normalized(batch), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        x[2:].numpy(), _np_normalized(np.zeros((2, 3, 2, 2))), rtol=1e-6, atol=1e-6
    )
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got.numpy(), _np_softmax(np.arange(6).reshape(2, 3) / 4), rtol=1e-6)
    # A full batch, and an uncompiled one, are not padded.
    probabilities(model, _pixels(4), "fp32")
    assert forward.inputs[1].shape == (4, 3, 2, 2)
    model = _model(_plan(compile=False, batch_size=4), net=TinyNet())
    model.forward = forward
    probabilities(model, batch, "fp32")
    assert forward.inputs[2].shape == (2, 3, 2, 2)


def test_probabilities_retry_in_float32_with_the_plain_network() -> None:
    def refuse(x):
        raise AssertionError("the reduced forward pass ran")

    model = _model(_plan(precision="bf16", compile=True, batch_size=4), net=TinyNet())
    model.forward = refuse
    batch = _pixels(2)
    got = probabilities(model, batch, "fp32")
    assert got.shape == (2, 3)  # not padded: the plain network is not compiled
    np.testing.assert_allclose(got.numpy(), _np_probs(batch), rtol=1e-5, atol=1e-6)


def test_probabilities_in_reduced_precision_build_the_reduced_forward() -> None:
    model = _model(_plan(precision="bf16"), net=TinyNet())
    batch = _pixels(2)
    got = probabilities(model, batch, "bf16")
    assert model.forward is not None and model.forward is not model.net
    np.testing.assert_allclose(got.numpy(), _np_probs(batch), atol=0.05)


class Spy(torch.nn.Module):
    """A layer that notes whether autocast is on, and in which dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple] = []

    def forward(self, x):
        on = torch.is_autocast_enabled("cpu")
        self.seen.append((on, torch.get_autocast_dtype("cpu") if on else None))
        return x


def test_pooled_features_of_the_torch_network() -> None:
    net = TinyNet()
    net.layer1 = Spy()
    model = _model(net=net)
    batch = _pixels(3)
    got = _pooled(model, batch, "fp32")
    assert got.dtype == torch.float32 and got.shape == (3, 4)
    np.testing.assert_allclose(got.numpy(), _np_features(batch), rtol=1e-5, atol=1e-6)
    assert net.layer1.seen == [(False, None)]
    got = _pooled(model, torch.from_numpy(batch), "bf16")
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _np_features(batch), rtol=0.02, atol=0.02)
    assert net.layer1.seen[1] == (True, torch.bfloat16)
    _pooled(model, batch, "fp16")
    assert net.layer1.seen[2] == (True, torch.float16)


def test_pooled_features_through_openvino() -> None:
    fake = FakeOpenVino()
    model = _model(openvino=fake)
    batch = _pixels(2)
    got = _pooled(model, batch, "fp16")
    assert isinstance(got, np.ndarray) and got.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    name, arr, precision = fake.calls[0]
    assert (name, precision) == ("features", "fp16")
    np.testing.assert_allclose(arr, _expected_input(batch), rtol=1e-6, atol=1e-6)
    got = _pooled(model, torch.from_numpy(batch), "fp32")
    assert isinstance(got, torch.Tensor) and got.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_softmax_and_pooled_through_openvino() -> None:
    fake = FakeOpenVino()
    model = _model(openvino=fake)
    batch = _pixels(2)
    feats = np.arange(8, dtype=np.float32).reshape(2, 4)
    want = np.concatenate([feats[:, :3] * 2 + 1, feats], axis=1).tolist()
    got = _softmax_and_pooled(model, batch, "bf16")
    assert isinstance(got, np.ndarray) and got.tolist() == want
    assert [c[0] for c in fake.calls] == ["features", "head"] and fake.calls[0][2] == "bf16"
    assert fake.calls[1][1].tolist() == feats.tolist()
    got = _softmax_and_pooled(model, torch.from_numpy(batch), "fp32")
    assert isinstance(got, torch.Tensor) and got.tolist() == want


def test_softmax_and_pooled_of_the_torch_network() -> None:
    model = _model(net=TinyNet())
    batch = _pixels(3)
    got = _softmax_and_pooled(model, batch, "fp32")
    assert got.shape == (3, 7) and got.dtype == torch.float32
    want = np.concatenate([_np_probs(batch), _np_features(batch)], axis=1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


# -- batches: out of memory, retries, non-finite rows ----------------------------------------


def test_out_of_memory_is_torchs_error_only(monkeypatch) -> None:
    oom = torch.OutOfMemoryError("CUDA out of memory")
    assert _out_of_memory(oom) is True
    assert _out_of_memory(RuntimeError("CUDA out of memory")) is False
    monkeypatch.delitem(sys.modules, "torch")
    assert _out_of_memory(oom) is False


class Step:
    """A batch step: row i of a crop filled with its first pixel; fails as told."""

    def __init__(self, *, fail=None, width=3) -> None:
        self.calls: list[tuple[list[int], str]] = []
        self.fail = fail or (lambda batch, precision: None)
        self.width = width

    def __call__(self, model, batch, precision):
        firsts = [int(b.reshape(-1)[0]) for b in batch]
        self.calls.append((firsts, precision))
        error = self.fail(firsts, precision)
        if error is not None:
            raise error
        rows = np.array([[f / 100 + j / 1000 for j in range(self.width)] for f in firsts])
        return torch.from_numpy(rows) if isinstance(batch, torch.Tensor) else rows


def _crops(*firsts):
    out = []
    for f in firsts:
        c = np.zeros((3, 2, 2), dtype=np.uint8)
        c[0, 0, 0] = f
        out.append(c)
    return out


def test_device_rows_in_parts_of_the_largest_batch() -> None:
    step = Step()
    model = _model()
    got = _device_rows(model, _crops(1, 2, 3, 4, 5), "fp32", step)
    assert step.calls == [([1, 2, 3, 4, 5], "fp32")]
    model.max_batch = 2
    got = _device_rows(model, _crops(1, 2, 3, 4, 5), "bf16", step)
    assert step.calls[1:] == [([1, 2], "bf16"), ([3, 4], "bf16"), ([5], "bf16")]
    assert np.round(got[:, 0] * 100).tolist() == [1, 2, 3, 4, 5]


def test_device_rows_stack_on_the_plans_device(monkeypatch) -> None:
    seen = []

    def stack(crops, device):
        seen.append((len(crops), device))
        return np.zeros((len(crops), 3, 2, 2))

    monkeypatch.setattr(pipeline, "_stack", stack)
    step = Step()
    _device_rows(_model(_plan(device="cuda:2")), _crops(1, 2), "fp32", step)
    assert seen == [(2, "cuda:2")]


def test_device_rows_halve_the_batch_once_out_of_memory(monkeypatch, caplog) -> None:
    import logging

    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    step = Step(fail=lambda b, p: torch.OutOfMemoryError("oom") if len(b) > 2 else None)
    model = _model()
    with caplog.at_level(logging.DEBUG, logger="resnext_cli"):
        got = _device_rows(model, _crops(1, 2, 3, 4, 5), "fp32", step)
    assert [c[0] for c in step.calls] == [[1, 2, 3, 4, 5], [1, 2], [3, 4], [5]]
    assert model.max_batch == 2 and emptied == [1]
    assert np.round(got[:, 0] * 100).tolist() == [1, 2, 3, 4, 5]
    assert [r.getMessage() for r in caplog.records] == [
        "out of GPU memory on a batch of 5: the model takes at most 2 images at a time from now on"
    ]


def test_device_rows_halve_down_to_one(monkeypatch) -> None:
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    step = Step(fail=lambda b, p: torch.OutOfMemoryError("oom") if len(b) > 1 else None)
    model = _model()
    _device_rows(model, _crops(1, 2, 3), "fp32", step)
    assert model.max_batch == 1 and emptied == []
    assert [c[0] for c in step.calls] == [[1, 2, 3], [1], [2], [3]]


def test_device_rows_raise_what_halving_cannot_help() -> None:
    model = _model()
    other = Step(fail=lambda b, p: ValueError("bad"))
    with pytest.raises(ValueError, match=r"^bad$"):
        _device_rows(model, _crops(1, 2), "fp32", other)
    assert model.max_batch is None and len(other.calls) == 1
    oom = Step(fail=lambda b, p: torch.OutOfMemoryError("oom"))
    with pytest.raises(torch.OutOfMemoryError):
        _device_rows(model, _crops(1), "fp32", oom)
    assert model.max_batch is None and len(oom.calls) == 1
    model.max_batch = 2
    with pytest.raises(torch.OutOfMemoryError):
        _device_rows(model, _crops(1, 2, 3), "fp32", oom)
    assert model.max_batch == 2 and len(oom.calls) == 2


def test_scored_gives_rows_precision_and_topk_of_the_labels_only() -> None:
    # Three labels; the rows are wider (features follow), and the extra columns are larger.
    def rows(model, batch, precision):
        out = np.array([[0.2, 0.5, 0.3, 9.0, 8.0], [0.6, 0.1, 0.3, 7.0, 9.0]])
        return out[: len(batch)]

    model = _model(_plan(topk=2))
    got = _scored(model, _crops(1, 2), ["a", "b"], step=rows)
    assert [(r[0].tolist(), r[1], r[2], r[3]) for r in got] == [
        ([0.2, 0.5, 0.3, 9.0, 8.0], "fp32", [0.5, 0.3], [1, 2]),
        ([0.6, 0.1, 0.3, 7.0, 9.0], "fp32", [0.6, 0.3], [0, 2]),
    ]
    got = _scored(model, _crops(1, 2), ["a", "b"], step=rows, k=1)
    assert [(r[2], r[3]) for r in got] == [([0.5], [1]), ([0.6], [0])]


def test_scored_runs_probabilities_by_default(monkeypatch) -> None:
    step = Step()
    monkeypatch.setattr(pipeline, "probabilities", step)
    model = _model(_plan(precision="bf16", topk=3))
    got = _scored(model, _crops(4, 1), ["a", "b"])
    assert step.calls == [([4, 1], "bf16")]
    assert [(r[1], r[3]) for r in got] == [("bf16", [2, 1, 0]), ("bf16", [2, 1, 0])]
    assert got[0][2] == pytest.approx([0.042, 0.041, 0.04])


def test_scored_retries_one_at_a_time_to_find_the_guilty_input() -> None:
    step = Step(fail=lambda b, p: RuntimeError("boom") if 2 in b else None)
    model = _model(_plan(topk=2))
    got = _scored(model, _crops(1, 2, 3), ["a", "b", "c"], step=step, k=1)
    assert [c[0] for c in step.calls] == [[1, 2, 3], [1], [2], [3]]
    assert isinstance(got[1], InputError)
    assert (got[1].error_type, got[1].message) == (
        "inference_failed",
        "the model failed on 'b': RuntimeError('boom')",
    )
    assert [(g[1], g[3]) for g in (got[0], got[2])] == [("fp32", [2]), ("fp32", [2])]


def test_scored_retries_overflowed_rows_in_float32() -> None:
    nan = float("nan")

    def step(model, batch, precision):
        calls.append(([int(b.reshape(-1)[0]) for b in batch], precision))
        out = np.array([[0.1, 0.2, 0.7]] * len(batch))
        if precision != "fp32":
            out[[i for i, b in enumerate(batch) if b.reshape(-1)[0] != 5]] = nan
        return out

    calls: list = []
    model = _model(_plan(precision="bf16", topk=2))
    got = _scored(model, _crops(5, 6, 5, 7), list("abcd"), step=step)
    assert calls == [([5, 6, 5, 7], "bf16"), ([6, 7], "fp32")]
    assert [(g[1], g[2], g[3]) for g in got] == [("bf16", [0.7, 0.2], [2, 1])] * 0 + [
        ("bf16", [0.7, 0.2], [2, 1]),
        ("fp32", [0.7, 0.2], [2, 1]),
        ("bf16", [0.7, 0.2], [2, 1]),
        ("fp32", [0.7, 0.2], [2, 1]),
    ]
    assert got[1][0].tolist() == [0.1, 0.2, 0.7]


def test_scored_fails_the_inputs_still_not_finite() -> None:
    nan = float("nan")

    def step(model, batch, precision):
        calls.append(precision)
        out = np.array([[0.1, 0.2, 0.7]] * len(batch))
        if len(batch) > 1:
            out[1, 1] = nan
        else:
            out[0, 0] = float("inf")
        return out

    calls: list = []
    model = _model(_plan(precision="fp16", topk=2))
    got = _scored(model, _crops(1, 2, 3), ["a", "b", "c"], step=step)
    assert calls == ["fp16", "fp32"]
    assert isinstance(got[1], InputError)
    assert (got[1].error_type, got[1].message) == (
        "inference_failed",
        "the model gave non-finite probabilities for 'b' (NaN or infinity; check the checkpoint)",
    )
    assert [g[1] for g in (got[0], got[2])] == ["fp16", "fp16"]
    # In float32 there is no retry: the input fails at once.
    calls.clear()
    got = _scored(_model(_plan(precision="fp32")), _crops(1, 2), ["a", "b"], step=step)
    assert calls == ["fp32"] and isinstance(got[1], InputError)
    assert got[1].message.startswith("the model gave non-finite probabilities for 'b' ")
    assert got[0][1] == "fp32"


def test_scored_retry_keeps_torch_rows() -> None:
    def step(model, batch, precision):
        out = torch.tensor([[0.1, 0.2, 0.7]] * len(batch))
        if precision != "fp32":
            out[0, 0] = float("nan")
        return out

    model = _model(_plan(precision="bf16", topk=1))
    got = _scored(model, [torch.zeros(3, 2, 2, dtype=torch.uint8)], ["a"], step=step)
    assert got[0][1:] == ("fp32", [pytest.approx(0.7)], [2])
    assert isinstance(got[0][0], torch.Tensor)


# -- top-k ------------------------------------------------------------------------------------


def test_numpy_order_is_a_stable_descending_sort_nan_first() -> None:
    nan = float("nan")
    probs = np.array([[0.2, nan, 0.5, 0.2, 0.1], [0.1, 0.3, 0.3, nan, 0.3]])
    assert _numpy_order(probs).tolist() == [[1, 2, 0, 3, 4], [3, 1, 2, 4, 0]]
    assert _numpy_order(np.array([0.1, 0.4, 0.4])).tolist() == [1, 2, 0]


def test_numpy_order_matches_torchs_stable_sort() -> None:
    rng = np.random.default_rng(3)
    probs = rng.integers(0, 4, size=(6, 9)).astype(np.float32) / 4
    probs[2, 3] = probs[4, 0] = np.nan
    _, want = torch.sort(torch.from_numpy(probs), dim=1, descending=True, stable=True)
    assert _numpy_order(probs).tolist() == want.tolist()


def test_batch_topk_numpy_and_torch() -> None:
    probs = np.array([[0.1, 0.4, 0.4, 0.1], [0.7, 0.05, 0.05, 0.2]], dtype=np.float32)
    for rows in (probs, torch.from_numpy(probs)):
        values, indices = _batch_topk(rows, 3)
        assert indices == [[1, 2, 0], [0, 3, 1]]
        assert values == [
            [pytest.approx(0.4), pytest.approx(0.4), pytest.approx(0.1)],
            [pytest.approx(0.7), pytest.approx(0.2), pytest.approx(0.05)],
        ]
        assert all(type(i) is int for row in indices for i in row)
        assert _batch_topk(rows, 0) == ([[], []], [[], []])
        assert _batch_topk(rows, 1)[1] == [[1], [0]]


def test_topk_numpy_and_torch() -> None:
    nan = float("nan")
    probs = np.array([0.1, 0.3, nan, 0.3, 0.05])
    values, indices = topk(probs, 3)
    assert indices == [2, 1, 3] and values[1:] == [0.3, 0.3] and np.isnan(values[0])
    probs = np.array([0.1, 0.3, 0.2, 0.3, 0.05], dtype=np.float32)
    for rows in (probs, torch.from_numpy(probs)):
        values, indices = topk(rows, 4)
        assert indices == [1, 3, 2, 0]
        assert values == [pytest.approx(v) for v in (0.3, 0.3, 0.2, 0.1)]
        assert topk(rows, 1)[1] == [1]


# -- records ----------------------------------------------------------------------------------


def test_make_record_of_an_error(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.png").write_bytes(b"12345")
    st = os.stat(tmp_path / "a.png")
    rec = make_record(
        _model(), Source(input="a.png", path=Path("a.png")), InputError("unreadable", "no")
    )
    assert rec == Failed(
        "a.png",
        "unreadable",
        "no",
        path=str(tmp_path / "a.png"),
        file=FileFacts(st.st_size, st.st_mtime_ns),
    )
    rec = make_record(_model(), Source(input="-"), InputError("unreadable", "no"))
    assert rec == Failed("-", "unreadable", "no", path=None, file=None)


def test_make_record_of_probabilities(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b.png").write_bytes(b"123")
    st = os.stat(tmp_path / "b.png")
    plan = _plan(topk=2, checkpoint="my.pth", runtime="torch")
    model = _model(plan)
    probs = np.array([0.2, 0.5, 0.3])
    rec = make_record(model, Source(input="b.png", path=Path("b.png")), (probs, "bf16"))
    assert rec == Classified(
        input="b.png",
        model="resnext50_32x4d",
        weights="IMAGENET1K_V2",
        predictions=(Prediction("bee", 1, 0.5), Prediction("cat", 2, 0.3)),
        path=str(tmp_path / "b.png"),
        checkpoint="my.pth",
        precision="bf16",
        runtime="torch",
        file=FileFacts(st.st_size, st.st_mtime_ns),
        categories=None,
        embedding=None,
    )


def test_make_record_takes_a_known_topk_categories_and_embedding() -> None:
    cats = Categories(names=("small", "big"), class_to_category=(0, 1, 0))
    plan = _plan(topk=1, embeddings=True, categories=cats, runtime="openvino")
    rows = torch.tensor([0.125, 0.625, 0.25, 1.5, -2.0])
    # The top-k given is the record's, not one computed again.
    rec = make_record(_model(plan), Source(input="u"), (rows, "fp32", [0.25], [2]))
    assert isinstance(rec, Classified)
    assert rec.predictions == (Prediction("cat", 2, 0.25),)
    assert rec.categories == (CategoryScore("big", 0.625),)
    assert rec.embedding == (1.5, -2.0)
    assert (rec.runtime, rec.precision, rec.path, rec.file) == ("openvino", "fp32", None, None)
    plan = _plan(topk=2, embeddings=False, categories=cats)
    rec = make_record(_model(plan), Source(input="u"), (rows[:3], "fp32"))
    assert rec.embedding is None
    assert rec.categories == (CategoryScore("big", 0.625), CategoryScore("small", 0.375))
    assert rec.predictions == (Prediction("bee", 1, 0.625), Prediction("cat", 2, 0.25))


# -- batches of sources: score, infer, features ----------------------------------------------


def test_score_keeps_errors_in_place(monkeypatch) -> None:
    calls = []

    def fake(model, tensors, names, *, step=None, k=None):
        calls.append((tensors, names, step, k))
        return [f"scored {n}" for n in names]

    monkeypatch.setattr(pipeline, "_scored", fake)
    err = InputError("unreadable", "no")
    s = [Source(input=n) for n in "abcd"]
    c1, c2 = _crops(1, 2)
    got = score(_model(), [(s[0], err), (s[1], c1), (s[2], err), (s[3], c2)])
    assert got == [(s[0], err), (s[1], "scored b"), (s[2], err), (s[3], "scored d")]
    assert calls == [([c1, c2], ["b", "d"], None, None)]
    calls.clear()
    score(_model(_plan(embeddings=True)), [(s[1], c1)])
    assert calls[0][2] is _softmax_and_pooled
    calls.clear()
    assert score(_model(), [(s[0], err)]) == [(s[0], err)]
    assert calls == []


def test_probabilities_keep_rows_and_precision(monkeypatch) -> None:
    calls = []
    err = InputError("inference_failed", "x")

    def fake(model, tensors, names, *, step=None, k=None):
        calls.append((step, k))
        return [("rows", "bf16", [0.5], [1]), err]

    monkeypatch.setattr(pipeline, "_scored", fake)
    got = _probabilities(_model(), _crops(1, 2), ["a", "b"])
    assert got == [("rows", "bf16"), err]
    _probabilities(_model(), _crops(1, 2), ["a", "b"], step=pipeline._pooled)
    _probabilities(_model(), _crops(1, 2), ["a", "b"], step=_softmax_and_pooled)
    assert calls == [(None, None), (pipeline._pooled, 0), (_softmax_and_pooled, None)]


def test_infer_gives_one_record_each_in_order() -> None:
    model = _model(_plan(topk=2), net=TinyNet())
    batch = _pixels(2, seed=9)
    err = InputError("unreadable", "cannot")
    prepared = [
        (Source(input="x"), torch.from_numpy(batch[0])),
        (Source(input="bad"), err),
        (Source(input="y"), torch.from_numpy(batch[1])),
    ]
    records = list(infer(model, prepared))
    assert records[1] == Failed("bad", "unreadable", "cannot")
    want = _np_probs(batch)
    for rec, p in zip([records[0], records[2]], want, strict=True):
        order = sorted(range(3), key=lambda i: -p[i])[:2]
        assert [x.index for x in rec.predictions] == order
        assert [x.label for x in rec.predictions] == [LABELS[i] for i in order]
        assert [x.probability for x in rec.predictions] == pytest.approx(p[order], abs=1e-6)
        assert rec.precision == "fp32"
    assert [r.input for r in records] == ["x", "bad", "y"]


def test_infer_with_embeddings_through_openvino() -> None:
    fake = FakeOpenVino(width=2)
    model = _model(_plan(topk=1, embeddings=True), openvino=fake)
    got = list(infer(model, [(Source(input="x"), _pixels(1)[0])]))
    # features [0, 1] -> head [1, 3]: the rows are the head's values, then the features.
    assert got[0].predictions == (Prediction("bee", 1, 3.0),)
    assert got[0].embedding == (0.0, 1.0)


def test_features_of_a_batch(monkeypatch) -> None:
    model = _model(net=TinyNet())
    batch = _pixels(2, seed=4)
    err = InputError("unreadable", "cannot")
    prepared = [
        (Source(input="x"), torch.from_numpy(batch[0])),
        (Source(input="bad"), err),
        (Source(input="y"), torch.from_numpy(batch[1])),
    ]
    got = list(features(model, prepared))
    assert [s.input for s, _ in got] == ["x", "bad", "y"]
    assert got[1][1] is err
    for (_, vec), want in zip([got[0], got[2]], _np_features(batch), strict=True):
        assert isinstance(vec, np.ndarray) and vec.dtype == np.float32
        np.testing.assert_allclose(vec, want, rtol=1e-5, atol=1e-6)
    assert list(features(model, [(Source(input="bad"), err)])) == [(Source(input="bad"), err)]


def test_features_through_openvino_and_a_failed_input(monkeypatch) -> None:
    fake = FakeOpenVino(width=5)
    model = _model(openvino=fake)
    got = list(features(model, [(Source(input="x"), _pixels(1)[0])]))
    assert got[0][1].tolist() == [0, 1, 2, 3, 4] and got[0][1].dtype == np.float32
    monkeypatch.setattr(
        pipeline, "_probabilities", lambda *a, **k: [InputError("inference_failed", "m")]
    )
    got = list(features(model, [(Source(input="x"), _pixels(1)[0])]))
    assert isinstance(got[0][1], InputError) and got[0][1].message == "m"


# -- what the first mutation run left: each of these kills a mutant the tests above missed --


def test_prepare_decodes_within_its_share_of_the_decoding_budget(monkeypatch) -> None:
    shares = []
    real = pipeline.decode

    def recording(fp, name, options, reservation=None):
        shares.append(reservation)
        return real(fp, name, options, reservation)

    monkeypatch.setattr(pipeline, "decode", recording)
    png = _png_bytes()
    assert isinstance(prepare(Source(input="p", data=png), _plan(), _transform()), torch.Tensor)
    gpu = _plan(decode_on="gpu")
    assert isinstance(prepare(Source(input="p", data=png), gpu, _transform()), torch.Tensor)
    assert len(shares) == 2
    assert all(isinstance(s, Reservation) and s.budget is DECODING for s in shares)


def test_read_once_asks_the_file_itself_for_its_size(tmp_path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"123456")
    with open(path, "rb") as fp:
        assert _read_once(fp, 5) is None  # fstat says 6: not read at all
        assert fp.tell() == 0
    with open(path, "rb") as fp:
        assert _read_once(fp, 6) == b"123456"


def test_on_cpu_moves_a_tensor_off_its_device(monkeypatch) -> None:
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self: ("moved", self.shape))
    assert _on_cpu(torch.ones(2, 3)) == ("moved", (2, 3))


def test_normalize_checks_the_device_of_the_mean() -> None:
    model = _model()
    batch = torch.from_numpy(_pixels(1))
    model._norm = (FakeDevice(), torch.ones(3, 1, 1))
    got = _normalize(model, batch)
    np.testing.assert_allclose(got.numpy(), _np_normalized(batch.numpy()), rtol=1e-6, atol=1e-6)
    assert model._norm[1].flatten().tolist() == list(STD)


def test_normalize_gives_float32_whatever_the_default_dtype() -> None:
    model = _model()
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = _normalize(model, torch.from_numpy(_pixels(1)))
    finally:
        torch.set_default_dtype(before)
    assert got.dtype == torch.float32


def test_scored_refuses_names_that_do_not_match_the_crops() -> None:
    step = Step(fail=lambda b, p: RuntimeError("boom"))
    with pytest.raises(ValueError):
        _scored(_model(), _crops(1, 2), ["a", "b", "c"], step=step)


def test_scored_refuses_a_float32_retry_of_the_wrong_length() -> None:
    def step(model, batch, precision):
        if precision == "fp32":
            return np.array([[0.1, 0.2, 0.7]] * (len(batch) + 1))
        return np.array([[np.nan, 0.2, 0.7]] * len(batch))

    with pytest.raises(ValueError):
        _scored(_model(_plan(precision="bf16")), _crops(1), ["a"], step=step)


def test_scored_retry_runs_the_same_model_on_the_plans_device(monkeypatch) -> None:
    stacked = []

    def stack(crops, device):
        stacked.append((len(crops), device))
        return np.stack(crops)

    models = []

    def step(model, batch, precision):
        models.append(model)
        out = np.array([[0.1, 0.2, 0.7]] * len(batch))
        if precision != "fp32":
            out[0, 0] = np.nan
        return out

    monkeypatch.setattr(pipeline, "_stack", stack)
    model = _model(_plan(precision="bf16", device="cuda:2"))
    got = _scored(model, _crops(1, 2), ["a", "b"], step=step)
    assert [g[1] for g in got] == ["fp32", "bf16"]
    assert stacked == [(2, "cuda:2"), (1, "cuda:2")]
    assert models == [model, model]


def test_sorts_are_stable_on_long_rows() -> None:
    # Long rows of ties: an unstable sort puts tied classes out of order.
    probs = (np.arange(100) % 3).astype(np.float32) / 4
    want = list(range(2, 60, 3))
    for rows in (probs, torch.from_numpy(probs)):
        assert topk(rows, 20)[1] == want
        assert _batch_topk(rows[None], 20)[1] == [want]
        assert _batch_topk(rows[None], 20)[0] == [[0.5] * 20]


def test_make_record_refuses_a_topk_of_unequal_lengths() -> None:
    with pytest.raises(ValueError):
        make_record(_model(), Source(input="u"), (np.array([0.2, 0.3, 0.5]), "fp32", [0.5], []))


def _encoded_batch(monkeypatch, crop):
    monkeypatch.setattr(tensor_decode, "decode_batch", lambda datas, **kw: [crop] * len(datas))
    j = _jpeg_bytes()
    return [(Source(input="j"), Encoded(j, jpeg_header(j)))]


def test_decode_ready_decodes_the_jpegs(monkeypatch) -> None:
    crop = torch.from_numpy(_pixels(1)[0])
    model = _model()
    got = decode_ready(model, _encoded_batch(monkeypatch, crop))
    assert got == [(Source(input="j"), crop)]
    assert model.budget is not None


def test_infer_and_features_decode_the_jpegs(monkeypatch) -> None:
    crop = torch.from_numpy(_pixels(1, seed=2)[0])
    model = _model(_plan(topk=1), net=TinyNet())
    records = list(infer(model, _encoded_batch(monkeypatch, crop)))
    want = _np_probs(crop.numpy()[None])[0]
    assert records[0].predictions[0].index == int(np.argmax(want))
    assert records[0].predictions[0].probability == pytest.approx(want.max(), abs=1e-6)
    got = list(features(model, _encoded_batch(monkeypatch, crop)))
    np.testing.assert_allclose(got[0][1], _np_features(crop.numpy()[None])[0], rtol=1e-5)


def test_features_of_a_batch_of_errors_run_no_model(monkeypatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(pipeline, "_probabilities", never)
    err = InputError("unreadable", "cannot")
    assert list(features(_model(), [(Source(input="a"), err)])) == [(Source(input="a"), err)]


def test_features_name_the_input_the_model_failed_on() -> None:
    class Failing(FakeOpenVino):
        def features(self, arr, precision):
            raise RuntimeError("no")

    model = _model(openvino=Failing())
    got = list(features(model, [(Source(input="x.png"), _pixels(1)[0])]))
    err = got[0][1]
    assert isinstance(err, InputError)
    assert err.message == "the model failed on 'x.png': RuntimeError('no')"


def test_probabilities_pass_the_names_on(monkeypatch) -> None:
    seen = []

    def fake(model, tensors, names, *, step=None, k=None):
        seen.append(names)
        return []

    monkeypatch.setattr(pipeline, "_scored", fake)
    _probabilities(_model(), _crops(1, 2), ["a", "b"])
    assert seen == [["a", "b"]]


def test_vector_brings_a_tensor_to_the_cpu_as_float32(monkeypatch) -> None:
    moves = []
    real = torch.Tensor.to

    def to(self, *args, **kwargs):
        moves.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    v = _vector(torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert v.tolist() == [1.0, 2.0] and v.dtype == np.float32
    assert moves == [("cpu", torch.float32)]
