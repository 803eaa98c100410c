"""The API's view of every served model: which versions are live, which one a request goes to, their queues.

Workers register each model version they serve (`name@version`) in the fleet's registry with every
heartbeat; the API reads the registry and the names' routing weights at most once per
`REFRESH_SECONDS` per process, so choosing a version costs a request no round trip to Redis.

One read at a time, and no request waits behind another's: the requests that find the snapshot stale
while a read is in flight wait for that read's outcome (its snapshot, or its error) for at most
REDIS_TIMEOUT. Were each to read in turn, a hung Redis would answer the n-th of them after n timeouts.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import redis

from app.queue_client import FleetStatus, InferenceQueue, NoWorker
from serving import routing
from serving.protocol import FleetKeys, Keys, model_ages, model_id, split_model_id
from serving.redis_client import RedisClient

# How stale the API's picture of versions and weights may be: a new route takes effect within this.
REFRESH_SECONDS = 1.0


class UnknownModel(Exception):
    """No worker has ever announced this model name under this KEY_PREFIX."""


class NoDefaultModel(Exception):
    """POST /predict with several names served and DEFAULT_MODEL unset."""


class RegistryReadTooSlow(redis.TimeoutError):
    """The registry read this request waited for was still going after REDIS_TIMEOUT (a Redis error: 503)."""


@dataclass(frozen=True)
class Snapshot:
    versions: dict[str, list[str]]  # name -> every version the registry knows
    live: dict[str, list[str]]  # name -> versions with a heartbeat within WORKER_TIMEOUT
    weights: dict[str, dict[str, int]]  # name -> routing weights (empty: none set)
    taken_at: float


class Fleet:
    def __init__(self, client: RedisClient, waiting_client: RedisClient, key_prefix: str, max_queue: int,
                 worker_timeout: float, default_model: str, redis_timeout: float):
        self.client, self.waiting_client = client, waiting_client
        self.keys = FleetKeys(key_prefix)
        self.max_queue, self.worker_timeout, self.default_model = max_queue, worker_timeout, default_model
        self.redis_timeout = redis_timeout
        self._queues: dict[str, InferenceQueue] = {}
        self._snapshot = Snapshot({}, {}, {}, 0.0)
        self._read_in_flight: Future[Snapshot] | None = None
        self._lock = threading.Lock()  # guards _read_in_flight only: nobody holds it across a round trip

    def snapshot(self, fresh: bool = False) -> Snapshot:
        """Versions and weights, read again when older than REFRESH_SECONDS (or `fresh`).

        A read already in flight counts as fresh: it began less than REDIS_TIMEOUT ago. Its error is
        every waiting request's error; a read slower than REDIS_TIMEOUT is RegistryReadTooSlow to them.
        """
        if not fresh and time.monotonic() - self._snapshot.taken_at <= REFRESH_SECONDS:
            return self._snapshot
        read, leads = self._join_read()
        if leads:
            self._finish(read)
        try:
            return read.result(timeout=self.redis_timeout)
        except TimeoutError:  # the Future's own wait (redis's TimeoutError is another class)
            raise RegistryReadTooSlow(f"the registry read in flight took over REDIS_TIMEOUT="
                                      f"{self.redis_timeout:g}s") from None

    def _join_read(self) -> tuple[Future[Snapshot], bool]:
        """The registry read in flight, and whether this caller is the one to do it (none was in flight)."""
        with self._lock:
            if self._read_in_flight is not None:
                return self._read_in_flight, False
            self._read_in_flight = Future()
            return self._read_in_flight, True

    def _finish(self, read: Future[Snapshot]) -> None:
        try:
            self._snapshot = self._read()
            read.set_result(self._snapshot)
        except Exception as exc:  # every waiter gets it, as the leader does, through read.result()
            read.set_exception(exc)
        finally:
            with self._lock:
                self._read_in_flight = None

    def _read(self) -> Snapshot:
        versions: dict[str, list[str]] = {}
        live: dict[str, list[str]] = {}
        for model, age in sorted(model_ages(self.client, self.keys).items()):
            name, version = split_model_id(model)
            versions.setdefault(name, []).append(version)
            if age <= self.worker_timeout:
                live.setdefault(name, []).append(version)
        pipe = self.client.pipeline(transaction=False)
        for name in versions:
            pipe.hgetall(self.keys.routes(name))
        weights = {name: {v.decode(): int(w) for v, w in raw.items()} for name, raw in zip(versions, pipe.execute())}
        return Snapshot(versions, live, weights, time.monotonic())

    def name_for(self, requested: str | None) -> str:
        """The model name a request is for: the one in its path, else DEFAULT_MODEL, else the only one served."""
        snapshot = self.snapshot()
        if requested is not None:
            if requested not in snapshot.versions and requested not in self.snapshot(fresh=True).versions:
                raise UnknownModel(requested)
            return requested
        if self.default_model:
            return self.default_model
        names = sorted(snapshot.versions) or sorted(self.snapshot(fresh=True).versions)
        if len(names) > 1:
            raise NoDefaultModel(names)
        if not names:
            raise NoWorker()
        return names[0]

    def is_default(self, name: str) -> bool:
        """Whether POST /predict goes to this name."""
        if self.default_model:
            return name == self.default_model
        return list(self.snapshot().versions) == [name]

    def ready_name(self) -> str:
        """The model /readyz vouches for: the default one, or with several and none named, any with a live worker."""
        try:
            return self.name_for(None)
        except NoDefaultModel:
            live = sorted(self.snapshot(fresh=True).live)
            if not live:
                raise NoWorker() from None
            return live[0]

    def queue_for(self, name: str, pinned_version: str | None = None) -> InferenceQueue:
        """The queue of the version this request goes to: the pinned one, else one chosen by the name's weights."""
        snapshot = self.snapshot()
        if not snapshot.live.get(name):  # perhaps a worker came up since the last read: look again before 503
            snapshot = self.snapshot(fresh=True)
        if pinned_version is not None:
            if pinned_version not in snapshot.versions.get(name, []):
                raise UnknownModel(model_id(name, pinned_version))
            return self.queue(model_id(name, pinned_version))
        version = routing.choose_version(snapshot.weights.get(name, {}), snapshot.live.get(name, []))
        if version is None:
            raise NoWorker()
        return self.queue(model_id(name, version))

    def live_status(self, name: str, pinned_version: str | None = None) -> FleetStatus:
        """The status of the version requests for `name` go to now; NoWorker when it has no live worker."""
        status = self.queue_for(name, pinned_version).fleet_status(self.worker_timeout)
        if status.model is None or status.workers_alive == 0:
            raise NoWorker()
        return status

    def queue(self, model: str) -> InferenceQueue:
        """One InferenceQueue per model version (its id), made once."""
        if model not in self._queues:
            self._queues.setdefault(model, InferenceQueue(self.client, self.waiting_client,
                                                          Keys(self.keys.prefix, model), self.max_queue))
        return self._queues[model]
