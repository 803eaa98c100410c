"""A worker's heartbeat: a thread of its own that announces the worker, reads Redis's clock and reaps dead workers.

A thread of its own, so that a batch which computes for longer than WORKER_TIMEOUT never makes its worker look
dead. Should it fail for anything but a Redis error (which it retries), it stops the worker: serving on without
heartbeats would get the worker's requests run twice and, were it the only worker, have the API answer 503 while
it computes.

What crosses the two threads is all here. The heartbeat thread writes, the serving thread reads:
- `clock`, Redis's clock, read again at every beat: messages' deadlines are by it;
- `first_beat`, set once the clock has been read;
- `refusal` and `failed`, why the beats ended early, each set before the worker's `stop`, so that a serving
  thread which sees the stop sees the reason.
The serving thread's one call the other way is `end()`.
"""

from __future__ import annotations

import logging
import threading
import time

from serving.config import Settings
from serving.protocol import RedisClock
from worker.queue import ModelMismatch, WorkerQueue
from worker.retry import retry_on_redis_errors

log = logging.getLogger("worker")

FIRST_BEAT_POLL_SECONDS = 0.1  # how soon a stop is seen while Redis does not answer the first beat


class Heartbeat:
    def __init__(self, queue: WorkerQueue, settings: Settings, model_info: bytes, fingerprint: str):
        self.queue = queue
        self.settings = settings
        self.model_info = model_info
        self.fingerprint = fingerprint
        self.clock = RedisClock()
        self.first_beat = threading.Event()
        self.refusal: ModelMismatch | None = None  # set when the version's live workers serve another model
        self.failed = False  # set when a beat failed for anything but a Redis error
        self._ending = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> None:
        """Beat in a thread of its own until end(); return after the first beat, or once `stop` is set.

        A refusal (ModelMismatch, at the first beat) or a failure sets `stop`, the worker's.
        """
        self._thread = threading.Thread(target=self._beat_or_stop, args=(stop,), name="heartbeat", daemon=True)
        self._thread.start()
        while not (self.first_beat.wait(FIRST_BEAT_POLL_SECONDS) or stop.is_set()):
            pass

    def end(self) -> None:
        """Beat no more, and wait for the thread: a beat that landed after the worker's sign-off would register
        a worker that has left."""
        self._ending.set()
        self._thread.join()

    def beat(self) -> None:
        """Announce this worker and the model it serves, both expiring unless renewed; read Redis's clock."""
        sent_at = time.time()
        redis_now = self.queue.announce(self.model_info, self.fingerprint, self.settings.worker_timeout)
        self.clock.observe(redis_now, sent_at, time.time())
        self.first_beat.set()

    def _beat_or_stop(self, stop: threading.Event) -> None:
        try:
            retry_on_redis_errors(self._beat_and_reap, self._ending, self.queue.worker_id)
        except ModelMismatch as exc:
            log.error("worker=%s refuses to start: %s", self.queue.worker_id, exc)
            self.refusal = exc
            stop.set()
        except Exception:
            log.exception("worker=%s heartbeat failed; stopping the worker", self.queue.worker_id)
            self.failed = True
            stop.set()

    def _beat_and_reap(self) -> None:
        """One heartbeat period: announce this worker, reap its version's dead ones, forget the fleet's idle
        versions, then wait for the next period."""
        self.beat()
        self.queue.reap_dead_workers(self.settings.worker_timeout, self.settings.max_attempts)
        self.queue.forget_idle_versions(self.settings.forget_after)
        self._ending.wait(self.settings.heartbeat_seconds)
