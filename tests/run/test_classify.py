"""run/classify.py: a classify run expands its inputs in order and prints its summary.

The first tests run the command with the seeded checkpoint; the rest call run/classify.py
in-process around a fake engine (its plan is a real one), with the real expansion and the
real outputs: each message, count, argument and file the run leaves, checked exactly."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from PIL import Image

from resnext_cli.console import Console
from resnext_cli.errors import ConfigError, InputError, Terminated
from resnext_cli.inputs.sources import Source, iter_sources
from resnext_cli.model.categories import Categories
from resnext_cli.outputs.sinks import OutputRequest, Outputs
from resnext_cli.outputs.summary import RunSummary
from resnext_cli.results import Classified, Failed, Prediction, Record
from resnext_cli.run import classify
from resnext_cli.run.config import Config
from resnext_cli.run.plan import MachineFacts, Plan, resolve
from tests.conftest import Outcome
from tests.helpers import expected_order

Run = Callable[..., Outcome]  # the resnext fixture: one in-process run of the command
MakeImage = Callable[..., Path]


def test_folder_is_walked_sorted(checkpoint: Path, folder: Path, resnext: Run) -> None:
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


def test_glob_is_expanded_by_the_tool(checkpoint: Path, folder: Path, resnext: Run) -> None:
    run = resnext("classify", f"{folder}/**/*.[jJ]*", "--checkpoint", checkpoint)
    assert run.code == 0, run
    assert [r["input"] for r in run.records()] == [
        str(folder / "b.jpg"),
        str(folder / "sub" / "c.JPG"),
    ]


def test_url_input(
    checkpoint: Path, http_server: tuple[str, Path], make_image: MakeImage, resnext: Run
) -> None:
    base, root = http_server
    make_image("dog.jpg", seed=7, folder=root)
    local = resnext("classify", root / "dog.jpg", "--checkpoint", checkpoint)
    run = resnext("classify", f"{base}/dog.jpg", "--checkpoint", checkpoint)
    assert run.code == 0, run
    [record] = run.records()
    assert record["input"] == f"{base}/dog.jpg" and "path" not in record
    assert record["predictions"] == local.records()[0]["predictions"]


def test_stdin_image_bytes(checkpoint: Path, make_image: MakeImage, resnext: Run) -> None:
    image = make_image("x.jpg", seed=8)
    run = resnext("classify", "-", "--checkpoint", checkpoint, input=image.read_bytes())
    local = resnext("classify", image, "--checkpoint", checkpoint)
    assert run.code == 0, run
    [record] = run.records()
    assert record["input"] == "-"
    assert record["predictions"] == local.records()[0]["predictions"]


def test_stdin_list_of_paths(checkpoint: Path, folder: Path, resnext: Run) -> None:
    listing = "\r\n".join(["# made by find", *expected_order(folder), "", str(folder / "nope.png")])
    run = resnext("classify", "-", "--checkpoint", checkpoint, input=listing + "\n")
    assert run.code == 1, run
    records = run.records()
    assert [r["input"] for r in records] == [*expected_order(folder), str(folder / "nope.png")]
    assert records[-1]["error"] == {
        "type": "not_found",
        "message": f"no such file: '{folder / 'nope.png'}'",
    }


def test_summary_goes_to_stderr_only(checkpoint: Path, folder: Path, resnext: Run) -> None:
    run = resnext("classify", folder, "--checkpoint", checkpoint, "--precision", "fp32")
    assert run.stderr.startswith("classified 3 of 3 inputs in ")
    assert "on cpu, fp32" in run.stderr
    assert resnext("classify", folder, "--checkpoint", checkpoint, "-q").stderr == ""


# -- in-process tests: the run's bookkeeping around a fake engine ----------------------------
#
# The engine is faked (a plan, one record per source, no model), the sources are the real
# expansion of real files in tmp_path, the outputs are the real Outputs: what is checked is
# what run/classify.py itself decides (messages, counts, arguments, cleanup).

FAKE_WHERE = "fake-gpu, fp32"  # the engine's describe(), unlike its plan's 'cpu, fp32'
# What the plan below says of itself, written out: the default weights' tag is IMAGENET1K_V2.
SOURCE_LINE = "resnext50_32x4d (IMAGENET1K_V2)"
MODEL_LINE = "resnext50_32x4d (IMAGENET1K_V2) on cpu, fp32"
LABELS = ("cat", "dog", "bird")
# Each test image's top-1 (label, probability), by file name; others get ('cat', 0.9).
TOP1 = {"a.png": ("cat", 0.9), "b.png": ("dog", 0.3), "c.png": ("dog", 0.8)}
NO_INPUT_LINE = "error: no input matched (give image files, folders, globs or URLs)"
STARTED, FINISHED = 1000.0, 1004.0  # the pinned clock: every run takes 4.0 s


def plain_plan(**changes: Any) -> Plan:
    """A real CPU plan (no model loaded), with three labels and top-3 unless changed."""
    plan = resolve(Config(device="cpu", precision="fp32"), MachineFacts())
    return dataclasses.replace(plan, labels=LABELS, topk=3, **changes)


class FakeEngine:
    """One record per source, in order; stops with *stop* before source number *stop_at*."""

    def __init__(
        self,
        plan: Plan | None = None,
        *,
        stop_at: int | None = None,
        stop: type[BaseException] = KeyboardInterrupt,
    ) -> None:
        self.plan = plan or plain_plan()
        self.stop_at = stop_at
        self.stop = stop
        self.closed = 0
        self.seen: list[str] = []

    def describe(self) -> str:
        return FAKE_WHERE

    def close(self) -> None:
        self.closed += 1

    def classify_sources(self, sources: Iterable[Source]) -> Iterator[Record]:
        for n, source in enumerate(sources):
            if n == self.stop_at:
                raise self.stop()
            self.seen.append(source.input)
            if source.error is not None:
                yield Failed(source.input, source.error.error_type, source.error.message)
                continue
            label, p = TOP1.get(Path(source.input).name, ("cat", 0.9))
            prediction = Prediction(label, LABELS.index(label), p)
            yield Classified(input=source.input, model="m", weights="w", predictions=(prediction,))


class Builder:
    """ENGINES' build: records each call; returns the engine, or raises *error*."""

    def __init__(self, engine: FakeEngine, error: BaseException | None = None) -> None:
        self.engine = engine
        self.error = error
        self.calls: list[tuple[Config, Any, dict[str, Any]]] = []

    def __call__(self, config: Config, *, download_progress: Any, **options: Any) -> FakeEngine:
        self.calls.append((config, download_progress, options))
        if self.error is not None:
            raise self.error
        return self.engine


