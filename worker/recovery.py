"""Getting back the work of workers that died or stopped: the reliable-queue maintenance pass."""

from __future__ import annotations

import logging
import time

import redis

from serving import protocol
from serving.protocol import Keys

log = logging.getLogger("worker")


def return_unfinished(client: redis.Redis, keys: Keys, worker_id: str, count_as_failure: bool,
                      max_attempts: int, result_ttl: float) -> tuple[int, int]:
    """Empty a worker's processing list back onto the queue: (requeued, answered as exhausted)."""
    returned, answered = client.eval(
        protocol.RETURN_UNFINISHED, 3, keys.processing(worker_id), keys.queue, keys.workers,
        worker_id, "1" if count_as_failure else "0", max_attempts, keys.result(""), int(result_ttl * 1000))
    return int(returned), int(answered)


def reap_dead_workers(client: redis.Redis, keys: Keys, worker_timeout: float, max_attempts: int,
                      result_ttl: float) -> int:
    """Requeue the unfinished work of every worker silent for longer than worker_timeout."""
    dead = client.zrangebyscore(keys.workers, "-inf", time.time() - worker_timeout)
    reaped = 0
    for worker_id in (w.decode() for w in dead):
        # Atomic: of two workers reaping the same dead one, the second finds nothing left.
        returned, answered = return_unfinished(client, keys, worker_id, True, max_attempts, result_ttl)
        log.warning("reaped dead worker=%s requeued=%d gave_up=%d", worker_id, returned, answered)
        reaped += 1
    return reaped
