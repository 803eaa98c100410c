"""The API's view of every served model: which versions are live, which one a request goes to, their queues.

Workers register each model version they serve (`name@version`) in the fleet's registry with every
heartbeat; the API reads the registry and the names' routing weights at most once per
`REFRESH_SECONDS` per process, so choosing a version costs a request no round trip to Redis.

One read at a time, and no request waits behind another's: the requests that find the snapshot stale
while a read is in flight take that read's outcome (its snapshot, or its error) when the reader has it. Were
each to read in turn, a hung Redis would answer the n-th of them after n timeouts; shared, its timeout is
everybody's 503 at once (each of the read's two round trips ends within REDIS_TIMEOUT).
A waiter keeps no clock of its own: the reader's thread can be slow without Redis being slow (it waits for
the CPU, or for the GIL while another thread decodes), and that is no reason to answer 503.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from app import metrics
from app.queue_client import Charge, InferenceQueue, NoWorker, RedisPersistence, VersionStatus
from serving import routing
from serving.fleet_scripts import model_ages
from serving.protocol import FleetKeys, Keys, ModelInfo, model_id, split_model_id
from serving.redis_client import RedisClient

log = logging.getLogger("api")

# How stale the API's picture of versions and weights may be: a new route takes effect within this.
REFRESH_SECONDS = 1.0


class UnknownModel(Exception):
    """No worker has ever announced this model name under this KEY_PREFIX (or the registry has forgotten it)."""


class NoDefaultModel(Exception):
    """POST /predict with several names live, none of them the default's holder, and DEFAULT_MODEL unset."""

    def __init__(self, names: list[str]):
        super().__init__(names)
        self.names = names


class NotReady(Exception):
    """/readyz: POST /predict would fail now for a reason other than a worker or Redis; the message says which."""


def no_default_message(exc: NoDefaultModel) -> str:
    return (f"several model names have live workers ({', '.join(exc.names)}) and DEFAULT_MODEL names none of them: "
            "POST /models/<name>/predict, or set DEFAULT_MODEL")


@dataclass(frozen=True)
class Snapshot:
    versions: dict[str, list[str]]  # name -> every version the registry knows
    live: dict[str, list[str]]  # name -> versions with a heartbeat within WORKER_TIMEOUT
    weights: dict[str, dict[str, int]]  # name -> routing weights (empty: none set)
    taken_at: float
    ages: dict[str, float] = field(default_factory=dict)  # model id -> seconds since its last heartbeat
    default_holder: str | None = None  # the name that keeps the default while it is live (FleetKeys.default)


