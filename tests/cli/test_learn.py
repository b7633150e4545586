"""cli/learn.py: what `resnext learn` and `resnext quantize` refuse before any work.

Each refusal is one line and exit status 2, with nothing on stdout, no model read, no
output file written and (for learn) the feature cache left as it was.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_resnext

USAGE = "Usage: resnext {command} [OPTIONS]{args}\nTry 'resnext {command} --help' for help.\n\n"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One cached feature where learn keeps them: TORCH_HOME/hub/resnext-features."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    root = tmp_path / "th" / "hub" / "resnext-features"
    (root / "ab").mkdir(parents=True)
    (root / "ab" / "cd.feat").write_bytes(b"f" * 2_000_000)
    return root


@pytest.fixture
def classes(make_image) -> Path:
    """A folder of two classes, one photo each."""
    cat = make_image("classes/cat/a.png")
    make_image("classes/dog/b.png", seed=1)
    return cat.parent.parent


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{classes}", "--from", "{list}", "-o", "{out}"], "give FOLDER or --from FILE, not both"),
        (["-o", "{out}"], "give FOLDER (one subfolder per class) or --from FILE"),
        (["{classes}"], "give -o FILE: where to save the learned model"),
        (["--from", "{list}"], "give -o FILE: where to save the learned model"),
        # --clear-cache does not make a learn without -o (or with both sources) a good one.
        (["{classes}", "--clear-cache"], "give -o FILE: where to save the learned model"),
        (
            ["{classes}", "--from", "{list}", "--clear-cache", "-o", "{out}"],
            "give FOLDER or --from FILE, not both",
        ),
    ],
)
def test_learn_usage_errors(args, message, classes, cache, tmp_path, loads) -> None:
    where = {"classes": classes, "list": tmp_path / "list.csv", "out": tmp_path / "out.pth"}
    (tmp_path / "list.csv").write_text(f"path,label\n{classes / 'cat' / 'a.png'},cat\n")
    run = run_resnext("learn", *[a.format(**where) for a in args])
    assert (run.code, run.stdout) == (2, "")
    assert run.stderr == USAGE.format(command="learn", args=" [FOLDER]") + f"Error: {message}\n"
    assert not (tmp_path / "out.pth").exists() and loads == []
    assert (cache / "ab" / "cd.feat").stat().st_size == 2_000_000


def test_unknown_weights_are_refused_before_the_cache_is_cleared(
    classes, cache, tmp_path, loads
) -> None:
    run = run_resnext("learn", classes, "-o", tmp_path / "o.pth", "-w", "V9", "--clear-cache")
    assert (run.code, run.stdout) == (2, "")
    assert run.stderr == (
        "error: unknown weights 'V9' for resnext50_32x4d "
        "(choose from: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2)\n"
    )
    assert (cache / "ab" / "cd.feat").exists() and loads == []


def test_clear_cache_alone_clears_and_exits(cache, tmp_path, loads) -> None:
    (cache / "ab" / "ef.feat").write_bytes(b"g" * 350_001)
    (cache / "index").write_bytes(b"h" * 100_000)  # counted in the size, not as a feature
    run = run_resnext("learn", "--clear-cache")
    assert (run.code, run.stdout) == (0, "")
    # 2,450,001 bytes: 2.450001 MB (of 10^6 bytes) rounds up.
    assert run.stderr == f"removed 2 cached features (2.5 MB) from '{cache}'\n"
    assert not cache.exists() and loads == []
    again = run_resnext("learn", "--clear-cache", "-q")
    assert (again.code, again.stdout, again.stderr) == (0, "", "")


def test_clear_cache_never_follows_a_linked_cache_folder(tmp_path, monkeypatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.feat").write_bytes(b"k")
    hub = tmp_path / "th" / "hub"
    hub.mkdir(parents=True)
    (hub / "resnext-features").symlink_to(elsewhere)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    run = run_resnext("learn", "--clear-cache")
    assert run.code == 0
    assert run.stderr == f"removed 0 cached features (0.0 MB) from '{hub / 'resnext-features'}'\n"
    assert (elsewhere / "keep.feat").read_bytes() == b"k"


QUANTIZE_USAGE = USAGE.format(command="quantize", args="")


def test_quantize_needs_photos_and_an_output(make_image, tmp_path) -> None:
    photo = make_image("a.png")
    no_photos = run_resnext("quantize", "-o", tmp_path / "q.pth")
    assert no_photos.code == 2
    assert no_photos.stderr == QUANTIZE_USAGE + "Error: Missing option '--calibrate'.\n"
    no_output = run_resnext("quantize", "--calibrate", photo)
    assert no_output.code == 2
    assert no_output.stderr == QUANTIZE_USAGE + "Error: Missing option '-o' / '--output'.\n"
    runtime = run_resnext("quantize", "--calibrate", photo, "-o", tmp_path / "q", "--runtime", "x")
    assert runtime.code == 2
    assert runtime.stderr == QUANTIZE_USAGE + (
        "Error: Invalid value for '--runtime': 'x' is not one of 'torch', 'openvino'.\n"
    )


def test_quantize_refuses_before_reading_a_model(make_image, tmp_path, loads) -> None:
    photos = make_image("photos/a.png").parent
    kept = tmp_path / "kept.pth"
    kept.write_bytes(b"mine")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        (photos, kept): f"output file '{kept}' exists (use --force to overwrite it)",
        (photos, tmp_path / "no" / "q.pth"): (
            f"cannot write '{tmp_path / 'no' / 'q.pth'}': folder '{tmp_path / 'no'}' does not exist"
        ),
        (empty, tmp_path / "q.pth"): (
            "no photo to calibrate with (give --calibrate with a folder of your photos)"
        ),
    }
    for (calibrate, out), message in cases.items():
        run = run_resnext("quantize", "--calibrate", calibrate, "-o", out)
        assert (run.code, run.stdout, run.stderr) == (2, "", f"error: {message}\n"), run
    assert kept.read_bytes() == b"mine" and not (tmp_path / "q.pth").exists() and loads == []


def test_learn_hands_every_option_to_the_run(classes, tmp_path, monkeypatch) -> None:
    """What the command line says reaches the run as asked; the defaults are the help's."""
    from resnext_cli.run import learn
    from resnext_cli.run.learn import LearnRequest

    seen: list[tuple[LearnRequest, str, str]] = []
    monkeypatch.setattr(
        learn,
        "run_learn",
        lambda request, config, console: seen.append((request, config.model, config.weights)) or 0,
    )
    out = tmp_path / "mine.pth"
    given = run_resnext(
        "learn", classes, "-o", out, "--force", "--holdout", "0.3", "--seed", "7",
        "--allow-duplicates", "-m", "resnext101_32x8d",
    )  # fmt: skip
    assert (given.code, given.stdout, given.stderr) == (0, "", "")
    plain = run_resnext("learn", "--from", tmp_path / "list.csv", "-o", out)
    assert (plain.code, plain.stdout, plain.stderr) == (0, "", "")
    assert seen == [
        (
            LearnRequest(
                output=str(out),
                folder=str(classes),
                records=None,
                force=True,
                holdout=0.3,
                seed=7,
                allow_duplicates=True,
            ),
            "resnext101_32x8d",
            "DEFAULT",
        ),
        (
            LearnRequest(
                output=str(out),
                folder=None,
                records=str(tmp_path / "list.csv"),
                force=False,
                holdout=0.2,
                seed=0,
                allow_duplicates=False,
            ),
            "resnext50_32x4d",
            "DEFAULT",
        ),
    ]


def test_quantize_hands_every_option_to_the_run(make_image, tmp_path, monkeypatch) -> None:
    from resnext_cli.run import quantize
    from resnext_cli.run.quantize import QuantizeRequest

    seen: list[tuple[QuantizeRequest, str]] = []
    monkeypatch.setattr(
        quantize,
        "run_quantize",
        lambda request, config, console: seen.append((request, config.model)) or 0,
    )
    photos = make_image("photos/a.png").parent
    out = tmp_path / "q.pth"
    for extra in (["--force", "--runtime", "openvino", "-m", "resnext101_32x8d"], []):
        run = run_resnext(
            "quantize", "--calibrate", photos, "--calibrate", photos, "-o", out, *extra
        )
        assert (run.code, run.stdout, run.stderr) == (0, "", "")
    assert seen == [
        (QuantizeRequest((str(photos), str(photos)), str(out), True, runtime="openvino"),
         "resnext101_32x8d"),
        (QuantizeRequest((str(photos), str(photos)), str(out), False, runtime="torch"),
         "resnext50_32x4d"),
    ]  # fmt: skip
