"""One worker's side of a model version's queue: one object owns the keys, as rq's IntermediateQueue does.

Taking and answering. A message (a few hundred bytes: the image's pixels wait in a key of their own,
fetched after the take) moves from the shared queue into this worker's own
processing list with (B)LMOVE, which is atomic: two workers can never take the same
message, and a message is never in neither list (a read then a trim, LRANGE + LTRIM, allows both). A
message leaves the processing list (LREM, the exact bytes taken) in the same script that
publishes its result (only if it was still there: a reaper may have taken it back), so it leaves
Redis only once its answer is there; what a failed publish or a lost reply leaves in the list is
served again before anything new is taken
(`held_messages`).

Leaving and reaping. Every worker is also a reaper of its version's dead workers: their
processing lists go back to the queues by one Lua script (serving/queue_scripts.py,
return_unfinished), which checks the heartbeat again, so of two reapers one does it and a
worker whose heartbeat came in meanwhile is left alone.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from serving import fleet_scripts, protocol, queue_scripts
from serving.protocol import FleetKeys, Keys
from serving.redis_client import RedisClient

log = logging.getLogger("worker")

FILL_POLL_SECONDS = 0.0005


class ModelMismatch(Exception):
    """This worker's model is not the one its name@version's live workers serve: it must not join them."""

    def __init__(self, model_id: str, held: str, own: str):
        super().__init__(f"the live workers of {model_id} serve a model of fingerprint {held}, this one's is {own} "
                         "(a hash of the model file and its card): serve it under another MODEL_VERSION or "
                         "MODEL_NAME, or stop those workers first")


def worker_id_prefix(pid: int) -> str:
    """How the id of a worker process starts (host and pid): what its launcher, seeing it die, looks it up by."""
    return f"{socket.gethostname()}-{pid}-"


class WorkerQueue:
    def __init__(self, client: RedisClient, keys: Keys, worker_id: str):
        self.client = client
        self.keys = keys
        self.worker_id = worker_id
        self.processing = keys.processing(worker_id)
        self.fleet = FleetKeys(keys.prefix)
        # A heartbeat's two calls and a stop's two never interleave (the heartbeat thread and the main thread):
        # a registration landing after the retirement would count a closed version live for WORKER_TIMEOUT.
        self._announcing = threading.Lock()

    # Taking and answering

    def take_batch(self, max_size: int, block_seconds: float, wait_for_more_seconds: float,
                   low_first: bool = False) -> list[bytes]:
        """Up to max_size raw messages, high lane before normal before low (low first: the reverse), oldest first
        within a lane; [] if none arrived within block_seconds.

        Takes whatever is queued; with nothing, blocks on the wake list that every enqueue pushes to (one
        BLMOVE waits on one lane only), then takes again; then keeps looking for up to wait_for_more_seconds
        while the batch is not full. That short wait polls instead of blocking: Redis resolves blocking
        timeouts on its server tick (100 ms at the default hz), so a 2 ms block waits ~100 ms.
        """
        lanes = self.keys.lanes[::-1] if low_first else self.keys.lanes
        batch = self._take_queued(max_size, lanes)
        if not batch:
            if self.client.blpop([self.keys.wake], block_seconds) is None:
                return []
            batch = self._take_queued(max_size, lanes)  # [] when another worker woke first and took it
        give_up_at = time.monotonic() + wait_for_more_seconds
        while batch and len(batch) < max_size and time.monotonic() < give_up_at:
            time.sleep(FILL_POLL_SECONDS)
            batch += self._take_queued(max_size - len(batch), lanes)
        return batch

    def _take_queued(self, count: int, lanes: tuple[str, ...]) -> list[bytes]:
        """Move up to count queued messages without blocking, lane by lane, in one command (TAKE): a timeout
        reaches this worker, which then serves what its processing list holds, rather than a pipeline of moves
        that a Redis Cluster client would send again command by command."""
        return queue_scripts.take(self.client, keys=self.keys, worker_id=self.worker_id, lanes=lanes, count=count)

    def take_retry(self) -> list[bytes]:
        """One message from the retry list, alone, or []: a retried message never shares a batch."""
        message = self.client.lmove(self.keys.retry, self.processing, "RIGHT", "LEFT")
        return [message] if message is not None else []

    def fetch_pixels(self, job_ids: list[str]) -> list[bytes | None]:
        """Each job's pixels, in one round trip after the take; None for one whose key is gone."""
        return self.client.mget([self.keys.pixels(job_id) for job_id in job_ids]) if job_ids else []

    def held_messages(self) -> list[bytes]:
        """What this worker's processing list holds, oldest first: work taken but not yet published."""
        return self.client.lrange(self.processing, 0, -1)[::-1]

    def publish_results(self, answers: dict[str, bytes | None], handled: list[bytes]) -> None:
        """Hand each job its answer and drop the handled messages (and only those), in one script.

        `answers` has every job handled by id; None for one nobody waits for (expired). Their delivery counts and
        pixels go too: a job answered is never delivered again. Only what this worker's processing list still holds
        is answered: a message a reaper took back (this worker looked dead) is another worker's, so a publish that
        reaches Redis late adds no second answer. The client reads the first answer pushed.
        """
        jobs = [(message, job_id, answers.get(job_id) if job_id else None)
                for message, job_id in ((message, protocol.leading_job_id(message)) for message in handled)]
        queue_scripts.publish(self.client, keys=self.keys, worker_id=self.worker_id, handled=jobs,
                              ttl_ms=int(protocol.RESULT_TTL_SECONDS * 1000))

    def queued(self) -> int:
        """Messages waiting in the version's lanes and retry list."""
        pipe = self.client.pipeline(transaction=False)
        for key in (*self.keys.lanes, self.keys.retry):
            pipe.llen(key)
        return sum(pipe.execute())

    # Announcing, leaving and reaping

    def announce(self, model_info: bytes, fingerprint: str, worker_timeout: float) -> float:
        """A heartbeat: this worker's registry score and, unless it is stopping, its model's description and
        fingerprint (all expire after worker_timeout unless renewed) and the version in the fleet's registry;
        Redis's time, for the worker's RedisClock. ModelMismatch, with nothing announced, when the version's live
        workers serve a model of another fingerprint."""
        with self._announcing:
            beat = fleet_scripts.heartbeat(self.client, keys=self.keys, worker_id=self.worker_id,
                                           model_info=model_info, fingerprint=fingerprint,
                                           ttl_ms=int(worker_timeout * 1000))
            if beat.refused_by is not None:
                raise ModelMismatch(self.keys.model_id, beat.refused_by, fingerprint)
            if beat.announced:
                # The registry lies under the prefix's own tag, maybe on another cluster node: a call of its own.
                fleet_scripts.register_model(self.client, fleet=self.fleet, model_id=self.keys.model_id,
                                             worker_timeout=worker_timeout)
        return beat.redis_now

    def announce_stopping(self, worker_timeout: float) -> int:
        """Mark this worker as stopping; how many live workers of its version stay.

        With none, the version closes: the API answers no_worker at once and queues nothing more for it, and
        the fleet's registry stops counting it live (a second call, on the registry's own tag; the model key
        the first one deleted is what the API's admission reads, the registry what it routes by).
        """
        with self._announcing:
            staying = fleet_scripts.mark_stopping(self.client, keys=self.keys, worker_id=self.worker_id,
                                                  worker_timeout=worker_timeout)
            if not staying:
                fleet_scripts.retire_model(self.client, fleet=self.fleet, model_id=self.keys.model_id,
                                           worker_timeout=worker_timeout)
        return staying

    def forget_idle_versions(self, forget_after: float) -> list[str]:
        """Forget every model version of the fleet with no heartbeat for forget_after seconds and no route to it;
        the ids forgotten. Any worker's maintenance pass does it, for every name: a version nobody serves has no
        worker of its own left to."""
        forgotten = [model for model, age in fleet_scripts.model_ages(self.client, fleet=self.fleet).items()
                     if age >= forget_after and fleet_scripts.forget_model(
                         self.client, fleet=self.fleet, model_id=model, idle_seconds=forget_after, keep_routed=True)]
        for model in forgotten:
            log.info("forgot model=%s: no live worker and no route for FORGET_AFTER=%gs", model, forget_after)
        return forgotten

    def sign_off(self, max_attempts: int) -> int:
        """Hand back what this worker has not started (not a failed attempt) and leave the registry; how many."""
        returned, _ = self.return_unfinished(self.worker_id, False, max_attempts)
        return returned

    def return_unfinished(self, worker_id: str, count_as_failure: bool, max_attempts: int,
                          worker_timeout: float = 0.0) -> tuple[int, int] | None:
        """Empty a worker's processing list back onto the queues: (requeued, exhausted).

        With count_as_failure the worker is taken for dead; if its heartbeat is younger than worker_timeout
        by the time the script runs, it is alive after all, nothing is touched and the answer is None.
        Exhausted messages wait in their own list for answer_exhausted.
        """
        return queue_scripts.return_unfinished(self.client, keys=self.keys, worker_id=worker_id,
                                               count_as_failure=count_as_failure, max_attempts=max_attempts,
                                               worker_timeout=worker_timeout)

    def silent_workers(self, worker_timeout: float) -> list[str]:
        """Workers whose last heartbeat is older than worker_timeout, by Redis's clock."""
        return fleet_scripts.silent_workers(self.client, keys=self.keys, worker_timeout=worker_timeout)

    def reap_dead_workers(self, worker_timeout: float, max_attempts: int) -> int:
        """Requeue the unfinished work of every worker silent for longer than worker_timeout; answer what is exhausted.

        The exhausted list is answered on every pass, not only after a reap: a worker that died between
        its reap and its answers leaves them for the next pass of any worker.
        """
        reaped = 0
        for worker_id in self.silent_workers(worker_timeout):
            outcome = self.return_unfinished(worker_id, True, max_attempts, worker_timeout)
            if outcome is None:
                log.info("worker=%s heartbeat came in while it was being reaped; left alone", worker_id)
                continue
            log.warning("reaped dead worker=%s requeued=%d gave_up=%d", worker_id, *outcome)
            reaped += 1
        self.answer_exhausted(max_attempts)
        return reaped

    def answer_exhausted(self, max_attempts: int) -> int:
        """Answer every message whose workers kept dying with an error, each once; how many were answered.

        Only the job id is read, as the reaper's script read it: the message may be one no worker survives.
        """
        answered = 0
        for message in self.client.lrange(self.keys.exhausted, 0, -1):
            job_id = protocol.leading_job_id(message)  # the script sets aside only messages it read an id from
            answer = protocol.encode_failure(job_id, protocol.ATTEMPTS_EXHAUSTED, f"the worker processing this "
                                             f"request died {max_attempts} times; giving up "
                                             f"(MAX_ATTEMPTS={max_attempts})")
            if queue_scripts.answer_exhausted(self.client, keys=self.keys, message=message, job_id=job_id,
                                              answer=answer, ttl_ms=int(protocol.RESULT_TTL_SECONDS * 1000)):
                log.warning("gave up on request job_id=%s: its workers died %d times", job_id, max_attempts)
                answered += 1
        return answered
