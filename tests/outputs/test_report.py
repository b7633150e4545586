"""The HTML report: self-contained, escaped, and working in a real headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import EpsImagePlugin, Image

from resnext_cli.outputs import report as report_module
from resnext_cli.outputs.report import (
    PAGE_SIZE,
    HtmlReportWriter,
    content_security_policy,
    make_thumbnail,
    script_json,
)
from resnext_cli.results import (
    CategoryScore,
    Classified,
    Failed,
    FileFacts,
    Prediction,
    Record,
)
from tests.conftest import CHROMIUM_ARGS, natural_image
from tests.helpers import CHROMIUM, NASTY, ROOT, Page, write_report

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian: apt-get install -y chromium); .ci/run installs it",
)


PACKAGE = ROOT / "src" / "resnext_cli" / "outputs"


EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 16 16
%%EndComments
newpath 0 0 moveto 16 16 lineto stroke
showpage
%%EOF
"""


@dataclass(frozen=True)
class WithCategories(Classified):
    """A record of a run with categories: its JSON has them as results.py will write them."""

    cats: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["categories"] = [{"name": n, "probability": p} for n, p in self.cats]
        return out


def browse(page: Path, tmp_path: Path, query: str = "") -> tuple[Page, list[str]]:
    """Load the page from disk in headless Chromium; return the DOM after its script ran."""
    assert CHROMIUM is not None
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    run = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            *CHROMIUM_ARGS,
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
    csp = page.attrs("meta", **{"http-equiv": "Content-Security-Policy"})["content"]
    assert csp == content_security_policy()
    for tag, attrs in page.tags:  # nothing to fetch: no src, href or inline handler at all
        assert not {"src", "href"} & set(attrs) and not any(a.startswith("on") for a in attrs), tag
    assert [t for t, _ in page.tags if t == "script"] == ["script"] * 4
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
        image = Image.open(io.BytesIO(base64.b64decode(thumb["src"].split(",", 1)[1])))
        assert (image.format, image.size, (thumb["w"], thumb["h"])) == ("JPEG", size, size)


def sha256_source(data: bytes) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(data).digest()).decode() + "'"


def test_script_and_style_are_the_package_files_allowed_by_hash(tmp_path: Path) -> None:
    js, css = (PACKAGE / "report.js").read_bytes(), (PACKAGE / "report.css").read_bytes()
    raw = write_report(tmp_path / "r.html", []).path.read_bytes()
    assert raw.count(b"<script>") == 1 and b"<script>" + js + b"</script>" in raw
    assert raw.count(b"<style>") == 1 and b"<style>" + css + b"</style>" in raw
    content = Page(raw.decode("ascii")).attrs("meta", **{"http-equiv": "Content-Security-Policy"})
    policy = {
        directive.split()[0]: directive.split()[1:]
        for directive in (content["content"] or "").split(";")
    }
    assert policy == {
        "default-src": ["'none'"],
        "img-src": ["data:"],
        "style-src": [sha256_source(css)],
        "script-src": [sha256_source(js)],
        "base-uri": ["'none'"],
        "form-action": ["'none'"],
    }


@pytest.mark.slow
def test_wheel_ships_the_script_and_style(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip, "-w", str(tmp_path), str(ROOT)], check=True)
    [wheel] = tmp_path.glob("resnext_cli-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for name in ("report.js", "report.css"):
            assert zf.read(f"resnext_cli/outputs/{name}") == (PACKAGE / name).read_bytes()


def test_thumbnail_refuses_bombs_and_non_images(make_image, tmp_path: Path) -> None:
    big = make_image("big.png", seed=3, size=(400, 300))
    assert make_thumbnail(str(big), max_pixels=400 * 300 - 1) is None
    assert make_thumbnail(str(big), size=96)[1:] == (96, 72)  # type: ignore[index]
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff not a jpeg")
    assert make_thumbnail(str(junk)) is None
    assert make_thumbnail(str(tmp_path / "missing.jpg")) is None


def test_thumbnail_never_opens_a_refused_format(tmp_path: Path, monkeypatch) -> None:
    eps = tmp_path / "drawing.jpg"
    eps.write_bytes(EPS)
    with Image.open(eps) as opened:  # Pillow alone would take it, and run Ghostscript on load
        assert opened.format == "EPS"
    ran: list[object] = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a))
    assert make_thumbnail(str(eps)) is None and ran == []


