"""Shared fixtures: isolated caches, a seeded test checkpoint, image factories, HTTP server."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import http.server
import io
import json
import os
import shutil
import stat
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings
from PIL import Image

SEED = 1234

# Headless Chromium as root on a closed network: no sandbox, no GPU, no background calls.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)

# Property and fuzz tests draw the same inputs on every run (a failure reproduces as it
# is); HYPOTHESIS_PROFILE=long draws new ones on each run (tests that set no count of
# their own draw 2000), as an opt-in longer run.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("long", derandomize=False, database=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


def pytest_configure(config: pytest.Config) -> None:
    """HOME is a temporary folder for the whole run, so nothing a test or a fixture of a
    wider scope starts writes into the real one (isolated_env then gives each test its own).

    Under pytest-xdist (`-n auto` in pyproject.toml) each worker gets its own share of
    the cores, and torch (and every process a test starts, which inherits the share) runs
    that many threads: two workers on two cores each run one thread instead of both
    running two and taking turns."""
    home, real = tempfile.mkdtemp(prefix="resnext-test-home-"), os.environ.get("HOME")
    os.environ["HOME"] = home

    def put_back() -> None:
        shutil.rmtree(home, ignore_errors=True)
        if real is not None:
            os.environ["HOME"] = real

    config.add_cleanup(put_back)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or workers < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    share = cores[int(worker[2:]) :: workers]
    if share:
        os.sched_setaffinity(0, share)
        torch.set_num_threads(len(share))


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point TORCH_HOME and friends at a fresh temp dir so no test sees the user's cache.

    Its own MonkeyPatch: a test's ``monkeypatch.undo()`` must not point them back at the
    real home (the sort journal's key would be made in the user's config folder).
    """
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        mp.setenv("XDG_CACHE_HOME", str(home / "xdg"))
        mp.setenv("XDG_CONFIG_HOME", str(home / "config"))  # the sort journal's key
        # HOME too: what falls back to ~ (a mutant of the key's path, OpenVINO's telemetry
        # in ~/intel, Ray's token in ~/.ray, Chromium's profile) stays in the temp dir.
        (home / "home").mkdir()
        mp.setenv("HOME", str(home / "home"))
        for name in ("RESNEXT_OFFLINE", "RESNEXT_WEIGHTS_MIRROR", "RESNEXT_DEBUG"):
            mp.delenv(name, raising=False)
        yield home


