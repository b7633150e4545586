"""run/quantize.py: the agreement line, and what the run refuses before it calibrates.

Calibrating a model takes seconds; e2e/test_quantized_cli.py and
e2e/test_quantize_agreement.py do it once each. These tests stop before that.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from resnext_cli.console import Console
from resnext_cli.errors import ConfigError, OutputError
from resnext_cli.model.quantized import Agreement
from resnext_cli.run.config import Config
from resnext_cli.run.quantize import QuantizeRequest, _agreement_line, run_quantize


def test_the_agreement_line_rounds_each_figure_as_printed() -> None:
    line = _agreement_line(Agreement(top1=7 / 8, top5=0.5, max_abs_dp=0.01249, images=8))
    assert line == (
        "INT8 agrees with the float model on 87.5% of the 8 photos' top-1 (top-5 sets: 50.0%; "
        "largest probability change 0.012)"
    )
    whole = _agreement_line(Agreement(top1=1.0, top5=299 / 300, max_abs_dp=0.0, images=300))
    assert whole == (
        "INT8 agrees with the float model on 100.0% of the 300 photos' top-1 (top-5 sets: "
        "99.7%; largest probability change 0.000)"
    )


def quiet_console() -> tuple[Console, io.StringIO]:
    """A console whose stderr is kept: (console, stderr)."""
    err = io.StringIO()
    return Console.on(io.BytesIO(), io.StringIO(), err, width=200, color_system=None), err


def test_an_output_that_appeared_after_the_checks_is_refused_before_any_work(
    checkpoint: Path, make_image, tmp_path: Path, loads
) -> None:
    out = tmp_path / "q.pth"
    out.write_bytes(b"made meanwhile")
    request = QuantizeRequest((str(make_image("a.png")),), str(out))
    console, _ = quiet_console()
    with pytest.raises(OutputError) as caught:
        run_quantize(request, Config(checkpoint=str(checkpoint)), console)
    assert str(caught.value) == f"output file '{out}' exists (use --force to overwrite it)"
    assert out.read_bytes() == b"made meanwhile" and loads == []


def test_photos_that_do_not_decode_are_said_and_none_left_is_refused(
    checkpoint: Path, tmp_path: Path, loads
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (photos / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    out = tmp_path / "q.pth"
    console, err = quiet_console()
    request = QuantizeRequest((str(photos),), str(out))
    with pytest.raises(ConfigError) as caught:
        run_quantize(request, Config(checkpoint=str(checkpoint)), console)
    assert str(caught.value) == (
        "no photo to calibrate with (give --calibrate with a folder of your photos)"
    )
    said = err.getvalue().splitlines()
    assert said[-2:] == [
        f"error: '{photos / 'a.jpg'}' is not an image Pillow can read",
        f"error: '{photos / 'b.png'}' is not an image Pillow can read",
    ]
    assert [getattr(f, "name", f) for f in loads] == [str(checkpoint)]  # read once
    # The claim was released and nothing was published: no file, no temporary left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]
