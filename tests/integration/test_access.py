"""API keys, rate limits and quotas on the real service: gunicorn's two API processes, redis-server, a worker.

Each key's bucket lives in Redis, so the two API processes share it: a client cannot double its rate by
landing on both. Every door (native, v2, TorchServe) and every route that is not a probe needs a key.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from app.keys import RECHECK_SECONDS, key_line
from serving import fleet_scripts
from serving.protocol import FleetKeys, Keys, ModelInfo
from stack.processes import Stack, free_port
from tests.images import photo_bytes
from tests.integration.client import wait_until
from tests.integration.conftest import stack_settings
from tests.openapi_check import assert_conforms, documented_path

MODEL = "efficientnet_lite0"
KEYS = {"burst": "key-of-burst", "other": "key-of-other", "slow": "key-of-slow", "quota": "key-of-quota",
        "free": "key-of-free"}
LINES = [key_line("burst", KEYS["burst"], 10.0, 10, None, "normal"),
         key_line("other", KEYS["other"], 10.0, 10, None, "normal"),
         key_line("slow", KEYS["slow"], 0.01, 1, None, "normal"),
         key_line("quota", KEYS["quota"], None, None, 2, "normal"),
         key_line("free", KEYS["free"], None, None, None, "normal")]
CAT = photo_bytes("chelsea.png")
RAW = {"Content-Type": "image/png"}
RATE_LIMIT_FIELDS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "api-keys"
    path.write_text("\n".join(["# name sha256 rate burst daily priority", *LINES]) + "\n")
    return path


@pytest.fixture(scope="module")
def service(keys_file, tmp_path_factory):
    settings = stack_settings(api_keys_file=str(keys_file), api_processes=2)
    with Stack(settings, workers=1, log_dir=tmp_path_factory.mktemp("logs")) as stack:
        yield stack


# Every protected route of every door, as (method, path, body); each needs a key.
PROTECTED = [("POST", "/predict", CAT), ("POST", f"/models/{MODEL}/predict", CAT), ("GET", "/model", None),
             ("GET", "/models", None), ("GET", f"/models/{MODEL}", None), ("GET", "/openapi.json", None),
             ("GET", "/v2", None), ("GET", f"/v2/models/{MODEL}", None), ("GET", f"/v2/models/{MODEL}/ready", None),
             ("GET", f"/v2/models/{MODEL}/config", None), ("POST", f"/v2/models/{MODEL}/infer", CAT),
             ("POST", f"/predictions/{MODEL}", CAT), ("PUT", f"/predictions/{MODEL}/1", CAT),
             ("GET", "/no/such/route", None)]
OPEN = ["/healthz", "/readyz", "/ping", "/v2/health/live", "/v2/health/ready", "/", "/static/demo.js", "/metrics"]


def door_error(response: requests.Response) -> tuple[int, str]:
    """(status, message) of an error in whichever door's shape it came."""
    body = response.json()
    if "success" in body:
        return response.status_code, body["error"]["code"] + ": " + body["error"]["message"]
    if "type" in body:
        assert body["code"] == response.status_code
        return response.status_code, body["type"] + ": " + body["message"]
    return response.status_code, body["error"]


def call(service, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> requests.Response:
    extra = {"Inference-Header-Content-Length": "0"} if path.endswith("/infer") else {}
    return requests.request(method, service.url + path, data=body, headers={**RAW, **extra, **headers}, timeout=60)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-key"}, {"X-API-Key": "not-a-key"},
                                     {"Authorization": f"Basic {KEYS['free']}"}],
                         ids=["missing", "wrong-bearer", "wrong-x-api-key", "not-bearer"])
def test_every_protected_route_of_every_door_refuses_a_missing_or_wrong_key_with_401(service, headers):
    for method, path, body in PROTECTED:
        response = call(service, method, path, body, headers)
        status, message = door_error(response)
        assert status == 401, (path, message)
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), path
        assert KEYS["free"] not in message
        if path != "/no/such/route":
            assert_conforms(documented_path(path), method, status, response.headers, response.content)


