"""The public API (resnext_cli.Classifier): what classify() takes as its inputs."""

from __future__ import annotations

import numpy as np
from PIL import Image

from resnext_cli import Classifier
from resnext_cli.results import Classified, Failed


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
