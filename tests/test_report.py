"""The HTML report: self-contained, escaped, and working in a real headless Chromium."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from resnext_cli.report import CSP, PAGE_SIZE, HtmlReportWriter, make_thumbnail, script_json
from resnext_cli.results import Classified, Failed, Prediction, Record

from .conftest import natural_image

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = (
    os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian: apt-get install -y chromium); .ci/run installs it",
)
NASTY = "<img src=x onerror=\"alert(1)\"> & 'quotes' </script><!--"


class Page(HTMLParser):
    """The parts of a report (or of the DOM Chromium dumped) that the tests look at."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: dict[str, str] = {}
        self.cards: list[dict[str, Any]] = []
        self._script: str | None = None
        self._field: str | None = None
        self._depth = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        classes = (a.get("class") or "").split()
        if tag == "script":
            self._script = a.get("id") or f"inline{len(self.scripts)}"
            self.scripts[self._script] = ""
        if tag == "article" and "card" in classes:
            card = {"classes": classes, "name": "", "dir": "", "labels": [], "error": "", "img": []}
            self.cards.append(card)
        if self.cards and tag == "img":
            self.cards[-1]["img"].append(a.get("src") or "")
        for field in ("name", "dir", "label", "error"):
            if field in classes and self.cards:
                self._field = field
                if field == "label":
                    self.cards[-1]["labels"].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None
        if tag in ("div", "span", "p"):
            self._field = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self.scripts[self._script] += data
        elif self._field == "label":
            self.cards[-1]["labels"][-1] += data
        elif self._field is not None:
            self.cards[-1][self._field] += data

    def attrs(self, tag: str, **match: str) -> dict[str, str | None]:
        found = [
            a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in match.items())
        ]
        assert len(found) == 1, (tag, match, found)
        return found[0]


def write_report(path: Path, records: list[Record], **options: Any) -> HtmlReportWriter:
    writer = HtmlReportWriter(path, **options)
    for record in records:
        writer.write(record)
    writer.close()
    return writer


def browse(page: Path, tmp_path: Path, query: str = "") -> tuple[Page, list[str]]:
    """Load the page from disk in headless Chromium; return the DOM after its script ran."""
    assert CHROMIUM is not None
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    run = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.resolve().as_uri() + query,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    # The records block is megabytes of JSON the DOM checks do not need: skip parsing it.
    dom = Page(re.sub(r"(<script[^>]*>).*?(</script>)", r"\1\2", run.stdout, flags=re.S))
    assert dom.attrs("body").get("data-ready") == "1", run.stdout[-2000:]
    return dom, console


def no_handlers(page: Page) -> None:
    """No element anywhere carries an inline event handler or a non-data image."""
    for tag, attrs in page.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "img":
            assert (attrs.get("src") or "").startswith("data:image/jpeg;base64,"), attrs


# -- without a browser ---------------------------------------------------------------------


def test_script_json_cannot_close_the_block() -> None:
    value = {"label": NASTY, "path": "\udcff odd bytes", "line": "a\u2028b"}
    text = script_json(value)
    assert not set(text) & set("<>&") and text.isascii()
    assert json.loads(text) == value


