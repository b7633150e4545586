"""imaging/budget.py: one decoding budget, held from the header to the crop."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PIL import Image

from resnext_cli import Classifier
from resnext_cli.imaging import budget as budget_module
from resnext_cli.imaging.budget import MemoryBudget, decode_cost, pixel_storage
from resnext_cli.inputs.sources import Source
from resnext_cli.run import pipeline


def test_pixels_are_weighed_as_pillow_stores_them() -> None:
    # Pillow's documented storage: 8-bit images of 2 to 4 bands take 4 bytes a pixel
    # (RGB padded to 32 bits), 8-bit single bands 1, I;16 2, I and F 4.
    assert [pixel_storage(m) for m in ("RGB", "RGBA", "CMYK", "LA", "YCbCr")] == [4] * 5
    assert [pixel_storage(m) for m in ("L", "P", "I;16", "I", "F")] == [1, 1, 2, 4, 4]
    # The picture as decoded, then its RGB copy (4 bytes a pixel).
    assert decode_cost(100, 30, "L") == 100 * 30 * (1 + 4)
    assert decode_cost(100, 30, "I;16") == 100 * 30 * (2 + 4)
    assert decode_cost(100, 30, "RGB") == 100 * 30 * 8


def test_a_cost_over_the_budget_waits_for_everything_else_then_runs_alone() -> None:
    budget = MemoryBudget(1000)
    with budget.reserve() as first:
        first.need(300)
        assert budget.used == 300
        started = threading.Event()
        done = threading.Event()

        def huge() -> None:
            started.set()
            with budget.reserve() as share:
                share.need(10**9)
                assert budget.used == 1000  # all of it, nobody beside it
            done.set()

        thread = threading.Thread(target=huge)
        thread.start()
        started.wait()
        assert not done.wait(0.2)  # still waiting while the first share is held
    thread.join(5)
    assert done.is_set() and budget.used == 0 and budget.peak == 1000
    with pytest.raises(ValueError), budget.hold(1001):  # hold() refuses: for what may be skipped
        pass


def _decode_threads(
    paths: list[Path], budget: MemoryBudget, monkeypatch: pytest.MonkeyPatch, checkpoint: Path
) -> tuple[list[object], list[int]]:
    """prepare() every path in its own thread; what each returned, and the share held
    when each crop was made."""
    clf = Classifier(checkpoint=str(checkpoint), precision="fp32", workers=0)
    plan, transform = clf.plan, clf.loaded.transform
    seen: list[int] = []

    def crop(image: Image.Image) -> object:
        seen.append(budget.used)  # the full-size picture still holds its share here
        return transform(image)

    monkeypatch.setattr(budget_module, "DECODING", budget)
    monkeypatch.setattr(pipeline, "DECODING", budget)
    out: list[object] = [None] * len(paths)

    def work(i: int) -> None:
        out[i] = pipeline.prepare(Source(input=str(paths[i]), path=paths[i]), plan, crop)  # type: ignore[arg-type]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(paths))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out, seen


def test_decoding_threads_share_one_budget_from_header_to_crop(
    make_image, checkpoint, monkeypatch, tmp_path
) -> None:
    size = (640, 480)
    photos = [make_image(f"p{i}.png", seed=i, size=size) for i in range(4)]
    cut = tmp_path / "cut.png"  # a header that promises pixels the file does not have
    cut.write_bytes(photos[0].read_bytes()[:400])
    one = size[0] * size[1] * 8  # decoded RGB (4 bytes a pixel), then an RGB copy
    budget = MemoryBudget(one + one // 2)  # room for one at a time, not two
    out, seen = _decode_threads([*photos, cut], budget, monkeypatch, checkpoint)
    assert [type(o).__name__ for o in out] == ["Tensor"] * 4 + ["InputError"]
    assert seen == [one] * 4  # each crop made while its share was held, and only its own
    assert budget.peak == one and budget.used == 0  # the failed decode gave its share back


def test_peak_memory_stays_under_3_gb_with_huge_pictures(checkpoint: Path, tmp_path: Path) -> None:
    """README: "Peak memory (RSS) stays under 3 GB whatever the inputs." Five pictures of
    80 to 100 million pixels in four pixel modes, two turned by their EXIF orientation (a
    second full-size copy), decoded by four threads and thumbnailed for the report by
    others: they decode one or two at a time, and what each frees goes back to the system.
    (PNG and TIFF, because JPEGs decode reduced. With Pillow's default 16 MiB blocks, which
    glibc keeps per thread, this peaked at 3.6 GB.)"""
    import os
    import subprocess
    import sys

    import numpy as np

    turned = Image.Exif()
    turned[0x0112] = 6  # 90 degrees
    Image.new("RGB", (10_000, 10_000), (40, 90, 160)).save(
        tmp_path / "a.png", compress_level=1, exif=turned.tobytes()
    )
    Image.new("RGBA", (9_000, 9_000), (40, 90, 160, 128)).save(tmp_path / "b.png", compress_level=1)
    grey16 = np.full((10_000, 10_000), 30_000, dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "c.png", compress_level=1)
    del grey16
    Image.new("CMYK", (9_000, 9_000), (40, 90, 160, 3)).save(
        tmp_path / "d.tif", compression="tiff_lzw"
    )
    Image.new("RGB", (10_000, 10_000), (200, 90, 10)).save(
        tmp_path / "e.png", compress_level=1, exif=turned.tobytes()
    )
    files = [str(tmp_path / name) for name in ("a.png", "b.png", "c.png", "d.tif", "e.png")]
    env = {k: v for k, v in os.environ.items() if k != "PILLOW_BLOCK_SIZE"}
    with (tmp_path / "out.jsonl").open("wb") as out, (tmp_path / "err").open("wb") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "resnext_cli", "classify", "--checkpoint", str(checkpoint),
             "--workers", "4", "-f", "jsonl", "--report", str(tmp_path / "r.html"), *files],
            stdout=out, stderr=err, env=env,
        )  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, (tmp_path / "err").read_text()
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 5
    peak = usage.ru_maxrss * 1024  # kilobytes on Linux
    assert peak < 3 * 10**9, f"peak RSS {peak / 1e9:.2f} GB"


def test_shares_add_up_and_are_given_back_once() -> None:
    budget = MemoryBudget(1000)
    assert (budget.used, budget.peak) == (0, 0)  # nothing held yet
    assert budget.acquire(0) == 0 and budget.acquire(-5) == 0  # an empty picture holds none
    with budget.reserve() as first, budget.reserve() as second:
        first.need(300)
        second.need(200)
        second.need(400)  # once: a second call adds nothing
        assert (budget.used, budget.peak) == (500, 500)
        first.release()
        first.release()  # given back once, however often it is asked
        assert budget.used == 200
    assert (budget.used, budget.peak) == (0, 500)


def test_pillow_is_asked_for_blocks_it_frees_unless_the_person_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[int] = []
    monkeypatch.setattr(budget_module.pillow_core, "set_block_size", asked.append)
    monkeypatch.delenv("PILLOW_BLOCK_SIZE", raising=False)
    budget_module.return_freed_pixels()
    assert asked == [64 * 2**20]  # 64 MiB: over glibc's mmap threshold of 32 MiB
    monkeypatch.setenv("PILLOW_BLOCK_SIZE", "16m")
    budget_module.return_freed_pixels()
    assert asked == [64 * 2**20]  # the person's setting stands