def test_the_doors_401s_are_each_in_their_own_shape(service):
    native = call(service, "POST", "/predict", CAT, {}).json()
    v2 = call(service, "POST", f"/v2/models/{MODEL}/infer", CAT, {}).json()
    torchserve = call(service, "POST", f"/predictions/{MODEL}", CAT, {}).json()
    assert native["success"] is False and native["error"]["code"] == "unauthorized"
    assert set(v2) == {"error"} and "API key" in v2["error"]
    assert torchserve["code"] == 401 and torchserve["type"] == "InvalidKeyException"


def test_probes_and_the_demo_page_need_no_key_and_metrics_stay_open_by_default(service):
    for path in OPEN:
        assert requests.get(service.url + path, timeout=30).status_code == 200, path


@pytest.mark.parametrize("headers", [bearer("free"), {"X-API-Key": KEYS["free"]}], ids=["bearer", "x-api-key"])
def test_a_valid_key_opens_every_door_and_its_name_is_logged_never_the_key(service, headers):
    for method, path, body in PROTECTED[:-1]:
        response = call(service, method, path, body, headers)
        assert response.status_code == 200, (path, response.text[:200])
    log = (service.log_dir / "api.log").read_text()
    assert "key=free" in log and KEYS["free"] not in log


def test_two_api_processes_share_one_bucket_and_another_key_is_unaffected(service):
    """100 requests in 2 s from a key of 10 images/s, burst 10: about 10 + 2 x 10 = 30 pass, the rest are 429;
    with a bucket per API process twice as many would. A second key at 4 requests/s is never refused."""
    started = time.monotonic()

    def send(index: int, name: str, spacing: float) -> requests.Response:
        time.sleep(max(started + index * spacing - time.monotonic(), 0))
        return requests.post(service.url + "/predict", data=CAT, headers={**RAW, **bearer(name)}, timeout=60)

    with ThreadPoolExecutor(40) as pool:
        burst = [pool.submit(send, i, "burst", 0.02) for i in range(100)]
        other = [pool.submit(send, i, "other", 0.25) for i in range(8)]
        burst_statuses = [f.result().status_code for f in burst]
        other_statuses = [f.result().status_code for f in other]
    answered, refused = burst_statuses.count(200), burst_statuses.count(429)
    print(f"\nburst key: {answered} answered, {refused} refused (429) of 100 in 2 s; other key: {other_statuses}")
    assert answered + refused == 100
    assert 22 <= answered <= 40  # 30 expected; 60 if each process had its own bucket
    assert other_statuses == [200] * 8
    # Both API processes took part: each writes prometheus_client's files under its own pid.
    assert len(list(service.metrics_dir.glob("counter_*.db"))) >= 2


def test_over_the_rate_each_door_answers_429_rate_limited_with_retry_after_and_ratelimit_headers(service):
    first = requests.post(service.url + "/predict", data=CAT, headers={**RAW, **bearer("slow")}, timeout=60)
    assert first.status_code == 200 and first.headers["RateLimit-Remaining"] == "0"
    for method, path, body in [("POST", "/predict", CAT), ("POST", f"/v2/models/{MODEL}/infer", CAT),
                               ("POST", f"/predictions/{MODEL}", CAT)]:
        response = call(service, method, path, body, bearer("slow"))
        status, message = door_error(response)
        assert status == 429 and "rate" in message, (path, message)
        assert_conforms(documented_path(path), method, status, response.headers, response.content)
        assert 1 <= int(response.headers["Retry-After"]) <= 100
        assert [response.headers[field] for field in RATE_LIMIT_FIELDS][:2] == ["1", "0"]
    v2 = call(service, "POST", f"/v2/models/{MODEL}/infer", CAT, bearer("slow"))
    assert set(v2.json()) == {"error"}
    assert call(service, "POST", f"/predictions/{MODEL}", CAT, bearer("slow")).json()["type"] == \
        "TooManyRequestsException"


