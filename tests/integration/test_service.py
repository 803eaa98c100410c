"""The service end to end over real HTTP: correct labels, no crossed answers, batching, error statuses."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.images import CAT_LABELS, photo_bytes
from tests.integration.client import post_image, wait_until
from tests.reference import assert_all_distinguishable, matches, reference_top3, variants


def post(service, data: bytes, field="image"):
    return post_image(service.url, data, field)


def test_chelsea_is_a_cat(service):
    response = post(service, photo_bytes("chelsea.png"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["model"] == "efficientnet_lite0"
    assert body["predictions"][0]["label"] in CAT_LABELS
    probabilities = [p["probability"] for p in body["predictions"]]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert all(isinstance(p["label"], str) and isinstance(p["index"], int) for p in body["predictions"])


def test_coffee_is_an_espresso(service):
    body = post(service, photo_bytes("coffee.png")).json()
    assert body["predictions"][0]["label"] == "espresso"
    assert body["predictions"][0]["probability"] > 0.5


def test_fifty_concurrent_clients_each_get_their_own_answer_and_batches_form(service):
    images = variants(50)
    expected = reference_top3(images)
    assert_all_distinguishable(expected)

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(lambda data: post(service, data), images))

    assert [r.status_code for r in responses] == [200] * 50
    for response, top3 in zip(responses, expected):
        assert matches(response.json()["predictions"], top3), (response.json(), top3)
    batch_sizes = [r.json()["timing"]["batch_size"] for r in responses]
    assert max(batch_sizes) > 1, batch_sizes


def test_missing_field_is_400(service):
    response = post(service, photo_bytes("chelsea.png"), field="file")
    assert response.status_code == 400 and response.json()["error"]["code"] == "missing_image"


def test_undecodable_image_is_400(service):
    response = post(service, b"this is not an image")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_image"


def test_upload_over_the_limit_is_413(service):
    response = post(service, b"\0" * (service.settings.max_upload_bytes + 1024))
    assert response.status_code == 413 and response.json()["success"] is False


def test_wrong_method_is_405(service):
    response = requests.get(service.url + "/predict", timeout=10)
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_the_api_processes_never_load_torch(service):
    """Checked after every API process has served a prediction, so a lazy import on the way would show."""
    pids = [service.api_process.pid, *_children(service.api_process.pid)]
    assert len(pids) == 1 + service.settings.api_processes
    wait_until(lambda: _each_has_served_a_prediction(service, pids[1:]), 60, interval=0,
               what="a prediction served by every API process")
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps and "/torch/" not in maps, pid
    worker_maps = Path(f"/proc/{service.worker_processes[0].pid}/maps").read_text()
    assert "libtorch" in worker_maps  # the check above can see torch where it is


def _each_has_served_a_prediction(service, api_pids: list[int]) -> bool:
    """prometheus_client's multiprocess mode writes a file per process once it has counted a request."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(r.status_code == 200 for r in pool.map(
            lambda _: post_image(service.url, photo_bytes("coffee.png")), range(8)))
    return all((service.metrics_dir / f"counter_{pid}.db").exists() for pid in api_pids)


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
