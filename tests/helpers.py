"""Helpers that more than one test module uses (fixtures shared that way live in conftest.py)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import threading
import zipfile
from collections import Counter
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from PIL import Image

from resnext_cli import sort as sorting
from resnext_cli.errors import InputError
from resnext_cli.inputs.sources import Source, open_source
from resnext_cli.outputs.report import (
    HtmlReportWriter,
)
from resnext_cli.results import Classified, Failed, Prediction, Record
from resnext_cli.run.plan import MachineFacts
from resnext_cli.sort import (
    JOURNAL_NAME,
)
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


Tree = set[tuple[str, str]]


def tree(root: Path) -> Tree:
    """Every file below *root* (the journal aside) as (relative path, sha256)."""
    return {
        (p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in root.rglob("*")
        if p.is_file() and p.name != JOURNAL_NAME
    }


def contents(*trees: Tree) -> Counter[str]:
    return Counter(digest for t in trees for _, digest in t)


def found(root: Path) -> Tree:
    return tree(root) if root.exists() else set()


def seen(path: Path, label: str, p: float = 0.9, index: int = 1) -> Classified:
    return Classified(
        str(path), "m", "w", (Prediction(label, index, p),), path=str(path.absolute())
    )


def labelled(photos: Path) -> list[Record]:
    return [
        seen(photos / "a.jpg", "tabby, tabby cat"),
        seen(photos / "b.jpg", "Crane"),
        seen(photos / "c.png", "crane", p=0.2),  # uncertain below 0.5
        seen(photos / "sub/a.jpg", "tabby, tabby cat"),
        seen(photos / "sub/d.jpg", "crane", index=134),
        Failed(str(photos / "broken.jpg"), "truncated", "cut", path=str(photos / "broken.jpg")),
    ]


def threshold(records: list[Record], p: float = 0.5) -> list[Record]:
    from resnext_cli.results import apply_threshold

    return [apply_threshold(r, p) for r in records]


EXPECTED = {
    "tabby, tabby cat/a.jpg": "a.jpg",
    "tabby, tabby cat/a (1).jpg": "sub/a.jpg",
    "Crane/b.jpg": "b.jpg",
    "Crane/d.jpg": "sub/d.jpg",  # 'crane' joins 'Crane': one folder on macOS and Windows
    "_uncertain/c.png": "c.png",
    "_failed/broken.jpg": "broken.jpg",
}


def placed(photos: Path, before: Tree) -> Tree:
    digest = dict(before)
    return {(dst, digest[src]) for dst, src in EXPECTED.items()}


# -- copy, link, move ------------------------------------------------------------------------


def refuse_links(monkeypatch) -> None:
    """Act as if DEST were on another file system: no hard links into it."""

    def no_links(*_args: object, **_kw: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)


# -- crashes ---------------------------------------------------------------------------------


class Crash(BaseException):
    """Stands in for the process dying at a chosen instant."""


def crash_on(monkeypatch, target: object, name: str, call: int, *, after: bool = False) -> None:
    """Make the *call*-th call of target.name die: before it does anything, or just after."""
    real = getattr(target, name)
    calls = 0

    def fake(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == call and not after:
            raise Crash
        result = real(*args, **kwargs)
        if calls == call:
            raise Crash
        return result

    monkeypatch.setattr(target, name, fake)


# -- the journal is checked before it is trusted ---------------------------------------------


def plant(dest: Path, *lines: dict[str, object], sign: bool = True) -> bytes:
    """Write a journal by hand into *dest*, signed with this user's key (as if this tool had
    been fooled into writing it), so that the checks after the MAC's are tried too."""
    dest.mkdir(parents=True, exist_ok=True)
    data = "".join(
        (sorting.sign_line(dest, line) if sign else json.dumps(line)) + "\n" for line in lines
    ).encode()
    (dest / JOURNAL_NAME).write_bytes(data)
    return data


def journal_lines(dest: Path) -> list[dict[str, object]]:
    """The journal's lines as written, each without its MAC (checked to be there)."""
    lines = [json.loads(line) for line in (dest / JOURNAL_NAME).read_text().splitlines()]
    for line in lines:
        assert re.fullmatch(r"[0-9a-f]{64}", line.pop("mac")), line
    return lines


def refused(dest: Path, line: int, why: str) -> str:
    return (
        f"journal '{dest / JOURNAL_NAME}' line {line} {why}: refused, nothing was touched "
        f"(remove the journal if you did not sort into '{dest}')"
    )


