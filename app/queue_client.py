"""The API's side of the Redis protocol: read the served model, submit an image, await its answer."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import redis

from serving import fleet_scripts, protocol, queue_scripts
from serving.protocol import (
    InferenceRequest,
    InferenceResult,
    Keys,
    MalformedModelInfo,
    ModelInfo,
    RedisClock,
)
from serving.redis_client import RedisClient
from serving.worker_stats import WorkerStats, decode_worker_stats

# While a request waits for its answer and Redis is restarting: how often to try it again, and how the
# connection fails meanwhile (refused; or a connect that times out, where its address has gone quiet, as a
# stopped container's does).
RECONNECT_INTERVAL = 0.2
CONNECTION_LOST = (redis.ConnectionError, redis.TimeoutError)
# How long what was read of Redis's persistence holds: it is needed when Redis has gone, and cannot be asked.
PERSISTENCE_READ_EVERY = 30.0

log = logging.getLogger("api")


class NoWorker(Exception):
    """Nobody would answer: no live worker where the request would go. The message names the cause (which
    version's heartbeat is missing, a version closing, no model at all)."""


class QueueFull(Exception):
    """More images are queued than can be served in time."""


class Charge(Protocol):
    """What admitting a request costs its client (app/access.py): taken in admission's round trip."""

    def queue_on(self, pipe) -> None: ...

    def judge(self, reply) -> None: ...  # raises when the client may not go on


class RedisPersistence:
    """Whether the Redis behind a client keeps its data across a restart (its append-only file is on), as read at
    most every PERSISTENCE_READ_EVERY seconds. One per client, shared by its queues.

    A request whose connection is lost while it waits for its answer asks this: against a Redis that keeps
    nothing its message is gone, and waiting for that Redis to come back would only delay the 503 by the whole
    outage, up to the request's deadline.
    """

    def __init__(self, client: RedisClient):
        self.client = client
        self._keeps_data: bool | None = None  # None: not read yet, or not readable
        self._read_at = -PERSISTENCE_READ_EVERY

    def read_if_stale(self) -> None:
        """Read it again if the last read is older than PERSISTENCE_READ_EVERY (one round trip then)."""
        if time.monotonic() - self._read_at >= PERSISTENCE_READ_EVERY:
            self._read_at = time.monotonic()
            self.read()

    def read(self) -> bool | None:
        """Whether Redis keeps its data now, remembered; None when this client may not ask (an ACL without INFO)."""
        try:
            info = self.client.info("persistence")
        except redis.ResponseError:
            info = None
        # A Cluster's client answers with every node's INFO by name, and a Cluster's queue lives on one
        # node: counted as keeping nothing, as its failover may lose the node's last writes anyway.
        self._keeps_data = None if info is None else info.get("aof_enabled") == 1
        return self._keeps_data

    def keeps_nothing(self) -> bool:
        """True when the last read said Redis keeps nothing across a restart; unknown counts as keeping."""
        return self._keeps_data is False


@dataclass(frozen=True)
class VersionStatus:
    model: ModelInfo | None  # None: no worker has announced a (usable) model within WORKER_TIMEOUT
    workers_alive: int
    queue_depth: int  # every lane's
    stats: WorkerStats
    lane_depths: dict[str, int]  # priority -> images queued in its lane


class InferenceQueue:
    """`client` answers within the Redis timeout; `waiting_client` allows for a whole request's wait."""

    def __init__(self, client: RedisClient, waiting_client: RedisClient, keys: Keys, max_queue: int,
                 persistence: RedisPersistence | None = None):
        self.client = client
        self.waiting_client = waiting_client
        self.keys = keys
        self.max_queue = max_queue
        self.clock = RedisClock()  # read again at every admission
        self.persistence = persistence or RedisPersistence(client)  # read again, when stale, at admission

    def admit(self, charge: Charge | None = None) -> ModelInfo:
        """The served model, if a worker is alive and the queue has room; one round trip, which reads Redis's clock.

        A `charge` (the client's rate limit) is taken in the same round trip, and judged first: a client over
        its limit hears so whatever the queue's state. Refused then for want of a worker or room (NoWorker,
        QueueFull), the request has been charged: giving the charge back is its owner's (app/access.py,
        charged_for).
        """
        self.persistence.read_if_stale()
        pipe = self.client.pipeline(transaction=False)
        if charge is not None:
            charge.queue_on(pipe)
        queue_scripts.queue_admission(pipe, keys=self.keys)
        sent_at = time.time()
        *charged, reply = pipe.execute()
        admission = queue_scripts.admission_reply(reply)
        self.clock.observe(admission.redis_now, sent_at, time.time())
        if charge is not None:
            charge.judge(charged[0])
        model = self._usable_model(admission.model_info)
        if model is None:
            raise NoWorker(f"{self.keys.model_id} has no live worker (no heartbeat announces its model)")
        if admission.depth >= self.max_queue:
            raise QueueFull(admission.depth)
        return model

    def version_status(self, worker_timeout: float) -> VersionStatus:
        """The served model, live workers, queue depth and worker statistics; one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.model)
        fleet_scripts.queue_live_worker_count(pipe, keys=self.keys, worker_timeout=worker_timeout)
        pipe.hgetall(self.keys.worker_stats)
        for lane in self.keys.lanes:
            pipe.llen(lane)
        raw_info, alive, stats, *depths = pipe.execute()
        return VersionStatus(self._usable_model(raw_info), alive, sum(depths), decode_worker_stats(stats),
                           dict(zip(protocol.PRIORITIES, depths)))

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

    def classify(self, images: list[np.ndarray], job_ids: list[str], deadline: float, top_k: int,
                 probabilities: bool = False, priority: str = "normal") -> dict[str, InferenceResult]:
        """Queue preprocessed images, each under its job id (unique), and wait for their answers until the deadline.

        One round trip queues them all, and they batch with everyone else's. `deadline` is by this host's
        clock; the messages carry it by Redis's, which workers compare with. The answers that came in time,
        by job id: a missing one is a job whose deadline passed.
        """
        offset = self.clock.offset
        enqueued_at = time.time() + offset
        self.enqueue([InferenceRequest(job_id, pixels, enqueued_at, deadline + offset, top_k, probabilities, priority)
                      for job_id, pixels in zip(job_ids, images)])
        return self.await_results(job_ids, deadline)

    def enqueue(self, requests: list[InferenceRequest]) -> None:
        """Queue the images of one request (one priority) in their lane, all or none: NoWorker once the version's
        last worker has closed it (since admission, perhaps), QueueFull when they would take the version's lanes
        together past MAX_QUEUE. Checked and pushed atomically, their pixels written in the same round trip."""
        (priority,) = {request.priority for request in requests}
        outcome = queue_scripts.enqueue(self.client, keys=self.keys, lane=self.keys.lane(priority),
                                        max_queue=self.max_queue,
                                        requests=[protocol.encode_request(request) for request in requests])
        if outcome == queue_scripts.ENQUEUE_NO_WORKER:
            raise NoWorker(f"the last worker of {self.keys.model_id} stopped while this request came in")
        if outcome == queue_scripts.ENQUEUE_FULL:
            raise QueueFull(self.max_queue)

    def await_results(self, job_ids: list[str], deadline: float) -> dict[str, InferenceResult]:
        """Each job's answer as it comes, until all are in or the deadline passes.

        BLPOP wakes the moment a worker pushes an answer: no polling, no sleeps. Images of one request are
        usually answered by one batch, so after each wake the answers already there are taken in one round trip.
        A connection lost while waiting (Redis restarting) is waited out when the Redis that comes back kept its
        data (the queued messages, and the answers, are still there); else the error goes to the client, at once
        when the Redis that went away was known to keep nothing.
        """
        waiting = {self.keys.result(job_id): job_id for job_id in job_ids}
        results: dict[str, InferenceResult] = {}
        while waiting:
            try:
                # BLPOP's timeout has one-millisecond resolution; zero would block forever.
                popped = self.waiting_client.blpop(list(waiting), timeout=max(deadline - time.time(), 0.001))
                if popped is None:
                    break
                results[waiting.pop(popped[0].decode())] = protocol.decode_result(popped[1])
                results.update(self._answers_already_in(waiting))
            except CONNECTION_LOST:
                if self.persistence.keeps_nothing() or not self._back_with_its_data(deadline):
                    raise
            waiting = {key: job_id for key, job_id in waiting.items() if job_id not in results}
        return results

    def _back_with_its_data(self, deadline: float) -> bool:
        """After a lost connection: whether Redis answers again before the deadline with its append-only file on,
        so that what was queued survived the restart (without it, a restarted Redis starts empty)."""
        while time.time() < deadline:
            try:
                return self.persistence.read() is True
            except CONNECTION_LOST:
                time.sleep(RECONNECT_INTERVAL)
        return False

    def _answers_already_in(self, waiting: dict[str, str]) -> dict[str, InferenceResult]:
        if not waiting:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for key in waiting:
            pipe.lpop(key)
        return {job_id: protocol.decode_result(raw) for job_id, raw in zip(waiting.values(), pipe.execute())
                if raw is not None}
