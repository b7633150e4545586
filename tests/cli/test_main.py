"""The resnext command: input kinds, formats, exit codes, and a light start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def folder(make_image, tmp_path) -> Path:
    root = tmp_path / "photos"
    make_image("b.jpg", seed=2, size=(160, 120), folder=root)
    make_image("a.png", seed=1, size=(120, 160), folder=root)
    make_image("c.JPG", seed=3, size=(100, 100), folder=root / "sub")
    (root / "notes.txt").write_text("not an image, skipped in folders")
    return root


def expected_order(root: Path) -> list[str]:
    return [str(root / "a.png"), str(root / "b.jpg"), str(root / "sub" / "c.JPG")]


def test_folder_is_walked_sorted(checkpoint, folder, resnext) -> None:
    run = resnext("classify", folder, "--checkpoint", checkpoint, "-f", "jsonl")
    assert run.code == 0, run
    records = run.records()
    assert [r["input"] for r in records] == expected_order(folder)
    for r in records:
        assert set(r) == {
            "input", "path", "size", "mtime_ns", "model", "weights", "checkpoint", "precision",
            "runtime", "predictions",
        }  # fmt: skip
        assert r["runtime"] in ("torch", "openvino")
        assert len(r["predictions"]) == 5
        assert set(r["predictions"][0]) == {"label", "index", "probability"}


def test_glob_is_expanded_by_the_tool(checkpoint, folder, resnext) -> None:
    run = resnext("classify", f"{folder}/**/*.[jJ]*", "--checkpoint", checkpoint)
    assert run.code == 0, run
    assert [r["input"] for r in run.records()] == [
        str(folder / "b.jpg"),
        str(folder / "sub" / "c.JPG"),
    ]


def test_url_input(checkpoint, http_server, make_image, resnext) -> None:
    base, root = http_server
    make_image("dog.jpg", seed=7, folder=root)
    local = resnext("classify", root / "dog.jpg", "--checkpoint", checkpoint)
    run = resnext("classify", f"{base}/dog.jpg", "--checkpoint", checkpoint)
    assert run.code == 0, run
    [record] = run.records()
    assert record["input"] == f"{base}/dog.jpg" and "path" not in record
    assert record["predictions"] == local.records()[0]["predictions"]


def test_stdin_image_bytes(checkpoint, make_image, resnext) -> None:
    image = make_image("x.jpg", seed=8)
    run = resnext("classify", "-", "--checkpoint", checkpoint, input=image.read_bytes())
    local = resnext("classify", image, "--checkpoint", checkpoint)
    assert run.code == 0, run
    [record] = run.records()
    assert record["input"] == "-"
    assert record["predictions"] == local.records()[0]["predictions"]


def test_stdin_list_of_paths(checkpoint, folder, resnext) -> None:
    listing = "\r\n".join(["# made by find", *expected_order(folder), "", str(folder / "nope.png")])
    run = resnext("classify", "-", "--checkpoint", checkpoint, input=listing + "\n")
    assert run.code == 1, run
    records = run.records()
    assert [r["input"] for r in records] == [*expected_order(folder), str(folder / "nope.png")]
    assert records[-1]["error"] == {
        "type": "not_found",
        "message": f"no such file: '{folder / 'nope.png'}'",
    }


def test_json_is_one_array(checkpoint, folder, resnext) -> None:
    run = resnext("classify", folder, "--checkpoint", checkpoint, "-f", "json", "-k", "2")
    assert run.code == 0, run
    data = json.loads(run.stdout)
    assert [r["input"] for r in data] == expected_order(folder)
    assert all(len(r["predictions"]) == 2 for r in data)


def test_output_file_and_format_from_suffix(checkpoint, folder, tmp_path, resnext) -> None:
    out = tmp_path / "res.json"
    run = resnext("classify", folder, "--checkpoint", checkpoint, "-o", out)
    assert run.code == 0 and run.stdout == ""
    assert len(json.loads(out.read_text())) == 3
    again = resnext("classify", folder, "--checkpoint", checkpoint, "-o", out)
    assert again.code == 2
    assert again.stderr.strip() == (
        f"error: output file '{out}' exists (use --force to overwrite it, or --resume to "
        "continue it)"
    )


def test_table_for_one_image_and_for_many(checkpoint, folder, resnext) -> None:
    one = resnext("classify", folder / "a.png", "--checkpoint", checkpoint, "-f", "table")
    labels = [
        p["label"]
        for p in resnext("classify", folder / "a.png", "--checkpoint", checkpoint).records()[0][
            "predictions"
        ]
    ]
    assert one.code == 0
    for label in labels:
        assert label in one.stdout
    many = resnext(
        "classify", folder, "--checkpoint", checkpoint, "-f", "table", "--precision", "fp32"
    )
    lines = [ln for ln in many.stdout.splitlines() if ln.strip()]
    assert lines[0].split()[:2] == ["input", "top-1"]
    assert len(lines) == 5  # a header, one row per image, and the caption
    assert lines[-1] == f"resnext50_32x4d ({checkpoint}) on cpu, fp32"


def test_exit_codes(checkpoint, folder, tmp_path, resnext) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resnext("classify", folder, "--checkpoint", checkpoint).code == 0
    assert resnext("classify", folder, tmp_path / "gone.jpg", "--checkpoint", checkpoint).code == 1
    nothing = resnext("classify", empty, "--checkpoint", checkpoint)
    assert nothing.code == 2
    assert nothing.stderr.splitlines() == [
        f"warning: no images found in folder '{empty}'",
        "error: no input matched (give image files, folders, globs or URLs)",
    ]
    usage = resnext("classify", "--model", "resnext51", folder)
    assert usage.code == 2
    assert usage.stderr.strip() == (
        "error: unknown model 'resnext51' (choose from: resnext50_32x4d, resnext101_32x8d, "
        "resnext101_64x4d)"
    )
    assert resnext("classify").code == 2  # missing INPUT is a usage error


def test_summary_goes_to_stderr_only(checkpoint, folder, resnext) -> None:
    run = resnext("classify", folder, "--checkpoint", checkpoint, "--precision", "fp32")
    assert run.stderr.startswith("classified 3 of 3 inputs in ")
    assert "on cpu, fp32" in run.stderr
    assert resnext("classify", folder, "--checkpoint", checkpoint, "-q").stderr == ""


# torchvision's tags, float then INT8 (torchvision.models.quantization), per model.
TAGS = [
    ("resnext50_32x4d", "IMAGENET1K_V1"),
    ("resnext50_32x4d", "IMAGENET1K_V2"),
    ("resnext101_32x8d", "IMAGENET1K_V1"),
    ("resnext101_32x8d", "IMAGENET1K_V2"),
    ("resnext101_32x8d", "IMAGENET1K_FBGEMM_V1"),
    ("resnext101_32x8d", "IMAGENET1K_FBGEMM_V2"),
    ("resnext101_64x4d", "IMAGENET1K_V1"),
    ("resnext101_64x4d", "IMAGENET1K_FBGEMM_V1"),
]


def test_models_lists_torchvision_metadata(resnext) -> None:
    run = resnext("models", "-f", "json")
    rows = json.loads(run.stdout)
    assert [(r["model"], r["weights"]) for r in rows] == TAGS
    v2 = rows[1]
    assert (v2["acc@1"], v2["default"], v2["cached"]) == (81.198, True, False)
    int8 = rows[5]  # torchvision: ResNeXt101_32X8D_QuantizedWeights.IMAGENET1K_FBGEMM_V2
    assert (int8["acc@1"], int8["quantized"], int8["default"]) == (82.574, True, True)


def test_version(resnext) -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    run = resnext("--version")
    assert run.code == 0 and run.stdout.strip() == f"resnext, version {declared}"


@pytest.mark.parametrize(
    "args", [["--help"], ["classify", "--help"], ["models"], ["models", "-f", "json"]]
)
def test_light_commands_do_not_import_torch(args) -> None:
    # Make torch, torchvision and PIL unimportable: these commands must still work.
    code = (
        "import sys\n"
        "for m in ('torch', 'torchvision', 'PIL', 'numpy'): sys.modules[m] = None\n"
        "from resnext_cli.cli.main import main\n"
        f"main({args!r})\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout.strip()


def test_shell_completion_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "for m in ('torch', 'torchvision', 'PIL'): sys.modules[m] = None\n"
        "from resnext_cli.cli.main import main\n"
        "main([])\n"
    )
    env = {"_RESNEXT_COMPLETE": "bash_complete", "COMP_WORDS": "resnext cl", "COMP_CWORD": "1"}
    import os

    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert "plain,classify" in run.stdout, run.stderr


def test_installed_command_runs_as_a_pipeline(checkpoint, folder) -> None:
    """A real process: `find ... | resnext classify - | jq`-style use."""
    listing = "\n".join(expected_order(folder)) + "\n"
    run = subprocess.run(
        [sys.executable, "-m", "resnext_cli", "classify", "-", "--checkpoint", str(checkpoint)],
        input=listing,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["input"] for r in records] == expected_order(folder)


def test_models_table_shows_every_tag_whole(resnext) -> None:
    run = resnext("models")
    assert run.code == 0
    rows = [line.split() for line in run.stdout.splitlines() if line.startswith("resnext")]
    assert [(r[0], r[1]) for r in rows] == TAGS
    assert [r[2] == "*" for r in rows] == [False, True, False, True, False, True, True, True]
    assert rows[1][3:5] == ["81.20", "95.34"]
