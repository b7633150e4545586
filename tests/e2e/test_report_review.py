"""The report's review mode, driven in Debian's Chromium through Playwright.

Accept, correct, relabel, skip and undo with the keyboard and the mouse; decisions kept
across a reload and per report; the export compared line by line; strangers' names and
labels never run as script; 10,000 cards answer a key quickly. Without Chromium or
Playwright these tests skip, as the other browser tests do.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops

from resnext_cli.outputs.report import HtmlReportWriter
from resnext_cli.results import Classified, Failed, FileFacts, Prediction, Record
from tests.conftest import CHROMIUM_ARGS
from tests.helpers import CHROMIUM, NASTY, ROOT, Page, write_report

try:
    from playwright.sync_api import Browser, sync_playwright
except ImportError:  # the test extra installs it
    sync_playwright = None  # type: ignore[assignment]

needs_browser = pytest.mark.skipif(
    CHROMIUM is None or sync_playwright is None,
    reason="needs chromium (Debian: apt-get install -y chromium) and playwright "
    "(pip install -e .[test]); .ci/run installs both",
)
LABELS = ["tabby", "tiger cat", "Egyptian cat", "lynx", "Samoyed", "gong"]
PROBABILITIES = (0.5, 0.2, 0.1, 0.05, 0.01)
# A name that would close the records block, open a tag, and split a line in JavaScript.
HOSTILE = '</script><script>document.title="pwned"</script>\u2028<img src=x onerror="pwned=1">'


def top(i: int) -> tuple[Prediction, ...]:
    """Card i's top-5: the labels from LABELS[i] on, most probable first."""
    return tuple(
        Prediction(LABELS[(i + j) % len(LABELS)], (i + j) % len(LABELS), p)
        for j, p in enumerate(PROBABILITIES)
    )


def photo_records(make_image, folder: Path, names: list[str]) -> list[Record]:
    """Records of real image files, with the size and mtime_ns a classify run keeps."""
    records: list[Record] = []
    for i, name in enumerate(names):
        path = make_image(name, seed=i, size=(64, 48), folder=folder)
        st = path.stat()
        records.append(
            Classified(
                f"photos/{name}",
                "m",
                "w",
                top(i),
                path=str(path),
                file=FileFacts(st.st_size, st.st_mtime_ns),
            )
        )
    return records


def expected_line(record: Classified, review: str | None, label: str | None) -> dict[str, Any]:
    """What the export says of one image, written out from the record by hand."""
    line: dict[str, Any] = {"input": record.input}
    if record.path is not None:
        line["path"] = record.path
    if record.file is not None:
        line["size"] = record.file.size
        line["mtime_ns"] = record.file.mtime_ns
    line.update(model_label=record.predictions[0].label, label=label, reviewed=review)
    return line


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert sync_playwright is not None and CHROMIUM is not None
    with sync_playwright() as pw:
        launched = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=list(CHROMIUM_ARGS),
        )
        yield launched
        launched.close()


class Tab:
    """One page in a fresh browser profile, with what it said on its console."""

    def __init__(self, browser: Browser) -> None:
        self.context = browser.new_context(
            accept_downloads=True, viewport={"width": 1280, "height": 900}
        )
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        self.confirm = False
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.problems.append(f"error: {exc}"))
        self.page.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"{message.type}: {message.text}")

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        if dialog.type == "confirm" and self.confirm:
            dialog.accept()
        else:
            dialog.dismiss()

    def settle(self) -> None:
        """Let the page's pending save run before it goes away.

        The page saves once per task, on a zero-delay timer, and again on pagehide. A
        navigation that starts before the timer ran leaves the write to pagehide, which can
        race the next document's first read of the store when Chromium swaps renderer
        processes (seen once in CI, under load): the tests wait for the timer instead.
        """
        if self.page.url.startswith("file:"):
            self.page.evaluate("() => new Promise((r) => setTimeout(() => setTimeout(r, 0), 0))")

    def open(self, report: Path, query: str = "") -> None:
        self.settle()
        self.page.goto(report.resolve().as_uri() + query)
        self.page.wait_for_selector("body[data-ready='1']", state="attached")

    def reload(self) -> None:
        self.settle()
        self.page.reload()
        self.page.wait_for_selector("body[data-ready='1']", state="attached")

    def press(self, *keys: str) -> None:
        for key in keys:
            self.page.keyboard.press(key)

    def cards(self) -> list[dict[str, Any]]:
        """Each shown card: its name, review state, status line and chosen row."""
        return self.page.evaluate(
            """() => Array.from(document.querySelectorAll("article.card")).map((c) => ({
                name: c.querySelector(".name").textContent,
                state: ["accepted", "corrected", "skipped"].filter((k) => c.classList.contains(k)),
                current: c.classList.contains("current"),
                status: c.querySelector(".status") ? c.querySelector(".status").textContent : null,
                chosen: Array.from(c.querySelectorAll(".pred")).map((p, i) =>
                    p.classList.contains("chosen") ? i + 1 : 0).filter((i) => i),
            }))"""
        )

    def text(self, selector: str) -> str:
        return str(self.page.text_content(selector))

    def export(self) -> tuple[str, str]:
        """Click export; the downloaded file's suggested name and text."""
        with self.page.expect_download() as download:
            self.page.click("#export")
        path = download.value.path()
        return download.value.suggested_filename, Path(path).read_text(encoding="utf-8")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    opened = Tab(browser)
    yield opened
    opened.close()