class SourcesSpy:
    """ENGINES' iter_sources: the real local expansion, each call's arguments recorded."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []
        self.error = error

    def __call__(self, inputs: Iterable[str], **options: Any) -> Iterator[Source]:
        self.calls.append((inputs, options))
        if self.error is not None:
            raise self.error
        return iter_sources(inputs, **options)


class SyncThread:
    """threading.Thread for the count: records how it was made, runs its target on start."""

    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **options: Any) -> None:
        SyncThread.made.append(options)
        self.target = options.get("target")

    def start(self) -> None:
        if self.target is not None:
            self.target()


@dataclass
class Recording(Console):
    """A console that keeps each line said (message, style), what loaded, the bar's calls."""

    said: list[tuple[str, str]] = field(default_factory=list)
    loaded: list[tuple[str, Any]] = field(default_factory=list)
    totals: list[int] = field(default_factory=list)
    ticks: int = 0

    def say(self, message: str, *, style: str = "") -> None:
        self.said.append((message, style))
        super().say(message, style=style)

    @contextmanager
    def loading(self, what: str) -> Iterator[Callable[[int, int | None], None]]:
        with super().loading(what) as update:
            self.loaded.append((what, update))
            yield update

    @contextmanager
    def counting(
        self, what: str = "classifying"
    ) -> Iterator[tuple[Callable[[], None], Callable[[int], None]]]:
        with super().counting(what) as (tick, set_total):

            def counted_tick() -> None:
                self.ticks += 1
                tick()

            def counted_total(total: int) -> None:
                self.totals.append(total)
                set_total(total)

            yield counted_tick, counted_total


def recording(
    *,
    stdin: bytes = b"",
    stdin_is_terminal: bool = False,
    quiet: bool = False,
    debug: bool = False,
    width: int = 200,
    terminal: bool = False,
) -> tuple[Recording, io.StringIO, io.StringIO]:
    """A recording console on in-memory streams: (console, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    console = Recording.on(
        io.BytesIO(stdin),
        out,
        err,
        stdin_is_terminal=stdin_is_terminal,
        width=width,
        force_terminal=terminal,
        color_system=None,
    )
    assert isinstance(console, Recording)
    console.quiet, console.debug = quiet, debug
    return console, out, err


def picture(path: Path) -> str:
    """A tiny real PNG at *path* (the report makes thumbnails of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (10, 200, 30)).save(path)
    return str(path)


@dataclass
class Fakes:
    """What the `fakes` fixture put in place of the engine, the thread and the clock."""

    engine: FakeEngine
    builder: Builder
    sources: SourcesSpy
    starts: list[dict[str, Any]]
    summaries: list[RunSummary]

    def use(self, engine: FakeEngine, error: BaseException | None = None) -> None:
        self.engine = engine
        self.builder.engine, self.builder.error = engine, error


@pytest.fixture(autouse=True)
def restore_the_log() -> Iterator[None]:
    """build_engine sends the package's log to the test's console: put it back after."""
    logger = logging.getLogger("resnext_cli")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    """ENGINES['local'] builds a FakeEngine over the real local expansion (spied); the count
    thread runs at once; every RunSummary starts at STARTED and runs end at FINISHED; the
    arguments of each Outputs.start are kept."""
    engine = FakeEngine()
    builder = Builder(engine)
    spy = SourcesSpy()
    monkeypatch.setitem(classify.ENGINES, "local", classify.EngineKind(builder, lambda: spy))
    SyncThread.made.clear()
    monkeypatch.setattr(classify, "threading", SimpleNamespace(Thread=SyncThread))
    monkeypatch.setattr(classify, "time", SimpleNamespace(perf_counter=lambda: FINISHED))
    summaries: list[RunSummary] = []

    class Pinned(RunSummary):
        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            self.started = STARTED
            summaries.append(self)

    monkeypatch.setattr(classify, "RunSummary", Pinned)
    starts: list[dict[str, Any]] = []
    real_start = Outputs.start

    def start(self: Outputs, **options: Any) -> None:
        starts.append(options)
        real_start(self, **options)

    monkeypatch.setattr(Outputs, "start", start)
    return Fakes(engine, builder, spy, starts, summaries)


def three_pictures(tmp_path: Path) -> tuple[str, str, str]:
    root = tmp_path / "photos"
    return picture(root / "a.png"), picture(root / "b.png"), picture(root / "c.png")


def lines_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def previous_line(name: str) -> str:
    """A JSON Lines record an earlier run wrote for *name*."""
    prediction = {"label": "bird", "index": 2, "probability": 0.7}
    return json.dumps({"input": name, "model": "m", "weights": "w", "predictions": [prediction]})


CONFIG = Config(
    device="cpu", precision="fp32", max_pixels=5000, allow_truncated=True, max_download_bytes=4096
)


# -- the engines -----------------------------------------------------------------------------


def test_engines_by_name_build_and_expand_with_their_own_modules() -> None:
    from resnext_cli.inputs import objects, sources

    assert sorted(classify.ENGINES) == ["local", "ray"]
    assert classify.ENGINES["local"].build is classify._local_engine
    assert classify.ENGINES["ray"].build is classify._ray_engine
    assert classify.ENGINES["local"].iter_sources() is sources.iter_sources
    assert classify.ENGINES["ray"].iter_sources() is objects.iter_sources


