"""The visual report: one self-contained HTML file of every image, its labels and errors.

The file opens straight from disk and loads nothing from anywhere: thumbnails are JPEG
data URIs, the records sit in a ``<script type="application/json">`` block, and a
Content-Security-Policy meta tag forbids every other resource and allows only the page's
own script and style (``report.js``, ``report.css`` beside this module, inlined here and
named in the policy by their SHA-256). The script builds the cards with ``textContent``
(never ``innerHTML``), 200 at a time, so a report of 10,000 images stays quick.

The page reads its controls from the URL, which makes a view linkable and lets a headless
browser test the filter: ``report.html?label=crane``, ``?category=dog``, ``?show=uncertain``,
``?show=failed``, ``?q=text`` (file names, labels, categories),
``?sort=confidence-asc|confidence-desc|name|input|category``. After the first render
``<main id="grid">`` carries ``data-matches`` (cards that pass the filter) and
``data-total``, and ``<body>`` gets ``data-ready="1"``.

Review mode (on unless ``?review=0``): each classified card can be accepted, corrected to
another of its top-k labels or any label, or skipped, by keyboard or mouse. Decisions live
in the browser's ``localStorage`` under the report's identity (a hash of its records,
written into the page), and the export button downloads ``NAME.reviewed.jsonl``: for each
classified image its ``input``, ``path``, ``size``, ``mtime_ns``, the model's top-1
(``model_label``), the chosen ``label`` and ``reviewed`` (``"accepted"``, ``"corrected"``,
``"skipped"``, or null when not reviewed yet; ``label`` is null then and when skipped).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import io
import json
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from resnext_cli.errors import InputError
from resnext_cli.files import OutputTarget
from resnext_cli.imaging.budget import DECODING, MemoryBudget
from resnext_cli.imaging.limits import DEFAULT_MAX_PIXELS
from resnext_cli.results import Classified, Failed, Record

THUMBNAIL_SIZE = 112
PAGE_SIZE = 200

# A thumbnail: JPEG bytes, width, height.
Thumbnail = tuple[bytes, int, int]


@functools.cache
def asset(name: str) -> str:
    """Return the text of a package file the page inlines: ``report.js`` or ``report.css``."""
    text = resources.files("resnext_cli.outputs").joinpath(name).read_text(encoding="utf-8")
    # The page is ASCII, and inline text must not be able to end its own element.
    assert text.isascii() and "</" not in text, name
    return text


def _source(text: str) -> str:
    """A CSP source that allows exactly this inline script or style."""
    digest = hashlib.sha256(text.encode("ascii")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def content_security_policy() -> str:
    """The page's policy: nothing from anywhere, data: images, and only its own script and style."""
    return (
        f"default-src 'none'; img-src data:; style-src {_source(asset('report.css'))}; "
        f"script-src {_source(asset('report.js'))}; base-uri 'none'; form-action 'none'"
    )


def script_json(value: Any) -> str:
    """Serialise *value* for a ``<script type="application/json">`` block.

    ASCII only (lone surrogates from odd file names survive), and with ``<``, ``>`` and
    ``&`` as JSON escapes, so no data can close the block or open a comment.
    """
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def make_thumbnail(
    path: str,
    *,
    size: int = THUMBNAIL_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_truncated: bool = False,
    budget: MemoryBudget = DECODING,
) -> Thumbnail | None:
    """Return a small upright JPEG of the image at *path* and its size, or None.

    The file is decoded by the same rules as for classification (``preprocess.decode``:
    refused formats, the pixel limit, EXIF orientation, transparency on white), so a file
    the run would not read is not read here either. Decoding holds its share of the
    process's one decoding budget (``imaging.budget``), as classification's decoding does:
    thumbnails and decoding threads wait their turn.
    """
    from PIL import Image

    from resnext_cli.imaging.preprocess import DecodeOptions, decode

    # Pillow reads allow_truncated from a global that every decoding thread sets: it must
    # be the run's own value. JPEGs decode at a reduced scale, no smaller than twice *size*.
    options = DecodeOptions(
        max_pixels=max_pixels, allow_truncated=allow_truncated, draft_min_side=2 * size
    )
    try:
        with budget.reserve() as share:
            with open(path, "rb") as fp:
                img = decode(fp, path, options, share)
            img.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=72, optimize=True)
    except (InputError, OSError, ValueError, MemoryError, Image.DecompressionBombError):
        return None  # the card shows a placeholder; the record already says what failed
    return buffer.getvalue(), img.width, img.height


def report_entry(record: Record, thumb: Thumbnail | None) -> dict[str, Any]:
    """The page's view of one record."""
    entry: dict[str, Any] = {"input": record.input, "path": record.path}
    if record.file is not None:
        # As strings: a nanosecond mtime is past the integers a JavaScript number holds.
        entry["file"] = [str(record.file.size), str(record.file.mtime_ns)]
    if thumb:
        data = base64.b64encode(thumb[0]).decode("ascii")
        entry["thumb"] = {"src": f"data:image/jpeg;base64,{data}", "w": thumb[1], "h": thumb[2]}
    if isinstance(record, Failed):
        entry["error"] = {"type": record.error_type, "message": record.message}
        return entry
    entry["top"] = [[p.label, p.probability] for p in record.predictions]
    entry["uncertain"] = bool(record.uncertain)
    # Categories, where the run has them, as the record's JSON defines them.
    categories = record.to_dict().get("categories")
    if categories:
        entry["cats"] = [[c["name"], c["probability"]] for c in categories]
    return entry