def planted_journals(photos: Path, dest: Path, other: Path) -> list[tuple[list[dict], int, str]]:
    """Journals that must be refused: (lines, the line to blame, why)."""
    here = str(dest.resolve())
    begin = {"op": "begin", "mode": "move", "time": "t", "dest": here, "src": [str(photos)]}

    def step(src: Path | str, dst: str = "x/payload.txt", n: int = 0) -> dict[str, object]:
        return {"op": "step", "n": n, "mode": "move", "src": str(src), "dst": dst}

    secret, new = other / "secret.txt", other / "new.txt"
    return [
        # --resume would fetch someone's file into DEST; --undo would create one elsewhere.
        ([begin, step(secret, "x/s.txt")], 2, f"takes '{secret}' from outside its source folders"),
        (
            [begin, step(new), {"op": "done", "n": 0}],
            2,
            f"takes '{new}' from outside its source folders",
        ),
        (
            [begin, step(f"{photos}/../other/new.txt")],
            2,
            f"takes '{photos}/../other/new.txt' from outside its source folders",
        ),
        ([step(secret)], 1, "has a step before any 'begin' naming its folders"),
        (
            [{"op": "begin", "mode": "move", "time": "t"}, step(secret)],
            1,
            "names no destination and source folders",
        ),
        (
            [{**begin, "src": [str(other)]} | {"dest": "/elsewhere"}, step(secret)],
            1,
            f"was made for '/elsewhere', not for '{here}'",
        ),
        (
            [{**begin, "src": [here]}, step(f"{here}/x/payload.txt")],
            1,
            "names a source folder inside the destination",
        ),
        ([{**begin, "src": ["rel/ative"]}], 1, "names a source folder that is not a plain path"),
        (
            [begin, step(photos / "a.jpg", "../escape.jpg")],
            2,
            "puts a file at '../escape.jpg', outside the destination",
        ),
        (
            [begin, step(photos / "a.jpg", "/etc/x.jpg")],
            2,
            "puts a file at '/etc/x.jpg', outside the destination",
        ),
        (
            [begin, step(photos / "a.jpg", "x/y/z.jpg")],
            2,
            "puts a file at 'x/y/z.jpg', outside the destination",
        ),
        (
            [begin, step(photos / "a.jpg", "x/a.jpg"), {"op": "retarget", "n": 0, "dst": "../a"}],
            3,
            "puts a file at '../a', outside the destination",
        ),
        (
            [begin, step(f"{photos}/a\x00.jpg", "x/a.jpg")],
            2,
            f"takes '{photos}/a\x00.jpg' from outside its source folders",
        ),
        (
            [{**begin, "src": [f"{photos}\x00"]}],
            1,
            "names a source folder that is not a plain path",
        ),
        ([begin, step(photos / "a.jpg", "x/")], 2, "puts a file at 'x/', outside the destination"),
        (
            [begin, step(photos / "a.jpg", "x/.")],
            2,
            "puts a file at 'x/.', outside the destination",
        ),
    ]


LEADS_OUT = (
    "reached through a symbolic link that leads outside the folders given; "
    "not moved (--copy would file a copy)"
)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encoded(fmt: str, mode: str = "RGB", **save: Any) -> bytes:
    buf = io.BytesIO()
    natural_image(5, (24, 16), mode).save(buf, fmt, **save)
    return buf.getvalue()


def read_error(source: Source, **options: Any) -> tuple[str, str]:
    with pytest.raises(InputError) as info:
        open_source(source, **options)
    return info.value.error_type, info.value.message


def write_images(folder: Path, count: int, *, size: tuple[int, int] = (64, 64)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:02d}.png"
        natural_image(100 + i, size).save(path)
        paths.append(path)
    return paths


T = TypeVar("T")