@pytest.mark.parametrize(
    ("build", "module", "name"),
    [
        ("_local_engine", "resnext_cli.run.engine", "local_engine"),
        ("_ray_engine", "resnext_cli.run.ray_engine", "RayEngine"),
    ],
    ids=["local", "ray"],
)
def test_each_engine_gets_the_config_and_every_option(
    monkeypatch: pytest.MonkeyPatch, build: str, module: str, name: str
) -> None:
    import importlib

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    made = object()

    def fake(*args: Any, **options: Any) -> object:
        calls.append((args, options))
        return made

    monkeypatch.setattr(importlib.import_module(module), name, fake)
    progress, facts = object(), object()
    got = getattr(classify, build)(CONFIG, download_progress=progress, facts=facts)
    assert got is made
    assert calls == [((CONFIG,), {"download_progress": progress, "facts": facts})]


# -- expand ----------------------------------------------------------------------------------

STDIN_NOTE = ("reading paths, URLs or image bytes from standard input (end with Ctrl-D)", "dim")


@pytest.mark.parametrize(
    ("inputs", "terminal", "quiet", "said"),
    [
        (("-",), True, False, [STDIN_NOTE]),
        (("x.png", "-"), True, False, [STDIN_NOTE]),
        (("-",), False, False, []),
        (("-",), True, True, []),
        (("x.png",), True, False, []),
    ],
    ids=["stdin_terminal", "stdin_second", "stdin_pipe", "quiet", "no_stdin"],
)
def test_expand_says_it_reads_standard_input_only_from_a_terminal(
    fakes: Fakes, inputs: tuple[str, ...], terminal: bool, quiet: bool, said: list[Any]
) -> None:
    console, _, _ = recording(stdin_is_terminal=terminal, quiet=quiet)
    classify.expand("local", inputs, console, max_stdin_bytes=10)
    assert console.said == said


def test_expand_hands_stdin_warnings_and_the_cap_to_the_engines_expansion(
    fakes: Fakes, tmp_path: Path
) -> None:
    console, _, err = recording(stdin=b"\xff\xd8\xff" + b"x" * 40)
    empty = tmp_path / "empty"
    empty.mkdir()
    inputs = (str(empty), "-")
    sources = list(classify.expand("local", inputs, console, max_stdin_bytes=10))
    assert fakes.sources.calls == [
        (inputs, {"stdin": console.stdin, "warn": console.warn, "max_stdin_bytes": 10})
    ]
    assert [(s.input, s.error and s.error.message) for s in sources] == [
        (
            "-",
            "standard input is over the 10-byte limit for image bytes "
            "(save it to a file and give the file's name)",
        )
    ]
    assert err.getvalue() == f"warning: no images found in folder '{empty}'\n"


# -- the library's log on the console --------------------------------------------------------


@pytest.mark.parametrize(("debug", "level"), [(False, logging.INFO), (True, logging.DEBUG)])
def test_console_log_level_follows_debug(debug: bool, level: int) -> None:
    console, _, _ = recording(debug=debug)
    handler = classify._ConsoleLog(console)
    assert handler.level == level and handler.console is console


def test_console_log_says_debug_records_and_notes_the_rest() -> None:
    console, _, err = recording(debug=True)
    handler = classify._ConsoleLog(console)
    for level, text in [(logging.DEBUG, "chose %s"), (logging.INFO, "compiled in %ss")]:
        handler.emit(logging.LogRecord("resnext_cli.x", level, __file__, 1, text, ("7",), None))
    handler.emit(logging.LogRecord("resnext_cli.x", 5, __file__, 1, "finer", None, None))
    assert console.said == [("debug: chose 7", ""), ("compiled in 7s", "dim"), ("debug: finer", "")]
    assert err.getvalue() == "debug: chose 7\ncompiled in 7s\ndebug: finer\n"


def test_console_log_notes_are_quiet_under_quiet_but_debug_lines_are_not() -> None:
    console, _, _ = recording(quiet=True)
    handler = classify._ConsoleLog(console)
    handler.emit(logging.LogRecord("resnext_cli.x", logging.WARNING, __file__, 1, "w", None, None))
    handler.emit(logging.LogRecord("resnext_cli.x", logging.DEBUG, __file__, 1, "d", None, None))
    assert console.said == [("debug: d", "")]


@pytest.mark.parametrize(("debug", "level"), [(False, logging.INFO), (True, logging.DEBUG)])
def test_log_to_keeps_one_console_handler_the_latest(debug: bool, level: int) -> None:
    logger = logging.getLogger("resnext_cli")
    first, _, _ = recording(debug=debug)
    second, _, _ = recording(debug=debug)
    classify._log_to(first)
    classify._log_to(second)
    mine = [h for h in logger.handlers if isinstance(h, classify._ConsoleLog)]
    assert len(mine) == 1 and mine[0].console is second and logger.level == level
    logging.getLogger("resnext_cli.run.somewhere").info("compile took %d s", 3)
    logging.getLogger("resnext_cli.run.somewhere").debug("decoder: %s", "pillow")
    expected = [("compile took 3 s", "dim")]
    if debug:
        expected.append(("debug: decoder: pillow", ""))
    assert second.said == expected and first.said == []


# -- build_engine ----------------------------------------------------------------------------


def test_build_engine_loads_the_weights_named_by_tag(fakes: Fakes) -> None:
    console, _, err = recording()
    config = Config(weights="IMAGENET1K_V1")
    engine = classify.build_engine("local", config, console, facts="the facts", batch=7)
    assert engine is fakes.engine
    [(what, update)] = console.loaded
    assert what == "resnext50_32x4d (IMAGENET1K_V1)"
    assert fakes.builder.calls == [(config, update, {"facts": "the facts", "batch": 7})]
    assert callable(update) and err.getvalue() == ""
    mine = [
        h for h in logging.getLogger("resnext_cli").handlers if isinstance(h, classify._ConsoleLog)
    ]
    assert [h.console for h in mine] == [console]


def test_build_engine_names_a_checkpoint_by_its_path(fakes: Fakes) -> None:
    console, _, _ = recording()
    classify.build_engine("local", Config(model="50", checkpoint="/w/mine.pth"), console)
    assert [what for what, _ in console.loaded] == ["resnext50_32x4d from /w/mine.pth"]


