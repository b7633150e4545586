"""The visual report: one self-contained HTML file of every image, its labels and errors.

The file opens straight from disk and loads nothing from anywhere: thumbnails are JPEG
data URIs, the records sit in a ``<script type="application/json">`` block, and a
Content-Security-Policy meta tag forbids every other resource. The page's script builds
the cards with ``textContent`` (never ``innerHTML``), 200 at a time, so a report of
10,000 images stays quick.

The page reads its controls from the URL, which makes a view linkable and lets a headless
browser test the filter: ``report.html?label=crane``, ``?show=uncertain``, ``?show=failed``,
``?q=text`` (file names and labels), ``?sort=confidence-asc|confidence-desc|name|input``.
After the first render ``<main id="grid">`` carries ``data-matches`` (cards that pass the
filter) and ``data-total``, and ``<body>`` gets ``data-ready="1"``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import warnings
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from .config import DEFAULT_MAX_PIXELS
from .errors import OutputError
from .results import Classified, Failed, Record

THUMBNAIL_SIZE = 112
PAGE_SIZE = 200
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
_MAGIC = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png"}


def script_json(value: Any) -> str:
    """Serialise *value* for a ``<script type="application/json">`` block.

    ASCII only (lone surrogates from odd file names survive), and with ``<``, ``>`` and
    ``&`` as JSON escapes, so no data can close the block or open a comment.
    """
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def make_thumbnail(
    path: str, *, size: int = THUMBNAIL_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[bytes, int, int] | None:
    """Return a small upright JPEG of the image at *path* and its size, or None."""
    from PIL import Image, ImageOps

    from .preprocess import to_rgb

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as opened:
                if opened.width * opened.height > max_pixels:
                    return None
                opened.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at reduced scale
                img = to_rgb(ImageOps.exif_transpose(opened))
                img.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
                buffer = io.BytesIO()
                img.save(buffer, "JPEG", quality=72, optimize=True)
    except Exception:  # the report shows a placeholder; the record already says what failed
        return None
    return buffer.getvalue(), img.width, img.height


def _data_uri(data: bytes) -> str | None:
    for magic, mime in _MAGIC.items():
        if data.startswith(magic):
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return None


def _sized(data: bytes) -> tuple[bytes, int, int] | None:
    """A thumbnail the engine attached, with its size read from its header."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return data, img.width, img.height
    except Exception:
        return None


def report_entry(record: Record, thumb: tuple[bytes, int, int] | None) -> dict[str, Any]:
    """The page's view of one record."""
    entry: dict[str, Any] = {"input": record.input, "path": record.path}
    uri = _data_uri(thumb[0]) if thumb else None
    if thumb and uri:
        entry["thumb"] = {"src": uri, "w": thumb[1], "h": thumb[2]}
    if isinstance(record, Failed):
        entry["error"] = {"type": record.error_type, "message": record.message}
    else:
        assert isinstance(record, Classified)
        entry["top"] = [[p.label, p.probability] for p in record.predictions]
        entry["uncertain"] = bool(record.uncertain)
    return entry


