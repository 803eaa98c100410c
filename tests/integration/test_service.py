"""The service end to end over real HTTP: correct labels, no crossed answers, batching, error statuses."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch
from PIL import Image

from model_tools.checkpoints import load_model
from model_tools.serving_model import ServingModel
from serving.config import Settings
from serving.preprocess import prepare
from tests.images import CAT_LABELS, PHOTOS, encode, photo_bytes

pytestmark = pytest.mark.integration

COLOUR_PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "hubble_deep_field.jpg",
                 "motorcycle_left.png", "retina.jpg", "ihc.png", "color.png", "logo.png"]


def post(service, data: bytes, field="image", filename="photo", timeout=60):
    return requests.post(service.url + "/predict", files={field: (filename, data)}, timeout=timeout)


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


def variants(count: int) -> list[bytes]:
    """Different real images: crops and mirror images of the colour sample photos."""
    images = []
    for i in range(count):
        photo = Image.open(PHOTOS / COLOUR_PHOTOS[i % len(COLOUR_PHOTOS)]).convert("RGB")
        step = i // len(COLOUR_PHOTOS)
        w, h = photo.size
        crop = photo.crop((step * w // 9, step * h // 12, w - step * w // 14, h - step * h // 20))
        if step % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        images.append(encode(crop, "PNG"))
    return images


def reference_top3(images: list[bytes]) -> list[list[tuple[int, float]]]:
    """What the model says about each image in this process, one at a time: top-3 (index, probability)."""
    loaded = load_model(Settings().model_path)
    p = loaded.card.preprocessing
    model = ServingModel(loaded.network, p.mean, p.std).eval()
    answers = []
    with torch.inference_mode():
        for data in images:
            pixels = torch.from_numpy(prepare(data, p.resize_size, p.input_size, 10**8).copy())[None]
            probabilities, indices = model(pixels)[0].topk(3)
            answers.append([(int(i), float(q)) for i, q in zip(indices, probabilities)])
    return answers


def distinguishable(first: list[tuple[int, float]], second: list[tuple[int, float]]) -> bool:
    return any(a[0] != b[0] or abs(a[1] - b[1]) > 2e-3 for a, b in zip(first, second))


def test_fifty_concurrent_clients_each_get_their_own_answer_and_batches_form(service):
    images = variants(50)
    expected = reference_top3(images)
    # Precondition: the answers tell the images apart, so a crossed answer could not pass unnoticed.
    for i in range(len(expected)):
        for j in range(i):
            assert distinguishable(expected[i], expected[j]), (i, j)

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(lambda data: post(service, data), images))

    assert [r.status_code for r in responses] == [200] * 50
    for response, top3 in zip(responses, expected):
        predictions = response.json()["predictions"][:3]
        assert [p["index"] for p in predictions] == [index for index, _ in top3]
        for prediction, (_, probability) in zip(predictions, top3):
            assert prediction["probability"] == pytest.approx(probability, abs=5e-4)
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
    pids = [service.api_process.pid, *_children(service.api_process.pid)]
    assert len(pids) == 1 + service.settings.api_processes
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps and "/torch/" not in maps, pid
    worker_maps = Path(f"/proc/{service.worker_processes[0].pid}/maps").read_text()
    assert "libtorch" in worker_maps  # the check above can see torch where it is


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
