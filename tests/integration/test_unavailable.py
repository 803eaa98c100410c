"""Real gunicorn with nobody behind it: the API fails fast and clearly instead of hanging."""

from __future__ import annotations

import pytest

from serving import protocol
from serving.protocol import FleetKeys, Keys, ModelInfo
from stack.processes import Stack, free_port
from tests.images import photo_bytes
from tests.integration.client import timed_post
from tests.integration.conftest import stack_settings

pytestmark = pytest.mark.integration

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
    client.eval(protocol.REGISTER_MODEL, 1, FleetKeys(prefix).models, keys.model_id)
    response, elapsed = timed_post(api_without_workers.url, photo_bytes("chelsea.png"))
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    assert TIMEOUT - 0.1 <= elapsed < TIMEOUT + 2


def test_unreachable_redis_is_503_quickly(tmp_path):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    with Stack(stack_settings(redis_url=dead_redis), workers=0, private_redis=False, log_dir=tmp_path) as stack:
        response, elapsed = timed_post(stack.url, photo_bytes("chelsea.png"))
    assert response.status_code == 503 and response.json()["error"]["code"] == "redis_unavailable"
    assert elapsed < 2