def test_build_engine_interrupted_while_loading_names_what_loaded(fakes: Fakes) -> None:
    console, _, _ = recording()
    fakes.use(fakes.engine, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        classify.build_engine("local", Config(checkpoint="c.pth"), console)
    assert console.said == [
        ("interrupted while loading resnext50_32x4d from c.pth: nothing was done", "yellow")
    ]


def test_build_engine_warns_each_note_and_keeps_choices_for_debug(fakes: Fakes) -> None:
    plan = plain_plan(notes=("bf16 is emulated", "slow disk"), choices=("decode on cpu", "x"))
    fakes.use(FakeEngine(plan))
    console, _, _ = recording()
    classify.build_engine("local", Config(), console)
    assert console.said == [
        ("warning: bf16 is emulated", "yellow"),
        ("warning: slow disk", "yellow"),
    ]
    console, _, _ = recording(debug=True)
    classify.build_engine("local", Config(), console)
    assert console.said == [
        ("warning: bf16 is emulated", "yellow"),
        ("warning: slow disk", "yellow"),
        ("debug: decode on cpu", ""),
        ("debug: x", ""),
    ]


def test_build_engine_names_the_int8_engine_only_under_debug(
    fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resnext_cli.model import quantized

    monkeypatch.setattr(quantized, "quantized_engine", lambda: "qfake")
    fakes.use(FakeEngine(plain_plan(precision="int8")))
    console, _, _ = recording(debug=True)
    classify.build_engine("local", Config(), console)
    assert console.said == [("debug: INT8 runs on torch's 'qfake' quantized engine", "")]
    quiet, _, _ = recording()
    classify.build_engine("local", Config(), quiet)
    assert quiet.said == []
    fakes.use(FakeEngine(plain_plan(precision="fp32")))
    fp32, _, _ = recording(debug=True)
    classify.build_engine("local", Config(), fp32)
    assert fp32.said == []


# -- counting in the background --------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "countable"),
    [
        ((), True),
        (("a.jpg", "photos", "x-y.png"), True),
        (("-",), False),
        (("a.jpg", "-"), False),
        (("https://example.com/a.jpg",), False),
        (("a.jpg", "s3://bucket/b.jpg"), False),
    ],
    ids=["nothing", "files", "stdin", "stdin_second", "url", "url_second"],
)
def test_countable_only_without_stdin_or_urls(inputs: tuple[str, ...], countable: bool) -> None:
    assert classify._countable(inputs) is countable


def test_count_in_background_counts_what_is_not_done_in_a_named_daemon(
    fakes: Fakes, tmp_path: Path
) -> None:
    a, b, _ = three_pictures(tmp_path)
    totals: list[int] = []
    inputs = (str(tmp_path / "photos"), a)
    classify._count_in_background(classify.Count("local", inputs, {b}), totals.append)
    # a, b and c in the folder, a again (as given): b was done before.
    assert totals == [3]
    assert fakes.sources.calls == [(inputs, {})]
    [made] = SyncThread.made
    assert (made["name"], made["daemon"], callable(made["target"])) == ("resnext-count", True, True)


def test_count_in_background_never_walks_stdin_or_urls(fakes: Fakes) -> None:
    totals: list[int] = []
    classify._count_in_background(classify.Count("local", ("a.jpg", "-")), totals.append)
    assert totals == [] and fakes.sources.calls == [] and SyncThread.made == []


def test_a_count_that_fails_sets_no_total(fakes: Fakes) -> None:
    totals: list[int] = []
    spy = SourcesSpy(OSError("gone"))
    classify.ENGINES["local"] = classify.EngineKind(fakes.builder, lambda: spy)
    classify._count_in_background(classify.Count("local", ("a.jpg",)), totals.append)
    assert totals == [] and len(spy.calls) == 1


# -- drive -----------------------------------------------------------------------------------


def test_drive_writes_counts_and_notes_each_failure(fakes: Fakes, tmp_path: Path) -> None:
    a, b, _ = three_pictures(tmp_path)
    missing = str(tmp_path / "missing.png")
    console, _, _ = recording()
    written: list[Record] = []
    summary = RunSummary(min_probability=0.5)
    sources = list(iter_sources([a, missing, b]))
    classify.drive(fakes.engine, sources, written.append, summary, console)
    assert [(r.input, r.ok) for r in written] == [(a, True), (missing, False), (b, True)]
    assert [r.uncertain for r in written if isinstance(r, Classified)] == [False, True]
    assert (summary.classified, dict(summary.failed), summary.uncertain) == (2, {"not_found": 1}, 1)
    assert console.said == [(f"error: no such file: '{missing}'", "red")]
    assert console.ticks == 3 and console.totals == []
    assert SyncThread.made == []  # no count asked for


def test_drive_without_a_threshold_marks_nothing(fakes: Fakes, tmp_path: Path) -> None:
    a, b, _ = three_pictures(tmp_path)
    console, _, _ = recording()
    written: list[Record] = []
    summary = RunSummary()
    classify.drive(fakes.engine, iter_sources([a, b]), written.append, summary, console)
    assert [r.uncertain for r in written if isinstance(r, Classified)] == [None, None]
    assert summary.classified == 2 and console.said == []


def test_drive_counts_the_inputs_for_the_bar(fakes: Fakes, tmp_path: Path) -> None:
    a, _, _ = three_pictures(tmp_path)
    console, _, _ = recording()
    written: list[Record] = []
    inputs = (str(tmp_path / "photos"),)
    sources = iter_sources(inputs)
    count = classify.Count("local", inputs, {a})
    classify.drive(fakes.engine, sources, written.append, RunSummary(), console, count=count)
    assert console.totals == [2] and console.ticks == 3 and len(written) == 3


# -- peek, refuse ----------------------------------------------------------------------------


def test_peek_holds_the_failures_before_the_first_good_source() -> None:
    bad = [Source(input=f"bad{n}", error=InputError("not_found", f"no {n}")) for n in range(2)]
    good = [Source(input="good"), Source(input="after", error=InputError("not_found", "x"))]
    found, failed = classify.peek(iter(bad + good))
    assert found is not None and failed == []
    assert list(found) == bad + good
    assert classify.peek(iter(bad)) == (None, bad)
    assert classify.peek(iter([])) == (None, [])


def test_refuse_says_each_problem_and_exits_2() -> None:
    console, _, err = recording(quiet=True)
    bad = [Source(input=f"bad{n}", error=InputError("not_found", f"no {n}")) for n in range(2)]
    assert classify.refuse(bad, console) == 2
    assert err.getvalue() == "error: no 0\nerror: no 1\n"


# -- review_labels, report_title -------------------------------------------------------------


def test_review_labels_are_the_labels_then_the_categories() -> None:
    assert classify.review_labels(plain_plan()) == ["cat", "dog", "bird"]
    categories = Categories(names=("pets", "birds"), class_to_category=(0, 0, 1))
    assert classify.review_labels(plain_plan(categories=categories)) == [
        "cat",
        "dog",
        "bird",
        "pets",
        "birds",
    ]


@pytest.mark.parametrize(
    ("inputs", "title"),
    [
        (("a.jpg", "b c"), "resnext: a.jpg b c"),
        ((), "resnext: "),
        (("x" * 91,), "resnext: " + "x" * 91),  # 100 characters: whole
        (("x" * 45, "y" * 45), "resnext: " + "x" * 45 + " " + "y" * 45),  # 100 too
        (("x" * 92,), "resnext: " + "x" * 90 + "…"),  # 101: cut to 100 with the ellipsis
        (("z" * 300,), "resnext: " + "z" * 90 + "…"),
    ],
    ids=["two", "none", "len100", "len100_two", "len101", "long"],
)
def test_report_title_is_the_inputs_cut_to_100_characters(
    inputs: tuple[str, ...], title: str
) -> None:
    assert classify.report_title(inputs) == title
    assert len(title) <= 100


# -- print_summary ---------------------------------------------------------------------------


def finished_summary(*records: Record, resumed: int = 0) -> RunSummary:
    summary = RunSummary(where="cpu, fp32", started=0.0, finished=4.0, resumed=resumed)
    for record in records:
        summary.add(record)
    return summary


def seen_as(name: str, label: str = "cat", p: float = 0.9) -> Classified:
    prediction = Prediction(label, LABELS.index(label), p)
    return Classified(input=name, model="m", weights="w", predictions=(prediction,))


def failed_as(name: str) -> Failed:
    return Failed(name, "not_found", f"no such file: '{name}'")


LINE_2 = "classified 2 of 2 inputs in 4.0s (0.5 img/s) on cpu, fp32"


def test_print_summary_of_several_inputs_is_the_whole_view_in_whole_lines() -> None:
    console, _, err = recording(width=40)
    classify.print_summary(
        finished_summary(seen_as("a"), seen_as("b", "dog")), console, report=None
    )
    lines = err.getvalue().splitlines()
    assert lines[0] == LINE_2  # longer than 40 columns: not folded for a pipe
    assert lines[1] == "top-1 probability: median 90.0%"
    assert lines[2] == "top-1 labels (2 most common of 2):"
    assert len(lines) == 5 and console.said == []


def test_print_summary_on_a_terminal_folds_at_its_width() -> None:
    console, _, err = recording(width=40, terminal=True)
    classify.print_summary(
        finished_summary(seen_as("a"), seen_as("b", "dog")), console, report=None
    )
    lines = [line.rstrip() for line in err.getvalue().splitlines()]
    assert " ".join(lines[:2]) == LINE_2 and all(len(line) <= 40 for line in lines)
    assert lines[2] == "top-1 probability: median 90.0%"


def test_print_summary_of_one_input_says_only_a_failure() -> None:
    console, _, err = recording()
    classify.print_summary(finished_summary(seen_as("a")), console, report=None)
    assert err.getvalue() == ""
    console, _, err = recording()
    classify.print_summary(finished_summary(failed_as("a")), console, report=None)
    line = "classified 0 of 1 inputs in 4.0s (0.0 img/s) on cpu, fp32; 1 failed (1 not_found)"
    assert console.said == [(line, "dim")] and err.getvalue() == line + "\n"


def test_print_summary_after_a_resume_is_the_whole_view() -> None:
    console, _, err = recording()
    classify.print_summary(finished_summary(seen_as("a"), resumed=4), console, report=None)
    lines = err.getvalue().splitlines()
    assert lines[0] == (
        "classified 1 of 1 inputs in 4.0s (0.2 img/s) on cpu, fp32; 4 done before (--resume)"
    )
    assert lines[2] == "top-1 labels (1 most common of 1):"


def test_print_summary_names_the_report_with_every_image() -> None:
    console, _, err = recording()
    summary = finished_summary(seen_as("a"), failed_as("b"), resumed=3)
    classify.print_summary(summary, console, report="out/report.html")
    assert console.said == [("report: out/report.html (5 images)", "")]
    assert err.getvalue().splitlines()[-1] == "report: out/report.html (5 images)"


def test_print_summary_says_nothing_under_quiet() -> None:
    console, _, err = recording(quiet=True)
    summary = finished_summary(seen_as("a"), failed_as("b"), resumed=3)
    classify.print_summary(summary, console, report="r.html")
    assert err.getvalue() == ""


# -- run_classify ----------------------------------------------------------------------------


def test_run_classify_writes_every_record_and_the_summary(
    fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    three_pictures(tmp_path)
    monkeypatch.chdir(tmp_path)  # short names: the report's title is them whole
    a, c = "photos/a.png", "photos/c.png"
    console, out, err = recording()
    outputs = Outputs.open(OutputRequest(fmt="jsonl"), stdout_is_terminal=False)
    status = classify.run_classify(CONFIG, (a, c), outputs, console)
    assert status == 0
    assert [(r["input"], r["predictions"][0]["label"]) for r in lines_of(out.getvalue())] == [
        (a, "cat"),
        (c, "dog"),
    ]
    assert "uncertain" not in out.getvalue()
    lines = err.getvalue().splitlines()
    assert lines[0] == f"classified 2 of 2 inputs in 4.0s (0.5 img/s) on {FAKE_WHERE}"
    assert lines[1] == "top-1 probability: median 85.0%"
    assert fakes.starts == [
        {
            "stdout": console.stdout,
            "topk": 3,
            "uncertain": False,
            "report_title": "resnext: photos/a.png photos/c.png",
            "report_context": {"model": SOURCE_LINE, "device": FAKE_WHERE},
            "report_labels": ["cat", "dog", "bird"],
            "max_pixels": 5000,
            "allow_truncated": True,
            "caption": MODEL_LINE,
        }
    ]
    [summary] = fakes.summaries
    assert (summary.finished, summary.resumed, summary.min_probability) == (FINISHED, 0, None)
    assert fakes.engine.closed == 1 and fakes.engine.seen == [a, c]
    [(config, _, options)] = fakes.builder.calls
    assert config is CONFIG and options == {}
    assert console.totals == [2]
    # The expansion got the console's stdin, its warnings and the config's cap; the count
    # only the inputs.
    assert fakes.sources.calls == [
        ((a, c), {"stdin": console.stdin, "warn": console.warn, "max_stdin_bytes": 4096}),
        ((a, c), {}),
    ]


def test_run_classify_with_a_threshold_marks_uncertain_records(
    fakes: Fakes, tmp_path: Path
) -> None:
    a, b, _ = three_pictures(tmp_path)
    console, out, err = recording()
    outputs = Outputs.open(OutputRequest(fmt="jsonl"), stdout_is_terminal=False)
    status = classify.run_classify(
        CONFIG, (a, b), outputs, console, min_probability=0.5, engine_options={"workers": 3}
    )
    assert status == 0
    assert [(r["input"], r["uncertain"]) for r in lines_of(out.getvalue())] == [
        (a, False),
        (b, True),
    ]
    assert err.getvalue().splitlines()[1] == (
        "top-1 probability: median 60.0%; 1 of 2 under 50.0% (uncertain)"
    )
    [start] = fakes.starts
    assert start["uncertain"] is True
    assert start["report_context"] == {
        "model": SOURCE_LINE,
        "device": FAKE_WHERE,
        "min_probability": "0.5",
    }
    assert fakes.summaries[0].min_probability == 0.5
    assert fakes.builder.calls[0][2] == {"workers": 3}


def test_run_classify_some_failed_exits_1_and_says_each(fakes: Fakes, tmp_path: Path) -> None:
    a, _, _ = three_pictures(tmp_path)
    missing = str(tmp_path / "missing.png")
    console, out, err = recording()
    outputs = Outputs.open(OutputRequest(fmt="jsonl"), stdout_is_terminal=False)
    assert classify.run_classify(CONFIG, (missing, a), outputs, console) == 1
    assert [r["input"] for r in lines_of(out.getvalue())] == [missing, a]
    assert (f"error: no such file: '{missing}'", "red") in console.said
    assert err.getvalue().splitlines()[1] == (
        f"classified 1 of 2 inputs in 4.0s (0.2 img/s) on {FAKE_WHERE}; 1 failed (1 not_found)"
    )


def test_run_classify_resumes_after_the_done_inputs(fakes: Fakes, tmp_path: Path) -> None:
    a, b, c = three_pictures(tmp_path)
    results = tmp_path / "out.jsonl"
    results.write_text(previous_line(a) + "\n")
    console, out, err = recording()
    request = OutputRequest(output=str(results), resume=True)
    outputs = Outputs.open(request, stdout_is_terminal=False)
    inputs = (str(tmp_path / "photos"),)
    assert classify.run_classify(CONFIG, inputs, outputs, console) == 0
    assert [r["input"] for r in lines_of(results.read_text())] == [a, b, c]
    assert out.getvalue() == "" and fakes.engine.seen == [b, c]
    assert err.getvalue().splitlines()[0] == (
        f"classified 2 of 2 inputs in 4.0s (0.5 img/s) on {FAKE_WHERE}; 1 done before (--resume)"
    )
    assert fakes.summaries[0].resumed == 1 and console.totals == [2]


def test_run_classify_resumed_with_one_left_still_shows_the_whole_view(
    fakes: Fakes, tmp_path: Path
) -> None:
    a, b, _ = three_pictures(tmp_path)
    results = tmp_path / "out.jsonl"
    results.write_text(previous_line(a) + "\n")
    console, _, err = recording()
    outputs = Outputs.open(
        OutputRequest(output=str(results), resume=True), stdout_is_terminal=False
    )
    assert classify.run_classify(CONFIG, (a, b), outputs, console) == 0
    assert err.getvalue().splitlines()[0] == (
        f"classified 1 of 1 inputs in 4.0s (0.2 img/s) on {FAKE_WHERE}; 1 done before (--resume)"
    )


def test_run_classify_with_everything_done_says_so_and_loads_nothing(
    fakes: Fakes, tmp_path: Path
) -> None:
    a, b, _ = three_pictures(tmp_path)
    results = tmp_path / "out.jsonl"
    before = previous_line(a) + "\n" + previous_line(b) + "\n"
    results.write_text(before)
    console, _, err = recording()
    outputs = Outputs.open(
        OutputRequest(output=str(results), resume=True), stdout_is_terminal=False
    )
    assert classify.run_classify(CONFIG, (a, b), outputs, console) == 0
    assert err.getvalue() == f"nothing left to do: all inputs are already in '{results}'\n"
    assert results.read_text() == before and fakes.builder.calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "photos"]  # unlocked


def test_run_classify_with_everything_done_but_a_missing_input_refuses(
    fakes: Fakes, tmp_path: Path
) -> None:
    a, _, _ = three_pictures(tmp_path)
    missing = str(tmp_path / "missing.png")
    results = tmp_path / "out.jsonl"
    results.write_text(previous_line(a) + "\n")
    console, _, err = recording()
    outputs = Outputs.open(
        OutputRequest(output=str(results), resume=True), stdout_is_terminal=False
    )
    assert classify.run_classify(CONFIG, (a, missing), outputs, console) == 2
    assert err.getvalue() == f"error: no such file: '{missing}'\n"
    assert results.read_text() == previous_line(a) + "\n" and fakes.builder.calls == []


def test_run_classify_without_input_removes_the_new_file_and_exits_2(
    fakes: Fakes, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    results = tmp_path / "out.jsonl"
    console, _, err = recording()
    outputs = Outputs.open(OutputRequest(output=str(results)), stdout_is_terminal=False)
    assert results.exists()  # claimed: made empty when opened
    assert classify.run_classify(CONFIG, (str(empty),), outputs, console) == 2
    assert err.getvalue() == f"warning: no images found in folder '{empty}'\n{NO_INPUT_LINE}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    assert fakes.builder.calls == []


def test_run_classify_when_every_input_is_missing_says_each_once(
    fakes: Fakes, tmp_path: Path
) -> None:
    missing = [str(tmp_path / "m1.png"), str(tmp_path / "m2.png")]
    console, out, err = recording(quiet=True)
    outputs = Outputs.open(OutputRequest(fmt="jsonl"), stdout_is_terminal=False)
    assert classify.run_classify(CONFIG, tuple(missing), outputs, console) == 2
    assert err.getvalue() == "".join(f"error: no such file: '{m}'\n" for m in missing)
    assert out.getvalue() == "" and fakes.builder.calls == []


@pytest.mark.parametrize("error", [ConfigError("no such model"), KeyboardInterrupt()], ids=str)
def test_run_classify_that_cannot_load_leaves_no_file(
    fakes: Fakes, tmp_path: Path, error: BaseException
) -> None:
    a, _, _ = three_pictures(tmp_path)
    results = tmp_path / "out.jsonl"
    fakes.use(fakes.engine, error)
    console, _, _ = recording()
    outputs = Outputs.open(OutputRequest(output=str(results)), stdout_is_terminal=False)
    with pytest.raises(type(error)):
        classify.run_classify(CONFIG, (a,), outputs, console)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]
    assert fakes.starts == []


@pytest.mark.parametrize("stop", [KeyboardInterrupt, Terminated], ids=["ctrl_c", "sigterm"])
def test_run_classify_interrupted_keeps_what_was_written(
    fakes: Fakes, tmp_path: Path, stop: type[BaseException]
) -> None:
    a, b, c = three_pictures(tmp_path)
    results = tmp_path / "out.jsonl"
    fakes.use(FakeEngine(stop_at=2, stop=stop))
    console, _, _ = recording()
    outputs = Outputs.open(OutputRequest(output=str(results)), stdout_is_terminal=False)
    with pytest.raises(stop):
        classify.run_classify(CONFIG, (a, b, c), outputs, console)
    assert [r["input"] for r in lines_of(results.read_text())] == [a, b]
    assert console.said == [
        (f"interrupted: 2 records written to '{results}' (--resume continues)", "yellow")
    ]
    assert fakes.engine.closed == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "photos"]  # unlocked


