"""README promises that no other test pinned, each able to fail on a plausible one-line bug.

Each test names the README sentence it holds the tool to; the last ones kill what the
mutation run of summary.py found untested (TESTING.md). Expected values come from the
README's own wording, torchvision's metadata or a computation made here, never from the
expression the implementation uses.
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from tests.conftest import Outcome, natural_image, serve

Run = Callable[..., Outcome]


def checkpoints_folder() -> Path:
    """Where torch.hub keeps weights, from the README: $TORCH_HOME/hub/checkpoints."""
    return Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"


# "exit 1: some inputs failed" -- also when every input failed; 2 is for "no input matched".


def test_exit_2_when_the_only_input_is_missing(
    checkpoint: Path, tmp_path: Path, resnext: Run
) -> None:
    # Like a glob that matches nothing: refused before the model loads, said once.
    missing = tmp_path / "gone.jpg"
    run = resnext("classify", missing, "--checkpoint", checkpoint, "-f", "jsonl")
    assert (run.code, run.stdout) == (2, ""), run
    assert run.stderr == f"error: no such file: '{missing}'\n"


def test_exit_2_when_every_input_fails(checkpoint: Path, tmp_path: Path, resnext: Run) -> None:
    first, second = tmp_path / "one.jpg", tmp_path / "two.png"
    run = resnext("classify", first, second, "--checkpoint", checkpoint, "-f", "jsonl")
    assert (run.code, run.stdout) == (2, ""), run
    assert run.stderr == f"error: no such file: '{first}'\nerror: no such file: '{second}'\n"


def test_stdin_list_takes_names_literally(
    checkpoint: Path, make_image: Callable[..., Path], tmp_path: Path, resnext: Run
) -> None:
    folder = tmp_path / "shots"
    literal = make_image("shot[1].jpg", seed=1, size=(64, 48), folder=folder)
    make_image("shot1.jpg", seed=2, size=(64, 48), folder=folder)  # what the glob would match
    make_image("pic1.jpg", seed=3, size=(64, 48), folder=folder)
    missing = folder / "pic[12].jpg"  # as a glob it would match pic1.jpg
    never = folder / "frame[0].jpg"  # as a glob it matches nothing at all
    listing = f"{literal}\n{missing}\n{never}\n"
    run = resnext("classify", "-", "--checkpoint", checkpoint, "-f", "jsonl", input=listing)
    assert run.code == 1, run
    records = run.records()
    assert [r["input"] for r in records] == [str(literal), str(missing), str(never)]
    assert "predictions" in records[0]
    assert records[1]["error"] == {"type": "not_found", "message": f"no such file: '{missing}'"}
    assert records[2]["error"] == {"type": "not_found", "message": f"no such file: '{never}'"}


def test_stdin_list_with_only_a_missing_bracket_name(
    checkpoint: Path, tmp_path: Path, resnext: Run
) -> None:
    missing = tmp_path / "shot[1].jpg"  # taken literally, not as a glob
    run = resnext("classify", "-", "--checkpoint", checkpoint, input=f"{missing}\n")
    assert (run.code, run.stdout) == (2, ""), run
    assert run.stderr == f"error: no such file: '{missing}'\n"


def test_path_is_absolute_and_input_is_as_given(
    checkpoint: Path,
    make_image: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    resnext: Run,
) -> None:
    make_image("a.png", seed=4, size=(64, 48), folder=tmp_path / "work" / "pics")
    monkeypatch.chdir(tmp_path / "work")
    given = ["pics/a.png", "pics/missing.png"]
    run = resnext("classify", *given, "--checkpoint", checkpoint, "-f", "jsonl")
    assert run.code == 1, run
    records = run.records()
    assert [r["input"] for r in records] == given
    cwd = Path(os.getcwd())
    assert [r["path"] for r in records] == [str((cwd / name).absolute()) for name in given]
    assert all(os.path.isabs(r["path"]) for r in records)
    assert "predictions" in records[0] and records[1]["error"]["type"] == "not_found"


# "download_failed: ... too many redirects"


class _Loop(http.server.BaseHTTPRequestHandler):
    """Every request is redirected to itself."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def redirect_loop() -> Iterator[str]:
    """A loopback URL that redirects to itself forever."""
    with serve(_Loop) as base:
        yield f"{base}/loop.jpg"


