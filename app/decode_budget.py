"""How many pixels one API process may be decoding at once: a bound on the memory uploads can take.

A small compressed file can hold a large image (a 150 KB PNG of 6300x6300
pixels costs about 0.5 GB to decode and convert), and every API thread may be
decoding one. Each upload reserves its header's width x height before decoding
and gives it back after; one that does not fit waits briefly for others to
finish, then gets 503 decoder_busy with Retry-After.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

# How long an upload waits for room: about one large decode. Longer, and a flood of large images
# holds every API thread waiting, which is what the budget is there to prevent.
WAIT_SECONDS = 1.0


class DecoderBusy(Exception):
    """The process's decoding budget stayed taken for WAIT_SECONDS."""


class DecodeBudget:
    def __init__(self, pixels: int):
        self.pixels = pixels
        self._available = pixels
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        """Hold `pixels` of the budget while the block decodes; DecoderBusy if they do not come free in time."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._available >= pixels, timeout=WAIT_SECONDS):
                raise DecoderBusy()
            self._available -= pixels
        try:
            yield
        finally:
            with self._changed:
                self._available += pixels
                self._changed.notify_all()
