"""Readiness, model info, metrics, request ids and log lines, the demo page and the OpenAPI document (fakeredis)."""

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from PIL import Image

from app import create_app
from app.operations import OPENAPI_DOCUMENT
from serving import protocol
from serving.protocol import ModelInfo
from tests.images import encode
from tests.openapi_check import assert_conforms
from tests.prometheus_text import sample_value
from tests.unit.fake_api import (
    KEYS,
    MODEL,
    SETTINGS,
    SOURCES,
    TABBY,
    answer_next_request,
    heartbeat,
    post_image,
    success,
)
from worker.metrics import BatchStats

STATIC = Path(__file__).resolve().parents[2] / "app" / "static"
TINY = {"model": "tiny", "version": "1"}  # the labels of fake_api's model in the fleet's metrics


# /readyz


def test_readyz_is_ready_with_a_fresh_worker(client, fake_redis):
    heartbeat(fake_redis)
    fake_redis.lpush(KEYS.queue, b"waiting")
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "model": "tiny", "version": "1", "workers": 1, "queue_depth": 1}


@pytest.mark.parametrize("state", ["nothing", "stale_worker", "no_model"])
def test_readyz_is_503_no_worker_without_a_fresh_worker_with_its_model(client, fake_redis, state):
    if state == "stale_worker":
        heartbeat(fake_redis, age=SETTINGS.worker_timeout + 1)
    if state == "no_model":
        fake_redis.zadd(KEYS.workers, {"w1": time.time()})
    response = client.get("/readyz")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.get_json()["error"]["code"] == "no_worker"


def test_readyz_is_503_when_redis_is_down(server, fake_redis):
    heartbeat(fake_redis)
    server.connected = False
    response = create_app(SETTINGS, fake_redis).test_client().get("/readyz")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "redis_unavailable"


# /model


def test_model_describes_the_served_model_and_its_workers(client, fake_redis):
    heartbeat(fake_redis, "w1")
    heartbeat(fake_redis, "w2")
    body = client.get("/model").get_json()
    assert body == {"name": "tiny", "version": "1", "arch": "tiny_arch", "num_classes": 3, "input_size": 224,
                    "preprocessing": {"resize_size": 256, "crop_size": 224, "interpolation": "bilinear",
                                      "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]},
                    "sources": SOURCES, "precision": "fp32", "backend": "torch", "device": "cpu", "batch_size": 8,
                    "workers": 2, "queue_depth": 0}


def test_model_reports_the_backend_a_worker_announces(client, fake_redis):
    heartbeat(fake_redis, model=dataclasses.replace(MODEL, backend="torchscript"))
    assert client.get("/model").get_json()["backend"] == "torchscript"


def test_a_heartbeat_with_fields_this_api_does_not_know_is_read_as_usual(client, fake_redis):
    """A newer worker beside an older API (a rolling upgrade): the extra field is ignored, nothing is a 500."""
    heartbeat(fake_redis)
    fake_redis.set(KEYS.model, json.dumps({**json.loads(MODEL.to_json()), "added_later": [1, 2]}))
    assert client.get("/model").get_json()["name"] == MODEL.name


def test_model_is_503_without_a_worker(client):
    response = client.get("/model")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "no_worker"


def test_heartbeats_without_a_backend_field_mean_eager_torch():
    raw = MODEL.to_json().replace(b', "backend": "torch"', b"")
    assert b"backend" not in raw and ModelInfo.from_json(raw).backend == "torch"


# /metrics


def test_metrics_count_requests_by_endpoint_method_and_status(client):
    before = client.get("/metrics").get_data(as_text=True)
    client.get("/healthz")
    client.get("/healthz")
    client.get("/predict")  # 405
    client.get("/no/such/path")  # 404
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)

    def grew(**labels):
        old = sample_value(before, "imgcls_http_requests_total", **labels) or 0
        return sample_value(text, "imgcls_http_requests_total", **labels) - old

    assert grew(endpoint="/healthz", method="GET", status=200) == 2
    # One label for every request that matched no route, so that scanners cannot create series at will.
    assert grew(endpoint="/predict", method="GET", status=405) == 1  # a route, with the wrong method
    assert grew(endpoint="unmatched", method="GET", status=404) == 1
    assert sample_value(text, "imgcls_http_request_duration_seconds_count", endpoint="/healthz") >= 2


def test_made_up_http_methods_are_counted_as_other_not_as_new_series(client):
    for method in ("BREW", "XYZZY1", "XYZZY2"):
        client.open("/healthz", method=method)
    text = client.get("/metrics").get_data(as_text=True)
    assert "XYZZY" not in text and "BREW" not in text
    assert sample_value(text, "imgcls_http_requests_total", endpoint="/healthz", method="other", status=405) == 3


