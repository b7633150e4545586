"""The pipeline's GPU-decoding branch, run on the CPU, against the Pillow path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from resnext_cli import Classifier
from resnext_cli.errors import ConfigError
from resnext_cli.inputs.sources import Source
from resnext_cli.results import Classified, Failed
from resnext_cli.run.config import Config
from resnext_cli.run.engine import LocalEngine
from resnext_cli.run.pipeline import Encoded, prepare
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
