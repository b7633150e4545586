"""Decoding limits the options name before any decoder is imported (no Pillow here)."""

from __future__ import annotations

DEFAULT_MAX_PIXELS = 2 * 89_478_485  # Pillow's own decompression-bomb limit
