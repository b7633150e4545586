"""The default (fast) pipeline against the reference: draft decoding, folded BatchNorm."""

from __future__ import annotations

import pytest
import torch
import torchvision
from PIL import Image

from resnext_cli import Classifier
from resnext_cli.imaging.preprocess import DecodeOptions, decode
from resnext_cli.model.checkpoint import fold_batchnorm
from resnext_cli.results import Classified


def test_folded_batchnorm_computes_the_same_function(checkpoint) -> None:
    clf = Classifier(checkpoint=str(checkpoint), exact=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        reference = clf.model(x)
        folded = fold_batchnorm(clf.model)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in clf.model.modules())
    assert torch.allclose(reference, folded, atol=1e-3, rtol=1e-4)


def test_draft_decoding_keeps_twice_the_resize_target(make_image) -> None:
    path = make_image("big.jpg", seed=21, size=(4032, 3024), quality=90)
    with path.open("rb") as fh:
        draft = decode(fh, "big.jpg", DecodeOptions(draft_min_side=464))
    with path.open("rb") as fh:
        full = decode(fh, "big.jpg", DecodeOptions(upright=False, plain_rgb=True))
    assert full.size == (4032, 3024)
    assert draft.size == (1008, 756)  # JPEG's 1/4 scale: the largest that keeps >= 464
    assert min(draft.size) >= 464


def test_default_pipeline_keeps_the_reference_top5(checkpoint, make_image) -> None:
    images = [
        str(make_image("big.jpg", seed=31, size=(2400, 1800), quality=92)),
        str(make_image("mid.jpg", seed=32, size=(1200, 900), quality=92)),
        str(make_image("photo.jpg", seed=33, size=(500, 375), quality=92)),
        str(make_image("graph.png", seed=34, size=(640, 480))),
    ]
    exact = list(Classifier(checkpoint=str(checkpoint), exact=True).classify(images))
    # fp32 pinned: this compares decoding and folding, not precision (see test_precision.py).
    fast = list(Classifier(checkpoint=str(checkpoint), precision="fp32").classify(images))
    for ref, got in zip(exact, fast, strict=True):
        assert isinstance(ref, Classified) and isinstance(got, Classified)
        assert [p.index for p in got.predictions] == [p.index for p in ref.predictions], got.input
        # Draft decoding changes pixels slightly; the probabilities move by far less than
        # the gaps between classes.
        for a, b in zip(ref.predictions, got.predictions, strict=True):
            assert a.probability == pytest.approx(b.probability, abs=0.02)


def test_exact_skips_draft_and_folding(checkpoint) -> None:
    clf = Classifier(checkpoint=str(checkpoint), exact=True)
    assert clf.plan.decode.draft_min_side == 0
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in clf.model.modules())
    assert clf.precision == "fp32"
    fast = Classifier(checkpoint=str(checkpoint))
    # torchvision's metadata: ResNeXt-50 V2 resizes to 232; drafts keep at least twice that.
    resize = torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V2.transforms().resize_size[0]
    assert resize == 232
    assert fast.plan.decode.draft_min_side >= 2 * resize


@pytest.mark.parametrize("tag", ["IMAGENET1K_V1", "IMAGENET1K_V2"])
def test_split_preprocessing_is_bitwise_torchvisions(make_image, tag) -> None:
    """Cropping per image and normalising per batch equals weights.transforms() exactly."""
    import torchvision

    from resnext_cli.imaging.preprocess import Preprocess

    weights = torchvision.models.ResNeXt50_32X4D_Weights[tag]
    reference = weights.transforms()
    split = Preprocess(weights)
    images = [
        Image.open(make_image(f"{i}.png", seed=40 + i, size=size)).convert("RGB")
        for i, size in enumerate([(500, 375), (233, 600), (224, 224), (100, 80)])
    ]
    crops = [split(img) for img in images]
    assert all(c.dtype == torch.uint8 and c.shape == (3, 224, 224) for c in crops)
    batch = split.normalize(torch.stack(crops))
    for img, got in zip(images, batch, strict=True):
        assert torch.equal(got, reference(img))