def states(tab: Tab) -> list[tuple[str, str | None, list[int]]]:
    return [(c["state"][0] if c["state"] else "", c["status"], c["chosen"]) for c in tab.cards()]


# -- without a browser ---------------------------------------------------------------------


def review_block(path: Path) -> dict[str, Any]:
    page = Page(path.read_text(encoding="ascii"))
    return dict(json.loads(page.scripts["review"]))


def test_report_embeds_its_identity_labels_and_file_facts(tmp_path: Path) -> None:
    facts = FileFacts(123, 1_733_312_345_123_456_789)  # past 2**53: kept as digits
    records: list[Record] = [
        Classified("a.jpg", "m", "w", top(0), path="/p/a.jpg", file=facts),
        Failed("b.jpg", "truncated", "'b.jpg' is truncated"),
    ]
    one = write_report(
        tmp_path / "one.html", records, labels=[*LABELS, NASTY], categories=["cat", "tabby"]
    )
    block = review_block(one.path)
    assert block["labels"] == [*LABELS, NASTY, "cat"]  # categories after, once each
    data = json.loads(Page(one.path.read_text()).scripts["records"])
    assert data[0]["file"] == ["123", "1733312345123456789"] and "file" not in data[1]
    text = one.path.read_text(encoding="ascii")
    assert NASTY not in text and HOSTILE not in text

    def identity(name: str, recs: list[Record], **options: Any) -> str:
        return str(review_block(write_report(tmp_path / name, recs, **options).path)["id"])

    same = identity("same.html", records, title="another title", thumbnail_size=64)
    relabelled = [Classified("a.jpg", "m", "w", top(1), path="/p/a.jpg", file=facts), records[1]]
    touched = [Classified("a.jpg", "m", "w", top(0), path="/p/a.jpg", file=FileFacts(123, 1))]
    ids = {
        block["id"],
        identity("relabelled.html", relabelled),
        identity("touched.html", [touched[0], records[1]]),
        identity("fewer.html", records[:1]),
    }
    assert same == block["id"] and len(ids) == 4 and len(block["id"]) == 32


def test_a_runs_report_offers_the_models_labels_and_categories(
    checkpoint, make_image, tmp_path: Path, resnext
) -> None:
    make_image("a.jpg", seed=1, size=(64, 48), folder=tmp_path / "photos")
    report = tmp_path / "r.html"
    run = resnext(
        "classify", tmp_path / "photos", "--checkpoint", checkpoint, "--report", report,
        "--categories", "-f", "jsonl",
    )  # fmt: skip
    assert run.code == 0, run
    imagenet = (ROOT / "data" / "imagenet_classes.txt").read_text().splitlines()
    labels = review_block(report)["labels"]
    assert labels[:1000] == imagenet and len(labels) == 1000 + 48
    assert labels[1000:1003] == ["dog", "cat", "wild cat"]
    [record] = run.records()
    data = json.loads(Page(report.read_text()).scripts["records"])
    assert data[0]["file"] == [str(record["size"]), str(record["mtime_ns"])]


# -- in Chromium ---------------------------------------------------------------------------


