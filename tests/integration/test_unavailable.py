"""Real gunicorn with nobody behind it: the API fails fast and clearly instead of hanging."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving import fleet_scripts
from serving.protocol import FleetKeys, Keys, ModelInfo
from stack.processes import Stack, free_port
from tests.images import photo_bytes
from tests.integration.client import post_image, timed_post, wait_until
from tests.integration.conftest import stack_settings

TIMEOUT = 1.5


@pytest.fixture(scope="module")
def api_without_workers(tmp_path_factory):
    with Stack(stack_settings(request_timeout=TIMEOUT), workers=0,
               log_dir=tmp_path_factory.mktemp("logs")) as stack:
        yield stack


def test_no_worker_is_503_without_waiting_for_the_timeout(api_without_workers):
    response, elapsed = timed_post(api_without_workers.url, photo_bytes("chelsea.png"))
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_worker"
    assert elapsed < TIMEOUT


def test_a_worker_that_never_answers_is_504_at_the_timeout(api_without_workers):
    prefix, client = api_without_workers.settings.key_prefix, api_without_workers.redis()
    keys = Keys(prefix, "silent@1")
    info = ModelInfo("silent", "silent", 1000, 224, 256, (0.5,) * 3, (0.5,) * 3, "cpu", 8)
    client.set(keys.model, info.to_json(), ex=60)  # announced, but nobody serves
    fleet_scripts.register_model(client, fleet=FleetKeys(prefix), model_id=keys.model_id, worker_timeout=60)
    response, elapsed = timed_post(api_without_workers.url, photo_bytes("chelsea.png"))
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    assert TIMEOUT - 0.1 <= elapsed < TIMEOUT + 2


def test_unreachable_redis_is_503_quickly(tmp_path):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    with Stack(stack_settings(redis_url=dead_redis), workers=0, private_redis=False, log_dir=tmp_path) as stack:
        response, elapsed = timed_post(stack.url, photo_bytes("chelsea.png"))
    assert response.status_code == 503 and response.json()["error"]["code"] == "redis_unavailable"
    assert elapsed < 2


def test_a_hung_redis_is_503_within_about_redis_timeout_for_each_of_16_concurrent_requests(tmp_path):
    """Redis stopped (SIGSTOP), the fleet's snapshot stale: 16 requests at once each get 503 redis_unavailable
    within about REDIS_TIMEOUT, not one after another (the n-th after n timeouts); once Redis goes on, 200."""
    requests = 16
    settings = stack_settings(api_processes=1, api_threads=requests, redis_timeout=1.0)  # threads are no bottleneck
    with Stack(settings, workers=1, log_dir=tmp_path) as stack:
        assert post_image(stack.url, photo_bytes("chelsea.png")).status_code == 200
        pid = stack.redis_process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(1.5)  # past the snapshot's REFRESH_SECONDS: every request needs a registry read
            with ThreadPoolExecutor(max_workers=requests) as pool:
                outcomes = list(pool.map(lambda _: timed_post(stack.url, photo_bytes("chelsea.png")), range(requests)))
        finally:
            os.kill(pid, signal.SIGCONT)
        print("503 after " + ", ".join(f"{elapsed:.2f}" for _, elapsed in sorted(outcomes, key=lambda o: o[1])) + " s")
        assert [(r.status_code, r.json()["error"]["code"]) for r, _ in outcomes] == [(503, "redis_unavailable")] * 16
        # Its own admission call may take a REDIS_TIMEOUT more; a margin for a loaded machine.
        assert max(elapsed for _, elapsed in outcomes) < 2 * settings.redis_timeout + 1.5
        wait_until(lambda: post_image(stack.url, photo_bytes("chelsea.png")).status_code == 200, 30, 0.2,
                   "a 200 once Redis goes on")