def test_metrics_show_the_fleet_and_the_workers_batches(client, fake_redis):
    heartbeat(fake_redis, "w1")
    heartbeat(fake_redis, "w2")
    heartbeat(fake_redis, "dead", age=SETTINGS.worker_timeout + 1)
    fake_redis.lpush(KEYS.queue, b"a", b"b", b"c")
    first, second = BatchStats(fake_redis, KEYS), BatchStats(fake_redis, KEYS)  # two workers
    first.record(3, 20.0, expired_total=0)
    second.record(8, 120.0, expired_total=2)
    text = client.get("/metrics").get_data(as_text=True)
    assert sample_value(text, "imgcls_redis_up") == 1 and sample_value(text, "imgcls_model_versions_live") == 1
    assert sample_value(text, "imgcls_queue_depth", **TINY) == 3
    assert sample_value(text, "imgcls_workers_alive", **TINY) == 2
    assert sample_value(text, "imgcls_batch_size_count", **TINY) == 2
    assert sample_value(text, "imgcls_batch_size_sum", **TINY) == 11
    assert sample_value(text, "imgcls_batch_size_bucket", **TINY, le="2.0") == 0
    assert sample_value(text, "imgcls_batch_size_bucket", **TINY, le="4.0") == 1
    assert sample_value(text, "imgcls_batch_size_bucket", **TINY, le="+Inf") == 2
    assert sample_value(text, "imgcls_inference_seconds_bucket", **TINY, le="0.025") == 1
    assert sample_value(text, "imgcls_inference_seconds_bucket", **TINY, le="0.25") == 2
    assert sample_value(text, "imgcls_inference_seconds_sum", **TINY) == pytest.approx(0.14)
    assert sample_value(text, "imgcls_requests_expired_total", **TINY) == 2


def test_metrics_still_answer_with_redis_down(server, fake_redis):
    server.connected = False
    response = create_app(SETTINGS, fake_redis).test_client().get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert sample_value(text, "imgcls_redis_up") == 0 and sample_value(text, "imgcls_workers_alive") is None


# X-Request-ID and the log line


def test_a_request_id_is_echoed(client):
    assert client.get("/healthz", headers={"X-Request-ID": "req-42.a"}).headers["X-Request-ID"] == "req-42.a"


@pytest.mark.parametrize("given", [None, "has spaces", "x" * 129, "quote\"d"])
def test_a_missing_or_unusable_request_id_is_replaced_by_a_new_one(client, given):
    headers = {"X-Request-ID": given} if given else {}
    assert re.fullmatch("[0-9a-f]{32}", client.get("/healthz", headers=headers).headers["X-Request-ID"])


def test_the_job_id_is_the_request_id_unless_the_client_chose_it(client, fake_redis):
    heartbeat(fake_redis)
    seen = answer_next_request(fake_redis, success(TABBY))
    response = post_image(client)
    assert response.headers["X-Request-ID"] == response.get_json()["id"] == seen["request"].job_id

    seen = answer_next_request(fake_redis, success(TABBY))
    response = post_image(client, headers={"X-Request-ID": "mine"})
    assert response.headers["X-Request-ID"] == "mine"  # two clients may pick the same id: never a queue id
    assert response.get_json()["id"] == seen["request"].job_id != "mine"


def test_one_structured_log_line_per_request(client, fake_redis, caplog):
    heartbeat(fake_redis)
    seen = answer_next_request(fake_redis, success(TABBY))
    with caplog.at_level(logging.INFO, logger="api"):
        post_image(client, headers={"X-Request-ID": "trace-7"})
        post_image(client, data=b"not an image")
    lines = [r.getMessage() for r in caplog.records if r.name == "api" and r.getMessage().startswith("method=")]
    assert len(lines) == 2
    fields = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', lines[0]))
    assert fields["method"] == "POST" and fields["path"] == "/predict" and fields["status"] == "200"
    assert fields["request_id"] == "trace-7" and fields["job_id"] == seen["request"].job_id
    assert fields["top"] == "tabby" and fields["batch_size"] == "1" and float(fields["duration_ms"]) >= 0
    assert "status=400" in lines[1] and "error=invalid_image" in lines[1]


# The demo page


def test_the_demo_page_uses_only_its_own_assets(client):
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    html = response.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/static/demo.js" in assets and "/static/demo.css" in assets
    for asset in assets:
        if asset != "data:,":  # the empty favicon, which spares the browser a request
            assert asset.startswith("/"), f"{asset}: the page must work offline"
            assert client.get(asset).status_code == 200, asset
    for path in STATIC.iterdir():
        assert not re.search(r"https?://", path.read_text()), f"{path.name} refers to another site"


def test_the_demo_page_posts_what_predict_takes():
    script = (STATIC / "demo.js").read_text()
    assert 'fetch("/predict"' in script and 'form.append("image"' in script


# The OpenAPI document


def test_the_openapi_document_lists_exactly_the_routes_of_the_app(client):
    app = client.application
    routes = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
              for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, operations in OPENAPI_DOCUMENT["paths"].items() for method in operations}
    assert routes == documented
    assert client.get("/openapi.json").get_json() == OPENAPI_DOCUMENT