@needs_browser
def test_review_with_the_keyboard_survives_a_reload_and_exports(
    make_image, tab: Tab, tmp_path: Path, resnext
) -> None:
    names = [f"IMG_{i}.jpg" for i in range(6)]
    records = photo_records(make_image, tmp_path / "photos", names)
    records.insert(2, Failed("photos/broken.jpg", "not_an_image", "'broken.jpg' is not an image"))
    report = tmp_path / "holiday.html"
    write_report(report, records, labels=LABELS)
    ok = [r for r in records if isinstance(r, Classified)]

    tab.open(report)
    assert tab.text("#progress") == "0 of 6 reviewed, 0 changed"
    assert "a accept" in tab.text("#help") and "u undo" in tab.text("#help")
    assert [c["current"] for c in tab.cards()] == [True] + [False] * 6
    tab.press("a")  # IMG_0: the top-1 is right
    tab.press("2")  # IMG_1: the second label
    # the failed card is passed over by j: it cannot be reviewed, and keys leave it alone
    assert [c["current"] for c in tab.cards()][2:4] == [True, False]
    tab.press("a", "j", "s")  # nothing happens on the failed card; IMG_2 skipped
    tab.press("/")
    assert (
        tab.page.is_visible("#relabel")
        and tab.page.evaluate("document.activeElement.id") == "relabel-input"
    )
    tab.page.keyboard.type("snow leopard")
    tab.press("Enter")  # IMG_3: a label that is none of its top-5
    tab.press("/")
    tab.page.keyboard.type(top(4)[2].label)
    tab.press("Enter")  # IMG_4: its third label, typed
    tab.press("/", "x", "Escape")  # IMG_5: opened and left, nothing decided
    assert not tab.page.is_visible("#relabel")
    assert tab.text("#progress") == "5 of 6 reviewed, 3 changed"
    tab.press("u")  # IMG_4's decision goes, and it is current again
    assert tab.text("#progress") == "4 of 6 reviewed, 2 changed"
    assert [c["current"] for c in tab.cards()] == [False] * 5 + [True, False]
    tab.press("k", "ArrowRight", "ArrowRight", "ArrowLeft", "ArrowUp", "ArrowDown", "j", "k")
    assert [c["current"] for c in tab.cards()] == [False] * 5 + [True, False]
    tab.press("1")  # IMG_4: 1 is the top-1: accepted
    tab.press("5")  # IMG_5: the fifth
    expected = [
        ("accepted", "\u2713 accepted", [1]),
        ("corrected", "\u2192 " + top(1)[1].label, [2]),
        ("", None, []),  # the failed card has no review controls
        ("skipped", "skipped", []),
        ("corrected", "\u2192 snow leopard", []),
        ("accepted", "\u2713 accepted", [1]),
        ("corrected", "\u2192 " + top(5)[4].label, [5]),
    ]
    assert states(tab) == expected
    assert tab.text("#progress") == "6 of 6 reviewed, 3 changed"

    tab.reload()
    assert states(tab) == expected and tab.text("#progress") == "6 of 6 reviewed, 3 changed"
    name, text = tab.export()
    assert name == "holiday.reviewed.jsonl"
    reviews = [
        ("accepted", top(0)[0].label),
        ("corrected", top(1)[1].label),
        ("skipped", None),
        ("corrected", "snow leopard"),
        ("accepted", top(4)[0].label),
        ("corrected", top(5)[4].label),
    ]
    assert [json.loads(line) for line in text.splitlines()] == [
        expected_line(r, review, label) for r, (review, label) in zip(ok, reviews, strict=True)
    ]
    # whole numbers as they were: a nanosecond mtime is past what a double holds exactly
    for record, line in zip(ok, text.splitlines(), strict=True):
        assert record.file is not None and f'"mtime_ns":{record.file.mtime_ns},' in line
    assert text.endswith("}\n") and tab.problems == [] and tab.dialogs == []

    # The download sorts: by the person's labels, the skipped one apart.
    download = tmp_path / name
    download.write_text(text, encoding="utf-8")
    run = resnext("sort", "--from", download, tmp_path / "sorted")
    assert run.code == 0, run
    filed = sorted(
        str(p.relative_to(tmp_path / "sorted")) for p in (tmp_path / "sorted").rglob("*.jpg")
    )
    assert filed == sorted(
        f"{label if label else '_skipped'}/{r.input.split('/')[-1]}"
        for r, (_, label) in zip(ok, reviews, strict=True)
    )


