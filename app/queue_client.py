"""The API's side of the Redis protocol: read the served model, submit an image, await its answer."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from serving import protocol
from serving.protocol import InferenceRequest, Keys, MalformedModelInfo, ModelInfo, RedisClock, redis_seconds
from serving.redis_client import RedisClient
from serving.worker_stats import WorkerStats, decode_worker_stats

log = logging.getLogger("api")


class NoWorker(Exception):
    """No worker has announced a model recently: nobody would answer."""


class QueueFull(Exception):
    """More images are queued than can be served in time."""


class NoAnswer(Exception):
    """The deadline passed before a worker answered."""


@dataclass(frozen=True)
class FleetStatus:
    model: ModelInfo | None  # None: no worker has announced a (usable) model within WORKER_TIMEOUT
    workers_alive: int
    queue_depth: int
    stats: WorkerStats


class InferenceQueue:
    """`client` answers within the Redis timeout; `waiting_client` allows for a whole request's wait."""

    def __init__(self, client: RedisClient, waiting_client: RedisClient, keys: Keys, max_queue: int):
        self.client = client
        self.waiting_client = waiting_client
        self.keys = keys
        self.max_queue = max_queue
        self.clock = RedisClock()  # read again at every admission

    def admit(self) -> ModelInfo:
        """The served model, if a worker is alive and the queue has room; one round trip, which reads Redis's clock."""
        sent_at = time.time()
        raw_info, depth, redis_time = self.client.eval(protocol.ADMISSION, 2, self.keys.model, self.keys.queue)
        self.clock.observe(redis_seconds(redis_time), sent_at, time.time())
        model = self._usable_model(raw_info)
        if model is None:
            raise NoWorker()
        if depth >= self.max_queue:
            raise QueueFull(depth)
        return model

    def fleet_status(self, worker_timeout: float) -> FleetStatus:
        """The served model, live workers, queue depth and worker statistics; one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.model)
        protocol.count_live_workers(pipe, self.keys, worker_timeout)
        pipe.llen(self.keys.queue)
        pipe.hgetall(self.keys.worker_stats)
        raw_info, alive, depth, stats = pipe.execute()
        return FleetStatus(self._usable_model(raw_info), alive, depth, decode_worker_stats(stats))

    def _usable_model(self, raw_info: bytes | None) -> ModelInfo | None:
        """The heartbeat's model description; None without one, or with one the API cannot size requests from
        (garbled or forged: its sizes are bounded, the log says which field is wrong, the client is told 503)."""
        if raw_info is None:
            return None
        try:
            return ModelInfo.from_json(raw_info)
        except MalformedModelInfo as exc:
            log.warning("unusable model description in %s, counted as no worker: %s", self.keys.model, exc)
            return None

    def classify(self, pixels: np.ndarray, deadline: float, job_id: str) -> dict:
        """Queue one preprocessed image under `job_id` (unique) and block until its result or the deadline.

        `deadline` is by this host's clock; the message carries it by Redis's, which workers compare with.
        """
        offset = self.clock.offset
        request = InferenceRequest(job_id, pixels, time.time() + offset, deadline + offset)
        self.enqueue(protocol.encode_request(request))
        return self.await_result(request.job_id, deadline)

    def enqueue(self, message: bytes) -> None:
        """Queue one message, or raise QueueFull when MAX_QUEUE are waiting (checked and pushed atomically)."""
        if self.client.eval(protocol.ENQUEUE, 1, self.keys.queue, self.max_queue, message) < 0:
            raise QueueFull(self.max_queue)

    def await_result(self, job_id: str, deadline: float) -> dict:
        # BLPOP wakes the moment the worker pushes the result: no polling, no sleeps.
        # Its timeout has one-millisecond resolution; zero would block forever.
        remaining = max(deadline - time.time(), 0.001)
        popped = self.waiting_client.blpop([self.keys.result(job_id)], timeout=remaining)
        if popped is None:
            raise NoAnswer()
        return protocol.decode_result(popped[1])