def test_thumbnail_is_upright_and_transparency_is_white(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    natural_image(1, (160, 120)).save(tmp_path / "turned.jpg", exif=exif.tobytes())
    clear = Image.new("RGBA", (224, 112), (0, 0, 0, 0))  # black, but fully transparent
    clear.save(tmp_path / "clear.png")
    turned = make_thumbnail(str(tmp_path / "turned.jpg"))
    assert turned is not None and turned[1:] == (84, 112)
    made = make_thumbnail(str(tmp_path / "clear.png"))
    assert made is not None and made[1:] == (112, 56)
    extrema = Image.open(io.BytesIO(made[0])).convert("RGB").getextrema()
    assert all(low >= 250 for low, _ in extrema), extrema


def test_truncated_thumbnail_follows_the_run(make_image, tmp_path: Path) -> None:
    whole = make_image("whole.jpg", seed=4, size=(160, 120)).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 2])
    assert make_thumbnail(str(cut)) is None
    kept = make_thumbnail(str(cut), allow_truncated=True)
    assert kept is not None and kept[1:] == (112, 84)


def test_cards_of_refused_files_have_no_image(make_image, tmp_path: Path) -> None:
    small = make_image("small.png", seed=5, size=(50, 40))
    big = make_image("big.png", seed=6, size=(200, 100))
    eps = tmp_path / "drawing.eps"
    eps.write_bytes(EPS)
    records: list[Record] = [
        Classified(p.name, "m", "w", (Prediction("x", 1, 0.5),), path=str(p))
        for p in (small, big, eps)
    ]
    page = Page(write_report(tmp_path / "r.html", records, max_pixels=50 * 40).path.read_text())
    data = json.loads(page.scripts["records"])
    assert [d["input"] for d in data if "thumb" in d] == ["small.png"]
    assert data[0]["thumb"]["w"] == 50 and data[0]["thumb"]["h"] == 40


# -- in Chromium ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thumbnails(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[bytes, int, int]]:
    folder = tmp_path_factory.mktemp("thumbs")
    out = []
    for seed in range(20):
        natural_image(seed, (160, 120)).save(folder / f"{seed}.jpg")
        made = make_thumbnail(str(folder / f"{seed}.jpg"))
        assert made is not None
        out.append(made)
    return out


@pytest.fixture
def fake_thumbnails(thumbnails, monkeypatch) -> None:
    """Thumbnails without files: a record's path 'thumb/N' gets the Nth of 20 made once."""
    monkeypatch.setattr(
        report_module,
        "make_thumbnail",
        lambda path, **options: thumbnails[int(path.removeprefix("thumb/")) % 20],
    )


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
    # no categories in this run: the page has no trace of them
    assert "hidden" in page.attrs("label", id="category-control")
    assert "category" not in [a.get("value") for t, a in page.tags if t == "option"]
    assert [c["categories"] for c in page.cards] == [None] * 6 and page.groups == []
    assert re.search(r"\bcpu, (fp32|bf16|fp16)\b", page.text["stats"]), page.text["stats"]
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
def test_report_of_ten_thousand_images_pages_its_cards(fake_thumbnails, tmp_path) -> None:
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
                path=f"thumb/{i}",
                uncertain=probability < 0.2,
            )
        )
    report = tmp_path / "big.html"
    write_report(report, records)
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
    assert all(len(c["img"]) == (i % 1000 != 999) for i, c in enumerate(page.cards))

    expected = [r for r in records if isinstance(r, Classified) and r.top1.label == "label 7"]
    page, console = browse(report, tmp_path, "?label=label%207&sort=confidence-desc")
    assert console == [] and page.attrs("main")["data-matches"] == str(len(expected)) == "250"
    ranked = sorted(expected, key=lambda r: (-r.top1.probability, r.input))[:PAGE_SIZE]
    assert [c["name"] for c in page.cards] == [r.input for r in ranked]


