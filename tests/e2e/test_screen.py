"""What a person sees in a terminal: the bar, the table rows, warnings and the summary,
read off an emulated screen (pyte) fed the bytes the command wrote to a real pty, at
several widths."""

from __future__ import annotations

import fcntl
import io
import os
import struct
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyte
import pytest

from resnext_cli.console import Console
from resnext_cli.results import Classified, Failed, Prediction
from resnext_cli.run import classify as run_classify_module
from tests.helpers import WIDTHS

ROWS = 120  # tall enough that nothing scrolls away

LABELS = [
    "tabby, tabby cat",
    "American Staffordshire terrier",  # the longest kind of ImageNet label
    "ox",
    "black and gold garden spider",
    "beach wagon, station wagon, wagon, estate car",
]


@dataclass
class Terminal:
    """A pty of *width* columns; what is written to its slave lands on an emulated screen."""

    width: int
    master: int = -1
    slave: int = -1
    data: bytearray = field(default_factory=bytearray)
    lock: threading.Lock = field(default_factory=threading.Lock)
    fed: int = 0

    def __enter__(self) -> Terminal:
        self.master, self.slave = os.openpty()
        size = struct.pack("HHHH", ROWS, self.width, 0, 0)
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, size)
        attrs = termios.tcgetattr(self.slave)
        attrs[1] &= ~termios.OPOST  # no '\n' -> '\r\n' translation: pyte gets the bytes as written
        termios.tcsetattr(self.slave, termios.TCSANOW, attrs)
        self.emulated = pyte.Screen(self.width, ROWS)
        self.bytes = pyte.ByteStream(self.emulated)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.data += chunk

    def stream(self) -> io.TextIOWrapper:
        return io.TextIOWrapper(
            os.fdopen(os.dup(self.slave), "wb", buffering=0), encoding="utf-8", write_through=True
        )

    def screen(self) -> list[str]:
        """The visible lines now, trailing blanks cut."""
        time.sleep(0.05)  # let the reader thread catch up with what was just written
        with self.lock:
            data, self.fed = bytes(self.data[self.fed :]), len(self.data)
        self.bytes.feed(data.replace(b"\n", b"\r\n"))
        return [line.rstrip() for line in self.emulated.display]

    def __exit__(self, *_: object) -> None:
        os.close(self.slave)
        self.reader.join(timeout=5)
        os.close(self.master)


def record(i: int, name: str) -> Classified | Failed:
    if name.endswith("missing.jpg"):
        return Failed(name, "not_found", f"no such file: '{name}'")
    top, second = LABELS[i % len(LABELS)], LABELS[(i + 1) % len(LABELS)]
    return Classified(
        name,
        "resnext50_32x4d",
        "IMAGENET1K_V2",
        (Prediction(top, i, 0.625 + i / 100), Prediction(second, i + 1, 0.25)),
        precision="fp32",
    )


class FakeEngine:
    """Records at a person's pace, checking the screen between them."""

    def __init__(self, terminal: Terminal, seen: list[list[str]]) -> None:
        self.terminal, self.seen = terminal, seen
        source = "resnext50_32x4d (IMAGENET1K_V2)"
        self.plan = SimpleNamespace(
            notes=(),
            precision="fp32",
            topk=5,
            labels=(),
            categories=None,
            source_line=lambda: source,
            model_line=lambda: f"{source} on cpu, fp32",
        )

    def describe(self) -> str:
        return "cpu, fp32"

    def classify_sources(self, sources: Any) -> Iterator[Classified | Failed]:
        for i, source in enumerate(sources):
            time.sleep(0.12)  # the bar redraws (10 times a second) between records
            self.seen.append(self.terminal.screen())
            yield record(i, source.input)

    def close(self) -> None:
        pass


def photos(tmp_path: Path) -> list[str]:
    folder = tmp_path / "holiday photos from the summer of twenty twenty-four"
    folder.mkdir()
    names = []
    for i in range(7):
        path = folder / f"img_{i:04d}.jpg"
        path.write_bytes(b"\xff\xd8\xff")  # only its name matters: the engine is a stand-in
        names.append(str(path))
    return names


