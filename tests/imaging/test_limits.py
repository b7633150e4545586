"""imaging/limits.py: the default pixel limit is Pillow's own bomb error threshold, named
without importing Pillow."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
from PIL import Image

from resnext_cli.imaging.limits import DEFAULT_MAX_PIXELS


def test_the_default_is_where_pillow_itself_refuses_a_picture() -> None:
    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that: the tool's default
    # refuses what Pillow would refuse, and nothing Pillow only warns about.
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's documented default
    assert DEFAULT_MAX_PIXELS == 178_956_970
    size = (DEFAULT_MAX_PIXELS // 2, 2)  # exactly the limit: a warning, not an error
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        Image._decompression_bomb_check(size)  # Pillow's own check
    assert [w.category for w in seen] == [Image.DecompressionBombWarning]
    with pytest.raises(Image.DecompressionBombError):
        Image._decompression_bomb_check((DEFAULT_MAX_PIXELS // 2 + 1, 2))


def test_naming_the_limit_imports_no_decoder() -> None:
    code = (
        "import sys, resnext_cli.imaging.limits as l; "
        "print(l.DEFAULT_MAX_PIXELS, sorted(m for m in sys.modules if m.split('.')[0] "
        "in {'PIL', 'torch', 'torchvision', 'numpy'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split(" ", 1) == ["178956970", "[]\n"]
