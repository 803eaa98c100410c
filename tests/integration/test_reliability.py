"""Fault injection on real processes: killed workers, poison messages, a Redis outage, a soak."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving import protocol
from serving.protocol import InferenceRequest
from stack.processes import Stack
from tests.images import photo_bytes
from tests.integration.client import post_image, timed_post, wait_until
from tests.integration.conftest import DISTINCT_IMAGES, stack_settings
from tests.integration.faults import (
    every_request_answered_despite,
    freeze_while_holding_work,
    keys_of,
    kill_while_holding_work,
)
from tests.reference import matches
from tests.unit.tiny_model import stored


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory):
    settings = stack_settings(request_timeout=30, worker_timeout=3)
    with Stack(settings, workers=2, log_dir=tmp_path_factory.mktemp("logs")) as stack:
        yield stack


def replace_dead_worker(stack: Stack, index: int) -> None:
    assert stack.restart_worker_if_dead(index)
    stack.wait_until_ready(120)


def test_killing_a_worker_mid_batch_loses_no_request(fault_stack, images_and_answers):
    every_request_answered_despite(fault_stack, kill_while_holding_work, images_and_answers)
    replace_dead_worker(fault_stack, 0)


def test_a_malformed_message_is_answered_and_the_worker_keeps_serving(fault_stack):
    keys, client = keys_of(fault_stack), fault_stack.redis()
    pids = [p.pid for p in fault_stack.worker_processes]
    client.lpush(keys.queue, b'{"id": "poison-1", "shape": [224, 224, 3], "dtype": "uint8", "image": "AAAA"}')
    _, raw = client.blpop([keys.result("poison-1")], timeout=10)
    answer = protocol.decode_result(raw)
    assert not answer.success and answer.error.code == "malformed_message"
    assert post_image(fault_stack.url, photo_bytes("coffee.png")).json()["predictions"][0]["label"] == "espresso"
    assert [p.pid for p in fault_stack.worker_processes] == pids
    assert all(p.poll() is None for p in fault_stack.worker_processes)


def test_a_request_whose_workers_keep_dying_gets_an_error_answer(fault_stack):
    """A message its workers died on twice already, held by a dead worker: the live ones give up on it."""
    keys, client = keys_of(fault_stack), fault_stack.redis()
    now = time.time()
    pixels = np.zeros((224, 224, 3), dtype=np.uint8)
    deadly = stored(client, keys, InferenceRequest("deadly", pixels, now, now + 30, 5))
    client.lpush(keys.processing("ghost"), deadly)
    client.hset(keys.attempts, "deadly", fault_stack.settings.max_attempts - 1)
    client.zadd(keys.workers, {"ghost": now - 60})
    _, raw = client.blpop([keys.result("deadly")], timeout=10)
    answer = protocol.decode_result(raw)
    assert answer.error.code == "attempts_exhausted"
    assert f"died {fault_stack.settings.max_attempts} times" in answer.error.message
    assert not client.exists(keys.processing("ghost")) and client.zscore(keys.workers, "ghost") is None
    assert not client.exists(keys.attempts, keys.pixels("deadly"))  # the count and the pixels go with the answer


def test_a_redis_outage_is_503_fast_and_the_service_recovers_by_itself(fault_stack):
    photo = photo_bytes("chelsea.png")
    pids = [p.pid for p in [fault_stack.api_process, *fault_stack.worker_processes]]
    port = fault_stack.redis_port()
    outcomes: list[tuple[float, float, int]] = []  # (start, elapsed, status) under continuous load
    stop = threading.Event()

    def load():
        while not stop.is_set():
            started = time.monotonic()
            response, elapsed = timed_post(fault_stack.url, photo, timeout=60)
            outcomes.append((started, elapsed, response.status_code))

    loaders = [threading.Thread(target=load) for _ in range(4)]
    for thread in loaders:
        thread.start()
    time.sleep(1.0)
    outage_start = time.monotonic()
    fault_stack.stop_process(fault_stack.redis_process)
    time.sleep(3.0)
    # On a machine busy with other work the requests in flight at the cut have taken the whole 3 s: the outage
    # lasts until four requests begun during it have their answers (a hung API never gives them).
    def began_during_the_outage() -> list[tuple[float, float, int]]:
        return [outcome for outcome in list(outcomes) if outcome[0] > outage_start + 0.1]

    wait_until(lambda: len(began_during_the_outage()) >= 4, 30, interval=0.1,
               what="answers to requests made during the outage")
    during = began_during_the_outage()  # every one answered while Redis was still gone
    fault_stack.start_redis(port)
    wait_until(lambda: post_image(fault_stack.url, photo).status_code == 200, 30,
               interval=0.2, what="a 200 after Redis came back")  # raises if it never comes
    stop.set()
    for thread in loaders:
        thread.join(60)

    timeline = [(round(started - outage_start, 2), round(elapsed, 2), status) for started, elapsed, status in outcomes]
    assert {status for _, _, status in during} == {503}, timeline
    assert max(elapsed for _, elapsed, _ in during) < 2.0, timeline
    # Those in flight at the cut, most waiting for their answers, too: their messages went with that Redis.
    cut_short = [started + elapsed - outage_start for started, elapsed, _ in outcomes
                 if started < outage_start < started + elapsed]
    assert cut_short and max(cut_short) < 2.0, timeline
    assert {status for _, _, status in outcomes} <= {200, 503}
    assert [p.pid for p in [fault_stack.api_process, *fault_stack.worker_processes]] == pids  # nothing restarted
    fault_stack.wait_until_ready(30)


def test_a_hung_redis_is_503_within_the_redis_timeout_and_the_service_recovers(fault_stack):
    """Redis stopped (SIGSTOP: connections stay open, nothing answers), unlike one that is gone."""
    photo = photo_bytes("coffee.png")
    redis_pid = fault_stack.redis_process.pid
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        response, elapsed = timed_post(fault_stack.url, photo, timeout=30)
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    assert response.status_code == 503 and response.json()["error"]["code"] == "redis_unavailable"
    assert elapsed < fault_stack.settings.redis_timeout + 1.5
    wait_until(lambda: post_image(fault_stack.url, photo).status_code == 200, 30, interval=0.2,
               what="a 200 after Redis resumed")
    fault_stack.wait_until_ready(30)


def test_soak_two_thousand_requests_with_a_worker_restart(fault_stack, images_and_answers):
    images, expected = images_and_answers
    total = 2000
    done = threading.Semaphore(0)

    def request(i):
        try:
            return post_image(fault_stack.url, images[i % DISTINCT_IMAGES])
        finally:
            done.release()

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(request, i) for i in range(total)]
        for _ in range(total // 3):
            done.acquire()
        freeze_while_holding_work(fault_stack, 1)
        fault_stack.worker_processes[1].kill()
        fault_stack.worker_processes[1].wait()
        assert fault_stack.restart_worker_if_dead(1)
        responses = [f.result() for f in futures]

    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == total, {s: statuses.count(s) for s in set(statuses)}
    crossed = [i for i, r in enumerate(responses) if not matches(r.json()["predictions"],
                                                                 expected[i % DISTINCT_IMAGES])]
    assert crossed == []
    keys = keys_of(fault_stack)
    fault_stack.wait_until_ready(60)
    leftover = {k.decode() for k in fault_stack.redis().scan_iter(keys.all_keys_pattern())}
    assert leftover == {keys.model, keys.fingerprint, keys.workers, keys.worker_stats}  # a live version's own


def clock_off_by(offset: str) -> dict[str, str]:
    """The environment that runs a process under libfaketime (Debian's faketime) with its clock off by `offset`.

    LD_PRELOAD rather than the `faketime` command, which would run the worker as its child: the stack's
    stop signal and parent-death signal would reach the wrapper, not the worker. Only the wall clock is
    off; monotonic timers stay true, as on a host whose clock was set wrong.

    FAKETIME_FORCE_MONOTONIC_FIX=0: libfaketime 0.9.10 turns on by default, for this glibc, a rewrite of
    pthread_cond_timedwait that makes a threaded Python's timed waits (its GIL hand-over, Event.wait)
    late; under load a faked worker then stalled for 4-6 s and was rightly reaped as dead (1 run of 12
    beside a busy core). The longest pause between a faked worker's batches in a 40 s run under load: 1.3-4.3 s with
    that rewrite, 0.46-0.55 s without it, 0.51 s without libfaketime.
    """
    library = subprocess.run(["dpkg", "-L", "libfaketime"], capture_output=True, text=True, check=True).stdout
    preload = next(line for line in library.split() if line.endswith("/libfaketime.so.1"))
    return {"LD_PRELOAD": preload, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_FORCE_MONOTONIC_FIX": "0"}


def test_workers_whose_clocks_are_20s_off_answer_every_request_and_reap_nobody(tmp_path):
    """Deadlines, heartbeats and the reaper's cutoff are by Redis's clock: a host's clock error changes nothing.

    REQUEST_TIMEOUT stays at its 10 s: a worker 20 s ahead that read its own clock would take every
    deadline for passed.
    """
    with Stack(stack_settings(), workers=1, log_dir=tmp_path) as stack:
        for offset in ("+20s", "-20s"):
            stack.start_worker(clock_off_by(offset))
        stack.wait_until_ready(120)
        photo = photo_bytes("chelsea.png")
        with ThreadPoolExecutor(max_workers=8) as pool:
            give_up_at = time.monotonic() + 10
            statuses = list(pool.map(lambda _: post_image(stack.url, photo).status_code
                                     if time.monotonic() < give_up_at else None, range(400)))
    statuses = [s for s in statuses if s is not None]
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    logs = [stack.log_path(f"worker{i}").read_text() for i in range(3)]
    assert all(" batch=" in log for log in logs)  # each of the three served
    assert not any("reaped dead worker" in log or "skipped expired" in log for log in logs)
