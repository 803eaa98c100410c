"""Graceful shutdown: SIGTERM finishes what is in hand, for workers and for the API."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.protocol import decode_message
from stack.processes import Stack
from tests.images import photo_bytes
from tests.integration.client import post_image, timed_post, wait_until
from tests.integration.conftest import stack_settings
from tests.integration.faults import freeze_while_holding_work, keys_of
from tests.integration.standins import SlowToLoad, SwallowsStops
from tests.model_files import save_classic


@pytest.fixture
def one_worker_stack(tmp_path):
    with Stack(stack_settings(request_timeout=60), workers=1, log_dir=tmp_path) as stack:
        yield stack


def test_sigterm_makes_a_worker_finish_its_batch_and_exit_zero(tmp_path):
    # A long WORKER_TIMEOUT: the version stays announced while its worker is frozen and the API queues the rest.
    with Stack(stack_settings(request_timeout=60, worker_timeout=30), workers=1, log_dir=tmp_path) as stack:
        worker = stack.worker_processes[0]
        keys = keys_of(stack)
        workers_key = keys.workers
        [worker_id] = stack.redis().zrange(workers_key, 0, -1)
        with ThreadPoolExecutor(max_workers=12) as pool:
            futures = [pool.submit(post_image, stack.url, photo_bytes("coffee.png")) for _ in range(12)]
            freeze_while_holding_work(stack, 0)
            processing = keys.processing(worker_id.decode())
            held = [decode_message(raw).job_id for raw in stack.redis().lrange(processing, 0, -1)]
            assert held  # what freeze_while_holding_work promised
            # Every request queued, held or answered before the stop (a first batch may have been answered before
            # the freeze caught the worker holding the next): the last worker of a version closes it as it stops,
            # and a request the API had not queued by then is 503 no_worker (test_requests_sent_right_after_...).
            wait_until(lambda: waiting_messages(stack) + sum(future.done() for future in futures) == 12, 20,
                       what="all 12 requests queued, held or answered")
            worker.send_signal(signal.SIGTERM)
            os.kill(worker.pid, signal.SIGCONT)
            assert worker.wait(timeout=30) == 0
            stack.start_worker()  # serves whatever the first one had not taken
            responses = [f.result() for f in futures]
        assert [r.status_code for r in responses] == [200] * 12
        first_worker_log = stack.log_path("worker0").read_text()  # the replacement logs to worker1
        assert "stopped after" in first_worker_log
        processed = {job_id for ids in re.findall(r" job_ids=(\S*)$", first_worker_log, re.MULTILINE)
                     for job_id in ids.split(",")}
        assert set(held) <= processed, f"the batch in hand {held} was not finished by the stopping worker"
        assert stack.redis().zscore(workers_key, worker_id) is None  # signed off, not left for the reaper


def test_requests_sent_right_after_the_last_worker_stopped_get_503_at_once_and_nothing_waits_in_its_queue(
        one_worker_stack):
    """Its sign-off closes the version: not up for WORKER_TIMEOUT more, queueing requests that would get 504."""
    stack = one_worker_stack
    keys, worker = keys_of(stack), stack.worker_processes[0]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: timed_post(stack.url, photo_bytes("coffee.png")), range(8)))
    assert [(r.status_code, r.json()["error"]["code"]) for r, _ in answers] == [(503, "no_worker")] * 8
    slowest = max(seconds for _, seconds in answers)
    print(f"slowest of 8 requests after the last worker left: {slowest * 1000:.0f} ms")
    assert slowest < 2  # at once, not at REQUEST_TIMEOUT (60 s here)
    assert stack.redis().llen(keys.queue) == 0


def test_stopping_one_of_two_workers_keeps_the_version_served(tmp_path):
    with Stack(stack_settings(), workers=2, log_dir=tmp_path) as stack:
        stopped = stack.worker_processes[0]
        stopped.send_signal(signal.SIGTERM)
        assert stopped.wait(timeout=30) == 0
        responses = [post_image(stack.url, photo_bytes("coffee.png"), timeout=30) for _ in range(4)]
        assert [r.status_code for r in responses] == [200] * 4
        assert stack.redis().exists(keys_of(stack).model)


def waiting_messages(stack: Stack) -> int:
    """Messages in the queue's lanes plus any the stopped worker's take had already moved."""
    keys, redis = keys_of(stack), stack.redis()
    taken = sum(redis.llen(keys.processing(worker.decode())) for worker in redis.zrange(keys.workers, 0, -1))
    return sum(redis.llen(lane) for lane in keys.lanes) + taken


def test_sigterm_lets_the_api_finish_requests_in_flight(one_worker_stack):
    stack = one_worker_stack
    worker, api = stack.worker_processes[0], stack.api_process
    os.kill(worker.pid, signal.SIGSTOP)  # requests will wait until it resumes
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = [pool.submit(post_image, stack.url, photo_bytes("chelsea.png")) for _ in range(3)]
            wait_until(lambda: waiting_messages(stack) == 3, 10, what="three requests queued")
            api.send_signal(signal.SIGTERM)
            os.kill(worker.pid, signal.SIGCONT)
            responses = [f.result() for f in futures]
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert [r.status_code for r in responses] == [200] * 3
    assert api.wait(timeout=30) == 0


@pytest.mark.parametrize("standin, moment", [
    (SlowToLoad, "loading model_path="),  # importing the engines and torch
    (SlowToLoad, SlowToLoad.UNPICKLING),  # in torch.load
    (SwallowsStops, SlowToLoad.UNPICKLING),  # in a load that catches the stop's exception and goes on
])
def test_sigterm_while_the_worker_starts_ends_it_at_once_with_exit_zero(tmp_path, standin, moment):
    """Not a crash: nothing was taken yet, and a launcher restarts a worker that exits non-zero."""
    model = save_classic(standin(seconds=300).eval(), tmp_path / "slow_to_load.pth")
    stack = Stack(stack_settings(model_path=str(model), model_trusted=True, backend="torch"), workers=0,
                  log_dir=tmp_path / "logs")
    try:
        stack.start_redis()
        worker = stack.start_worker()
        log = stack.log_path("worker0")
        wait_until(lambda: moment in log.read_text(), 120, what=repr(moment))
        signalled = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        print(f"exited {time.monotonic() - signalled:.2f} s after SIGTERM at {moment!r}")
        assert time.monotonic() - signalled < 5  # not the 300 s the load would take
        assert "stopped by SIGTERM while starting" in log.read_text()
        assert stack.redis().keys("*") == []  # it announced nothing
    finally:
        stack.stop()