def test_run_classify_interrupted_on_stdout_names_no_file(fakes: Fakes, tmp_path: Path) -> None:
    a, b, _ = three_pictures(tmp_path)
    fakes.use(FakeEngine(stop_at=1))
    console, out, _ = recording()
    outputs = Outputs.open(OutputRequest(fmt="jsonl"), stdout_is_terminal=False)
    with pytest.raises(KeyboardInterrupt):
        classify.run_classify(CONFIG, (a, b), outputs, console)
    assert [r["input"] for r in lines_of(out.getvalue())] == [a]
    assert console.said == [("interrupted: 1 records written", "yellow")]


def test_run_classify_with_a_report_names_it_in_the_summary(fakes: Fakes, tmp_path: Path) -> None:
    a, b, _ = three_pictures(tmp_path)
    report = tmp_path / "report.html"
    console, _, err = recording()
    request = OutputRequest(fmt="jsonl", report=str(report))
    outputs = Outputs.open(request, stdout_is_terminal=False)
    assert classify.run_classify(CONFIG, (a, b), outputs, console) == 0
    assert err.getvalue().splitlines()[-1] == f"report: {report} (2 images)"
    html = report.read_text()
    assert Path(a).name in html and Path(b).name in html


def test_run_classify_quiet_prints_no_summary(fakes: Fakes, tmp_path: Path) -> None:
    a, b, _ = three_pictures(tmp_path)
    console, out, err = recording(quiet=True)
    outputs = Outputs.open(OutputRequest(fmt="jsonl"), stdout_is_terminal=False)
    assert classify.run_classify(CONFIG, (a, b), outputs, console) == 0
    assert err.getvalue() == "" and len(lines_of(out.getvalue())) == 2