@needs_browser
def test_review_with_the_mouse_and_undo(tab: Tab, tmp_path: Path) -> None:
    records: list[Record] = [
        Classified(f"{i}.jpg", "m", "w", top(i), path=f"/photos/{i}.jpg") for i in range(5)
    ]
    report = tmp_path / "r.html"
    write_report(report, records)
    tab.open(report)
    card = "article.card:nth-of-type({}) "
    tab.page.click(card.format(3) + "button[data-act=accept]")
    tab.page.click(card.format(1) + "li.pred:nth-child(3) .label")
    tab.page.click(card.format(2) + "button[data-act=skip]")
    tab.page.click(card.format(4) + "button[data-act=relabel]")
    assert tab.text("#relabel-name") == "3.jpg"
    tab.page.fill("#relabel-input", "  a new class  ")
    tab.page.click("#relabel-ok")
    tab.page.click(card.format(5) + "li.pred:nth-child(1) .pct")  # anywhere on the row
    assert states(tab) == [
        ("corrected", "\u2192 " + top(0)[2].label, [3]),
        ("skipped", "skipped", []),
        ("accepted", "\u2713 accepted", [1]),
        ("corrected", "\u2192 a new class", []),
        ("accepted", "\u2713 accepted", [1]),
    ]
    tab.page.click("#undo")
    tab.page.click("#undo")
    tab.page.click(card.format(1) + "button[data-act=relabel]")
    tab.page.click("#relabel-cancel")
    tab.page.click(card.format(5) + "button[data-act=relabel]")
    tab.page.fill("#relabel-input", "CAT")  # tiger cat, Egyptian cat: both suggested
    tab.page.click("#suggestions li:nth-child(2)")
    assert states(tab)[4] == ("corrected", "\u2192 Egyptian cat", [5])
    tab.page.click("#undo")
    tab.page.click(card.format(1) + ".name")
    assert [s[0] for s in states(tab)] == ["corrected", "skipped", "accepted", "", ""]
    assert [c["current"] for c in tab.cards()] == [True, False, False, False, False]
    _, text = tab.export()
    assert [json.loads(line) for line in text.splitlines()] == [
        expected_line(records[0], "corrected", top(0)[2].label),  # type: ignore[arg-type]
        expected_line(records[1], "skipped", None),  # type: ignore[arg-type]
        expected_line(records[2], "accepted", top(2)[0].label),  # type: ignore[arg-type]
        expected_line(records[3], None, None),  # type: ignore[arg-type]
        expected_line(records[4], None, None),  # type: ignore[arg-type]
    ]
    # Turned off, the page is the read-only gallery: no controls, keys and clicks do nothing.
    tab.page.click("#review-mode")
    tab.page.click(card.format(4) + ".name")
    tab.press("a", "s")
    assert not tab.page.is_visible(card.format(4) + "button[data-act=accept]")
    assert not tab.page.is_visible("#help") and not tab.page.is_visible("#export")
    assert [s[0] for s in states(tab)] == ["corrected", "skipped", "accepted", "", ""]
    assert tab.problems == []


@needs_browser
def test_filters_clear_and_two_reports_never_mix(tab: Tab, tmp_path: Path) -> None:
    records: list[Record] = [
        Classified(f"{i}.jpg", "m", "w", top(i), path=f"/photos/{i}.jpg") for i in range(8)
    ]
    first, second = tmp_path / "first.html", tmp_path / "second.html"
    write_report(first, records)
    write_report(second, records[:7])  # the same images bar one: another report
    tab.open(first)
    tab.press("a", "2", "s", "j", "3", "/")
    tab.page.keyboard.type("GON")  # the suggestions: 'gong' (its top-1), then down to it
    assert tab.text("#suggestions") == "gong"
    tab.press("ArrowDown", "ArrowDown", "ArrowUp", "ArrowUp", "ArrowDown", "Enter")
    assert tab.text("#progress") == "5 of 8 reviewed, 2 changed"
    tab.page.select_option("#filter", ":unreviewed")
    assert tab.page.get_attribute("main", "data-matches") == "3"
    assert [c["name"] for c in tab.cards()] == ["3.jpg", "6.jpg", "7.jpg"]
    tab.page.select_option("#filter", ":changed")
    assert [c["name"] for c in tab.cards()] == ["1.jpg", "4.jpg"]
    tab.open(first, "?show=unreviewed&sort=name")
    assert [c["name"] for c in tab.cards()] == ["3.jpg", "6.jpg", "7.jpg"]

    tab.open(second)
    assert tab.text("#progress") == "0 of 7 reviewed, 0 changed" and states(tab)[0][0] == ""
    tab.press("s")
    tab.open(first)
    assert tab.text("#progress") == "5 of 8 reviewed, 2 changed"
    tab.page.click("#clear")  # asked, and not confirmed: nothing changes
    assert tab.dialogs == ["confirm: Clear your 5 decisions on this report?"]
    assert tab.text("#progress") == "5 of 8 reviewed, 2 changed"
    tab.confirm = True
    tab.page.click("#clear")
    assert tab.text("#progress") == "0 of 8 reviewed, 0 changed"
    assert {s[0] for s in states(tab)} == {""}
    tab.reload()
    assert tab.text("#progress") == "0 of 8 reviewed, 0 changed"
    tab.open(second)
    assert tab.text("#progress") == "1 of 7 reviewed, 0 changed"  # its own, untouched
    assert tab.problems == []