@needs_chromium
def test_screenshot_tool_makes_a_png(fake_thumbnails, tmp_path) -> None:
    records: list[Record] = [
        Classified(f"{i}.jpg", "m", "w", (Prediction("cat", 1, 0.9),), path=f"thumb/{i}")
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


@needs_chromium
def test_categories_filter_group_and_search_in_chromium(fake_thumbnails, tmp_path) -> None:
    # (name, top label, its probability, categories best first)
    rows = [
        ("a.jpg", "Samoyed", 0.45, (("dog", 0.92), ("cat", 0.05))),
        ("b.jpg", "tabby", 0.70, (("cat", 0.81), ("dog", 0.10))),
        ("c.jpg", "Pomeranian", 0.30, (("dog", 0.61), ("toy", 0.20))),
        ("d.jpg", "gong", 0.50, (("musical instrument", 0.55),)),
        ("e.jpg", "Samoyed", 0.66, (("dog", 0.97),)),
        ("f.jpg", "Egyptian cat", 0.40, (("cat", 0.90),)),
        ("g.jpg", "keeshond", 0.20, ((NASTY, 0.44), ("dog", 0.40))),
    ]
    records: list[Record] = [
        WithCategories(name, "m", "w", (Prediction(label, 1, p),), path=f"thumb/{i}", cats=cats)
        for i, (name, label, p, cats) in enumerate(rows)
    ]
    records.insert(3, Failed("x.jpg", "truncated", "'x.jpg' is truncated"))
    report = tmp_path / "cats.html"
    write_report(report, records, context={"device": "cpu, bf16"})

    page, console = browse(report, tmp_path)
    assert console == []
    no_handlers(page)
    assert "hidden" not in page.attrs("label", id="category-control")
    assert "device: cpu, bf16" in page.text["stats"].split(" \u00b7 ")
    assert [c["category"] for c in page.cards] == [
        "dog", "cat", "dog", "", "musical instrument", "dog", "cat", NASTY,
    ]  # fmt: skip
    assert page.cards[0]["categories"] == "dog 92.0%, cat 5.0%"
    options = [a.get("value") for t, a in page.tags if t == "option"]
    assert options[:5] == ["", "=dog", "=cat", f"={NASTY}", "=musical instrument"]
    assert "category" in options

    page, console = browse(report, tmp_path, "?category=dog")
    assert console == [] and page.attrs("main")["data-matches"] == "3"
    assert [c["name"] for c in page.cards] == ["a.jpg", "c.jpg", "e.jpg"]
    page, _ = browse(report, tmp_path, "?category=dog&label=Samoyed&sort=confidence-asc")
    assert [c["name"] for c in page.cards] == ["a.jpg", "e.jpg"]
    page, _ = browse(report, tmp_path, "?category=" + NASTY.replace("&", "%26").replace(" ", "%20"))
    assert [c["name"] for c in page.cards] == ["g.jpg"]
    page, _ = browse(report, tmp_path, "?category=bird")
    assert page.attrs("main")["data-matches"] == "0" and page.cards == []
    page, _ = browse(report, tmp_path, "?q=INSTRUMENT")
    assert [c["name"] for c in page.cards] == ["d.jpg"]

    # grouped: biggest category first (ties by name), most probable first within it
    page, _ = browse(report, tmp_path, "?sort=category")
    assert page.groups == [
        "dog (3)", "cat (2)", f"{NASTY} (1)", "musical instrument (1)", "failed (1)",
    ]  # fmt: skip
    assert [c["name"] for c in page.cards] == [
        "e.jpg", "a.jpg", "c.jpg", "f.jpg", "b.jpg", "g.jpg", "d.jpg", "x.jpg",
    ]  # fmt: skip
    assert sum(len(c["img"]) for c in page.cards) == 7


def test_thumbnails_hold_a_share_of_one_memory_budget(make_image, tmp_path: Path) -> None:
    import threading

    from resnext_cli.imaging.budget import MemoryBudget
    from resnext_cli.outputs.report import make_thumbnail

    big = make_image("big.png", seed=3, size=(1200, 1000))
    jpeg = make_image("big.jpg", seed=3, size=(1600, 1200))
    whole = 1200 * 1000 * 8  # decoded whole (Pillow keeps RGB at 4 bytes), then a copy
    budget = MemoryBudget(whole)
    assert make_thumbnail(str(big), budget=budget) is not None
    assert budget.used == 0 and budget.peak == whole
    reduced = MemoryBudget(whole)
    assert make_thumbnail(str(jpeg), budget=reduced) is not None
    assert reduced.peak == 400 * 300 * 8  # decoded at 1/4: still 2 x 112 a side
    small = MemoryBudget(whole - 1)  # the image alone needs more: it waits, then runs alone
    assert make_thumbnail(str(big), budget=small) is not None
    assert small.peak == whole - 1 and small.used == 0
    # Threads wait their turn: never more held than the budget.
    shared = MemoryBudget(whole + 10)
    threads = [
        threading.Thread(target=make_thumbnail, args=(str(big),), kwargs={"budget": shared})
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert shared.peak == whole and shared.used == 0


# -- the page's data, byte for byte --------------------------------------------------------

# What report.js reads from each record: input, path, file ([size, mtime_ns] as strings),
# thumb ({src, w, h}), top, uncertain, cats, error; and from the review block: id, labels.


def spec_script_json(value: object) -> str:
    """The documented serialisation of a script block: compact, ASCII, <>& as JSON escapes."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text


def spec_review_id(entries: list[dict[str, Any]]) -> str:
    """sha256 over each entry's script-JSON line (no thumbnail), first 32 hex digits."""
    digest = hashlib.sha256()
    for entry in entries:
        line = {k: v for k, v in entry.items() if k != "thumb"}
        digest.update(spec_script_json(line).encode("ascii") + b"\n")
    return digest.hexdigest()[:32]


def report_data(path: Path) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """The raw page, its records and its review block."""
    text = path.read_text(encoding="ascii")
    page = Page(text)
    return text, json.loads(page.scripts["records"]), json.loads(page.scripts["review"])


def jpeg_of(thumb: dict[str, Any]) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert thumb["src"].startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(thumb["src"][len(prefix) :], validate=True)))
    assert image.format == "JPEG"
    return image