def test_run_classify_by_another_engine_kind(
    fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _, _ = three_pictures(tmp_path)
    other = FakeEngine()
    builder = Builder(other)
    spy = SourcesSpy()
    monkeypatch.setitem(classify.ENGINES, "other", classify.EngineKind(builder, lambda: spy))
    console, out, _ = recording()
    outputs = Outputs.open(OutputRequest(fmt="jsonl"), stdout_is_terminal=False)
    assert classify.run_classify(CONFIG, (a,), outputs, console, engine_kind="other") == 0
    assert [r["input"] for r in lines_of(out.getvalue())] == [a]
    assert other.seen == [a] and fakes.builder.calls == [] and fakes.sources.calls == []
    assert [inputs for inputs, _ in spy.calls] == [(a,), (a,)]


# -- classify_for_sort -----------------------------------------------------------------------


def test_classify_for_sort_returns_the_records_and_the_summary(
    fakes: Fakes, tmp_path: Path
) -> None:
    a, b, c = three_pictures(tmp_path)
    console, out, err = recording()
    inputs = (str(tmp_path / "photos"),)
    got = classify.classify_for_sort(CONFIG, inputs, console, min_probability=0.5, report=None)
    assert got is not None
    records, summary = got
    assert [(r.input, r.uncertain) for r in records if isinstance(r, Classified)] == [
        (a, False),
        (b, True),
        (c, False),
    ]
    assert (summary.where, summary.min_probability, summary.uncertain) == (FAKE_WHERE, 0.5, 1)
    assert (summary.started, summary.finished, summary.classified) == (STARTED, FINISHED, 3)
    assert out.getvalue() == "" and err.getvalue() == "" and console.totals == [3]
    assert fakes.starts == [
        {
            "stdout": console.stdout,
            "topk": 3,
            "uncertain": True,
            "report_title": f"resnext: {inputs[0]}",
            "report_context": {"device": FAKE_WHERE},
            "report_labels": ["cat", "dog", "bird"],
            "max_pixels": 5000,
            "allow_truncated": True,
            "results": False,
        }
    ]
    [(config, _, options)] = fakes.builder.calls
    assert config is CONFIG and options == {}
    assert fakes.sources.calls == [
        (inputs, {"stdin": console.stdin, "warn": console.warn, "max_stdin_bytes": 4096}),
        (inputs, {}),
    ]


def test_classify_for_sort_without_a_threshold(fakes: Fakes, tmp_path: Path) -> None:
    a, b, _ = three_pictures(tmp_path)
    console, _, _ = recording()
    got = classify.classify_for_sort(CONFIG, (a, b), console, min_probability=None, report=None)
    assert got is not None
    records, summary = got
    assert [r.uncertain for r in records if isinstance(r, Classified)] == [None, None]
    assert summary.min_probability is None and fakes.starts[0]["uncertain"] is False


def test_classify_for_sort_writes_the_report(fakes: Fakes, tmp_path: Path) -> None:
    a, b, _ = three_pictures(tmp_path)
    report = tmp_path / "review.html"
    console, _, _ = recording()
    got = classify.classify_for_sort(
        CONFIG, (a, b), console, min_probability=None, report=str(report)
    )
    assert got is not None and [r.input for r in got[0]] == [a, b]
    html = report.read_text()
    assert Path(a).name in html and Path(b).name in html
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "review.html"]