class HtmlReportWriter:
    """Stream records into a self-contained HTML report, in input order.

    Thumbnails are made from each record's file in worker threads, within a memory
    budget; the page goes to this tool's own temporary file beside *path* and is published
    when closed (files.OutputTarget: onto nothing, onto the file that was there, or into a
    device), so a reader never sees half a report. *target* is *path* claimed and locked
    by the caller; without it the writer claims *path* itself, replacing a file there.
    The page is ASCII: text beyond it (a title of 'café.jpg') goes in as character
    references.
    """

    def __init__(
        self,
        path: Path,
        *,
        target: OutputTarget | None = None,
        title: str = "resnext report",
        context: Mapping[str, str] | None = None,
        labels: Sequence[str] = (),
        categories: Sequence[str] = (),
        thumbnail_size: int = THUMBNAIL_SIZE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        allow_truncated: bool = False,
        workers: int = 4,
    ) -> None:
        self.path = path
        self._own = target is None  # claimed here: released here when closed
        self._target = (
            target if target is not None else OutputTarget.claim(path, force=True, what="report")
        )
        self._size = thumbnail_size
        self._max_pixels = max_pixels
        self._allow_truncated = allow_truncated
        self._count = 0
        # What the review box offers: the model's labels, then the run's categories.
        self._labels = list(dict.fromkeys([*labels, *categories]))
        self._identity = hashlib.sha256()
        self._window: deque[tuple[Record, Future[Thumbnail | None]]] = deque()
        self._limit = 4 * max(1, workers)
        self._closed = False
        self._temp = self._target.temporary()
        self._file = io.TextIOWrapper(
            self._temp, encoding="ascii", errors="xmlcharrefreplace", newline="\n"
        )
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="resnext-thumb")
        self._file.write(
            _HEAD.format(
                csp=html.escape(content_security_policy()),
                title=html.escape(title),
                style=asset("report.css"),
            )
        )
        meta = {"title": title, "context": dict(context or {}), "pageSize": PAGE_SIZE}
        self._file.write(
            f'<script type="application/json" id="meta">{script_json(meta)}</script>\n'
        )
        self._file.write('<script type="application/json" id="records">[')

    def _thumb(self, record: Record) -> Thumbnail | None:
        if isinstance(record, Classified) and record.path is not None:
            return make_thumbnail(
                record.path,
                size=self._size,
                max_pixels=self._max_pixels,
                allow_truncated=self._allow_truncated,
            )
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
        # The report's identity, which keys its review in the browser: its records, in order.
        entry.pop("thumb", None)
        self._identity.update(script_json(entry).encode("ascii") + b"\n")
        self._count += 1

    def close(self) -> None:
        """Write the rest of the page and put it in place."""
        if self._closed:
            return
        self._closed = True
        try:
            while self._window:
                self._emit()
            review = {"id": self._identity.hexdigest()[:32], "labels": self._labels}
            self._file.write(_TAIL.format(review=script_json(review), script=asset("report.js")))
            self._file.flush()
            self._file.detach()  # the binary temporary file stays open for publishing
            self._target.publish(self._temp)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._temp.close()
            self._target.discard()
            if self._own:
                self._target.release()

    @property
    def count(self) -> int:
        """Records written so far."""
        return self._count


# The style and script go in exactly as their files are: the policy names their hashes.
_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p id="stats"></p>
<div class="controls">
<label id="category-control" hidden>Category <select id="category">
<option value="">all categories</option></select></label>
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
<div class="controls" id="review-bar">
<label><input id="review-mode" type="checkbox" checked> review</label>
<span id="progress" aria-live="polite"></span>
<button id="undo" type="button">undo (u)</button>
<button id="export" type="button">export decisions</button>
<button id="clear" type="button">clear my decisions</button>
<span id="saved"></span>
</div>
<p id="help">Keys: &larr; &rarr; or j k move &middot; a accept &middot; 1&ndash;5 pick a label \
&middot; / relabel (any label, or type a new one) &middot; s skip &middot; u undo. \
Or click a label, or a card's buttons.</p>
<div id="relabel" class="controls" hidden>
<label>Relabel <span id="relabel-name"></span> as <input id="relabel-input" type="text" \
autocomplete="off" spellcheck="false" aria-autocomplete="list" aria-controls="suggestions" \
placeholder="a label, or a new one"></label>
<button id="relabel-ok" type="button">set (Enter)</button>
<button id="relabel-cancel" type="button">cancel (Esc)</button>
<ul id="suggestions" role="listbox" aria-label="labels"></ul>
</div>
</header>
<main id="grid"></main>
<button id="more" type="button" hidden>show more</button>
<noscript><p class="empty">This report needs JavaScript to show its images.</p></noscript>
"""

_TAIL = """
]</script>
<script type="application/json" id="review">{review}</script>
<script>{script}</script>
</body>
</html>
"""