def test_the_openapi_document_says_which_operations_need_a_key_and_what_refusing_one_looks_like(client):
    from app.access import OPEN_ENDPOINTS

    adapter = client.application.url_map.bind("localhost")
    for path, operations in OPENAPI_DOCUMENT["paths"].items():
        concrete = re.sub(r"\{\w+\}", "x", path)
        for method, operation in operations.items():
            endpoint, _ = adapter.match(concrete, method.upper())
            if endpoint in OPEN_ENDPOINTS:
                assert operation["security"] == [] and "401" not in operation["responses"], path
            else:  # the document's default: no key, or one of the two ways to send it
                assert "security" not in operation and "401" in operation["responses"], path
            assert ("429" in operation["responses"]) == (method in ("post", "put") and endpoint not in OPEN_ENDPOINTS)
    assert OPENAPI_DOCUMENT["security"] == [{}, {"BearerKey": []}, {"HeaderKey": []}]


def test_the_openapi_schemas_are_valid_json_schemas():
    for schema in OPENAPI_DOCUMENT["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_every_answer_the_api_gives_is_documented(client, fake_redis, server):
    checked = []

    def check(path, method, response, expected_status):
        assert response.status_code == expected_status, response.get_data(as_text=True)
        assert_conforms(path, method, response.status_code, response.headers, response.get_data())
        checked.append((path, response.status_code))

    check("/predict", "post", post_image(client), 503)  # no_worker
    check("/readyz", "get", client.get("/readyz"), 503)
    check("/model", "get", client.get("/model"), 503)
    heartbeat(fake_redis)
    check("/predict", "post", post_image(client), 504)  # nobody answers
    fake_redis.delete(KEYS.queue)  # that request's message, which the next answerer would otherwise take
    answer_next_request(fake_redis, success(TABBY))
    check("/predict", "post", post_image(client), 200)
    answer_next_request(fake_redis, lambda r: protocol.encode_failure(r.job_id, "inference_failed", "model failed"))
    check("/predict", "post", post_image(client), 500)
    check("/predict", "post", post_image(client, data=b"junk"), 400)
    check("/predict", "post", post_image(client, data=b"\0" * (SETTINGS.max_upload_bytes + 1)), 413)
    check("/predict", "post", post_image(client, data=encode(Image.new("RGB", (8, 8)), "PPM")), 415)
    check("/predict", "post", client.get("/predict"), 405)  # documented with the operation it refuses
    for path in ("/healthz", "/readyz", "/model", "/metrics", "/openapi.json", "/"):
        check(path, "get", client.get(path), 200)
    assert {status for path, status in checked if path == "/predict"} == {200, 400, 405, 413, 415, 500, 503, 504}


# gunicorn and prometheus_client's multiprocess mode


def test_gunicorn_gives_prometheus_a_fresh_directory_and_removes_it(tmp_path):
    code = """
import os, sys
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
from app import gunicorn_conf
directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
assert os.path.isdir(directory) and not os.listdir(directory)
gunicorn_conf.on_starting(None)
gunicorn_conf.on_exit(None)
assert not os.path.exists(directory)
"""
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr


def test_gunicorn_clears_an_earlier_runs_files_from_a_given_directory(tmp_path):
    (tmp_path / "counter_123.db").write_bytes(b"old counts")
    (tmp_path / "keep.txt").write_text("not ours")
    code = "from app import gunicorn_conf; gunicorn_conf.on_starting(None); gunicorn_conf.on_exit(None)"
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert finished.returncode == 0, finished.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]  # and the directory itself stays


def test_metrics_add_up_the_requests_of_every_api_process(tmp_path):
    """Two API processes count into one PROMETHEUS_MULTIPROC_DIR; /metrics, from a third, reports the sum."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    serve = """
import sys, fakeredis
from app import create_app, metrics
from serving.config import Settings
assert metrics.MULTIPROCESS
client = create_app(Settings(), fakeredis.FakeRedis()).test_client()
for _ in range(int(sys.argv[1])):
    assert client.get("/healthz").status_code == 200
"""
    for count in (2, 3):  # one after the other: each process's counts must survive its exit
        served = subprocess.run([sys.executable, "-c", serve, str(count)], capture_output=True, text=True, env=env)
        assert served.returncode == 0, served.stderr
    assert len(list(tmp_path.glob("counter_*.db"))) == 2  # one file per process, nothing shared in memory
    scrape = """
import sys, fakeredis
from app import create_app
from serving.config import Settings
sys.stdout.write(create_app(Settings(), fakeredis.FakeRedis()).test_client().get("/metrics").get_data(as_text=True))
"""
    scraped = subprocess.run([sys.executable, "-c", scrape], capture_output=True, text=True, env=env)
    assert scraped.returncode == 0, scraped.stderr
    assert sample_value(scraped.stdout, "imgcls_http_requests_total", endpoint="/healthz", method="GET",
                        status=200) == 5
