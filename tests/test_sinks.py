"""Where records go (sinks.py): nothing damaged, nothing mixed, failures of the place as exit 2."""

from __future__ import annotations

import fcntl
import json

import pytest


@pytest.mark.parametrize(
    "content",
    [b"notes\nmy last line", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40, b'{"a": 1}\n'],
    ids=["text", "jpeg", "other-json"],
)
def test_resume_refuses_a_file_that_is_not_results_and_leaves_it_whole(
    checkpoint, photos, tmp_path, resnext, content
) -> None:
    target = tmp_path / "mine.dat"
    target.write_bytes(content)
    run = resnext("classify", photos, "--checkpoint", checkpoint, "-o", target, "--resume")
    assert (run.code, run.stdout) == (2, ""), run
    assert run.stderr.startswith(f"error: '{target}' ")
    assert "(cannot --resume it; give the -o file of an earlier run)" in run.stderr
    assert target.read_bytes() == content


def test_results_and_report_on_one_path_are_refused(checkpoint, photos, tmp_path, resnext) -> None:
    out = tmp_path / "r.jsonl"
    run = resnext("classify", photos, "--checkpoint", checkpoint, "-o", out, "--report", out)
    assert (run.code, run.stdout) == (2, "")
    assert run.stderr == (
        f"error: the report and the results would both be '{out}' (give --report another file)\n"
    )
    assert not out.exists()


def test_a_second_run_on_the_same_output_is_refused(checkpoint, photos, tmp_path, resnext) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text("")
    with out.open("a") as held:  # another run holds the file
        fcntl.flock(held, fcntl.LOCK_EX)
        run = resnext("classify", photos, "--checkpoint", checkpoint, "-o", out, "--force")
    assert (run.code, run.stdout) == (2, "")
    assert run.stderr == (
        f"error: '{out}' is being written by another resnext run (wait for it to finish, "
        "or give another -o)\n"
    )


def test_resume_with_report_covers_the_whole_run(checkpoint, photos, tmp_path, resnext) -> None:
    out, report = tmp_path / "r.jsonl", tmp_path / "r.html"
    first = sorted(photos.iterdir())[0]
    assert resnext("classify", first, "--checkpoint", checkpoint, "-o", out).code == 0
    run = resnext(
        "classify", photos, "--checkpoint", checkpoint, "-o", out, "--resume", "--report", report
    )
    assert run.code == 0, run
    html = report.read_text()
    start = html.index('<script type="application/json" id="records">') + len(
        '<script type="application/json" id="records">'
    )
    cards = json.loads(html[start : html.index("</script>", start)])
    assert len(cards) == 3  # the resumed image and the two new ones
    assert run.stderr.splitlines()[-1] == f"report: {report} (3 images)"


@pytest.mark.parametrize("where", ["missing", "not-a-folder", "a-folder"])
def test_unusable_output_places_fail_before_the_model_loads(
    checkpoint, photos, tmp_path, resnext, monkeypatch, where
) -> None:
    import resnext_cli.run.engine

    monkeypatch.setattr(
        resnext_cli.run.engine, "load_model", lambda *a, **k: pytest.fail("the model loaded")
    )
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    target, message = {
        "missing": (
            tmp_path / "nope" / "r.jsonl",
            f"cannot write '{tmp_path / 'nope' / 'r.jsonl'}': folder '{tmp_path / 'nope'}' "
            "does not exist",
        ),
        "not-a-folder": (
            tmp_path / "file" / "r.jsonl",
            f"cannot write '{tmp_path / 'file' / 'r.jsonl'}': folder '{tmp_path / 'file'}' "
            "does not exist",
        ),
        "a-folder": (
            tmp_path / "dir",
            f"output '{tmp_path / 'dir'}' is a folder (give a file name)",
        ),
    }[where]
    run = resnext("classify", photos, "--checkpoint", checkpoint, "-o", target)
    assert (run.code, run.stdout) == (2, ""), run
    assert run.stderr == f"error: {message}\n"


def test_a_full_device_is_exit_2_with_one_line(checkpoint, photos, resnext, device_node) -> None:
    full = device_node("full")
    run = resnext("classify", photos, "--checkpoint", checkpoint, "-o", full)
    assert (run.code, run.stdout) == (2, ""), run
    assert full.exists() and full.is_char_device()  # written into, never replaced
    assert run.stderr.splitlines()[-1] == (
        f"error: cannot write to '{full}': No space left on device (what was written is "
        "kept; free space or give another -o, then --resume)"
    )
    assert "Traceback" not in run.stderr


def test_checkpoint_url_that_does_not_load_is_not_kept(http_server, photos, resnext) -> None:
    base, root = http_server
    (root / "bad.pth").write_bytes(b"not a checkpoint")
    url = f"{base}/bad.pth"
    run = resnext("classify", photos, "--checkpoint", url)
    assert (run.code, run.stdout) == (2, "")
    assert run.stderr.startswith(f"error: cannot load checkpoint '{url}': ")
    from resnext_cli.model.weights import cached_path

    assert not cached_path(url).exists()
