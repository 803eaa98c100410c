"""Every door of the real service (gunicorn, Redis, two workers) gives the model's own answers.

The native API's several images, JSON and raw bodies, and the Open Inference Protocol v2 driven by Triton's own
client (PyPI tritonclient[http]), each checked against the model run in this process (tests/reference.py).
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from serving.preprocess import prepare
from tests.images import photo_bytes
from tests.reference import matches, reference_top3

PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg"]
MODEL = "efficientnet_lite0"


@pytest.fixture(scope="module")
def expected():
    return reference_top3([photo_bytes(name) for name in PHOTOS])


@pytest.fixture(scope="module")
def triton_client(service):
    client = triton.InferenceServerClient(url=service.url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


def test_several_images_in_one_request_each_get_their_own_answer_in_order(service, expected):
    files = [("image", (name, photo_bytes(name))) for name in PHOTOS] + [("image", ("x.jpg", b"\xff\xd8 not a jpeg"))]
    body = requests.post(service.url + "/predict", files=files, timeout=60).json()
    assert body["success"] is True and body["model"] == MODEL
    results = body["results"]
    assert [r["success"] for r in results] == [True, True, True, False]
    assert all(matches(r["predictions"], top3) for r, top3 in zip(results, expected))
    assert results[3]["error"]["code"] == "invalid_image"


def test_a_json_body_and_a_raw_body_give_the_multipart_answer_with_their_top_k(service, expected):
    chelsea = photo_bytes("chelsea.png")
    as_json = requests.post(service.url + "/predict", json={"image": base64.b64encode(chelsea).decode(),
                                                            "top_k": 3}, timeout=60).json()
    raw = requests.post(service.url + "/predict?top_k=2", data=chelsea, headers={"Content-Type": "image/png"},
                        timeout=60).json()
    assert len(as_json["predictions"]) == 3 and matches(as_json["predictions"], expected[0])
    assert [p["index"] for p in raw["predictions"]] == [i for i, _ in expected[0][:2]]


def test_tritonclient_sees_a_live_ready_server_and_the_models_metadata_and_config(triton_client):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready(MODEL) and triton_client.is_model_ready(MODEL, "1")
    assert not triton_client.is_model_ready("no_such_model")
    metadata = triton_client.get_model_metadata(MODEL)
    assert metadata["outputs"] == [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, 1000]}]
    config = triton_client.get_model_config(MODEL)
    assert config["max_batch_size"] == 8 and config["input"][0]["name"] == "IMAGE"


def image_input(binary: bool) -> triton.InferInput:
    """The photos as a BYTES tensor [N, 1]: their files in binary, or their base64 in JSON (JSON carries text)."""
    files = [photo_bytes(name) for name in PHOTOS]
    elements = files if binary else [base64.b64encode(f) for f in files]
    tensor = triton.InferInput("IMAGE", [len(PHOTOS), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_).reshape(-1, 1), binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_gives_the_models_probabilities(triton_client, expected, binary):
    output = triton.InferRequestedOutput("PROBABILITIES", binary_data=binary)
    result = triton_client.infer(MODEL, [image_input(binary)], outputs=[output], request_id="r-1")
    probabilities = result.as_numpy("PROBABILITIES")
    assert probabilities.shape == (len(PHOTOS), 1000) and probabilities.dtype == np.float32
    for row, top3 in zip(probabilities, expected):
        assert [int(i) for i in np.argsort(-row)[:3]] == [i for i, _ in top3]
        assert np.allclose(sorted(row, reverse=True)[:3], [q for _, q in top3], atol=5e-4)
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_name"] == MODEL and response["model_version"] == "1"


def test_tritonclient_classification_output_is_score_index_label(service, triton_client, expected):
    output = triton.InferRequestedOutput("PROBABILITIES", class_count=3)
    classes = triton_client.infer(MODEL, [image_input(True)], outputs=[output]).as_numpy("PROBABILITIES")
    assert classes.shape == (len(PHOTOS), 3)
    for row, top3 in zip(classes, expected):
        fields = [element.decode().split(":", 2) for element in row]
        assert [int(index) for _, index, _ in fields] == [i for i, _ in top3]
        assert all(abs(float(score) - q) <= 5e-4 for (score, _, _), (_, q) in zip(fields, top3))
    native = requests.post(service.url + "/predict", files={"image": photo_bytes(PHOTOS[-1])}, timeout=60).json()
    assert fields[0][2] == native["predictions"][0]["label"]  # the label, as /predict names it


def test_tritonclient_uint8_pixels_give_the_same_answer_as_the_encoded_photo(service, triton_client, expected):
    preprocessing = requests.get(service.url + "/model", timeout=10).json()["preprocessing"]
    pixels = np.stack([prepare(photo_bytes("chelsea.png"), preprocessing["resize_size"],
                               preprocessing["crop_size"], 10**8)])
    tensor = triton.InferInput("PIXELS", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    row = triton_client.infer(MODEL, [tensor]).as_numpy("PROBABILITIES")[0]
    assert [int(i) for i in np.argsort(-row)[:3]] == [i for i, _ in expected[0]]


def test_tritonclient_reports_the_servers_errors(triton_client):
    with pytest.raises(InferenceServerException, match="no_such_model"):
        triton_client.infer("no_such_model", [image_input(True)])
    broken = triton.InferInput("IMAGE", [1, 1], "BYTES")
    broken.set_data_from_numpy(np.array([[b"not an image"]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="not an image"):
        triton_client.infer(MODEL, [broken])