def test_script_json_is_compact_ascii_with_lowercase_escapes() -> None:
    value = {"a": [1, "<b> & caf\u00e9"], "c": None}
    assert script_json(value) == '{"a":[1,"\\u003cb\\u003e \\u0026 caf\\u00e9"],"c":null}'
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError):
            script_json({"p": bad})


def test_records_and_review_are_what_the_page_reads(make_image, tmp_path: Path) -> None:
    photo = make_image("caf\u00e9.png", seed=7, size=(160, 120))
    mtime_ns = 1_700_000_000_123_456_789  # past 2**53: only a string keeps it exact
    os.utime(photo, ns=(mtime_ns, mtime_ns))
    size = os.stat(photo).st_size
    records: list[Record] = [
        Classified(
            "caf\u00e9.png",
            "m",
            "w",
            (Prediction("caf\u00e9 <&>", 3, 0.75), Prediction("b", 2, 0.25)),
            path=str(photo),
            file=FileFacts(os.stat(photo).st_size, os.stat(photo).st_mtime_ns),
            categories=(CategoryScore("dog <&>", 0.875), CategoryScore("cat", 0.125)),
        ),
        Classified(
            "https://example.test/c.jpg", "m", "w", (Prediction("c", 3, 0.5),), uncertain=True
        ),
        Failed("gone.jpg", "not_an_image", "'gone.jpg' is not an image", path="/x/gone.jpg",
               file=FileFacts(5, 6)),
    ]  # fmt: skip
    target = tmp_path / "report.html"
    write_report(target, records, labels=["b", "a", "b"], categories=["dog <&>", "a"])
    text, data, review = report_data(target)
    expected: list[dict[str, Any]] = [
        {
            "input": "caf\u00e9.png",
            "path": str(photo),
            "file": [str(size), "1700000000123456789"],
            "top": [["caf\u00e9 <&>", 0.75], ["b", 0.25]],
            "uncertain": False,
            "cats": [["dog <&>", 0.875], ["cat", 0.125]],
        },
        {"input": "https://example.test/c.jpg", "path": None, "top": [["c", 0.5]],
         "uncertain": True},
        {
            "input": "gone.jpg",
            "path": "/x/gone.jpg",
            "file": ["5", "6"],
            "error": {"type": "not_an_image", "message": "'gone.jpg' is not an image"},
        },
    ]  # fmt: skip
    thumb = data[0].pop("thumb")
    assert data == expected
    assert sorted(thumb) == ["h", "src", "w"] and (thumb["w"], thumb["h"]) == (112, 84)
    assert jpeg_of(thumb).size == (112, 84)
    assert review == {"id": spec_review_id(expected), "labels": ["b", "a", "dog <&>"]}
    assert len(review["id"]) == 32
    # Non-ASCII goes into the JSON as \u escapes (a character reference would stay literal
    # inside a script), '<' '>' '&' as lowercase JSON escapes; the page is pure ASCII.
    assert "caf\\u00e9 \\u003c\\u0026\\u003e" in text and "&#233;" not in text
    # Which is exactly the text the review id hashes (the thumbnail left out).
    lines = [spec_script_json(e) for e in expected]
    assert lines[1] in text and lines[2] in text