class HtmlReportWriter:
    """Stream records into a self-contained HTML report, in input order.

    Thumbnails are made from each record's file in worker threads; the page goes to a
    hidden temporary file beside *path* and replaces *path* when closed, so a reader never
    sees half a report.
    """

    def __init__(
        self,
        path: Path,
        *,
        title: str = "resnext report",
        context: Mapping[str, str] | None = None,
        thumbnail_size: int = THUMBNAIL_SIZE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        workers: int = 4,
    ) -> None:
        self.path = path
        self._partial = path.with_name(f".{path.name}.part")
        self._size = thumbnail_size
        self._max_pixels = max_pixels
        self._count = 0
        self._window: deque[tuple[Record, Future[tuple[bytes, int, int] | None]]] = deque()
        self._limit = 4 * max(1, workers)
        try:
            self._file: IO[str] = self._partial.open("w", encoding="ascii", newline="\n")
        except OSError as exc:
            raise OutputError(
                f"cannot write report '{path}': {exc.strerror or exc} (check the folder exists)"
            ) from None
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="resnext-thumb")
        self._file.write(_HEAD.format(csp=html.escape(CSP), title=html.escape(title)))
        meta = {"title": title, "context": dict(context or {}), "pageSize": PAGE_SIZE}
        self._file.write(
            f'<script type="application/json" id="meta">{script_json(meta)}</script>\n'
        )
        self._file.write('<script type="application/json" id="records">[')

    def _thumb(self, record: Record) -> tuple[bytes, int, int] | None:
        if record.thumbnail is not None:
            return _sized(record.thumbnail)
        if isinstance(record, Classified) and record.path is not None:
            return make_thumbnail(record.path, size=self._size, max_pixels=self._max_pixels)
        return None

    def write(self, record: Record) -> None:
        """Queue one record; its card is written once its thumbnail is ready."""
        self._window.append((record, self._pool.submit(self._thumb, record)))
        while len(self._window) > self._limit:
            self._emit()

    def _emit(self) -> None:
        record, future = self._window.popleft()
        entry = report_entry(record, future.result())
        self._file.write(("\n" if self._count == 0 else ",\n") + script_json(entry))
        self._count += 1

    def close(self) -> None:
        """Write the rest of the page and put it in place."""
        if self._file.closed:
            return
        try:
            while self._window:
                self._emit()
            self._file.write("\n]</script>\n<script>\n" + _SCRIPT + "</script>\n</body>\n</html>\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._file.close()
        os.replace(self._partial, self.path)

    @property
    def count(self) -> int:
        """Records written so far."""
        return self._count


_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
<style>
:root {{ color-scheme: light dark; --bg: #f6f7f9; --card: #fff; --fg: #1d2330; --muted: #6b7385;
  --bar: #3b82f6; --track: #e4e7ee; --warn: #b45309; --bad: #c0262d; --line: #dde1e8; }}
@media (prefers-color-scheme: dark) {{ :root {{ --bg: #14171d; --card: #1d2129; --fg: #e6e8ee;
  --muted: #9aa2b2; --bar: #60a5fa; --track: #2c323d; --line: #2c323d; }} }}
* {{ box-sizing: border-box; }}
body {{ margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }}
header {{ position: sticky; top: 0; z-index: 1; background: var(--bg);
  border-bottom: 1px solid var(--line); padding: 12px 20px; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }}
#stats {{ color: var(--muted); margin: 0 0 8px; }}
.controls {{ display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center; }}
.controls label {{ color: var(--muted); }}
select, input, button {{ font: inherit; color: inherit; background: var(--card);
  border: 1px solid var(--line); border-radius: 6px; padding: 4px 8px; }}
input[type=search] {{ width: 16em; }}
#count {{ color: var(--muted); margin-left: auto; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr));
  gap: 12px; padding: 16px 20px; }}
.card {{ background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 10px; display: flex; flex-direction: column; gap: 6px; min-width: 0; }}
.thumb {{ height: 120px; display: flex; align-items: center; justify-content: center;
  background: var(--track); border-radius: 6px; overflow: hidden; color: var(--muted); }}
.thumb img {{ max-width: 100%; max-height: 120px; }}
.name {{ font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }}
.dir {{ font-size: 11px; color: var(--muted); overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; direction: rtl; text-align: left; margin-top: -6px; }}
.dir span {{ direction: ltr; unicode-bidi: isolate; }}
.preds {{ list-style: none; margin: 0; padding: 0; display: grid; gap: 3px; }}
.pred {{ display: grid; grid-template-columns: 1fr 42px; gap: 0 6px; font-size: 12px; }}
.pred .label {{ overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }}
.pred .pct {{ text-align: right; color: var(--muted); font-variant-numeric: tabular-nums; }}
.pred .bar {{ grid-column: 1 / -1; height: 4px; background: var(--track); border-radius: 2px; }}
.pred .bar span {{ display: block; height: 100%; background: var(--bar); border-radius: 2px; }}
.pred:first-child .label {{ font-weight: 600; font-size: 13px; }}
.card.uncertain {{ opacity: .6; }}
.badge {{ align-self: flex-start; font-size: 11px; border-radius: 4px; padding: 0 6px;
  color: var(--warn); border: 1px solid currentColor; }}
.card.failed {{ border-color: var(--bad); }}
.card.failed .badge {{ color: var(--bad); }}
.error {{ margin: 0; font-size: 12px; color: var(--bad); overflow-wrap: anywhere; }}
#more {{ display: block; margin: 0 auto 32px; cursor: pointer; }}
#more[hidden] {{ display: none; }}
.empty {{ grid-column: 1 / -1; color: var(--muted); text-align: center; padding: 40px; }}
</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p id="stats"></p>
<div class="controls">
<label>Label <select id="filter"><option value="">all labels</option></select></label>
<label>Search <input id="search" type="search" placeholder="file name or label"></label>
<label>Sort <select id="sort">
<option value="input">input order</option>
<option value="confidence-desc">most confident first</option>
<option value="confidence-asc">least confident first</option>
<option value="name">file name</option>
</select></label>
<span id="count" aria-live="polite"></span>
</div>
</header>
<main id="grid"></main>
<button id="more" type="button" hidden>show more</button>
<noscript><p class="empty">This report needs JavaScript to show its images.</p></noscript>
"""

# Data goes into the page only through textContent, attributes set from code, and img.src
# (always a data: URI made here). No innerHTML anywhere.
_SCRIPT = r"""
"use strict";
(function () {
  const meta = JSON.parse(document.getElementById("meta").textContent);
  const records = JSON.parse(document.getElementById("records").textContent);
  const grid = document.getElementById("grid");
  const more = document.getElementById("more");
  const filter = document.getElementById("filter");
  const search = document.getElementById("search");
  const sort = document.getElementById("sort");
  const count = document.getElementById("count");
  const pageSize = meta.pageSize || 200;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function pct(p) { return (100 * p).toFixed(1) + "%"; }
  function top1(r) { return r.top && r.top.length ? r.top[0] : null; }
  function confidence(r) { const t = top1(r); return t ? t[1] : -1; }

  const labels = new Map();
  let failed = 0, uncertain = 0;
  records.forEach(function (r, i) {
    r.order = i;
    r.haystack = (r.input + "\n" + (r.top || []).map(function (t) { return t[0]; }).join("\n"))
      .toLowerCase();
    if (r.error) { failed += 1; return; }
    if (r.uncertain) uncertain += 1;
    const label = top1(r)[0];
    labels.set(label, (labels.get(label) || 0) + 1);
  });

  const parts = [records.length + " images", (records.length - failed) + " classified"];
  if (failed) parts.push(failed + " failed");
  if (meta.context && meta.context.min_probability) {
    parts.push(uncertain + " under " + pct(Number(meta.context.min_probability)));
  }
  Object.keys(meta.context || {}).forEach(function (key) {
    if (key !== "min_probability") parts.push(key + ": " + meta.context[key]);
  });
  document.getElementById("stats").textContent = parts.join(" \u00b7 ");

  function option(value, text) {
    const node = el("option", "", text);
    node.value = value;
    filter.appendChild(node);
  }
  if (uncertain) option(":uncertain", "uncertain (" + uncertain + ")");
  if (failed) option(":failed", "failed (" + failed + ")");
  Array.from(labels.entries())
    .sort(function (a, b) { return b[1] - a[1] || (a[0] < b[0] ? -1 : 1); })
    .forEach(function (e) { option("=" + e[0], e[0] + " (" + e[1] + ")"); });

  function card(r) {
    const node = el("article", "card");
    node.dataset.order = String(r.order);
    const thumb = el("div", "thumb");
    if (r.thumb) {
      const img = el("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = "";
      img.width = r.thumb.w;
      img.height = r.thumb.h;
      img.src = r.thumb.src.indexOf("data:image/") === 0 ? r.thumb.src : "";
      thumb.appendChild(img);
    } else {
      thumb.textContent = r.error ? "\u2715" : "no preview";
    }
    node.appendChild(thumb);
    // The file name in bold; its folder (or URL) below, cut at the left when long.
    const cut = Math.max(r.input.lastIndexOf("/"), r.input.lastIndexOf("\\")) + 1;
    const name = el("div", "name", r.input.slice(cut) || r.input);
    node.title = r.path || r.input;
    node.appendChild(name);
    if (cut > 0 && cut < r.input.length) {
      const dir = el("div", "dir");
      dir.appendChild(el("span", "", r.input.slice(0, cut)));
      node.appendChild(dir);
    }
    if (r.error) {
      node.classList.add("failed");
      node.appendChild(el("span", "badge", r.error.type));
      node.appendChild(el("p", "error", r.error.message));
      return node;
    }
    if (r.uncertain) {
      node.classList.add("uncertain");
      node.appendChild(el("span", "badge", "uncertain"));
    }
    const list = el("ol", "preds");
    r.top.forEach(function (t) {
      const row = el("li", "pred");
      const label = el("span", "label", t[0]);
      label.title = t[0];
      row.appendChild(label);
      row.appendChild(el("span", "pct", pct(t[1])));
      const bar = el("span", "bar");
      const fill = el("span");
      fill.style.width = Math.max(0, Math.min(100, 100 * t[1])).toFixed(1) + "%";
      bar.appendChild(fill);
      row.appendChild(bar);
      list.appendChild(row);
    });
    node.appendChild(list);
    return node;
  }

  let view = [];
  let shown = 0;

  function matches(r) {
    const f = filter.value;
    if (f === ":failed" && !r.error) return false;
    if (f === ":uncertain" && !r.uncertain) return false;
    if (f.charAt(0) === "=" && (r.error || top1(r)[0] !== f.slice(1))) return false;
    const q = search.value.trim().toLowerCase();
    return !q || r.haystack.indexOf(q) !== -1;
  }
  const orders = {
    "input": function (a, b) { return a.order - b.order; },
    "confidence-desc": function (a, b) {
      return confidence(b) - confidence(a) || a.order - b.order;
    },
    "confidence-asc": function (a, b) {
      // failed inputs have no confidence: keep them last either way
      const ca = a.error ? 2 : confidence(a), cb = b.error ? 2 : confidence(b);
      return ca - cb || a.order - b.order;
    },
    "name": function (a, b) {
      return a.input < b.input ? -1 : a.input > b.input ? 1 : a.order - b.order;
    },
  };

  function showMore() {
    const end = Math.min(view.length, shown + pageSize);
    const batch = document.createDocumentFragment();
    for (; shown < end; shown += 1) batch.appendChild(card(view[shown]));
    grid.appendChild(batch);
    more.hidden = shown >= view.length;
    more.textContent = "show more (" + (view.length - shown) + " left)";
    count.textContent = "showing " + shown + " of " + view.length +
      (view.length === records.length ? "" : " matching (" + records.length + " in all)");
  }
  function update() {
    view = records.filter(matches).sort(orders[sort.value] || orders.input);
    shown = 0;
    grid.replaceChildren();
    grid.dataset.matches = String(view.length);
    grid.dataset.total = String(records.length);
    if (!view.length) grid.appendChild(el("p", "empty", "no image matches"));
    showMore();
  }

  filter.addEventListener("change", update);
  sort.addEventListener("change", update);
  search.addEventListener("input", update);
  more.addEventListener("click", showMore);
  if ("IntersectionObserver" in window) {
    new IntersectionObserver(function (entries) {
      const seen = entries.some(function (e) { return e.isIntersecting; });
      if (seen && shown < view.length) showMore();
    }, { rootMargin: "600px" }).observe(more);
  }

  // Controls can be set from the URL: ?label=NAME, ?show=failed|uncertain, ?q=TEXT, ?sort=KEY.
  const params = new URLSearchParams(window.location.search);
  function choose(select, value, text) {
    const known = Array.from(select.options).some(function (o) { return o.value === value; });
    if (!known && text !== undefined) option(value, text + " (0)");
    if (known || text !== undefined) select.value = value;
  }
  if (params.has("label")) choose(filter, "=" + params.get("label"), params.get("label"));
  if (params.has("show")) choose(filter, ":" + params.get("show"), params.get("show"));
  if (params.has("sort")) choose(sort, params.get("sort"));
  if (params.has("q")) search.value = params.get("q");
  update();
  if (params.has("label") || params.has("show")) filter.dispatchEvent(new Event("change"));
  if (params.has("q")) search.dispatchEvent(new Event("input"));
  document.body.dataset.ready = "1";
})();
"""