# -- helpers -------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str, **save: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def run_within(seconds: float, work: Callable[[], T]) -> T:
    """Run *work* in a thread and fail, rather than hang, if it takes too long."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(work())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert box, f"still running after {seconds}s"
    if isinstance(box[0], BaseException):
        raise box[0]
    result: T = box[0]
    return result


def latin1_file(folder: Path) -> bytes:
    raw = os.path.join(os.fsencode(folder), b"caf\xe9 \xe0 la cr\xe8me.png")
    try:
        with open(raw, "wb") as fh:
            fh.write(encode(natural_image(3, (48, 48)), "PNG"))
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    return raw


def expected_order(root: Path) -> list[str]:
    return [str(root / "a.png"), str(root / "b.jpg"), str(root / "sub" / "c.JPG")]


AVX2 = MachineFacts(cpu_count=2)  # no native bf16: AVX2-only
GPU = MachineFacts(cpu_count=16, cuda_count=1, cuda_bf16=True, cuda_free_bytes=80 << 30)


def _to_fake_cuda(monkeypatch) -> None:
    """Module.to('cuda') leaves the module where it is (this machine has no GPU)."""
    real = torch.nn.Module.to

    def to(self, *args, **kwargs):
        if args and str(args[0]).startswith("cuda"):
            return self
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)


def _same_predictions(got: list[dict], want: list[dict]) -> None:
    """Records alike but for the rounding another batch size's kernels bring."""
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a["input"] == b["input"] and a["precision"] == b["precision"]
        assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
        for pa, pb in zip(a["predictions"], b["predictions"], strict=True):
            assert pa["probability"] == pytest.approx(pb["probability"], abs=1e-4)


# -- overlap: decode on its own stream, infer in another thread, records in order ------------


class _FakeStream:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def synchronize(self):
        self.log.append(("sync", self.name))

    def record_event(self):
        self.log.append(("record", self.name))
        return ("event", len(self.log))

    def wait_event(self, event):
        self.log.append(("wait", self.name, event))


def reviewed_line(path: Path, review: str | None, label: str | None, **more: Any) -> str:
    """One line as the report's export writes it, made here by hand."""
    st = path.stat()
    line = {
        "input": f"photos/{path.name}",
        "path": str(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "model_label": "tabby",
        "label": label,
        "reviewed": review,
        **more,
    }
    return json.dumps(line) + "\n"


# The photos fixture of the reviewed tests (named so by pytest, not by Python, so that the
# modules importing it shadow no name): five small JPEGs in tmp_path/photos.
@pytest.fixture(name="photos")
def reviewed_photos(make_image, tmp_path: Path) -> list[Path]:
    return [
        make_image(f"IMG_{i}.jpg", seed=i, size=(32, 24), folder=tmp_path / "photos")
        for i in range(5)
    ]


WIDTHS = (60, 80, 120, 200)


AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="mknod of a character device needs root")


def char_device(path: Path) -> Path:
    """A private character device node (1, 3: what /dev/null is) at *path*."""
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return path


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def everything(root: Path) -> dict[str, str]:
    """Every file and link below *root*, the journal included, by content or target."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


# -- torch checkpoints read and written without torch (model/torch_file.py, torch_write.py) --

TORCH_FILE_SEED = 7


def torch_file_tree() -> dict[str, Any]:
    """A seeded tree like a learned checkpoint: a state dict with every storage dtype."""
    torch.manual_seed(TORCH_FILE_SEED)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    state = model.state_dict()  # an OrderedDict with _metadata, num_batches_tracked int64
    assert hasattr(state, "_metadata")
    g = torch.Generator().manual_seed(TORCH_FILE_SEED)
    base = torch.randn(8, generator=g)
    state["fc.weight"] = torch.randn(3, 4, generator=g)
    state["fc.bias"] = torch.randn(3, generator=g)
    state["half"] = torch.randn(5, generator=g).half()
    state["bf16"] = torch.randn(2, 3, generator=g).bfloat16()
    state["transposed"] = torch.randn(3, 5, generator=g).t()
    state["shared_whole"] = base
    state["shared_slice"] = base[2:6]
    state["float64"] = torch.randn(2, generator=g).double()
    state["int32"] = torch.arange(-3, 3, dtype=torch.int32)
    state["int16"] = torch.arange(-2, 2, dtype=torch.int16)
    state["int8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    state["uint8"] = torch.tensor([0, 128, 255], dtype=torch.uint8)
    state["bool"] = torch.tensor([True, False, True])
    return {
        "state_dict": state,
        "names": ["cat", "dog"],
        "info": {"x": 1.5, "y": None, "z": True},
        "epoch": 12,
    }


# The saved fixture of the torch_file and torch_write tests (named so by pytest, not by
# Python, so that the modules importing it shadow no name).
@pytest.fixture(name="saved")
def saved_checkpoint(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """The original tree and the file torch.save wrote of it."""
    tree = torch_file_tree()
    path = tmp_path / "original.pth"
    torch.save(tree, path)
    return path, tree


def zip_entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}
