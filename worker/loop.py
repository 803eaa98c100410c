"""The worker's loop: take a batch, classify it, publish each answer, repeat."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import NamedTuple

import numpy as np

from model_files.card import model_fingerprint
from serving import protocol
from serving.config import ConfigError, Settings, check_model_id_part
from serving.protocol import (
    InferenceRequest,
    InferenceResult,
    Keys,
    MalformedMessage,
    MissingPixels,
    QueuedRequest,
)
from serving.redis_client import REDIS_ERRORS, RedisClient
from worker.heartbeat import Heartbeat
from worker.inference import Classifier
from worker.metrics import BatchStats
from worker.queue import WorkerQueue, worker_id_prefix
from worker.retry import retry_on_redis_errors

log = logging.getLogger("worker")


class Refusal(NamedTuple):
    """A request the worker does not run the model on, and its answer (None: its client no longer waits)."""
    job_id: str
    answer: bytes | None


def new_worker_id() -> str:
    return f"{worker_id_prefix(os.getpid())}{uuid.uuid4().hex[:6]}"


def served_name(settings: Settings, card_name: str) -> str:
    """MODEL_NAME, else the model card's name, which must pass MODEL_NAME's rule: it goes into Redis keys and URLs.

    ConfigError otherwise (a card that model_tools did not write may say anything, a brace included, which
    would move the queue's keys out of their Redis Cluster hash tag).
    """
    if settings.model_name:
        return settings.model_name
    try:
        return check_model_id_part(card_name, "the model card's name")
    except ConfigError as exc:
        raise ConfigError(f"{exc}; set MODEL_NAME to the name to serve it under") from None


class Worker:
    def __init__(self, client: RedisClient, classifier: Classifier, settings: Settings,
                 worker_id: str | None = None, fingerprint: str | None = None):
        self.client = client
        self.classifier = classifier
        self.settings = settings
        self.name, self.version = served_name(settings, classifier.card.name), settings.model_version
        self.model_id = protocol.model_id(self.name, self.version)
        self.keys = Keys(settings.key_prefix, self.model_id)
        self.worker_id = worker_id or new_worker_id()
        self.queue = WorkerQueue(client, self.keys, self.worker_id)
        self.batches = 0
        self.expired = 0
        self.stats = BatchStats(client, self.keys)
        self._may_hold_messages = False  # True after a Redis error: the processing list may hold unpublished work
        self.heartbeat = Heartbeat(self.queue, settings,
                                   classifier.describe(self.name, self.version, settings.batch_size).to_json(),
                                   fingerprint or model_fingerprint(classifier.card))  # main() passes the file's too

    def run(self, stop: threading.Event) -> bool:
        """Serve until `stop` is set; the batch in hand is always finished first. False if the heartbeat failed.

        A worker whose model differs from its version's live workers' (ModelMismatch, at its first heartbeat)
        leaves at once: `heartbeat.refusal` says why. The heartbeat ends before the sign-off, so no late heartbeat
        registers a worker that has left.
        """
        log.info("worker=%s ready model=%s device=%s batch_size=%d", self.worker_id,
                 self.model_id, self.classifier.device, self.settings.batch_size)
        self.heartbeat.start(stop)  # messages' deadlines are by Redis's clock, which the first heartbeat reads
        if self.heartbeat.refusal is not None:  # it never joined the version: nothing taken, nothing to hand back
            self.heartbeat.end()
            return False
        self.serve(stop)
        if not self.heartbeat.failed:
            self.drain_if_last()
        self.heartbeat.end()
        self.sign_off()
        log.info("worker=%s stopped after %d batches", self.worker_id, self.batches)
        return not self.heartbeat.failed

    def serve(self, stop: threading.Event) -> None:
        """Batch after batch until `stop`, riding out Redis errors."""
        retry_on_redis_errors(self.serve_once, stop, self.worker_id)

    def drain_if_last(self) -> None:
        """Serve what is still queued for this version before leaving, if no other worker of it stays.

        A version's queue is served by its own workers only: handed back by the last of them, its
        messages would wait for nobody and their clients would get 504, which is what a rollout that
        routes a name to a new version and then stops the old one's workers must not do. Workers
        stopping together all count as leaving (the stopping set), so each drains. The last one closes
        the version as it says so (STOPPING): from then on the API answers 503 no_worker at once and
        queues nothing more, so the queue it empties stays empty, and no request sent after it left
        waits for an answer that cannot come. Bounded by
        REQUEST_TIMEOUT: after that every client still waiting has had its answer or its 504. A Redis
        error ends it too: what is queued stays in Redis for the version's next worker, and a worker
        whose Redis has gone (the whole stack stopping) does not wait for it.
        """
        give_up_at = time.monotonic() + self.settings.request_timeout
        try:
            if self.queue.announce_stopping(self.settings.worker_timeout):
                return  # others of this version stay and serve the queue
            log.info("worker=%s is the last of %s: serving what is queued before it stops", self.worker_id,
                     self.model_id)
            while time.monotonic() < give_up_at and self.queue.queued():
                self.serve_once()
        except REDIS_ERRORS as exc:
            log.warning("worker=%s stops without serving what is queued for %s: %s", self.worker_id,
                        self.model_id, exc)

    def serve_once(self) -> None:
        """Serve what the processing list still holds after a Redis error; else a retried message alone; else a batch.

        A Redis error anywhere in a round (a take whose reply was lost, a publish that failed) may
        leave messages in this worker's processing list; they are finished before anything new is
        taken, so an error neither loses them nor leaves them for the reaper.
        """
        held = self._may_hold_messages
        self._may_hold_messages = True  # until this round ends without an error
        if held:
            messages = self.queue.held_messages()
            if messages:
                log.info("worker=%s serving %d requests held since a Redis error", self.worker_id, len(messages))
        else:
            messages = self.queue.take_retry() or self.queue.take_batch(
                self.settings.batch_size, block_seconds=self.settings.heartbeat_seconds,
                wait_for_more_seconds=self.settings.batch_wait_ms / 1000, low_first=self._low_lane_turn())
        if messages:
            self.process(messages)
        self._may_hold_messages = False

    def _low_lane_turn(self) -> bool:
        """Every LOW_LANE_EVERY-th batch is taken from the low lane first: under load, low keys are served slower,
        never not at all."""
        return self.batches % self.settings.low_lane_every == self.settings.low_lane_every - 1

    def sign_off(self) -> None:
        """Hand back anything not started (not a failed attempt) and leave the registry."""
        try:
            returned = self.queue.sign_off(self.settings.max_attempts)
        except REDIS_ERRORS as exc:
            # Whatever it held is recovered by the others once its heartbeat ages out.
            log.warning("worker=%s could not sign off: %s", self.worker_id, exc)
            return
        if returned:
            log.info("worker=%s handed back %d unstarted requests", self.worker_id, returned)

    def process(self, messages: list[bytes]) -> None:
        """Answer every message of the batch: a prediction, or an error saying why not."""
        taken_at = self.heartbeat.clock.now()  # messages' times are by Redis's clock
        queued: list[QueuedRequest] = []
        answers: dict[str, bytes | None] = {}  # job id -> its answer, for every message that names its job
        for message in messages:
            admitted = self._admit(message, taken_at)
            if isinstance(admitted, QueuedRequest):
                queued.append(admitted)
            elif admitted is not None:
                answers[admitted.job_id] = admitted.answer
        runnable = self._with_pixels(queued, answers)
        inference_ms, predicted = self._classify(runnable, taken_at) if runnable else (0.0, {})
        answers.update(predicted)
        self.queue.publish_results(answers, messages)
        self.batches += 1
        answered = sum(answer is not None for answer in answers.values())
        if runnable:
            wait_ms = max((taken_at - min(r.enqueued_at for r in runnable)) * 1000, 0)
            log.info("worker=%s batch=%d size=%d answered=%d oldest_wait_ms=%.1f inference_ms=%.1f job_ids=%s",
                     self.worker_id, self.batches, len(runnable), answered, wait_ms, inference_ms,
                     ",".join(r.job_id for r in runnable))
        else:  # every message was expired or refused: no forward pass, so no batch line
            log.info("worker=%s took %d messages and ran none: answered=%d, the rest expired", self.worker_id,
                     len(messages), answered)
        self.stats.record(len(runnable), inference_ms, self.expired)

    def _admit(self, raw: bytes, now: float) -> QueuedRequest | Refusal | None:
        """The decoded message if its image should run; else a Refusal, or None for a message that names no job.

        Decided on the message alone, before any pixels are fetched: an expired or misshapen one costs no read.
        """
        try:
            queued = protocol.decode_message(raw)
        except MalformedMessage as exc:
            return self._refuse_malformed(exc)
        if queued.deadline < now:
            # Its client has already been told 504; computing an answer nobody reads wastes the batch.
            self.expired += 1
            log.info("worker=%s skipped expired request job_id=%s", self.worker_id, queued.job_id)
            return Refusal(queued.job_id, None)
        if queued.shape != self.classifier.input_shape:
            return Refusal(queued.job_id, protocol.encode_failure(
                queued.job_id, "wrong_input_shape",
                f"image of shape {list(queued.shape)}; the model takes {list(self.classifier.input_shape)}"))
        return queued

    def _with_pixels(self, queued: list[QueuedRequest], answers: dict[str, bytes | None]) -> list[InferenceRequest]:
        """The requests whose pixels were read (one round trip); each other one's refusal goes into `answers`."""
        runnable = []
        for message, pixels in zip(queued, self.queue.fetch_pixels([q.job_id for q in queued])):
            try:
                runnable.append(protocol.decode_request(message, pixels))
            except MissingPixels:
                log.warning("worker=%s pixels gone job_id=%s", self.worker_id, message.job_id)
                answers[message.job_id] = protocol.encode_failure(
                    message.job_id, "image_missing", "the image was no longer in Redis: it outlived its deadline, "
                    "or another worker answered it already")
            except MalformedMessage as exc:
                answers[message.job_id] = self._refuse_malformed(exc).answer
        return runnable

    def _refuse_malformed(self, exc: MalformedMessage) -> Refusal | None:
        log.error("worker=%s malformed message job_id=%s: %s", self.worker_id, exc.job_id, exc)
        if not exc.job_id:
            return None  # nobody waits for an answer without an id
        return Refusal(exc.job_id, protocol.encode_failure(
            exc.job_id, "malformed_message", f"the queued message is malformed: {exc}"))

    def _classify(self, requests: list[InferenceRequest], taken_at: float) -> tuple[float, dict[str, bytes]]:
        """Milliseconds the model took, and each request's answer by job id."""
        started = time.perf_counter()
        try:
            probabilities = self.classifier.probabilities(np.stack([r.pixels for r in requests]))
        except Exception:  # one bad batch must not kill the worker: every request hears of it
            log.exception("worker=%s inference failed job_ids=%s", self.worker_id,
                          ",".join(r.job_id for r in requests))
            # The exception's text stays in the log: it may name files, devices, memory.
            return (time.perf_counter() - started) * 1000, {request.job_id: protocol.encode_failure(
                request.job_id, "inference_failed", "the model failed on the batch holding this image; the "
                "worker's log has the error under this request's job id") for request in requests}
        inference_ms = (time.perf_counter() - started) * 1000
        answers = {}
        for request, row in zip(requests, probabilities):
            timing = {"queue_ms": round(max(taken_at - request.enqueued_at, 0) * 1000, 2),
                      "inference_ms": round(inference_ms, 2), "batch_size": len(requests)}
            answers[request.job_id] = protocol.encode_result(InferenceResult(
                request.job_id, self.name, self.version, self.classifier.top_k(row, request.top_k), timing,
                row if request.probabilities else None))
        return inference_ms, answers
