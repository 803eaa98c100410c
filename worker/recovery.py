"""Getting back the work of workers that died or stopped: the reliable-queue maintenance pass."""

from __future__ import annotations

import logging

from serving import protocol
from serving.protocol import Keys
from serving.redis_client import RedisClient

log = logging.getLogger("worker")


def return_unfinished(client: RedisClient, keys: Keys, worker_id: str, count_as_failure: bool,
                      max_attempts: int, result_ttl: float, worker_timeout: float = 0.0) -> tuple[int, int] | None:
    """Empty a worker's processing list back onto the queue: (requeued, answered as exhausted).

    With count_as_failure the worker is taken for dead; if its heartbeat is younger than worker_timeout
    by the time the script runs, it is alive after all, nothing is touched and the answer is None.
    """
    returned, answered = client.eval(
        protocol.RETURN_UNFINISHED, 4, keys.processing(worker_id), keys.queue, keys.workers, keys.retry,
        worker_id, "1" if count_as_failure else "0", max_attempts, keys.result(""), int(result_ttl * 1000),
        worker_timeout)
    return None if returned < 0 else (int(returned), int(answered))


def silent_workers(client: RedisClient, keys: Keys, worker_timeout: float) -> list[str]:
    """Workers whose last heartbeat is older than worker_timeout, by Redis's clock."""
    return [w.decode() for w in client.eval(protocol.SILENT_WORKERS, 1, keys.workers, worker_timeout)]


def reap_dead_workers(client: RedisClient, keys: Keys, worker_timeout: float, max_attempts: int,
                      result_ttl: float) -> int:
    """Requeue the unfinished work of every worker silent for longer than worker_timeout."""
    reaped = 0
    for worker_id in silent_workers(client, keys, worker_timeout):
        # Atomic, and checks the heartbeat again: of two workers reaping the same dead one, the second
        # finds nothing left, and a worker whose heartbeat came in meanwhile is left alone.
        outcome = return_unfinished(client, keys, worker_id, True, max_attempts, result_ttl, worker_timeout)
        if outcome is None:
            log.info("worker=%s heartbeat came in while it was being reaped; left alone", worker_id)
            continue
        log.warning("reaped dead worker=%s requeued=%d gave_up=%d", worker_id, *outcome)
        reaped += 1
    return reaped