@needs_browser
def test_hostile_names_labels_and_storage_never_run(tab: Tab, tmp_path: Path) -> None:
    records: list[Record] = [
        Classified(
            f"dir/{HOSTILE}.jpg",
            "m",
            "w",
            (Prediction(HOSTILE, 1, 0.6), Prediction(NASTY, 2, 0.3)),
            path=f"/photos/{HOSTILE}.jpg",
            file=FileFacts(7, 9),
        ),
        Classified("plain.jpg", "m", "w", top(0), path="/photos/plain.jpg"),
        Classified("lone\udcff.jpg", "m", "w", top(1), path="/photos/lone\udcff.jpg"),
    ]
    report = tmp_path / "r.html"
    write_report(report, records, labels=[HOSTILE, NASTY])
    tab.open(report)
    tab.press("2")  # the hostile card: its second (also hostile) label
    tab.press("/")
    tab.page.keyboard.type(NASTY + "\u2029x")
    tab.press("Enter")
    tab.press("a")
    assert [c["name"] for c in tab.cards()][:2] == [HOSTILE.rsplit("/", 1)[1] + ".jpg", "plain.jpg"]
    assert states(tab)[:2] == [
        ("corrected", "\u2192 " + NASTY, [2]),
        ("corrected", "\u2192 " + NASTY + "\u2029x", []),
    ]
    tab.press("k", "/")  # the box holds the label chosen before: emptied, it offers all
    tab.page.fill("#relabel-input", "")
    offered = tab.page.eval_on_selector_all("#suggestions li", "ls => ls.map(l => l.textContent)")
    assert offered[:2] == [HOSTILE, NASTY]
    tab.press("Escape")
    _, text = tab.export()
    lines = text.splitlines()  # U+2028 and U+2029 would split a line here: they are escaped
    assert len(lines) == 3 and "\u2028" not in text and "\u2029" not in text
    assert [json.loads(line) for line in lines] == [
        expected_line(records[0], "corrected", NASTY),  # type: ignore[arg-type]
        expected_line(records[1], "corrected", NASTY + "\u2029x"),  # type: ignore[arg-type]
        expected_line(records[2], "accepted", top(1)[0].label),  # type: ignore[arg-type]
    ]

    # What sits in the browser's storage is data too: odd entries are dropped, text is text,
    # and a decision's kind follows from its label (the top-1 is accepted whatever it says).
    key = "resnext-review:" + review_block(report)["id"]
    junk = {
        "v": 1,
        "d": {
            "0": ["c", HOSTILE],
            "1": ["x", "y"],
            "2": ["s", "not null"],
            "7": ["a", "out of range"],
            "__proto__": ["a", "z"],
        },
    }
    # Planted by the reloaded page itself, before its own script runs: a write made by the
    # page before the reload reaches the next one through the browser's storage process,
    # which under load answered the new page before the write arrived (one CI run).
    plant = f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(junk))})"
    tab.context.add_init_script(script=plant)
    tab.reload()
    stored = tab.page.evaluate("k => localStorage.getItem(k)", key)
    assert json.loads(stored) == junk, stored
    assert states(tab) == [("accepted", "\u2713 accepted", [1]), ("", "", []), ("", "", [])]
    assert tab.text("#progress") == "1 of 3 reviewed, 0 changed"
    assert tab.page.evaluate("typeof window.pwned") == "undefined"
    assert tab.page.title() == "resnext report"
    assert tab.problems == [] and tab.dialogs == []