def test_too_many_redirects_is_a_download_failure(
    checkpoint: Path, redirect_loop: str, resnext: Run
) -> None:
    run = resnext("classify", redirect_loop, "--checkpoint", checkpoint, "-f", "jsonl")
    assert run.code == 1, run
    [record] = run.records()
    assert record["input"] == redirect_loop and "path" not in record
    assert record["error"]["type"] == "download_failed"
    assert "too many redirects" in record["error"]["message"]
    assert f"'{redirect_loop}'" in record["error"]["message"]


# "`resnext models` lists each model and weights tag with ... whether it is cached"


def test_models_shows_a_cached_file_as_cached(resnext: Run) -> None:
    from torchvision.models import ResNeXt101_32X8D_Weights

    url = ResNeXt101_32X8D_Weights.IMAGENET1K_V1.url
    cached = checkpoints_folder() / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"any bytes: listing does not load the file")
    run = resnext("models", "-f", "json")
    assert run.code == 0, run
    rows = json.loads(run.stdout)
    assert [(r["model"], r["weights"]) for r in rows if r["cached"]] == [
        ("resnext101_32x8d", "IMAGENET1K_V1")
    ]
    table = resnext("models")
    assert table.code == 0, table
    marked = [line.split()[:2] for line in table.stdout.splitlines() if "yes" in line.split()]
    assert marked == [["resnext101_32x8d", "IMAGENET1K_V1"]], table


# "`resnext download -m 101` fetches weights ahead of time", "RESNEXT_WEIGHTS_MIRROR=...",
# "A download goes to a temporary file in that folder ... and only then renamed into place".


