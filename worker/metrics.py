"""The worker's statistics for /metrics, added to Redis after every batch (the format: serving/worker_stats.py).

Through Redis rather than a port of each worker's own: a scaled worker
(`docker compose up --scale worker=3`) has no fixed address to scrape, one
scrape of the API then covers the whole fleet, and the totals survive a
worker's restart. It costs one pipelined round trip per batch.
"""

from __future__ import annotations

import logging

from serving.protocol import Keys
from serving.redis_client import REDIS_ERRORS, RedisClient
from serving.worker_stats import batch_stats_increments

log = logging.getLogger("worker")


class BatchStats:
    def __init__(self, client: RedisClient, keys: Keys):
        self.client = client
        self.keys = keys
        self._expired_reported = 0

    def record(self, batch_size: int, inference_ms: float, expired_total: int) -> None:
        """Add one batch: the images it ran, its inference time, and the expired requests since the last call."""
        increments = batch_stats_increments(batch_size, inference_ms / 1000,
                                            expired_total - self._expired_reported)
        if not increments:
            return
        pipe = self.client.pipeline(transaction=False)
        for field_name, amount in increments.items():
            if isinstance(amount, int):
                pipe.hincrby(self.keys.worker_stats, field_name, amount)
            else:
                pipe.hincrbyfloat(self.keys.worker_stats, field_name, amount)
        try:
            pipe.execute()
        except REDIS_ERRORS as exc:  # the answers are already out; statistics are not worth a retry
            log.warning("could not record batch statistics: %s", exc)
            return
        self._expired_reported = expired_total