@needs_browser
@pytest.mark.slow
def test_ten_thousand_cards_answer_a_key_quickly_and_export_all(tab: Tab, tmp_path: Path) -> None:
    records: list[Record] = []
    for i in range(10_000):
        if i % 1000 == 999:
            records.append(Failed(f"img{i:05}.jpg", "truncated", f"'img{i:05}.jpg' is truncated"))
            continue
        records.append(
            Classified(
                f"img{i:05}.jpg",
                "m",
                "w",
                top(i),
                path=f"/photos/img{i:05}.jpg",
                file=FileFacts(1000 + i, 1_733_312_345_000_000_000 + i),
            )
        )
    report = tmp_path / "big.html"
    writer = HtmlReportWriter(report, labels=LABELS)
    for record in records:
        writer.write(record)
    writer.close()
    tab.open(report)
    # every card in the page, the worst case for a repaint
    tab.page.evaluate(
        "() => { const m = document.getElementById('more'); while (!m.hidden) m.click(); }"
    )
    assert tab.page.eval_on_selector_all("article.card", "cs => cs.length") == 10_000
    # Keystroke to repaint: the key's handler, then the next frame.
    times = tab.page.evaluate(
        """async (n) => {
            const keys = ["a", "j", "2", "k", "s", "u", "ArrowRight"];
            const out = [];
            for (let i = 0; i < n; i += 1) {
                const t0 = performance.now();
                document.dispatchEvent(new KeyboardEvent("keydown", {key: keys[i % keys.length]}));
                await new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));
                out.push(performance.now() - t0);
            }
            return out;
        }""",
        70,
    )
    assert statistics.median(times) < 100, sorted(times)
    assert tab.text("#progress") != "0 of 9,990 reviewed, 0 changed"  # the keys did decide
    tab.confirm = True
    tab.page.click("#clear")
    tab.reload()
    assert tab.text("#progress") == "0 of 9,990 reviewed, 0 changed"

    # Every card decided by key, in one go: a, 2, s, relabel, or left alone (j).
    tab.page.evaluate(
        """() => {
            const input = document.getElementById("relabel-input");
            const key = (k, target) => (target || document).dispatchEvent(
                new KeyboardEvent("keydown", {key: k, bubbles: true}));
            // (the failed cards, every 1000th from 999, fall on j: 999 % 5 is 4)
            for (let i = 0; i < 10000; i += 1) {
                const order = Number(document.body.dataset.current);
                const what = order % 5;
                if (what === 3) {
                    key("/");
                    input.value = "relabelled " + order;
                    key("Enter", input);
                } else {
                    key(["a", "2", "s", "", "j"][what]);
                }
            }
        }"""
    )
    name, text = tab.export()
    assert name == "big.reviewed.jsonl"
    expected = []
    for record in records:
        if not isinstance(record, Classified):
            continue
        n = int(record.input[3:8])
        review, label = [
            ("accepted", record.predictions[0].label),
            ("corrected", record.predictions[1].label),
            ("skipped", None),
            ("corrected", f"relabelled {n}"),
            (None, None),
        ][n % 5]
        expected.append(expected_line(record, review, label))
    got = [json.loads(line) for line in text.splitlines()]
    assert len(got) == 9_990 and got == expected
    assert tab.problems == []


@needs_browser
@pytest.mark.slow
def test_screenshot_tool_presses_review_keys(tmp_path: Path) -> None:
    records: list[Record] = [
        Classified(f"{i}.jpg", "m", "w", top(i), path=f"/photos/{i}.jpg") for i in range(6)
    ]
    write_report(tmp_path / "r.html", records)

    def differ(a: Image.Image, b: Image.Image) -> int:
        """Pixels that differ by more than antialiasing does between two runs."""
        diff = ImageChops.difference(a.convert("L"), b.convert("L"))
        return int(sum(diff.point(lambda v: 255 if v > 16 else 0).histogram()[255:]))

    def shot(keys: str) -> Image.Image:
        out = tmp_path / f"{len(os.listdir(tmp_path))}.png"
        run = subprocess.run(
            [str(ROOT / "tools" / "report_screenshot.sh"), str(tmp_path / "r.html"), str(out)],
            capture_output=True,
            text=True,
            timeout=180,
            env={
                **os.environ,
                "WINDOW_SIZE": "900,600",
                "REVIEW_KEYS": keys,
                "CHROMIUM": str(CHROMIUM),
            },
        )
        assert run.returncode == 0 and run.stdout == f"{out}\n", run.stderr
        image = Image.open(io.BytesIO(out.read_bytes()))
        assert image.size == (900, 600)
        return image.convert("RGB")

    still = shot("j k")  # moved and back: the page as it opened
    assert differ(shot("a / type:new%20class Enter"), still) > 1000  # two cards decided
    assert differ(shot("s u"), still) == 0  # skipped, undone
