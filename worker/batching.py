"""Taking batches off the queue and handing results back, both atomically.

A message moves from the shared queue into this worker's own processing list
with (B)LMOVE, which is atomic: two workers can never take the same message,
and a message is never in neither list (the seed's LRANGE + LTRIM did both).
A message leaves the processing list (LREM, the exact bytes taken) in the same
transaction that publishes its result, so it leaves Redis only once its answer is
there; what a failed publish or a lost reply leaves in the list is served again
before anything new is taken (`held_messages`).
"""

from __future__ import annotations

import time

from serving.protocol import Keys
from serving.redis_client import RedisClient

FILL_POLL_SECONDS = 0.0005


def take_batch(client: RedisClient, keys: Keys, worker_id: str, max_size: int,
               block_seconds: float, wait_for_more_seconds: float) -> list[bytes]:
    """Up to max_size raw messages, oldest first; [] if none arrived within block_seconds.

    Blocks for the first message, takes whatever else is queued, then keeps
    looking for up to wait_for_more_seconds while the batch is not full. That
    short wait polls instead of blocking: Redis resolves blocking timeouts on
    its server tick (100 ms at the default hz), so a 2 ms BLMOVE waits ~100 ms.
    """
    processing = keys.processing(worker_id)
    first = client.blmove(keys.queue, processing, block_seconds, "RIGHT", "LEFT")
    if first is None:
        return []
    batch = [first, *_take_queued(client, keys.queue, processing, max_size - 1)]
    give_up_at = time.monotonic() + wait_for_more_seconds
    while len(batch) < max_size and time.monotonic() < give_up_at:
        time.sleep(FILL_POLL_SECONDS)
        batch += _take_queued(client, keys.queue, processing, max_size - len(batch))
    return batch


def _take_queued(client: RedisClient, queue: str, processing: str, count: int) -> list[bytes]:
    """Move up to count queued messages without blocking, in one round trip."""
    if count <= 0:
        return []
    pipe = client.pipeline(transaction=False)
    for _ in range(count):
        pipe.lmove(queue, processing, "RIGHT", "LEFT")
    return [message for message in pipe.execute() if message is not None]


def take_retry(client: RedisClient, keys: Keys, worker_id: str) -> list[bytes]:
    """One message from the retry list, alone, or []: a retried message never shares a batch (RETURN_UNFINISHED)."""
    message = client.lmove(keys.retry, keys.processing(worker_id), "RIGHT", "LEFT")
    return [message] if message is not None else []


def held_messages(client: RedisClient, keys: Keys, worker_id: str) -> list[bytes]:
    """What this worker's processing list holds, oldest first: work taken but not yet published."""
    return client.lrange(keys.processing(worker_id), 0, -1)[::-1]


def publish_results(client: RedisClient, keys: Keys, worker_id: str, results: dict[str, bytes],
                    handled: list[bytes], ttl_seconds: float) -> None:
    """Hand each request its result and drop the handled messages (and only those), in one transaction."""
    pipe = client.pipeline(transaction=True)
    for request_id, payload in results.items():
        key = keys.result(request_id)
        pipe.lpush(key, payload)
        pipe.pexpire(key, int(ttl_seconds * 1000))
    for message in handled:
        pipe.lrem(keys.processing(worker_id), 1, message)
    pipe.execute()
