"""One memory budget for every full-size decode in the process.

Decoding threads and the report's thumbnails share it: each decode reads its image's
size from the header, waits until its share fits, and holds it until the full-size
pixels are gone (after the crop). Ordinary photos take a few percent of it and decode
side by side; an image near the pixel limit decodes alone. So the run's peak memory
is the model plus this budget, whatever the inputs and however many threads decode.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from PIL import _imaging as pillow_core

# Room for the largest image the default --max-pixels allows, decoded with its RGB copy
# (179 million pixels at 4 + 4 bytes: 1.4 GB), with the model beside it under 3 GB.
DECODE_MEMORY = 1536 << 20


class MemoryBudget:
    """Bytes shared by threads: each holder waits until its share fits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, cost: int) -> int:
        """Wait for *cost* bytes and hold them; a cost over the limit holds all of it
        (it waits until nothing else is held, then runs alone). Returns what is held."""
        cost = min(max(cost, 0), self.limit)
        with self._cond:
            self._cond.wait_for(lambda: self.used + cost <= self.limit)
            self.used += cost
            self.peak = max(self.peak, self.used)
        return cost

    def release(self, cost: int) -> None:
        with self._cond:
            self.used -= cost
            self._cond.notify_all()

    @contextlib.contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        """Hold *cost* bytes (wait for them); ValueError when it can never fit."""
        if cost > self.limit:
            raise ValueError("over the memory budget")
        held = self.acquire(cost)
        try:
            yield
        finally:
            self.release(held)

    @contextlib.contextmanager
    def reserve(self) -> Iterator[Reservation]:
        """A share asked for later, once the size is known, and given back on leaving."""
        reservation = Reservation(self)
        try:
            yield reservation
        finally:
            reservation.release()


class Reservation:
    """One decode's share of a budget: taken once the header tells the size."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.held = 0

    def need(self, cost: int) -> None:
        """Wait until *cost* bytes fit, then hold them (once; a second call adds nothing)."""
        if not self.held:
            self.held = self.budget.acquire(cost)

    def release(self) -> None:
        if self.held:
            self.budget.release(self.held)
            self.held = 0


DECODING = MemoryBudget(DECODE_MEMORY)

# The budget bounds what is held; what the process keeps is another matter. Pillow
# stores a large picture in blocks of 16 MiB, and glibc serves blocks under 32 MiB from
# per-thread arenas that keep what is freed: each decoding and thumbnail thread kept its
# own largest picture, and a run whose decodes held 1.5 GB at most peaked at 6.2 GB.
# Blocks of 64 MiB are mapped on their own and unmapped when the picture goes.
PIXEL_BLOCK = 64 << 20


def return_freed_pixels() -> None:
    """Make Pillow's large pictures give their memory back when freed (once per process;
    a PILLOW_BLOCK_SIZE the person set is theirs to keep)."""
    if "PILLOW_BLOCK_SIZE" not in os.environ:
        pillow_core.set_block_size(PIXEL_BLOCK)


return_freed_pixels()


def pixel_storage(mode: str) -> int:
    """Bytes Pillow keeps per pixel of *mode*: 8-bit images of two or more bands are
    stored four bytes a pixel (RGB included); others as bands times band size."""
    import numpy as np
    from PIL import ImageMode

    info = ImageMode.getmode(mode)
    size = np.dtype(info.typestr).itemsize
    return 4 if size == 1 and len(info.bands) > 1 else len(info.bands) * size


def decode_cost(width: int, height: int, mode: str) -> int:
    """Peak bytes of decoding a *mode* picture of that size: it and its RGB copy."""
    return width * height * (pixel_storage(mode) + pixel_storage("RGB"))