def run_on_screen(
    width: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, list[list[str]], list[str]]:
    """Run `resnext classify` (a stand-in engine) on a *width*-column terminal; return the
    exit status, the screens seen while it ran, and the last screen."""
    from resnext_cli.cli.main import main

    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.setenv("LINES", str(ROWS))
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    seen: list[list[str]] = []
    with Terminal(width) as terminal:
        kind = run_classify_module.ENGINES["local"]
        fake = run_classify_module.EngineKind(
            lambda *_a, **_k: FakeEngine(terminal, seen), kind.iter_sources
        )
        monkeypatch.setitem(run_classify_module.ENGINES, "local", fake)
        out = terminal.stream()
        console = Console.on(io.BytesIO(), out, out)
        try:
            main(["classify", *args], console=console)
        except SystemExit as exc:
            code = int(exc.code or 0)
        out.close()
        last = terminal.screen()
    return code, seen, last


@pytest.mark.parametrize("width", WIDTHS)
def test_rows_never_share_a_line_with_the_bar_and_numbers_are_whole(
    width: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = photos(tmp_path)
    missing = str(tmp_path / "missing.jpg")
    code, seen, last = run_on_screen(width, tmp_path, monkeypatch, *names, missing)
    assert code == 1  # one input failed
    assert len(seen) == len(names) + 1
    stems = [Path(n).name for n in [*names, missing]]
    for screen in [*seen, last]:
        for line in screen:
            assert len(line) <= width
            if "classifying" in line:  # the bar's line holds the bar and nothing else
                assert not any(s[-8:] in line for s in stems), line
                assert line.count("classifying") == 1
            # No rate before it means something: never thousands a second at the start.
            if "classifying" in line and "img/s" in line:
                assert float(line.split(" img/s")[0].split()[-1]) < 10, line
    assert any("classifying" in line for screen in seen for line in screen)  # there was a bar
    # The last screen: the bar is gone, every row is there with its numbers whole.
    assert not any("classifying" in line for line in last)
    header = next(i for i, line in enumerate(last) if line.startswith("input "))
    rows = last[header + 1 :]
    for i, stem in enumerate(stems[:-1]):
        row = next(line for line in rows if stem[-8:] in line)
        assert f"{62.5 + i:.1f}%" in row, (row, last)
        assert "25.0%" in " ".join(rows)
    failed = next(i for i, line in enumerate(rows) if stems[-1][-8:] in line)
    assert "error: not_found" in " ".join(" ".join(rows[failed : failed + 2]).split())
    # Long names lose their middle, never their end; labels are never cut with '…'.
    for line in rows:
        if "img_" in line:
            assert "…" not in line.split("img_", 1)[1], line
    for label in LABELS:
        words = [w for w in label.replace(",", "").split() if len(w) > 1]
        assert all(w in " ".join(last) for w in words), label
    # The summary: its counts and every histogram row whole, the '(N other labels)' too.
    summary = " ".join(" ".join(last).split())  # folded at words on a narrow terminal
    assert "classified 7 of 8 inputs" in summary
    assert "1 failed (1 not_found)" in summary
    assert "error: no such file:" in summary


def test_ctrl_c_while_loading_says_nothing_was_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import run_resnext

    image = tmp_path / "a.jpg"
    image.write_bytes(b"\xff\xd8\xff")
    out = tmp_path / "r.jsonl"

    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    kind = run_classify_module.ENGINES["local"]
    monkeypatch.setitem(
        run_classify_module.ENGINES,
        "local",
        run_classify_module.EngineKind(interrupted, kind.iter_sources),
    )
    run = run_resnext("classify", image, "-o", out)
    assert (run.code, run.stdout) == (130, ""), run
    # (click adds a blank line after it, closing a terminal's '^C')
    assert run.stderr.strip() == (
        "interrupted while loading resnext50_32x4d (IMAGENET1K_V2): nothing was done"
    )
    assert not out.exists()  # the -o file it had made is gone


def test_stdin_on_a_terminal_ends_with_one_ctrl_d(tmp_path: Path) -> None:
    import subprocess
    import sys

    master, slave = os.openpty()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", "from resnext_cli.cli.main import main; main()", "classify", "-"],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=env,
    )
    os.close(slave)
    try:
        os.write(master, b"gone-a.jpg\ngone-b.jpg\n")
        os.write(master, b"\x04")  # one end-of-file, at the start of a line
        # Were the stream read again, it would wait for another Ctrl-D: a hang, not an exit.
        stdout, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
        os.close(master)
    assert (child.returncode, stdout) == (2, b"")
    assert stderr.decode().splitlines() == [
        "reading paths, URLs or image bytes from standard input (end with Ctrl-D)",
        "error: no such file: 'gone-a.jpg'",
        "error: no such file: 'gone-b.jpg'",
    ]