def test_classify_for_sort_passes_over_dest_inside_a_source_folder(
    fakes: Fakes, tmp_path: Path
) -> None:
    a, b, _ = three_pictures(tmp_path)
    dest = tmp_path / "photos" / "sorted"
    picture(dest / "cat" / "a.png")
    console, _, _ = recording()
    inputs = (str(tmp_path / "photos"),)
    got = classify.classify_for_sort(
        CONFIG, inputs, console, min_probability=None, report=None, skip=dest
    )
    assert got is not None
    assert [r.input for r in got[0]] == [a, b, str(tmp_path / "photos" / "c.png")]
    # The bar's total leaves the copies out too, so it ends at its total.
    assert console.totals == [3] and console.ticks == 3
    # Without skip the copies are photos like any other.
    console, _, _ = recording()
    got = classify.classify_for_sort(CONFIG, inputs, console, min_probability=None, report=None)
    assert got is not None and len(got[0]) == 4
    assert console.totals == [4] and console.ticks == 4


def test_count_in_background_leaves_out_files_inside_skip(fakes: Fakes, tmp_path: Path) -> None:
    a, _, _ = three_pictures(tmp_path)
    dest = tmp_path / "photos" / "sorted"
    picture(dest / "cat" / "x.png")
    picture(dest / "dog" / "y.png")
    totals: list[int] = []
    inputs = (str(tmp_path / "photos"),)
    count = classify.Count("local", inputs, {a}, skip=dest.resolve())
    classify._count_in_background(count, totals.append)
    assert totals == [2]  # b and c: a was done, x and y are DEST's


