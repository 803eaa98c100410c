"""Riding out Redis errors: both of a worker's threads (serving and heartbeat) repeat their step with backoff."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from serving.redis_client import REDIS_ERRORS

log = logging.getLogger("worker")

MAX_RECONNECT_DELAY_SECONDS = 5.0


def retry_on_redis_errors(step: Callable[[], None], stop: threading.Event, worker_id: str) -> None:
    """Run step() until `stop`, backing off while Redis fails: 0.2 s, doubling up to 5 s, from 0.2 s again after a
    success."""
    failures = 0
    while not stop.is_set():
        try:
            step()
            failures = 0
        except REDIS_ERRORS as exc:
            failures += 1
            delay = min(MAX_RECONNECT_DELAY_SECONDS, 0.1 * 2 ** failures)
            log.warning("worker=%s redis error (%s); retrying in %.1fs", worker_id, exc, delay)
            stop.wait(delay)