def test_report_is_self_contained_and_escaped(make_image, tmp_path: Path) -> None:
    photo = make_image("a.jpg", seed=1, size=(160, 120))
    tall = make_image("tall.png", seed=2, size=(64, 150))
    records: list[Record] = [
        Classified(
            "a.jpg",
            "m",
            "w",
            (Prediction(NASTY, 1, 0.75), Prediction("b", 2, 0.25)),
            path=str(photo),
        ),
        Classified(
            "tall.png", "m", "w", (Prediction("b", 2, 0.5),), path=str(tall), uncertain=True
        ),
        Classified("https://example.test/c.jpg", "m", "w", (Prediction("c", 3, 0.9),)),
        Failed(NASTY + ".jpg", "not_an_image", f"'{NASTY}.jpg' is not an image", path="/nope"),
    ]
    target = tmp_path / "report.html"
    writer = HtmlReportWriter(target, title=f"report of {NASTY}", context={"device": "cpu"})
    for record in records:
        writer.write(record)
    assert not target.exists()  # written beside it, put in place when complete
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "report.html", "tall.png"]
    text = target.read_text(encoding="ascii")
    page = Page(text)
    assert page.attrs("meta", **{"http-equiv": "Content-Security-Policy"})["content"] == CSP
    for tag, attrs in page.tags:  # nothing to fetch: no src, href or inline handler at all
        assert not {"src", "href"} & set(attrs) and not any(a.startswith("on") for a in attrs), tag
    assert [t for t, _ in page.tags if t == "script"] == ["script"] * 3
    assert "<img" not in text.replace("<img src=x", "")  # the only <img is none: JS makes them
    assert NASTY not in text and "report of &lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    data = json.loads(page.scripts["records"])
    assert [d["input"] for d in data] == [r.input for r in records]
    assert data[0]["top"] == [[NASTY, 0.75], ["b", 0.25]] and data[0]["uncertain"] is False
    assert data[1]["uncertain"] is True
    assert "thumb" not in data[2] and "thumb" not in data[3]  # a URL, a failure: placeholders
    assert data[3]["error"] == {"type": "not_an_image", "message": f"'{NASTY}.jpg' is not an image"}
    for entry, size in ((data[0], (112, 84)), (data[1], (48, 112))):
        thumb = entry["thumb"]
        assert thumb["src"].startswith("data:image/jpeg;base64,") and len(thumb["src"]) < 8000
        import base64

        image = Image.open(io.BytesIO(base64.b64decode(thumb["src"].split(",", 1)[1])))
        assert (image.format, image.size, (thumb["w"], thumb["h"])) == ("JPEG", size, size)


def test_thumbnail_refuses_bombs_and_non_images(make_image, tmp_path: Path) -> None:
    big = make_image("big.png", seed=3, size=(400, 300))
    assert make_thumbnail(str(big), max_pixels=400 * 300 - 1) is None
    assert make_thumbnail(str(big), size=96)[1:] == (96, 72)  # type: ignore[index]
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff not a jpeg")
    assert make_thumbnail(str(junk)) is None


# -- in Chromium ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thumbnails(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    folder = tmp_path_factory.mktemp("thumbs")
    out = []
    for seed in range(20):
        natural_image(seed, (160, 120)).save(folder / f"{seed}.jpg")
        made = make_thumbnail(str(folder / f"{seed}.jpg"))
        assert made is not None
        out.append(made[0])
    return out


