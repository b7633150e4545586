"""Helpers that more than one test module uses (fixtures shared that way live in conftest.py)."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from resnext_cli.outputs.report import (
    HtmlReportWriter,
)
from resnext_cli.results import Record
from tests.conftest import natural_image

ROOT = Path(__file__).resolve().parents[1]


CHROMIUM = (
    os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)


NASTY = "<img src=x onerror=\"alert(1)\"> & 'quotes' </script><!--"


class Page(HTMLParser):
    """The parts of a report (or of the DOM Chromium dumped) that the tests look at."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: dict[str, str] = {}
        self.cards: list[dict[str, Any]] = []
        self.groups: list[str] = []
        self.text: dict[str, str] = {}  # the text of elements with an id (not scripts)
        self._script: str | None = None
        self._id: str | None = None
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
            card = {
                "classes": classes,
                "name": "",
                "dir": "",
                "labels": [],
                "error": "",
                "img": [],
                "category": "",
                "categories": None,
            }
            self.cards.append(card)
        if tag == "div" and "cat" in classes:
            self.cards[-1]["categories"] = a.get("title")
        if tag == "h2" and "group" in classes:
            self.groups.append("")
            self._field = "group"
        if tag != "script" and a.get("id"):
            self._id = a["id"]
            self.text[self._id] = ""
        if self.cards and tag == "img":
            self.cards[-1]["img"].append(a.get("src") or "")
        for field in ("name", "dir", "label", "error", "category"):
            if field in classes and self.cards:
                self._field = field
                if field == "label":
                    self.cards[-1]["labels"].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None
        if tag in ("div", "span", "p", "h2"):
            self._field = None
        self._id = None

    def handle_data(self, data: str) -> None:
        if self._id is not None:
            self.text[self._id] += data
        if self._script is not None:
            self.scripts[self._script] += data
        elif self._field == "group":
            self.groups[-1] += data
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


def photo(seed: int, size: tuple[int, int] = (500, 375), mode: str = "RGB") -> Image.Image:
    """A picture with fine texture, so JPEG blocks and resampling filters have work."""
    base = np.asarray(natural_image(seed, size)).astype(np.int16)
    noise = np.random.default_rng(seed).normal(0, 14, base.shape).round().astype(np.int16)
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    return img if mode == "RGB" else img.convert(mode)


def jpeg(img: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def with_segment(data: bytes, marker: int, body: bytes) -> bytes:
    """Insert one APPn segment right after SOI."""
    return data[:2] + struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body + data[2:]


# -- whole-file structure: a cut or damaged file never reaches the GPU ---------------------


def _without_jfif(data: bytes) -> bytes:
    """Drop the APP0 (JFIF) segment Pillow writes right after SOI."""
    assert data[2:4] == b"\xff\xe0"
    length = int.from_bytes(data[4:6], "big")
    return data[:2] + data[4 + length :]


def _component_ids(data: bytes, ids: bytes) -> bytes:
    """Rewrite the component IDs of the frame header (baseline SOF0) and of its one scan."""
    frame, scan = data.index(b"\xff\xc0"), data.index(b"\xff\xda")
    out = bytearray(data)
    for c, cid in enumerate(ids):
        out[frame + 10 + 3 * c] = cid
        out[scan + 5 + 2 * c] = cid
    return bytes(out)


def _scan_start(data: bytes) -> int:
    """Where the first scan's entropy-coded data begins."""
    at = data.index(b"\xff\xda")
    return at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")


CHILD = """
import contextlib, io, json, sys
for name in ("torch", "torchvision"):
    sys.modules[name] = None  # importing them now raises ImportError
from resnext_cli.cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append([code, out.getvalue(), err.getvalue()])
results.append(sorted(m for m in ("torch", "torchvision") if sys.modules.get(m) is not None))
print(json.dumps(results))
"""


def run_all(cases: list[list[str]]) -> tuple[list[tuple[int, str, str]], list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cases)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    *results, imported = json.loads(done.stdout)
    return [tuple(r) for r in results], imported
