"""A queue command whose reply comes too late is sent once, and a key charged once, on one server and on a Cluster.

redis-py 8's cluster client sends a command again by itself after a read timeout (up to ten times): an
ENQUEUE whose reply was late has run, so a repeat queues the request once more; a worker's TAKE whose reply
was late has moved messages into its processing list, so a repeat moves more. (A `Redis` made from a URL
happens not to repeat; the test holds it to that too.) Here the Redis node that holds the queue is stopped
(SIGSTOP) while the command is on its way, and goes on after its read timeout: the command fails within
its timeout (the API answers 503; the worker serves what its processing list holds, tests/unit/test_worker.py)
and ran once. (The worker's blocking wait, whose reply comes late: tests/integration/test_scale_out.py.) The
admission is a pipeline, which the cluster client does send again command by command after a timeout, whatever its
retry policy (redis/cluster.py, PipelineStrategy._send_cluster_commands): its take of a key's tokens remembers the
request's charge id, so the repeat takes nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask

from app.access import Charge
from app.keys import ApiKey
from app.queue_client import InferenceQueue
from serving.protocol import ClientKeys, InferenceRequest, Keys, ModelInfo, decode_message
from serving.redis_client import REDIS_ERRORS, RedisClient, connect
from stack.processes import free_port
from tests.integration.client import wait_until
from tests.integration.redis_topologies import RedisProcesses, cluster_deployment
from worker.queue import WorkerQueue

KEYS = Keys("t", "tiny@1")
LIMITS = ClientKeys("t", "ci")  # under a tag of its own: maybe on another cluster node than the queue
READ_TIMEOUT = 0.5  # short: a stopped cluster node is taken for failed after its node timeout (2 s)


@contextlib.contextmanager
def deployment(kind: str, folder: Path, key: str = KEYS.queue) -> Iterator[tuple[RedisClient, int]]:
    """A client of a real `kind` deployment, and the pid of the server that holds `key`."""
    if kind == "cluster":
        with cluster_deployment(folder) as (url, servers, _):
            client = connect(url, READ_TIMEOUT, READ_TIMEOUT)
            yield client, servers.processes[client.get_node_from_key(key).port].pid
        return
    servers, port = RedisProcesses(folder), free_port()
    try:
        process = servers.start_server(port)
        yield connect(f"redis://127.0.0.1:{port}/0", READ_TIMEOUT, READ_TIMEOUT), process.pid
    finally:
        servers.stop_all()


@pytest.mark.parametrize("kind", ["server", "cluster"])
def test_an_enqueue_whose_reply_comes_late_fails_within_its_timeout_and_queues_once(kind, tmp_path):
    with deployment(kind, tmp_path) as (client, pid):
        client.set(KEYS.model, b"announced")  # a worker serves the version: ENQUEUE queues only then
        queue = InferenceQueue(client, client, KEYS, max_queue=10)
        queue.enqueue(image("warm"))  # connections made while the node answers: only the push itself meets the stop
        error, answered_after = late_reply(pid, lambda: queue.enqueue(image("late")))
        wait_until(lambda: client.llen(KEYS.queue) >= 2, 10, what="the late push run once the node goes on")
        time.sleep(0.5)  # room for a repeat of it, had one been sent
        assert [decode_message(raw).job_id for raw in client.lrange(KEYS.queue, 0, -1)] == ["late", "warm"]
        assert client.exists(KEYS.pixels("late"))
        assert isinstance(error, REDIS_ERRORS) and answered_after < 3 * READ_TIMEOUT  # the API answers 503


@pytest.mark.parametrize("kind", ["server", "cluster"])
def test_a_take_whose_reply_comes_late_fails_within_its_timeout_and_moves_once(kind, tmp_path):
    """TAKE moves a batch from the lanes in one script: its error reaches the worker, and it moved one batch."""
    with deployment(kind, tmp_path) as (client, pid):
        queue = WorkerQueue(client, KEYS, "w1")
        client.lpush(KEYS.queue, b"m1", b"m2", b"m3")
        assert queue.take_batch(1, 0.1, 0) == [b"m1"]  # connections made while the node answers
        client.delete(queue.processing)
        error, answered_after = late_reply(pid, lambda: queue.take_batch(1, 0.1, 0))
        wait_until(lambda: client.llen(queue.processing) >= 1, 10, what="the late take run once the node goes on")
        time.sleep(0.5)  # room for a repeat of it, had one been sent
        assert queue.held_messages() == [b"m2"] and client.lrange(KEYS.queue, 0, -1) == [b"m3"]
        assert isinstance(error, REDIS_ERRORS) and answered_after < 3 * READ_TIMEOUT  # the worker's recovery path


@pytest.mark.parametrize("kind", ["server", "cluster"])
def test_an_admission_whose_charge_reply_comes_late_charges_the_key_once(kind, tmp_path):
    with deployment(kind, tmp_path, LIMITS.limits) as (client, pid):
        model = ModelInfo("tiny", "tiny", 3, 224, 256, (0.5,) * 3, (0.5,) * 3, "cpu", 8)
        client.set(KEYS.model, model.to_json())  # a worker serves the version: admission lets the request on
        queue = InferenceQueue(client, client, KEYS, max_queue=10)
        key = ApiKey("ci", b"", rate=0.001, burst=10)
        with Flask(__name__).app_context():  # a charge's verdict sets the answer's RateLimit-* headers
            queue.admit(Charge(key, LIMITS, 1))  # connections made while the node answers
            late_reply(pid, lambda: queue.admit(Charge(key, LIMITS, 2)))
        wait_until(lambda: int(client.hget(LIMITS.limits, "used")) >= 3, 10, what="the late take run")
        time.sleep(0.5)  # room for a repeat of it, had one been sent
        assert int(client.hget(LIMITS.limits, "used")) == 3


def image(job_id: str) -> list[InferenceRequest]:
    """One request of one image, as the API queues it."""
    return [InferenceRequest(job_id, np.zeros((2, 2, 3), dtype=np.uint8), time.time(), time.time() + 30, 5)]


def late_reply(pid: int, call) -> tuple[Exception | None, float]:
    """Run call() while the server `pid` is stopped; it goes on after the call's read timeout but within a
    repeat's, so a repeat would reach it. The call's error (None if it returned), and how long it took."""
    resume = threading.Timer(1.5 * READ_TIMEOUT, os.kill, (pid, signal.SIGCONT))
    os.kill(pid, signal.SIGSTOP)
    resume.start()
    started = time.monotonic()
    try:
        call()
        error = None
    except REDIS_ERRORS as exc:
        error = exc
    answered_after = time.monotonic() - started
    resume.join()
    return error, answered_after