@pytest.fixture
def served_weights(
    http_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> tuple[str, bytes]:
    """resnext50's DEFAULT weights file, as a mirror serves it; yields (file name, bytes).

    The real file name carries the real weights' sha256 prefix, which no bytes made here
    can match, so the registry's snapshot is pointed at a name carrying these bytes' prefix
    (still under download.pytorch.org, so only the mirror can serve it).
    """
    from resnext_cli.model import registry

    base, root = http_server
    data = bytes(range(256)) * 512
    name = f"resnext50_32x4d-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (root / "models").mkdir()
    (root / "models" / name).write_bytes(data)
    snapshot = copy.deepcopy(registry._snapshot())
    entry = snapshot["resnext50_32x4d"]
    entry["weights"][entry["default"]]["url"] = f"https://download.pytorch.org/models/{name}"
    monkeypatch.setattr(registry, "_snapshot", lambda: snapshot)
    monkeypatch.setenv("RESNEXT_WEIGHTS_MIRROR", f"{base}/models/")
    return name, data


def test_download_through_a_mirror(served_weights: tuple[str, bytes], resnext: Run) -> None:
    name, data = served_weights
    run = resnext("download", "-m", "50", "-q")
    assert run.code == 0, run
    expected = checkpoints_folder() / name
    assert run.stdout == f"{expected}\n"
    assert expected.read_bytes() == data
    assert [p.name for p in expected.parent.iterdir()] == [name]  # no temporary file left


def test_download_never_uses_the_system_temp_folder(
    served_weights: tuple[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    resnext: Run,
) -> None:
    # A temp folder on another file system (a tmpfs /tmp) would make the final rename
    # fail; one that does not exist at all fails any use of it, so only a temporary file
    # made inside the cache folder lets this download succeed.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-temp-folder"))
    name, data = served_weights
    run = resnext("download", "-m", "50", "-q")
    assert run.code == 0, run
    assert (checkpoints_folder() / name).read_bytes() == data


# "`--allow-truncated` classifies the part of a truncated file that decodes instead of
# failing it."


def test_allow_truncated_through_the_cli(checkpoint: Path, tmp_path: Path, resnext: Run) -> None:
    whole = io.BytesIO()
    natural_image(11, (160, 120)).save(whole, "JPEG", quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.getvalue()[: len(whole.getvalue()) * 2 // 3])
    # The reference: what Pillow itself decodes from the cut file when told to, saved
    # losslessly, so classifying it must give the same predictions.
    reference = tmp_path / "reference.png"
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with Image.open(cut) as img:
            img.convert("RGB").save(reference)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False

    refused = resnext("classify", cut, "--checkpoint", checkpoint, "-f", "jsonl")
    assert refused.code == 1, refused
    [failed] = refused.records()
    assert failed["error"]["type"] == "truncated"

    allowed = resnext(
        "classify", cut, "--allow-truncated", "--checkpoint", checkpoint, "-f", "jsonl"
    )
    assert allowed.code == 0, allowed
    [record] = allowed.records()
    expected = resnext("classify", reference, "--checkpoint", checkpoint, "-f", "jsonl")
    assert record["predictions"] == expected.records()[0]["predictions"]


# "-o FILE ... picks the format from its extension": .ndjson is JSON Lines.


def test_ndjson_extension_writes_json_lines(
    checkpoint: Path, make_image: Callable[..., Path], tmp_path: Path, resnext: Run
) -> None:
    images = [make_image(f"{i}.png", seed=20 + i, size=(64, 48)) for i in range(2)]
    out = tmp_path / "results.ndjson"
    run = resnext("classify", *images, "--checkpoint", checkpoint, "-o", out)
    assert run.code == 0, run
    assert run.stdout == ""
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2  # one record per line, not one JSON array
    assert [json.loads(line)["input"] for line in lines] == [str(p) for p in images]


# "File names that are not valid UTF-8 are written as \udcXX escapes, which JSON reads back
# as the same name" -- here arriving as a list on stdin.


def test_non_utf8_name_in_a_stdin_list(checkpoint: Path, tmp_path: Path, resnext: Run) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9.png"  # Latin-1 e-acute: not UTF-8
    name = os.fsdecode(raw)
    natural_image(30, (64, 48)).save(name)
    plain = tmp_path / "plain.png"
    natural_image(30, (64, 48)).save(plain)
    run = resnext("classify", "-", "--checkpoint", checkpoint, "-f", "jsonl", input=raw + b"\n")
    assert run.code == 0, run
    assert "caf\\udce9.png" in run.stdout
    [record] = run.records()
    assert (record["input"], record["path"]) == (name, name)
    assert os.fsencode(record["path"]) == raw
    same = resnext("classify", plain, "--checkpoint", checkpoint, "-f", "jsonl")
    assert record["predictions"] == same.records()[0]["predictions"]


# "--precision auto, fp32, bf16, fp16": what a bf16 run's output looks like.


@pytest.fixture
def bf16_and_fp32(
    checkpoint: Path, make_image: Callable[..., Path], resnext: Run
) -> tuple[Outcome, Outcome]:
    """The same two images classified in bf16 and in fp32."""
    images = [make_image(f"{i}.png", seed=40 + i, size=(96, 72)) for i in range(2)]
    common = ["--checkpoint", checkpoint, "-f", "json", "-k", "3"]
    bf16 = resnext("classify", *images, *common, "--precision", "bf16")
    fp32 = resnext("classify", *images, *common, "--precision", "fp32")
    assert bf16.code == 0, bf16
    assert fp32.code == 0, fp32
    return bf16, fp32


def test_bf16_output_is_fp32s_shape_with_close_probabilities(
    bf16_and_fp32: tuple[Outcome, Outcome],
) -> None:
    bf16, fp32 = bf16_and_fp32
    assert "on cpu, bf16" in bf16.stderr  # the summary names the precision used
    assert "on cpu, fp32" in fp32.stderr
    moved = 0
    for low, full in zip(bf16.records(), fp32.records(), strict=True):
        assert set(low) - {"precision"} == set(full) - {"precision"}
        assert low["input"] == full["input"]
        probabilities = [p["probability"] for p in low["predictions"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(isinstance(p, float) and 0 < p <= 1 for p in probabilities)
        # bf16 keeps 8 significant bits: on this checkpoint the winner stays and each
        # probability moves by a few hundredths (0.023 at most with native bf16, 0.051
        # where an AVX2-only CPU emulates it: oneDNN rounds at other points there).
        assert low["predictions"][0]["index"] == full["predictions"][0]["index"]
        for a, b in zip(low["predictions"], full["predictions"], strict=True):
            if a["index"] == b["index"]:
                assert abs(a["probability"] - b["probability"]) < 0.08, (a, b)
                moved += a["probability"] != b["probability"]
    assert moved, "every bf16 probability equals fp32's: the run did not compute in bf16"


def test_bf16_records_say_bf16(bf16_and_fp32: tuple[Outcome, Outcome]) -> None:
    bf16, fp32 = bf16_and_fp32
    assert [r.get("precision") for r in bf16.records()] == ["bf16", "bf16"]
    assert [r["precision"] for r in fp32.records()] == ["fp32", "fp32"]
