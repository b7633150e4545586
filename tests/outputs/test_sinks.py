"""Where records go (sinks.py): nothing damaged, nothing mixed, failures of the place as exit 2."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
from pathlib import Path

import pytest

from resnext_cli import records
from resnext_cli.errors import OutputError
from resnext_cli.files import FileProblem
from resnext_cli.outputs.sinks import OutputRequest, Outputs
from resnext_cli.results import Classified, Failed, Prediction


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
    detail = {
        b"n": "line 1 is not a result record (not JSON)",
        b"\xff": "line 1 is not a result record (not JSON)",
        b"{": "line 1 is not a result record (no 'input')",
    }
    assert run.stderr == (
        f"error: '{target}' {detail[content[:1]]} (cannot --resume it; give the -o file of an "
        "earlier run)\n"
    )
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


def _record_line(name: str) -> bytes:
    error = {"type": "not_found", "message": f"no such file: '{name}'"}
    return json.dumps({"input": name, "error": error}).encode() + b"\n"


def test_resume_cuts_a_torn_record_and_refuses_other_endings(
    checkpoint, photos, tmp_path, resnext
) -> None:
    target = tmp_path / "r.jsonl"
    done = _record_line("gone.jpg")
    target.write_bytes(done + b'{"input": "half')  # a run killed in the middle of a line
    run = resnext("classify", photos, "--checkpoint", checkpoint, "-o", target, "--resume")
    assert run.code == 0, run  # this run classified every photo
    lines = target.read_bytes().splitlines(keepends=True)
    assert lines[0] == done and len(lines) == 1 + len(list(photos.iterdir()))
    assert all(json.loads(line)["input"] != "half" for line in lines)
    target.write_bytes(done + b"my notes")
    run = resnext("classify", photos, "--checkpoint", checkpoint, "-o", target, "--resume")
    assert (run.code, run.stderr) == (
        2,
        f"error: '{target}' does not end in result records (cannot --resume it; give the -o "
        "file of an earlier run)\n",
    )
    target.write_bytes(b"[" + done.strip() + b"]\n")  # -f json's array: not continued
    run = resnext("classify", photos, "--checkpoint", checkpoint, "-o", target, "--resume")
    assert (run.code, run.stderr) == (
        2,
        f"error: '{target}' line 1 is not a result record (a JSON array, not JSON Lines) "
        "(cannot --resume it; give the -o file of an earlier run)\n",
    )


def test_resume_of_a_file_that_cannot_be_read_says_why(
    checkpoint, photos, tmp_path, resnext, monkeypatch
) -> None:
    target = tmp_path / "r.jsonl"
    target.write_bytes(_record_line("gone.jpg"))

    # Root reads any file: the records reader's open fails as files.open_user_file fails
    # for a user without read permission (EACCES), whoever runs the test.
    def denied(path: object, **options: object) -> object:
        raise FileProblem("os", "permission denied", "PermissionError")

    monkeypatch.setattr(records, "open_user_file", denied)
    run = resnext("classify", photos, "--checkpoint", checkpoint, "-o", target, "--resume")
    assert (run.code, run.stderr) == (
        2,
        f"error: cannot read '{target}': permission denied (check the file)\n",
    )


def test_resume_into_a_pipe_is_refused(checkpoint, photos, tmp_path, resnext) -> None:
    fifo = tmp_path / "r.jsonl"
    os.mkfifo(fifo)
    run = resnext("classify", photos, "--checkpoint", checkpoint, "-o", fifo, "--resume")
    assert (run.code, run.stderr) == (
        2,
        f"error: cannot --resume '{fifo}': it is not a regular file\n",
    )


def test_each_record_reaches_the_file_as_it_is_written(tmp_path) -> None:
    # A kill keeps what was written: nothing waits in a buffer of the tool's.
    target = tmp_path / "r.jsonl"
    out = Outputs.open(OutputRequest(output=str(target)), stdout_is_terminal=False)
    try:
        out.start(stdout=io.StringIO(), topk=5, uncertain=False)
        first = Failed("caf\udce9.jpg", "not_found", "gone")  # a Latin-1 name's byte
        out.write(first)
        line = target.read_bytes()
        # The name's lone surrogate is written as a \\udcXX escape: JSON reads back the name.
        assert json.loads(line) == first.to_dict()
        assert line.endswith(b"\n") and b"\r" not in line
    finally:
        out.close()


def test_a_failure_to_write_to_standard_output_names_it() -> None:
    out = Outputs(request=OutputRequest(), fmt="jsonl")
    error = out._failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert str(error) == (
        "cannot write to 'standard output': No space left on device (what was written is "
        "kept; free space or give another -o, then --resume)"
    )


def test_a_stream_without_a_descriptor_is_not_a_terminal() -> None:
    from resnext_cli.outputs.sinks import _is_terminal

    assert _is_terminal(io.StringIO()) is False


def test_embeddings_reach_the_records_file(checkpoint, photos, tmp_path, resnext) -> None:
    target = tmp_path / "r.jsonl"
    run = resnext("classify", photos, "--checkpoint", checkpoint, "-o", target, "--embeddings")
    assert run.code == 0, run
    written = [json.loads(line) for line in target.read_text().splitlines()]
    assert written and all(len(r["embedding"]) == 2048 for r in written)  # ResNeXt's pool


def test_a_dash_is_standard_output_not_a_file(checkpoint, photos, tmp_path, resnext) -> None:
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        run = resnext("classify", photos, "--checkpoint", checkpoint, "-o", "-", "-f", "jsonl")
        assert run.code == 0, run
        assert len([json.loads(line) for line in run.stdout.splitlines()]) == 3
        assert not (tmp_path / "-").exists()
        # --report takes a file name: '-' there is a file, and -o - is still stdout.
        report = resnext("classify", photos, "--checkpoint", checkpoint, "-o", "-", "--report", "-")
    finally:
        os.chdir(here)
    assert report.code == 0, report
    assert len([json.loads(line) for line in report.stdout.splitlines()]) == 3
    assert (tmp_path / "-").read_text().lower().startswith("<!doctype html>")


@pytest.mark.parametrize(("fmt", "ok"), [("csv", False), ("table", False), ("json", True)])
def test_embeddings_go_only_where_a_vector_fits(
    checkpoint, photos, tmp_path, resnext, fmt, ok
) -> None:
    run = resnext("classify", photos, "--checkpoint", checkpoint, "-f", fmt, "--embeddings")
    if ok:
        assert run.code == 0 and all(len(r["embedding"]) == 2048 for r in json.loads(run.stdout))
    else:
        assert (run.code, run.stderr) == (
            2,
            f"error: --embeddings go into json, jsonl or parquet output, not {fmt} (give -f "
            "jsonl, or -o FILE.jsonl or FILE.parquet)\n",
        )


def test_a_parquet_folder_is_continued_not_replaced(
    checkpoint, make_photos, tmp_path, resnext
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    photos = make_photos(3)
    out = tmp_path / "out"
    first = resnext(
        "classify", photos, "--checkpoint", checkpoint, "-f", "parquet", "-o", f"{out}/", "-k", "3"
    )
    assert first.code == 0, first
    kept = {p.name: p.read_bytes() for p in out.iterdir()}
    (photos / "late.jpg").write_bytes(
        (photos / sorted(kept and os.listdir(photos))[0]).read_bytes()
    )
    again = resnext(
        "classify", photos, "--checkpoint", checkpoint, "-f", "parquet", "-o", f"{out}/",
        "-k", "3", "--resume",
    )  # fmt: skip
    assert again.code == 0, again
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in kept} == kept
    rows = [row for p in sorted(out.iterdir()) for row in pq.read_table(p).to_pylist()]
    assert sorted(Path(r["input"]).name for r in rows) == sorted(os.listdir(photos))
    # -k 3 in every shard: the README's columns label_1, probability_1 ... label_3.
    assert all("probability_3" in r and "label_4" not in r for r in rows)


def test_a_full_device_as_the_report_is_named_as_the_report(
    checkpoint, photos, tmp_path, resnext, device_node
) -> None:
    full = device_node("full")
    out = tmp_path / "r.jsonl"
    run = resnext(
        "classify", photos, "--checkpoint", checkpoint, "-o", out, "--report", full, "--force"
    )
    assert (run.code, run.stdout) == (2, ""), run
    assert full.is_char_device()  # written into, never replaced
    assert run.stderr.splitlines()[-1] == (
        f"error: cannot write to '{full}': No space left on device (what was written is "
        "kept; free space or give another --report, then --resume)"
    )


def test_a_parquet_file_and_its_embeddings_appear_whole_at_the_end(
    checkpoint, photos, tmp_path, resnext
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "r.parquet"
    run = resnext(
        "classify", photos, "--checkpoint", checkpoint, "-o", out, "-k", "2", "--embeddings"
    )
    assert run.code == 0, run
    rows = pq.read_table(out).to_pylist()
    assert sorted(Path(r["input"]).name for r in rows) == sorted(os.listdir(photos))
    assert all(len(r["embedding"]) == 2048 and "label_3" not in r for r in rows)
    assert sorted(os.listdir(tmp_path)) == ["photos", "r.parquet"]  # no temporary or lock


def test_a_resumed_run_continues_its_report_without_force(
    checkpoint, photos, tmp_path, resnext
) -> None:
    out, report = tmp_path / "r.jsonl", tmp_path / "r.html"
    first = sorted(photos.iterdir())[0]
    args = ("--checkpoint", checkpoint, "-o", out, "--report", report)
    assert resnext("classify", first, *args).code == 0
    run = resnext("classify", photos, *args, "--resume")
    assert run.code == 0, run
    assert run.stderr.splitlines()[-1] == f"report: {report} (3 images)"


def test_the_reports_thumbnails_follow_allow_truncated(checkpoint, tmp_path, resnext) -> None:
    from PIL import Image

    from tests.conftest import natural_image

    whole = tmp_path / "whole.jpg"
    natural_image(3, (320, 240)).save(whole, quality=90)
    cut = tmp_path / "photos" / "cut.jpg"
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    with pytest.raises(OSError):
        Image.open(cut).load()  # Pillow itself refuses it without the switch
    report = tmp_path / "r.html"
    run = resnext(
        "classify", cut, "--checkpoint", checkpoint, "--allow-truncated", "--report", report,
        "-f", "jsonl",
    )  # fmt: skip
    assert run.code == 0, run
    html = report.read_text()
    start = html.index('<script type="application/json" id="records">') + len(
        '<script type="application/json" id="records">'
    )
    (card,) = json.loads(html[start : html.index("</script>", start)])
    assert card["thumb"]["src"].startswith("data:image/jpeg;base64,")


# -- one run's writers, in-process (Outputs.open, start, write, close) ---------------------


def _gone(name: str = "gone.jpg") -> Failed:
    return Failed(name, "not_found", "gone")


# The parquet row of _gone() with -k 1, as the README's columns say.
GONE_ROW = {
    "input": "gone.jpg",
    "path": None,
    "label_1": None,
    "probability_1": None,
    "error_type": "not_found",
    "error": "gone",
}


@pytest.mark.parametrize("before", ["absent", "replaced"])
def test_a_parquet_file_is_not_there_until_the_run_ends(tmp_path, before) -> None:
    # Written under a temporary name and published at close: no empty or half file meanwhile,
    # and a file --force replaces stays whole until then.
    pq = pytest.importorskip("pyarrow.parquet")
    target = tmp_path / "r.parquet"
    if before == "replaced":
        target.write_bytes(b"an earlier run's table")
    request = OutputRequest(output=str(target), force=before == "replaced")
    out = Outputs.open(request, stdout_is_terminal=False)
    try:
        assert out.fmt == "parquet"
        unchanged = {"absent": None, "replaced": b"an earlier run's table"}[before]
        assert (target.read_bytes() if target.exists() else None) == unchanged
        out.start(stdout=io.StringIO(), topk=1, uncertain=False)
        out.write(_gone())
        assert (target.read_bytes() if target.exists() else None) == unchanged
    finally:
        out.close()
    assert pq.read_table(target).to_pylist() == [GONE_ROW]


def test_parquet_without_a_claimed_target_goes_to_its_path(tmp_path, monkeypatch) -> None:
    # An Outputs made without open (no claimed target) writes parquet through make_writer:
    # into the -o path itself, and never into a file named '-'.
    pq = pytest.importorskip("pyarrow.parquet")
    target = tmp_path / "r.parquet"
    out = Outputs(request=OutputRequest(output=str(target)), fmt="parquet")
    out.start(stdout=io.StringIO(), topk=1, uncertain=False)
    out.write(_gone())
    out.close()
    assert pq.read_table(target).to_pylist() == [GONE_ROW]
    monkeypatch.chdir(tmp_path)
    dash = Outputs(request=OutputRequest(output="-"), fmt="parquet")
    with pytest.raises(OutputError) as refused:
        dash.start(stdout=io.StringIO(), topk=1, uncertain=False)
    assert str(refused.value) == "parquet output needs a file (give -o FILE.parquet)"
    assert sorted(os.listdir(tmp_path)) == ["r.parquet"]


class _Terminal(io.StringIO):
    """Standard output as a terminal shows it."""

    def isatty(self) -> bool:
        return True


def _written(fmt: str, stdout: io.StringIO, *records: Failed | Classified) -> str:
    out = Outputs.open(OutputRequest(fmt=fmt), stdout_is_terminal=stdout.isatty())
    out.start(stdout=stdout, topk=2, uncertain=False)
    for record in records:
        out.write(record)
    out.close()
    return stdout.getvalue()


def test_the_table_goes_to_the_stream_it_was_given() -> None:
    # A lone failed input: its one line, on the run's standard output (not sys.stdout).
    assert _written("table", io.StringIO(), _gone()) == "gone.jpg: not_found: gone\n"


@pytest.mark.parametrize(
    ("stdout", "name"), [(_Terminal, "\\u202e"), (io.StringIO, "\u202e")], ids=["terminal", "pipe"]
)
def test_json_lines_escape_what_a_terminal_would_act_on(stdout, name) -> None:
    # A right-to-left override in a file name: shown as its escape on a terminal, kept
    # as the character itself in a pipe (both read back as the same name).
    written = _written("jsonl", stdout(), _gone("a\u202eb.jpg"))
    assert written == (
        f'{{"input": "a{name}b.jpg", "error": {{"type": "not_found", "message": "gone"}}}}\n'
    )


class _Unsure(io.StringIO):
    """A stream whose isatty fails (a dead terminal: EIO)."""

    def isatty(self) -> bool:
        raise OSError(errno.EIO, os.strerror(errno.EIO))


def _closed() -> io.StringIO:
    stream = io.StringIO()
    stream.close()  # isatty raises ValueError
    return stream


@pytest.mark.parametrize("stream", [_Unsure, _closed, object], ids=["oserror", "closed", "none"])
def test_a_stream_that_cannot_say_is_not_a_terminal(stream) -> None:
    from resnext_cli.outputs.sinks import _is_terminal

    assert _is_terminal(stream()) is False


def _report_json(html: str, block: str) -> object:
    opening = f'<script type="application/json" id="{block}">'
    start = html.index(opening) + len(opening)
    return json.loads(html[start : html.index("</script>", start)])


def test_the_reports_relabel_box_offers_the_labels_it_was_given(tmp_path) -> None:
    report = tmp_path / "r.html"
    out = Outputs.open(OutputRequest(report=str(report)), stdout_is_terminal=False)
    out.start(
        stdout=io.StringIO(),
        topk=1,
        uncertain=False,
        report_labels=["tabby", "tiger cat"],
        results=False,
    )
    out.close()
    review = _report_json(report.read_text(), "review")
    assert isinstance(review, dict) and review["labels"] == ["tabby", "tiger cat"]


@pytest.mark.parametrize(("limit", "thumbnail"), [(64 * 48, True), (64 * 48 - 1, False)])
def test_the_reports_thumbnails_follow_max_pixels(tmp_path, limit, thumbnail) -> None:
    # 64 x 48 = 3072 pixels: a thumbnail within the run's --max-pixels, none over it.
    from PIL import Image

    photo = tmp_path / "p.jpg"
    Image.new("RGB", (64, 48), (200, 40, 40)).save(photo, "JPEG")
    report = tmp_path / "r.html"
    out = Outputs.open(OutputRequest(report=str(report)), stdout_is_terminal=False)
    out.start(stdout=io.StringIO(), topk=1, uncertain=False, max_pixels=limit, results=False)
    out.write(Classified(str(photo), "m", "w", (Prediction("tabby", 281, 0.9),), path=str(photo)))
    out.close()
    (card,) = _report_json(report.read_text(), "records")  # type: ignore[misc]
    assert ("thumb" in card) is thumbnail


def test_a_parquet_folder_being_written_is_refused_to_a_second_run(tmp_path) -> None:
    pytest.importorskip("pyarrow.parquet")
    folder = tmp_path / "out"
    request = OutputRequest(output=f"{folder}/", fmt="parquet")
    first = Outputs.open(request, stdout_is_terminal=False)
    try:
        with pytest.raises(OutputError) as busy:
            Outputs.open(request, stdout_is_terminal=False)
    finally:
        first.close(nothing_written=True)
    assert str(busy.value) == (
        f"'{folder}' is being written by another resnext run (wait for it to finish, "
        "or give another -o)"
    )


def test_a_new_run_into_a_parquet_folder_removes_nothing_without_force(tmp_path) -> None:
    # A killed run's unfinished shard is left for --resume (which redoes its inputs).
    pq = pytest.importorskip("pyarrow.parquet")
    folder = tmp_path / "out"
    folder.mkdir()
    cut = folder / ".resnext-tmp-part-00000.parquet-0badf00d"
    cut.write_bytes(b"PAR1 cut off")
    out = Outputs.open(OutputRequest(output=f"{folder}/", fmt="parquet"), stdout_is_terminal=False)
    out.start(stdout=io.StringIO(), topk=1, uncertain=False)
    out.write(_gone())
    out.close()
    assert sorted(os.listdir(folder)) == [cut.name, "part-00000.parquet"]
    assert cut.read_bytes() == b"PAR1 cut off"
    assert pq.read_table(folder / "part-00000.parquet").to_pylist() == [GONE_ROW]


def test_a_report_that_fails_during_the_run_is_named_as_the_report(tmp_path, monkeypatch) -> None:
    from resnext_cli.outputs.report import HtmlReportWriter

    def full(self: object, record: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    results, report = tmp_path / "r.jsonl", tmp_path / "r.html"
    request = OutputRequest(output=str(results), report=str(report))
    out = Outputs.open(request, stdout_is_terminal=False)
    try:
        out.start(stdout=io.StringIO(), topk=1, uncertain=False)
        monkeypatch.setattr(HtmlReportWriter, "write", full)
        with pytest.raises(OutputError) as failed:
            out.write(_gone())
    finally:
        out.close()
    assert str(failed.value) == (
        f"cannot write to '{report}': No space left on device (what was written is kept; "
        "free space or give another --report, then --resume)"
    )
    assert json.loads(results.read_text()) == _gone().to_dict()  # the -o file has it