@needs_chromium
def test_report_of_a_real_run_in_chromium(checkpoint, make_image, tmp_path, resnext) -> None:
    folder = tmp_path / "photos"
    names = ["plain.jpg", '<img src=x onerror="alert(1)">.png', "a & b 'c'.jpg", "d.jpg", "e.jpg"]
    for seed, name in enumerate(names):
        make_image(name, seed=seed, size=(96, 80), folder=folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    report = tmp_path / "report.html"
    run = resnext(
        "classify", folder, "--checkpoint", checkpoint, "--report", report,
        "--min-probability", "0.6", "-f", "jsonl",
    )  # fmt: skip
    assert run.code == 1, run
    assert f"report: {report} (6 images)" in run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    ok = [r for r in records if "predictions" in r]
    [failed] = [r for r in records if "error" in r]

    page, console = browse(report, tmp_path)
    assert console == []
    no_handlers(page)
    assert page.attrs("main")["data-total"] == page.attrs("main")["data-matches"] == "6"
    assert [c["dir"] + c["name"] for c in page.cards] == [r["input"] for r in records]
    assert {c["name"] for c in page.cards} == {*names, "broken.jpg"}
    for card, record in zip(page.cards, records, strict=True):
        if "error" in record:
            assert "failed" in card["classes"] and card["img"] == []
            assert card["error"] == record["error"]["message"]
        else:
            assert card["labels"] == [p["label"] for p in record["predictions"]]
            assert ("uncertain" in card["classes"]) == record["uncertain"] and len(card["img"]) == 1

    label, count = Counter(r["predictions"][0]["label"] for r in ok).most_common(1)[0]
    page, console = browse(report, tmp_path, "?label=" + label.replace(" ", "%20"))
    assert console == [] and page.attrs("main")["data-matches"] == str(count)
    assert [c["labels"][0] for c in page.cards] == [label] * count
    page, _ = browse(report, tmp_path, "?show=uncertain&sort=confidence-asc")
    uncertain = sorted(
        (r for r in ok if r["uncertain"]), key=lambda r: r["predictions"][0]["probability"]
    )
    assert [c["dir"] + c["name"] for c in page.cards] == [r["input"] for r in uncertain]
    page, _ = browse(report, tmp_path, "?show=failed")
    assert [c["dir"] + c["name"] for c in page.cards] == [failed["input"]]
    page, _ = browse(report, tmp_path, "?q=ONERROR")
    assert [c["name"] for c in page.cards] == [names[1]]


@needs_chromium
def test_report_of_ten_thousand_images_pages_its_cards(thumbnails, tmp_path) -> None:
    records: list[Record] = []
    for i in range(10_000):
        if i % 1000 == 999:
            records.append(Failed(f"img{i:05}.jpg", "truncated", f"'img{i:05}.jpg' is truncated"))
            continue
        probability = 0.05 + (i % 90) / 100
        top = (Prediction(f"label {i % 40}", i % 40, probability), Prediction("other", 99, 0.01))
        records.append(
            Classified(
                f"img{i:05}.jpg",
                "m",
                "w",
                top,
                thumbnail=thumbnails[i % 20],
                uncertain=probability < 0.2,
            )
        )
    report = tmp_path / "big.html"
    started = time.perf_counter()
    write_report(report, records)
    assert time.perf_counter() - started < 60
    assert report.stat().st_size < 40_000_000  # about 3.5 KB an image, thumbnails included

    page, console = browse(report, tmp_path)
    assert console == []
    assert (page.attrs("main")["data-total"], page.attrs("main")["data-matches"]) == (
        "10000",
        "10000",
    )
    assert len(page.cards) == PAGE_SIZE  # the rest comes as the reader scrolls
    assert "hidden" not in page.attrs("button", id="more")
    assert [c["name"] for c in page.cards] == [f"img{i:05}.jpg" for i in range(PAGE_SIZE)]

    expected = [r for r in records if isinstance(r, Classified) and r.top1.label == "label 7"]
    page, console = browse(report, tmp_path, "?label=label%207&sort=confidence-desc")
    assert console == [] and page.attrs("main")["data-matches"] == str(len(expected)) == "250"
    ranked = sorted(expected, key=lambda r: (-r.top1.probability, r.input))[:PAGE_SIZE]
    assert [c["name"] for c in page.cards] == [r.input for r in ranked]


@needs_chromium
def test_screenshot_tool_makes_a_png(thumbnails, tmp_path) -> None:
    records: list[Record] = [
        Classified(f"{i}.jpg", "m", "w", (Prediction("cat", 1, 0.9),), thumbnail=thumbnails[i])
        for i in range(3)
    ]
    write_report(tmp_path / "r.html", records)
    run = subprocess.run(
        [
            str(ROOT / "tools" / "report_screenshot.sh"),
            str(tmp_path / "r.html"),
            str(tmp_path / "r.png"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={
            **os.environ,
            "WINDOW_SIZE": "800,600",
            **({"CHROMIUM": CHROMIUM} if CHROMIUM else {}),
        },
    )
    assert run.returncode == 0, run.stderr
    png = (tmp_path / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (800, 600)
    assert re.fullmatch(r".*/r\.png\n", run.stdout)
