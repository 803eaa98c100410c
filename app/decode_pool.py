"""The API process's decoding threads: a request's images decode in parallel, within the decode budget.

Pillow releases the GIL while it decodes and resizes, so threads of one process can keep every core it may run
on busy: a request of 8 photos waits for about 8 / cores decodes instead of 8 (pyspng, which decodes plain PNGs,
holds the GIL: those decodes still take turns; docs/performance.md). One pool per process, shared by all its
request threads (a pool per request would multiply the decoding threads by API_THREADS and let one request's
images crowd out everyone's), with one thread per core the process may use; the request's own thread decodes
its last image.

The decode budget (app/decode_budget.py) is taken in the request's own thread before an image is handed over,
in the images' order, and given back when that image's decode is done or cancelled: the pixels of images
waiting for a thread or decoding never exceed DECODE_PIXEL_BUDGET, and a request whose image finds no room in
time fails with DecoderBusy as it did when its thread decoded them one after another.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from app.decode_budget import DecodeBudget, DecoderBusy

T = TypeVar("T")


def cores_available() -> int:
    """The cores this process may run on (its CPU affinity, which taskset and cpusets narrow), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # macOS has no affinity
        return os.cpu_count() or 1


class DecodePool:
    def __init__(self, budget: DecodeBudget, threads: int):
        self.budget = budget
        # Threads start on first use: under gunicorn, in the API process that serves, never in its master.
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="decode")

    def run_all(self, tasks: Sequence[tuple[int, Callable[[], T]]]) -> list[T]:
        """Run each task `(pixels, decode)`, its pixels taken from the budget first; their results in the tasks'
        order. DecoderBusy when one finds no room in time: the tasks not yet started are cancelled.

        The last task runs in the calling thread, which would only wait otherwise: a request of one image is
        decoded with no handoff between threads (about 1 ms each way on this loaded 2-core machine)."""
        if not tasks:
            return []
        futures: list[Future[T]] = []
        try:
            for pixels, decode in tasks[:-1]:
                self.budget.take(pixels)
                futures.append(self._executor.submit(self._decode_and_give_back, pixels, decode))
            last_pixels, last_decode = tasks[-1]
            self.budget.take(last_pixels)
        except DecoderBusy:
            for (pixels, _), future in zip(tasks, futures):
                if future.cancel():  # never to run, so never to give its pixels back itself
                    self.budget.give_back(pixels)
            raise
        last = self._decode_and_give_back(last_pixels, last_decode)
        return [future.result() for future in futures] + [last]

    def _decode_and_give_back(self, pixels: int, decode: Callable[[], T]) -> T:
        """The pixels go back once `decode` has returned (its image freed), before its result reaches the
        request."""
        try:
            return decode()
        finally:
            self.budget.give_back(pixels)