def test_a_request_of_several_images_costs_one_token_each(service):
    images = [("image", (f"{i}.png", CAT)) for i in range(3)]
    response = requests.post(service.url + "/predict", files=images, headers=bearer("quota"), timeout=60)
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_many_images"  # 3 > daily 2
    two = requests.post(service.url + "/predict", files=images[:2], headers=bearer("quota"), timeout=60)
    assert two.status_code == 200 and len(two.json()["results"]) == 2
    assert two.headers["RateLimit-Limit"] == "2" and two.headers["RateLimit-Remaining"] == "0"


def test_over_the_daily_quota_is_429_quota_exceeded_with_the_reset_time(service):
    requests.post(service.url + "/predict", data=CAT, headers={**RAW, **bearer("quota")}, timeout=60)
    response = requests.post(service.url + "/predict", data=CAT, headers={**RAW, **bearer("quota")}, timeout=60)
    error = response.json()["error"]
    assert response.status_code == 429 and error["code"] == "quota_exceeded"
    assert "resets at" in error["message"] and "T00:00:00+00:00" in error["message"]
    reset = int(response.headers["Retry-After"])
    assert 0 < reset <= 86400 and response.headers["RateLimit-Reset"] == str(reset)


def test_key_names_are_in_the_metrics(service):
    images = [("image", (f"{i}.png", CAT)) for i in range(2)]
    assert requests.post(service.url + "/predict", files=images, headers=bearer("free"), timeout=60).ok
    text = requests.get(service.url + "/metrics", timeout=30).text
    assert 'imgcls_key_requests_total{key="free",status="200"}' in text
    assert 'imgcls_key_images_total{key="free"}' in text
    assert KEYS["free"] not in text


def test_the_keys_file_is_read_again_when_it_changes_without_a_restart(service, keys_file):
    newcomer = "key-of-newcomer"
    keys_file.write_text("\n".join([*LINES[1:], key_line("newcomer", newcomer, None, None, None, "normal")]) + "\n")
    headers = {"Authorization": f"Bearer {newcomer}"}
    # Each API process sees it at its first look RECHECK_SECONDS or more after its last one. Without this wait
    # the new key's checks could all land on a process that had last looked long ago, and the old key's check
    # then on one that had looked just before the write.
    time.sleep(RECHECK_SECONDS)
    wait_until(lambda: {requests.get(service.url + "/model", headers=headers, timeout=10).status_code
                        for _ in range(6)} == {200}, 15, interval=0.2, what="the new key let in by every process")
    assert {requests.get(service.url + "/model", headers=bearer("burst"), timeout=10).status_code
            for _ in range(6)} == {401}  # its line is gone


def test_a_keys_file_that_no_longer_parses_keeps_the_keys_read_before(service, keys_file):
    keys_file.write_text(keys_file.read_text() + "broken line with too many fields here now\n")
    time.sleep(2.5)
    assert requests.get(service.url + "/model", headers=bearer("other"), timeout=10).status_code == 200
    assert "keeping the" in (service.log_dir / "api.log").read_text()


def test_metrics_can_need_a_key_and_redis_down_is_503_never_an_open_door(tmp_path):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    (tmp_path / "api-keys").write_text("\n".join(LINES))
    settings = stack_settings(redis_url=dead_redis, api_keys_file=str(tmp_path / "api-keys"), metrics_need_key=True)
    with Stack(settings, workers=0, private_redis=False, log_dir=tmp_path) as stack:
        assert requests.get(stack.url + "/metrics", timeout=10).status_code == 401
        response = requests.post(stack.url + "/predict", data=CAT, headers={**RAW, **bearer("other")}, timeout=10)
    assert response.status_code == 503 and response.json()["error"]["code"] == "redis_unavailable"
    assert json.loads(response.text)["success"] is False


