"""Getting back the work of workers that died or stopped: the reliable-queue maintenance pass."""

from __future__ import annotations

import logging

from serving import protocol
from serving.protocol import Keys, MalformedMessage
from serving.redis_client import RedisClient

log = logging.getLogger("worker")


def return_unfinished(client: RedisClient, keys: Keys, worker_id: str, count_as_failure: bool,
                      max_attempts: int, worker_timeout: float = 0.0) -> tuple[int, int] | None:
    """Empty a worker's processing list back onto the queues: (requeued, exhausted).

    With count_as_failure the worker is taken for dead; if its heartbeat is younger than worker_timeout
    by the time the script runs, it is alive after all, nothing is touched and the answer is None.
    Exhausted messages wait in their own list for answer_exhausted.
    """
    returned, exhausted = client.eval(
        protocol.RETURN_UNFINISHED, 6, keys.processing(worker_id), keys.queue, keys.workers, keys.retry,
        keys.exhausted, keys.stopping, worker_id, "1" if count_as_failure else "0", max_attempts, worker_timeout)
    return None if returned < 0 else (int(returned), int(exhausted))


def answer_exhausted(client: RedisClient, keys: Keys, max_attempts: int, result_ttl: float) -> int:
    """Answer every message whose workers kept dying with an error, each once; how many were answered."""
    answered = 0
    for message in client.lrange(keys.exhausted, 0, -1):
        try:
            request = protocol.decode_request(message)
            request_id, attempts = request.id, request.attempts
        except MalformedMessage as exc:  # the reaper's script kept it for its id, which it has
            request_id, attempts = exc.request_id, max_attempts
        answer = protocol.encode_failure(request_id, protocol.ATTEMPTS_EXHAUSTED, f"the worker processing this "
                                         f"request died {attempts} times; giving up (MAX_ATTEMPTS={max_attempts})")
        if client.eval(protocol.ANSWER_EXHAUSTED, 2, keys.exhausted, keys.result(request_id), message, answer,
                       int(result_ttl * 1000)):
            log.warning("gave up on request id=%s: its workers died %d times", request_id, attempts)
            answered += 1
    return answered


def silent_workers(client: RedisClient, keys: Keys, worker_timeout: float) -> list[str]:
    """Workers whose last heartbeat is older than worker_timeout, by Redis's clock."""
    return [w.decode() for w in client.eval(protocol.SILENT_WORKERS, 1, keys.workers, worker_timeout)]


def reap_dead_workers(client: RedisClient, keys: Keys, worker_timeout: float, max_attempts: int,
                      result_ttl: float) -> int:
    """Requeue the unfinished work of every worker silent for longer than worker_timeout; answer what is exhausted.

    The exhausted list is answered on every pass, not only after a reap: a worker that died between
    its reap and its answers leaves them for the next pass of any worker.
    """
    reaped = 0
    for worker_id in silent_workers(client, keys, worker_timeout):
        # Atomic, and checks the heartbeat again: of two workers reaping the same dead one, the second
        # finds nothing left, and a worker whose heartbeat came in meanwhile is left alone.
        outcome = return_unfinished(client, keys, worker_id, True, max_attempts, worker_timeout)
        if outcome is None:
            log.info("worker=%s heartbeat came in while it was being reaped; left alone", worker_id)
            continue
        log.warning("reaped dead worker=%s requeued=%d gave_up=%d", worker_id, *outcome)
        reaped += 1
    answer_exhausted(client, keys, max_attempts, result_ttl)
    return reaped
