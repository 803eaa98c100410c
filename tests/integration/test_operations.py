"""Operations against the real service: /readyz, /model and /metrics reflect the running workers,
request ids reach both logs, and every real answer matches the OpenAPI document."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from serving.config import Settings
from stack.processes import Stack
from tests.images import photo_bytes
from tests.integration.client import post_image, wait_until
from tests.integration.conftest import stack_settings
from tests.openapi_check import assert_conforms
from tests.prometheus_text import sample_value


def metrics(url: str) -> str:
    response = requests.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def test_readyz_and_model_reflect_the_running_workers(service):
    ready = requests.get(service.url + "/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["workers"] == 2
    model = requests.get(service.url + "/model", timeout=10).json()
    assert model["name"] == "efficientnet_lite0" and model["num_classes"] == 1000
    assert model["input_size"] == 224 and model["preprocessing"]["resize_size"] == 256
    assert model["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and model["device"] == "cpu"
    assert model["backend"] and model["workers"] == 2


def test_metrics_count_every_api_process_and_show_the_workers(service):
    # Every request is counted, whichever gunicorn process served it. Which process that is the kernel
    # decides, so these may or may not reach both; that two processes' counts add up is checked
    # deterministically by tests/unit/test_operations.py::test_metrics_add_up_the_requests_of_every_api_process.
    before = sample_value(metrics(service.url), "imgcls_http_requests_total",
                          endpoint="/healthz", method="GET", status=200) or 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: requests.get(service.url + "/healthz", timeout=10).status_code,
                                 range(40)))
    assert statuses == [200] * 40
    assert post_image(service.url, photo_bytes("chelsea.png")).status_code == 200

    text = metrics(service.url)
    assert sample_value(text, "imgcls_http_requests_total", endpoint="/healthz", method="GET", status=200) \
        == before + 40
    assert sample_value(text, "imgcls_http_requests_total", endpoint="/predict", method="POST", status=200) >= 1
    assert sample_value(text, "imgcls_http_request_duration_seconds_count", endpoint="/predict") >= 1
    assert sample_value(text, "imgcls_redis_up") == 1
    served = {"model": "efficientnet_lite0", "version": "1"}  # the fleet's series are per model version
    assert sample_value(text, "imgcls_predictions_total", **served) >= 1
    assert sample_value(text, "imgcls_workers_alive", **served) == 2
    assert sample_value(text, "imgcls_queue_depth", **served) is not None
    assert sample_value(text, "imgcls_batch_size_count", **served) >= 1
    assert sample_value(text, "imgcls_inference_seconds_count", **served) >= 1
    assert sample_value(text, "imgcls_inference_seconds_sum", **served) > 0
    assert sample_value(text, "imgcls_requests_expired_total", **served) is not None


def test_a_request_id_is_echoed_and_reaches_the_api_and_worker_logs(service):
    request_id = f"trace-{uuid.uuid4().hex[:8]}"
    response = post_image(service.url, photo_bytes("chelsea.png"), filename="chelsea.png",
                          headers={"X-Request-ID": request_id})
    assert response.status_code == 200 and response.headers["X-Request-ID"] == request_id
    job_id = response.json()["id"]

    def api_line():
        return [line for line in service.log_path("api").read_text().splitlines() if f"request_id={request_id}" in line]

    (line,) = wait_until(api_line, 10, what="the API's log line")
    assert "path=/predict" in line and "status=200" in line and f"job_id={job_id}" in line
    wait_until(lambda: any(job_id in service.log_path(f"worker{i}").read_text() for i in (0, 1)), 10,
               what="the worker's batch line naming the request")


def test_real_answers_match_the_openapi_document(service):
    chelsea = photo_bytes("chelsea.png")
    answers = [
        ("/predict", "post", post_image(service.url, chelsea)),
        ("/predict", "post", post_image(service.url, b"not an image")),
        ("/predict", "post", post_image(service.url, chelsea, field="file")),
        ("/predict", "post", requests.get(service.url + "/predict", timeout=10)),
        ("/predict", "post", post_image(service.url, b"\0" * (Settings().max_upload_bytes + 1))),
        *[(path, "get", requests.get(service.url + path, timeout=10))
          for path in ("/", "/healthz", "/readyz", "/model", "/metrics", "/openapi.json")],
    ]
    for path, method, response in answers:
        assert_conforms(path, method, response.status_code, response.headers, response.content)
    assert {response.status_code for *_, response in answers} == {200, 400, 405, 413}


def test_without_workers_readyz_and_model_are_503_and_metrics_say_so(tmp_path):
    with Stack(stack_settings(), workers=0, log_dir=tmp_path) as stack:
        for path in ("/readyz", "/model"):
            response = requests.get(stack.url + path, timeout=10)
            assert response.status_code == 503 and response.json()["error"]["code"] == "no_worker"
            assert_conforms(path, "get", 503, response.headers, response.content)
        text = metrics(stack.url)
        assert sample_value(text, "imgcls_model_versions_live") == 0 and sample_value(text, "imgcls_redis_up") == 1