def test_a_503_costs_the_client_no_tokens(tmp_path):
    """A full queue is the service's fault: the key's one token comes back, and its next request is let on."""
    (tmp_path / "api-keys").write_text("\n".join(LINES))
    settings = stack_settings(api_keys_file=str(tmp_path / "api-keys"), max_queue=1, request_timeout=1.0)
    with Stack(settings, workers=0, log_dir=tmp_path / "logs") as stack:
        prefix, client = stack.settings.key_prefix, stack.redis()
        keys = Keys(prefix, "silent@1")
        info = ModelInfo("silent", "silent", 1000, 224, 256, (0.5,) * 3, (0.5,) * 3, "cpu", 8)
        client.set(keys.model, info.to_json(), ex=60)  # announced, but nobody serves: the queue stays full
        fleet_scripts.register_model(client, fleet=FleetKeys(prefix), model_id=keys.model_id, worker_timeout=60)
        client.lpush(keys.queue, b"queued by someone else")
        url = stack.url + "/models/silent/predict"
        full = [requests.post(url, data=CAT, headers={**RAW, **bearer("slow")}, timeout=10) for _ in range(3)]
        client.delete(keys.queue)
        let_on = requests.post(url, data=CAT, headers={**RAW, **bearer("slow")}, timeout=10)
        refused = requests.post(url, data=CAT, headers={**RAW, **bearer("slow")}, timeout=10)
    assert [door_error(r)[1].split(":")[0] for r in full] == ["queue_full"] * 3
    assert let_on.status_code == 504  # past the bucket, queued, and nobody answered
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"


def test_at_saturation_the_high_key_waits_at_most_half_the_low_keys_wait_and_the_low_key_is_still_served(tmp_path):
    """The same closed-loop load from a high and a low key, more than one worker can serve: high goes first."""
    lines = [key_line("high", "key-of-high", None, None, None, "high"),
             key_line("low", "key-of-low", None, None, None, "low")]
    (tmp_path / "api-keys").write_text("\n".join(lines))
    # Batches of 2 under 16 clients: the queue holds more than a batch, so the worker chooses what to take.
    settings = stack_settings(api_keys_file=str(tmp_path / "api-keys"), request_timeout=30.0, batch_size=2)
    with Stack(settings, workers=1, log_dir=tmp_path / "logs") as stack:
        stop_at = time.monotonic() + 12

        def client(name: str) -> list[tuple[int, float]]:
            seen = []
            while time.monotonic() < stop_at:
                started = time.monotonic()
                response = requests.post(stack.url + "/predict", data=CAT, timeout=60,
                                         headers={**RAW, "Authorization": f"Bearer key-of-{name}"})
                seen.append((response.status_code, time.monotonic() - started))
            return seen

        with ThreadPoolExecutor(16) as pool:
            runs = {name: [pool.submit(client, name) for _ in range(8)] for name in ("high", "low")}
            lanes = []  # each lane's depth as /models shows it, twice a second through the run's middle
            while time.monotonic() < stop_at - 2:
                time.sleep(0.5)
                lanes.append(requests.get(stack.url + "/models", headers={"Authorization": "Bearer key-of-low"},
                                          timeout=30).json()["models"][0]["versions"][0]["lanes"])
            seen = {name: [answer for run in futures for answer in run.result()] for name, futures in runs.items()}
    p50 = {name: sorted(seconds for _, seconds in answers)[len(answers) // 2] for name, answers in seen.items()}
    print(f"\nhigh: {len(seen['high'])} answered, p50 {p50['high'] * 1000:.0f} ms; low: {len(seen['low'])} "
          f"answered, p50 {p50['low'] * 1000:.0f} ms; lanes during the run: {lanes}")
    assert {status for name in seen for status, _ in seen[name]} == {200}
    assert p50["high"] <= p50["low"] / 2
    assert len(seen["low"]) >= 8  # served, if later: every LOW_LANE_EVERY-th batch is the low lane's first
    # /models shows each lane's depth: the low lane's backlog (at some moments: where the worker outpaces the API
    # processes, the lanes empty now and then), and nothing in the normal lane, which no key sends to.
    assert max(depths["low"] for depths in lanes) > 0 and all(depths["normal"] == 0 for depths in lanes)
