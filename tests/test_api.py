"""The public API (resnext_cli.Classifier): what classify() takes as its inputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from resnext_cli import Classifier
from resnext_cli.errors import InputError
from resnext_cli.results import Classified, Failed
from resnext_cli.run.engine import classify


def test_api_takes_one_path_as_one_input(checkpoint, photos) -> None:
    clf = Classifier(checkpoint=str(checkpoint), workers=0)
    one = sorted(photos.iterdir())[0]
    for given in (str(one), one):
        records = list(clf.classify(given))
        assert [r.input for r in records] == [str(one)]


def test_api_takes_images_bytes_and_arrays(checkpoint, photos) -> None:
    clf = Classifier(checkpoint=str(checkpoint), workers=0, precision="fp32")
    path = sorted(photos.iterdir())[0]
    [from_file] = clf.classify(str(path))
    image = Image.open(path)
    array = np.asarray(image.convert("RGB"))
    records = list(clf.classify([image, path.read_bytes(), array, np.zeros((2, 2, 7))]))
    assert [r.input for r in records] == ["<image 0>", "<bytes 1>", "<array 2>", "<array 3>"]
    assert isinstance(from_file, Classified)
    for record in records[:3]:  # the same pixels give the same answer, whatever the wrapper
        assert isinstance(record, Classified)
        assert [p.index for p in record.predictions] == [p.index for p in from_file.predictions]
    assert isinstance(records[3], Failed) and records[3].error_type == "not_an_image"


def test_api_says_what_it_runs(checkpoint) -> None:
    clf = Classifier(checkpoint=str(checkpoint), workers=0, precision="fp32", device="cpu")
    assert (clf.precision, clf.runtime, clf.describe()) == ("fp32", "torch", "cpu, fp32")
    assert len(clf.labels) == 1000
    assert (clf.labels[0], clf.labels[999]) == (
        "tench",
        "toilet tissue",
    )  # data/imagenet_classes.txt
    assert isinstance(clf.model, torch.nn.Module) and clf.model.fc.out_features == 1000


def test_api_features_are_one_row_per_image_in_order(checkpoint, photos) -> None:
    clf = Classifier(checkpoint=str(checkpoint), workers=0, precision="fp32", device="cpu")
    paths = sorted(photos.iterdir())[:2]
    both = clf.features([str(p) for p in paths])
    assert (both.shape, both.dtype) == ((2, 2048), torch.float32)
    for row, path in zip(both, paths, strict=True):
        torch.testing.assert_close(row, clf.features(str(path))[0], rtol=1e-5, atol=1e-5)
    assert not torch.equal(both[0], both[1])
    empty = clf.features([])
    assert (empty.shape, empty.dtype) == ((0, 2048), torch.float32)


def test_api_features_raise_the_first_inputs_error(checkpoint, photos, tmp_path) -> None:
    clf = Classifier(checkpoint=str(checkpoint), workers=0, precision="fp32", device="cpu")
    junk = tmp_path / "notes.jpg"
    junk.write_text("not a picture", encoding="utf-8")
    good = sorted(photos.iterdir())[0]
    outcomes = list(clf.iter_features([str(good), str(junk)]))
    assert [name for name, _ in outcomes] == [str(good), str(junk)]
    assert isinstance(outcomes[0][1], torch.Tensor) and outcomes[0][1].shape == (2048,)
    error = outcomes[1][1]
    assert isinstance(error, InputError) and error.error_type == "not_an_image"
    with pytest.raises(InputError) as info:
        clf.features([str(good), str(junk)])
    assert info.value.error_type == "not_an_image"


def test_api_one_array_is_one_input_and_a_bad_one_says_why(checkpoint) -> None:
    clf = Classifier(checkpoint=str(checkpoint), workers=0, precision="fp32", device="cpu")
    gradient = np.tile(np.arange(64, dtype=np.uint8), (48, 1))  # one H x W grey image
    [record] = clf.classify(gradient)
    assert record.input == "<array 0>" and isinstance(record, Classified)
    [bad] = clf.classify([np.zeros((2, 2, 7))])
    assert isinstance(bad, Failed)
    assert bad.error_type == "not_an_image"
    assert bad.message.startswith("array 0 is not an image: ")
    [view] = clf.classify(memoryview(_png_bytes(gradient)))
    assert view.input == "<bytes 0>" and isinstance(view, Classified)
    assert [p.index for p in view.predictions] == [p.index for p in record.predictions]


def test_module_classify_is_a_fresh_classifier(checkpoint, photos) -> None:
    path = str(sorted(photos.iterdir())[0])
    records = classify([path], checkpoint=str(checkpoint), workers=0, precision="fp32")
    clf = Classifier(checkpoint=str(checkpoint), workers=0, precision="fp32")
    [again] = clf.classify(path)
    assert [r.input for r in records] == [path]
    assert isinstance(records[0], Classified) and isinstance(again, Classified)
    assert [p.index for p in records[0].predictions] == [p.index for p in again.predictions]


def _png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()