def test_review_id_follows_the_records_not_the_thumbnails(make_image, tmp_path: Path) -> None:
    photo = make_image("a.png", seed=8, size=(160, 120))

    def records(probability: float) -> list[Record]:
        return [
            Classified("a.png", "m", "w", (Prediction("x", 1, probability),), path=str(photo)),
            Failed("b.jpg", "truncated", "'b.jpg' is truncated"),
        ]

    small = report_data(write_report(tmp_path / "s.html", records(0.5), thumbnail_size=64).path)
    large = report_data(write_report(tmp_path / "l.html", records(0.5)).path)
    other = report_data(write_report(tmp_path / "o.html", records(0.625)).path)
    assert (small[1][0]["thumb"]["w"], small[1][0]["thumb"]["h"]) == (64, 48)
    assert jpeg_of(small[1][0]["thumb"]).size == (64, 48)
    assert jpeg_of(large[1][0]["thumb"]).size == (112, 84)
    entries = [
        {"input": "a.png", "path": str(photo), "top": [["x", 0.5]], "uncertain": False},
        {"input": "b.jpg", "path": None,
         "error": {"type": "truncated", "message": "'b.jpg' is truncated"}},
    ]  # fmt: skip
    assert small[2]["id"] == large[2]["id"] == spec_review_id(entries)
    entries[0]["top"] = [["x", 0.625]]
    assert other[2]["id"] == spec_review_id(entries) != large[2]["id"]
    assert small[2]["labels"] == large[2]["labels"] == []