class Fleet:
    def __init__(self, client: RedisClient, waiting_client: RedisClient, key_prefix: str, max_queue: int,
                 worker_timeout: float, default_model: str):
        self.client, self.waiting_client = client, waiting_client
        self.keys = FleetKeys(key_prefix)
        self.max_queue, self.worker_timeout, self.default_model = max_queue, worker_timeout, default_model
        self._queues: dict[str, InferenceQueue] = {}
        self.persistence = RedisPersistence(client)  # one Redis: one reading, shared by every version's queue
        self._snapshot = Snapshot({}, {}, {}, 0.0)
        self._stranded: set[str] = set()  # names whose route prefers versions without a live worker (logged once)
        self._read_in_flight: Future[Snapshot] | None = None
        self._lock = threading.Lock()  # guards _read_in_flight only: nobody holds it across a round trip

    def snapshot(self, fresh: bool = False) -> Snapshot:
        """Versions and weights, read again when older than REFRESH_SECONDS (or `fresh`).

        A read already in flight counts as fresh: it began after the snapshot went stale. Its outcome, snapshot
        or error, is every waiting request's.
        """
        if not fresh and time.monotonic() - self._snapshot.taken_at <= REFRESH_SECONDS:
            return self._snapshot
        read, leads = self._join_read()
        if leads:
            self._finish(read)
        return read.result()

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
        except BaseException as exc:  # every waiter gets it, as the leader does, through read.result(): even an
            read.set_exception(exc)   # interrupt of the leader's thread leaves none of them waiting for ever
        finally:
            with self._lock:
                self._read_in_flight = None

    def _read(self) -> Snapshot:
        versions: dict[str, list[str]] = {}
        live: dict[str, list[str]] = {}
        ages = model_ages(self.client, fleet=self.keys)
        for model, age in sorted(ages.items()):
            name, version = split_model_id(model)
            versions.setdefault(name, []).append(version)
            if age <= self.worker_timeout:
                live.setdefault(name, []).append(version)
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.default)
        for name in versions:
            pipe.hgetall(self.keys.routes(name))
        holder, *routes = pipe.execute()
        weights = {name: {v.decode(): int(w) for v, w in raw.items()} for name, raw in zip(versions, routes)}
        return Snapshot(versions, live, weights, time.monotonic(), ages, holder.decode() if holder else None)

    def name_for(self, requested: str | None) -> str:
        """The model name a request is for: the one in its path, else DEFAULT_MODEL, else the default's holder while
        it is live, else the only name with a live worker (NoDefaultModel with several)."""
        snapshot = self.snapshot()
        if requested is not None:
            if requested not in snapshot.versions and requested not in self.snapshot(fresh=True).versions:
                raise UnknownModel(requested)
            return requested
        if self.default_model:
            return self.default_model
        try:
            return self._default_name(snapshot)
        except (NoDefaultModel, NoWorker):  # perhaps a worker came or went since the last read: look again
            return self._default_name(self.snapshot(fresh=True))

    def _default_name(self, snapshot: Snapshot) -> str:
        live = sorted(snapshot.live)
        if chosen := _holder_or_only(snapshot.default_holder, live):
            return chosen
        if live:
            raise NoDefaultModel(live)
        known = sorted(snapshot.versions)
        if chosen := _holder_or_only(snapshot.default_holder, known):  # queue_for says which has no worker
            return chosen
        raise NoWorker(f"no model name has a live worker (known: {', '.join(known)})" if known else
                       f"no worker has announced a model under KEY_PREFIX={self.keys.prefix}")

    def default_name(self) -> str | None:
        """The name POST /predict goes to now; None when it would answer 404 or 503."""
        try:
            return self.name_for(None)
        except (NoDefaultModel, NoWorker):
            return None

    def ready_status(self) -> VersionStatus:
        """What /readyz vouches for: the version POST /predict would go to now, with a live worker. NotReady when
        that route would answer 404 (several names and no default); NoWorker, naming its cause, when 503."""
        try:
            return self.live_status(self.name_for(None))
        except NoDefaultModel as exc:
            raise NotReady(f"POST /predict would answer 404 no_default_model: {no_default_message(exc)}") from None

    def admitted(self, name: str, pinned_version: str | None,
                 charge: Charge | None = None) -> tuple[InferenceQueue, ModelInfo]:
        """The queue this request goes to (queue_for) and its admission there (InferenceQueue.admit).

        This process's snapshot may be up to REFRESH_SECONDS old: a version it counts live may have closed since
        (its last worker left, which the registry already says). Its admission finds no model then, and a request
        that did not pin it is chosen for again from a fresh read rather than answered 503 while another version
        serves. The charge goes along: its id makes the second take take nothing (serving/rate_limit_scripts.py).
        """
        queue = self.queue_for(name, pinned_version)
        try:
            return queue, queue.admit(charge)
        except NoWorker:
            if pinned_version is not None:
                raise
            again = self.queue_for(name, fresh=True)
            if again is queue:
                raise
            return again, again.admit(charge)

    def queue_for(self, name: str, pinned_version: str | None = None, fresh: bool = False) -> InferenceQueue:
        """The queue of the version this request goes to: the pinned one, else one chosen by the name's weights
        among its live versions (NoWorker, naming why, when there is none); `fresh`: from a new registry read."""
        snapshot = self.snapshot(fresh)
        if not snapshot.live.get(name) and not fresh:  # a worker may have come up since the last read: look again
            snapshot = self.snapshot(fresh=True)
        if pinned_version is not None:
            if pinned_version not in snapshot.versions.get(name, []):
                raise UnknownModel(model_id(name, pinned_version))
            return self.queue(model_id(name, pinned_version))
        weights, live = snapshot.weights.get(name, {}), snapshot.live.get(name, [])
        version = routing.choose_version(weights, live)
        if version is None:
            raise NoWorker(self._no_live_version(snapshot, name))
        self._note_stranded_route(name, weights, version)
        return self.queue(model_id(name, version))

    def _no_live_version(self, snapshot: Snapshot, name: str) -> str:
        versions = snapshot.versions.get(name, [])
        if not versions:
            return (f"DEFAULT_MODEL={name} names no model any worker has announced (known: "
                    f"{', '.join(sorted(snapshot.versions)) or 'none'})")
        beats = ", ".join(f"{name}@{v} {snapshot.ages[model_id(name, v)]:.0f}s ago"
                          for v in sorted(versions, key=routing.version_order))
        routed = snapshot.weights.get(name)
        return (f"no version of {name} has a live worker (last heartbeats: {beats})"
                + (f"; its route prefers {', '.join(v for v, w in routed.items() if w > 0)}" if routed else ""))

    def _note_stranded_route(self, name: str, weights: dict[str, int], chosen: str) -> None:
        """A route whose versions have no live worker is a preference, not a wall: the request went to another live
        version. Counted per request (imgcls_route_fallbacks_total); logged when it starts and when it ends."""
        if routing.is_fallback(weights, chosen):
            metrics.observe_route_fallback(name)
            if name not in self._stranded:
                self._stranded.add(name)
                log.warning("route of %s prefers %s, which has no live worker: serving %s@%s instead", name,
                            ", ".join(f"{v}={w}" for v, w in weights.items()), name, chosen)
        elif name in self._stranded:
            self._stranded.discard(name)
            log.info("route of %s is served again by its own versions", name)

    def live_status(self, name: str, pinned_version: str | None = None) -> VersionStatus:
        """The status of the version requests for `name` go to now; NoWorker when it has no live worker."""
        queue = self.queue_for(name, pinned_version)
        status = queue.version_status(self.worker_timeout)
        if status.model is None or status.workers_alive == 0:
            raise NoWorker(f"{queue.keys.model_id} has no live worker")
        return status

    def queue(self, model_id: str) -> InferenceQueue:
        """One InferenceQueue per model version (its id), made once."""
        if model_id not in self._queues:
            self._queues.setdefault(model_id, InferenceQueue(self.client, self.waiting_client,
                                                             Keys(self.keys.prefix, model_id), self.max_queue,
                                                             self.persistence))
        return self._queues[model_id]


def _holder_or_only(holder: str | None, names: list[str]) -> str | None:
    """The default's holder if it is among `names`, else the one name there is, else None."""
    if holder in names:
        return holder
    return names[0] if len(names) == 1 else None