@pytest.fixture(autouse=True)
def cpu_kind(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """RESNEXT_TEST_CPU=avx2 or bf16 fakes what the CPU offers, so the suite can run as on
    the other kind of machine (CI runs the CLI tests both ways); unset, or for a test
    marked real_cpu, the CPU is real."""
    kind = os.environ.get("RESNEXT_TEST_CPU", "")
    if kind not in ("avx2", "bf16") or request.node.get_closest_marker("real_cpu"):
        return
    from resnext_cli.run.plan import MachineFacts

    real = MachineFacts.probe
    monkeypatch.setattr(
        MachineFacts,
        "probe",
        classmethod(
            lambda cls, device="auto": dataclasses.replace(
                real(device), cpu_native_bf16=kind == "bf16"
            )
        ),
    )


@pytest.fixture(autouse=True)
def runtime_kind(
    cpu_kind: None, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """The suite runs torch, as it was written for, even where the OpenVINO extra is
    installed: the probe says it is not, and RESNEXT_RUNTIME=torch tells the commands the
    tests start as processes. RESNEXT_TEST_RUNTIME=openvino keeps the real answer, so
    the same tests run through OpenVINO (tests/test_openvino.py asks for it itself). A
    test marked real_cpu has the probe's own answer."""
    monkeypatch.delenv("RESNEXT_RUNTIME", raising=False)
    if os.environ.get("RESNEXT_TEST_RUNTIME", "") == "openvino":
        return
    monkeypatch.setenv("RESNEXT_RUNTIME", "torch")
    if request.node.get_closest_marker("real_cpu"):
        return  # the probe itself is under test
    from resnext_cli.run.plan import MachineFacts

    probe = MachineFacts.probe
    monkeypatch.setattr(
        MachineFacts,
        "probe",
        classmethod(lambda cls, device="auto": dataclasses.replace(probe(device), openvino=False)),
    )


def natural_image(seed: int, size: tuple[int, int] = (320, 240), mode: str = "RGB") -> Image.Image:
    """A smooth, seed-dependent picture (blobs and gradients), so images differ."""
    g = torch.Generator().manual_seed(seed)
    w, h = size
    small = torch.rand(3, max(2, h // 32), max(2, w // 32), generator=g)
    big = torch.nn.functional.interpolate(small[None], size=(h, w), mode="bicubic")[0]
    ramp = torch.linspace(0, 1, w).expand(h, w)
    big = (0.7 * big + 0.3 * ramp * torch.rand(3, 1, 1, generator=g)).clamp(0, 1)
    arr = (big * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    img = Image.fromarray(arr, "RGB")
    return img if mode == "RGB" else img.convert(mode)


def _calibrate_fc(
    model: torch.nn.Module, num_classes: int, seed: int, batch: torch.Tensor | None
) -> None:
    """Centre fc on the mean pooled feature of *batch* (preprocessed images; by default a
    few generated ones) and spread the logits."""
    from torchvision.transforms.functional import pil_to_tensor

    g = torch.Generator().manual_seed(seed)
    if batch is None:
        images = [natural_image(s, (224, 224)) for s in range(8)]
        batch = torch.stack([pil_to_tensor(im).float() / 255 for im in images])
        batch = (batch - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
            [0.229, 0.224, 0.225]
        )[:, None, None]
    model.fc = torch.nn.Identity()
    with torch.inference_mode():
        feats = model(batch)
    mean = feats.mean(0)
    spread = (feats - mean).norm(dim=1).mean()
    weight = torch.randn(num_classes, feats.shape[1], generator=g) * (6.0 / spread)
    fc = torch.nn.Linear(feats.shape[1], num_classes)
    with torch.no_grad():
        fc.weight.copy_(weight)
        fc.bias.copy_(-(weight @ mean))
    model.fc = fc


def make_checkpoint(
    path: Path,
    *,
    arch: str = "resnext50_32x4d",
    num_classes: int = 1000,
    wrap: str | None = None,
    seed: int = SEED,
    centre_on: torch.Tensor | None = None,
) -> Path:
    """Write a seeded random-init state dict in torchvision's key layout.

    *centre_on*: a batch of preprocessed images whose mean feature fc is centred on (the
    benchmarks pass their own photos, so predictions on them are peaked)."""
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes).eval()
    _calibrate_fc(model, num_classes, seed, centre_on)
    state = model.state_dict()
    torch.save({wrap: state} if wrap else state, path)
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1000-class resnext50_32x4d checkpoint, made once per session."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "resnext50_test.pth")


@pytest.fixture(scope="session")
def checkpoint10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tuned-style 10-class checkpoint wrapped as {'model': ...}."""
    return make_checkpoint(
        tmp_path_factory.mktemp("ckpt10") / "finetuned10.pth", num_classes=10, wrap="model"
    )


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """Write a generated image: make_image('a.jpg', seed=1, size=(w, h), mode='RGB')."""

    def make(
        name: str,
        *,
        seed: int = 0,
        size: tuple[int, int] = (320, 240),
        mode: str = "RGB",
        folder: Path | None = None,
        **save: object,
    ) -> Path:
        path = (folder or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        natural_image(seed, size, mode).save(path, **save)
        return path

    return make


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def device_node(tmp_path: Path) -> Callable[..., Path]:
    """A private character device in tmp_path: device_node('full') or device_node('zero').

    Tests never name the system's own /dev files; a node made here reaches the same
    kernel device (1,7: full, 1,5: zero) without any chance of replacing the real one.
    """

    def make(kind: str, name: str | None = None) -> Path:
        minor = {"full": 7, "zero": 5}[kind]
        path = tmp_path / (name or f"dev-{kind}")
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
        except (PermissionError, AttributeError, OSError) as exc:
            pytest.skip(f"cannot make a private device node here ({exc.__class__.__name__})")
        return path

    return make


@pytest.fixture
def swapped_for_a_pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A photo that is a regular file when stat()ed and a FIFO when opened: the race a
    check before opening cannot see."""
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"x")
    real_stat = os.stat

    def stat_then_swap(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        result = real_stat(target, *args, **kwargs)
        if Path(target) == path and stat.S_ISREG(result.st_mode):
            path.unlink()
            os.mkfifo(path)
        return result

    monkeypatch.setattr(os, "stat", stat_then_swap)
    return path


@contextlib.contextmanager
def serve(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve *handler* on a loopback port in a thread; yields 'http://127.0.0.1:PORT'."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serve a temp folder on loopback; yields (base URL, folder)."""
    root = tmp_path / "www"
    root.mkdir()
    with serve(functools.partial(_Handler, directory=str(root))) as base:
        yield base, root


@pytest.fixture
def make_photos(make_image: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    """A folder of generated photos: make_photos(3, ext='jpg') -> tmp_path/'photos'."""

    def make(count: int = 3, *, ext: str = "jpg", size: tuple[int, int] = (96, 80)) -> Path:
        folder = tmp_path / "photos"
        for seed in range(count):
            make_image(f"{seed}.{ext}", seed=seed, size=size, folder=folder)
        return folder

    return make


@pytest.fixture
def photos(make_photos: Callable[..., Path]) -> Path:
    """Three small generated JPEGs in tmp_path/'photos'."""
    return make_photos(3)


@dataclasses.dataclass
class Outcome:
    """What one in-process run of `resnext` did."""

    args: list[str]
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"resnext {' '.join(self.args)} -> exit {self.code}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )

    def records(self) -> list[dict[str, Any]]:
        """Parse stdout as a JSON array (-f json) or JSON Lines."""
        if self.stdout.lstrip().startswith("["):
            records: list[dict[str, Any]] = json.loads(self.stdout)
            return records
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def run_resnext(*args: str | Path, input: bytes | str | None = None) -> Outcome:
    """Run resnext_cli.cli.main.main in-process, through its real error boundary."""
    from click.testing import CliRunner

    from resnext_cli.cli.main import main

    argv = [str(a) for a in args]
    with CliRunner().isolation(input=input) as (out, err, _):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            # As a process exits: None is 0, a message is 1 (Python's own rule).
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return Outcome(argv, code, stdout, stderr)


@pytest.fixture
def resnext() -> Callable[..., Outcome]:
    """The run_resnext helper as a fixture: resnext('classify', path, '-f', 'json')."""
    return run_resnext


# -- encoded test inputs shared by the pixel and the hostile-input tests ----------------


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def oriented_png(stored: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # EXIF Orientation
    buf = io.BytesIO()
    stored.save(buf, "PNG", exif=exif)
    return buf.getvalue()


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="30"><rect width="40"/></svg>\n'
PDF = b"%PDF-1.4\n1 0 obj <</Type /Catalog>> endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n"
EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 40 30\n"
    b"newpath 0 0 moveto 40 30 lineto stroke showpage\n%%EOF\n"
)


@pytest.fixture
def deadlines(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The seconds of each timer the HTTP client's deadline starts, in order.

    A test that a stalled server cannot hold a download asserts these (the deadline inside
    the code under test) instead of timing itself: one timer of --timeout seconds for a
    whole exchange; a stall deadline starts another only for what is left of its time.
    """
    from resnext_cli.inputs import http as client

    made: list[float] = []
    real = client._Deadline._new_timer

    def recording(self: Any, seconds: float) -> threading.Timer:
        made.append(seconds)
        return real(self, seconds)

    monkeypatch.setattr(client._Deadline, "_new_timer", recording)
    return made


# -- the file system -----------------------------------------------------------------


@pytest.fixture
def deny_read(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Take read permission from a file; as root, who reads it anyway, refuse it as Unix would."""
    locked: set[Path] = set()
    real_open = os.open

    def guarded_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if isinstance(path, (str, Path)) and Path(path).absolute() in locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(os, "open", guarded_open)

    def deny(path: Path) -> None:
        path.chmod(0)
        locked.add(path.absolute())

    return deny


@pytest.fixture
def folder(make_image, tmp_path) -> Path:
    """Three images, one in a subfolder, and a text file that folders skip."""
    root = tmp_path / "photos"
    make_image("b.jpg", seed=2, size=(160, 120), folder=root)
    make_image("a.png", seed=1, size=(120, 160), folder=root)
    make_image("c.JPG", seed=3, size=(100, 100), folder=root / "sub")
    (root / "notes.txt").write_text("not an image, skipped in folders")
    return root


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Count torch.load calls: one entry per file read."""
    original = torch.load
    calls: list[object] = []

    def counting(f: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(f)
        return original(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return calls


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """Photos in a project folder, and a private file elsewhere (the stand-in /etc/passwd)."""
    project = tmp_path / "project"
    photos = project / "photos"
    photos.mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (photos / name).write_bytes(name.encode() * 100)
    private = tmp_path / "etc" / "passwd"
    private.parent.mkdir()
    private.write_bytes(b"root:x:0:0\n" * 20)
    return {"project": project, "photos": photos, "private": private, "tmp": tmp_path}
