"""run/classify.py: a classify run expands its inputs in order and prints its summary."""

from __future__ import annotations

from tests.helpers import expected_order


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


def test_summary_goes_to_stderr_only(checkpoint, folder, resnext) -> None:
    run = resnext("classify", folder, "--checkpoint", checkpoint, "--precision", "fp32")
    assert run.stderr.startswith("classified 3 of 3 inputs in ")
    assert "on cpu, fp32" in run.stderr
    assert resnext("classify", folder, "--checkpoint", checkpoint, "-q").stderr == ""