def test_thumbnail_is_pillows_bicubic_thumbnail_at_quality_72(make_image, tmp_path: Path) -> None:
    # A PNG (no JPEG draft scaling) big enough for reducing_gap=2.0 to reduce it first.
    big = make_image("big.png", seed=9, size=(900, 600))
    made = make_thumbnail(str(big))
    assert made is not None
    with Image.open(big) as opened:
        own = opened.convert("RGB")
    own.thumbnail((112, 112), Image.Resampling.BICUBIC, reducing_gap=2.0)
    assert max(own.size) == 112 and made[1:] == own.size
    buffer = io.BytesIO()
    own.save(buffer, "JPEG", quality=72, optimize=True)
    assert made[0] == buffer.getvalue()
    small = make_thumbnail(str(big), size=40)
    assert small is not None and max(small[1:]) == 40
    assert Image.open(io.BytesIO(small[0])).size == small[1:]


def test_writer_thumbnails_a_truncated_file_only_when_allowed(make_image, tmp_path: Path) -> None:
    whole = make_image("whole.jpg", seed=4, size=(160, 120)).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 2])
    records: list[Record] = [
        Classified("cut.jpg", "m", "w", (Prediction("x", 1, 0.5),), path=str(cut))
    ]
    _, refused, _ = report_data(write_report(tmp_path / "r.html", records).path)
    assert "thumb" not in refused[0]
    _, kept, _ = report_data(write_report(tmp_path / "t.html", records, allow_truncated=True).path)
    assert jpeg_of(kept[0]["thumb"]).size == (112, 84)


def test_a_nan_probability_is_refused_and_nothing_is_published(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    writer = HtmlReportWriter(target)
    writer.write(Classified("a.jpg", "m", "w", (Prediction("x", 1, float("nan")),)))
    with pytest.raises(ValueError):
        writer.close()  # NaN is not JSON: the page's JSON.parse would fail on it
    assert list(tmp_path.iterdir()) == []


def test_write_holds_four_records_a_worker_and_counts_them(tmp_path: Path) -> None:
    writer = HtmlReportWriter(tmp_path / "r.html", workers=1)
    counts = []
    for i in range(7):
        writer.write(Failed(f"{i}.jpg", "truncated", "cut"))
        counts.append(writer.count)
    assert counts == [0, 0, 0, 0, 1, 2, 3]
    writer.close()
    assert writer.count == 7
    _, data, _ = report_data(tmp_path / "r.html")
    assert [d["input"] for d in data] == [f"{i}.jpg" for i in range(7)]


def test_close_twice_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "r.html"
    writer = write_report(target, [Failed("a.jpg", "truncated", "cut")])
    before = target.read_bytes()
    writer.close()
    assert target.read_bytes() == before and writer.count == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_failed_close_cancels_queued_thumbnails_and_does_not_wait(tmp_path, monkeypatch) -> None:
    started, released = threading.Event(), threading.Event()
    calls: list[str] = []
    seen_release: list[bool] = []

    def slow_thumbnail(path: str, **options: object) -> None:
        calls.append(path)
        started.set()
        seen_release.append(released.wait(timeout=10))  # True: close returned first

    monkeypatch.setattr(report_module, "make_thumbnail", slow_thumbnail)
    writer = HtmlReportWriter(tmp_path / "r.html", workers=1)
    writer.write(Classified("nan.jpg", "m", "w", (Prediction("x", 1, float("nan")),)))
    for name in ("slow", "queued"):
        writer.write(Classified(name, "m", "w", (Prediction("x", 1, 0.5),), path=name))
    assert started.wait(timeout=10)  # the one worker is busy with 'slow'; 'queued' waits
    with pytest.raises(ValueError):
        writer.close()
    released.set()
    for thread in threading.enumerate():
        if thread.name.startswith("resnext-thumb"):
            thread.join(timeout=20)
    assert calls == ["slow"] and seen_release == [True]
    assert list(tmp_path.iterdir()) == []
