"""How many pixels one API process may be decoding at once: a bound on the memory uploads can take.

A small compressed file can hold a large image (a 150 KB PNG of 6300x6300
pixels costs about 0.5 GB to decode and convert), and every API thread may carry
decoding one. Each upload takes its header's width x height before it is handed
to the decoding threads (app/decode_pool.py) and gives it back when its decode is
done; one that does not fit waits briefly for others to finish, then gets 503
decoder_busy with Retry-After.
"""

from __future__ import annotations

import threading

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

    def take(self, pixels: int) -> None:
        """Hold `pixels` until `give_back`, waiting up to WAIT_SECONDS for them to come free, else DecoderBusy."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._available >= pixels, timeout=WAIT_SECONDS):
                raise DecoderBusy()
            self._available -= pixels

    def give_back(self, pixels: int) -> None:
        with self._changed:
            self._available += pixels
            self._changed.notify_all()