def test_classify_for_sort_ignores_a_skip_that_is_no_folder(fakes: Fakes, tmp_path: Path) -> None:
    a, _, _ = three_pictures(tmp_path)
    console, _, _ = recording()
    got = classify.classify_for_sort(
        CONFIG, (a,), console, min_probability=None, report=None, skip=Path(a)
    )
    assert got is not None and [r.input for r in got[0]] == [a]


def test_classify_for_sort_without_input_is_none(fakes: Fakes, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    console, _, err = recording()
    got = classify.classify_for_sort(
        CONFIG, (str(empty),), console, min_probability=None, report=None
    )
    assert got is None and fakes.builder.calls == []
    assert err.getvalue() == f"warning: no images found in folder '{empty}'\n"


def test_classify_for_sort_says_each_missing_input_and_ends_with_the_last(
    fakes: Fakes, tmp_path: Path
) -> None:
    missing = [str(tmp_path / f"m{n}.png") for n in range(3)]
    console, _, err = recording()
    with pytest.raises(ConfigError) as info:
        classify.classify_for_sort(
            CONFIG, tuple(missing), console, min_probability=None, report=None
        )
    assert str(info.value) == f"no such file: '{missing[2]}'"
    assert (
        err.getvalue()
        == f"error: no such file: '{missing[0]}'\nerror: no such file: '{missing[1]}'\n"
    )
    assert fakes.builder.calls == []


def test_classify_for_sort_that_cannot_load_leaves_no_report(fakes: Fakes, tmp_path: Path) -> None:
    a, _, _ = three_pictures(tmp_path)
    report = tmp_path / "review.html"
    fakes.use(fakes.engine, ConfigError("no such model"))
    console, _, _ = recording()
    with pytest.raises(ConfigError):
        classify.classify_for_sort(CONFIG, (a,), console, min_probability=None, report=str(report))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


@pytest.mark.parametrize("stop", [KeyboardInterrupt, Terminated], ids=["ctrl_c", "sigterm"])
def test_classify_for_sort_interrupted_says_nothing_was_filed(
    fakes: Fakes, tmp_path: Path, stop: type[BaseException]
) -> None:
    a, b, _ = three_pictures(tmp_path)
    report = tmp_path / "review.html"
    fakes.use(FakeEngine(stop_at=1, stop=stop))
    console, _, _ = recording()
    with pytest.raises(stop):
        classify.classify_for_sort(
            CONFIG, (a, b), console, min_probability=None, report=str(report)
        )
    assert console.said == [("interrupted while classifying: nothing was filed yet", "yellow")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "review.html"]


# -- _outside --------------------------------------------------------------------------------


def test_outside_drops_files_inside_the_folder_however_named(tmp_path: Path) -> None:
    folder = tmp_path / "dest"
    (folder / "cat").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(folder)
    sources = [
        Source(input="in", path=folder / "cat" / "a.jpg"),
        Source(input="out1", path=tmp_path / "b.jpg"),
        Source(input="itself", path=folder),
        Source(input="by_link", path=link / "c.jpg"),
        Source(input="url", url="http://example.com/a.jpg"),
        Source(input="sibling", path=tmp_path / "dest2" / "d.jpg"),
        Source(input="dotdot", path=folder / ".." / "e.jpg"),
    ]
    kept = classify._outside(sources, folder.resolve())
    assert [s.input for s in kept] == ["out1", "url", "sibling", "dotdot"]
