"""The Open Inference Protocol v2 door, against fakeredis: its routes, tensors in JSON and binary, and its errors."""

import base64
import json
import struct
import tomllib
from pathlib import Path

import numpy as np
import pytest

from app import v2
from serving import protocol
from serving.preprocess import prepare
from tests.images import photo_bytes
from tests.openapi_check import assert_conforms
from tests.unit.fake_api import KEYS, MODEL, answer_next_request, heartbeat

ROOT = Path(__file__).resolve().parents[2]
PROBABILITIES = np.array([0.5, 0.3, 0.2], dtype=np.float32)  # the tiny model's three classes
LABELS = ["cat", "dog", "fox"]



def worker_answer(request):
    """What a worker answers: its request's top_k, and every probability when asked."""
    predictions = tuple(protocol.Prediction(i, LABELS[i], float(PROBABILITIES[i])) for i in range(request.top_k))
    return protocol.encode_result(protocol.InferenceResult(
        request.job_id, MODEL.name, MODEL.version, predictions, {"batch_size": 1},
        PROBABILITIES if request.probabilities else None))


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def binary_request(header: dict, binary: bytes) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + binary, {v2.HEADER_LENGTH: str(len(head))}


def image_input(count: int, size: int) -> dict:
    return {"name": "IMAGE", "datatype": "BYTES", "shape": [count, 1], "parameters": {"binary_data_size": size}}


def assert_v2_error(response, status: int, *words: str):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and all(word in body["error"] for word in words), body


def test_server_metadata_names_only_the_extensions_it_has_and_pyprojects_version(patient_client):
    body = patient_client.get("/v2").get_json()
    assert body == {"name": "imgcls", "version": tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "version"], "extensions": ["binary_tensor_data", "classification", "model_configuration"]}


def test_live_always_and_ready_only_with_a_live_worker(patient_client, fake_redis):
    assert patient_client.get("/v2/health/live").status_code == 200
    assert_v2_error(patient_client.get("/v2/health/ready"), 503, "no worker")
    assert_v2_error(patient_client.get("/v2/models/tiny/ready"), 404, "tiny")
    heartbeat(fake_redis)
    assert patient_client.get("/v2/health/ready").get_json() == {"ready": True}
    assert patient_client.get("/v2/models/tiny/ready").status_code == 200
    assert patient_client.get("/v2/models/tiny/versions/1/ready").status_code == 200
    assert_v2_error(patient_client.get("/v2/models/tiny/versions/7/ready"), 404, "tiny@7")


def test_metadata_and_config_describe_the_model_as_its_worker_announced_it(patient_client, fake_redis):
    heartbeat(fake_redis)
    metadata = patient_client.get("/v2/models/tiny").get_json()
    assert metadata["name"] == "tiny" and metadata["versions"] == ["1"] and metadata["platform"] == MODEL.backend
    assert metadata["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1, 1]},
                                  {"name": "PIXELS", "datatype": "UINT8", "shape": [-1, 224, 224, 3]}]
    assert metadata["outputs"] == [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, 3]}]
    assert patient_client.get("/v2/models/tiny/versions/1").get_json() == metadata
    config = patient_client.get("/v2/models/tiny/config").get_json()
    assert config["max_batch_size"] == MODEL.batch_size and config["output"][0]["dims"] == [3]
    assert [i["name"] for i in config["input"]] == ["IMAGE", "PIXELS"] and "dynamic_batching" in config


def test_binary_images_in_get_every_probability_back_in_json_echoing_the_id(patient_client, fake_redis):
    heartbeat(fake_redis)
    seen = answer_next_request(fake_redis, worker_answer, count=2)
    images = length_prefixed(photo_bytes("chelsea.png"), photo_bytes("rocket.jpg"))
    body, headers = binary_request({"id": "r1", "inputs": [image_input(2, len(images))]}, images)
    response = patient_client.post("/v2/models/tiny/infer", data=body, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("tiny", "1", "r1")
    assert answer["outputs"] == [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [2, 3],
                                  "data": PROBABILITIES.tolist() * 2}]
    expected = prepare(photo_bytes("chelsea.png"), MODEL.resize_size, MODEL.input_size, 10**8)
    assert any((r.pixels == expected).all() for r in seen["requests"]) and all(r.probabilities for r in
                                                                               seen["requests"])


def test_json_base64_images_and_the_classification_extension(patient_client, fake_redis):
    heartbeat(fake_redis)
    seen = answer_next_request(fake_redis, worker_answer)
    request = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                           "data": [base64.b64encode(photo_bytes("chelsea.png")).decode()]}],
               "outputs": [{"name": "PROBABILITIES", "parameters": {"classification": 2}}]}
    answer = patient_client.post("/v2/models/tiny/infer", json=request).get_json()
    assert answer["outputs"] == [{"name": "PROBABILITIES", "datatype": "BYTES", "shape": [1, 2],
                                  "data": ["0.500000:0:cat", "0.300000:1:dog"]}]
    assert seen["request"].top_k == 2 and not seen["request"].probabilities


def test_binary_output_when_asked_carries_its_size_and_the_header_length(patient_client, fake_redis):
    heartbeat(fake_redis)
    answer_next_request(fake_redis, worker_answer)
    image = length_prefixed(photo_bytes("chelsea.png"))
    body, headers = binary_request({"inputs": [image_input(1, len(image))],
                                    "outputs": [{"name": "PROBABILITIES", "parameters": {"binary_data": True}}]}, image)
    response = patient_client.post("/v2/models/tiny/infer", data=body, headers=headers)
    length = int(response.headers[v2.HEADER_LENGTH])
    head, payload = json.loads(response.data[:length]), response.data[length:]
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 12} and "data" not in head["outputs"][0]
    assert np.array_equal(np.frombuffer(payload, "<f4"), PROBABILITIES)


def test_a_raw_binary_body_is_one_encoded_image(patient_client, fake_redis):
    heartbeat(fake_redis)
    answer_next_request(fake_redis, worker_answer)
    response = patient_client.post("/v2/models/tiny/versions/1/infer", data=photo_bytes("chelsea.png"),
                           headers={v2.HEADER_LENGTH: "0"})
    assert response.status_code == 200 and response.get_json()["outputs"][0]["shape"] == [1, 3]


def test_uint8_pixels_at_the_models_size_skip_decoding(patient_client, fake_redis):
    heartbeat(fake_redis)
    seen = answer_next_request(fake_redis, worker_answer)
    pixels = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    body, headers = binary_request({"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 224, 224, 3],
                                                "parameters": {"binary_data_size": pixels.size}}]}, pixels.tobytes())
    assert patient_client.post("/v2/models/tiny/infer", data=body, headers=headers).status_code == 200
    assert np.array_equal(seen["request"].pixels, pixels[0])


def test_the_timeout_parameter_shortens_the_deadline(patient_client, fake_redis):  # 5 s REQUEST_TIMEOUT
    heartbeat(fake_redis)  # no worker answers
    image = length_prefixed(photo_bytes("chelsea.png"))
    body, headers = binary_request({"inputs": [image_input(1, len(image))], "parameters": {"timeout": 500_000}}, image)
    response = patient_client.post("/v2/models/tiny/infer", data=body, headers=headers)
    assert_v2_error(response, 504, "image 0")
    request = protocol.decode_message(fake_redis.lrange(KEYS.queue, 0, -1)[0])
    assert request.deadline - request.enqueued_at <= 0.5  # REQUEST_TIMEOUT is 5 s


def text_image(count: int = 1) -> dict:
    return {"name": "IMAGE", "datatype": "BYTES", "shape": [count],
            "data": [base64.b64encode(photo_bytes("chelsea.png")).decode()] * count}


@pytest.mark.parametrize("request_body, words", [
    ({"inputs": []}, ["exactly one input"]),
    ({"inputs": [text_image(), text_image()]}, ["exactly one input"]),
    ({"inputs": [{**text_image(), "datatype": "FP16"}]}, ["FP16"]),
    ({"inputs": [{**text_image(), "shape": [2]}]}, ["2 images"]),
    ({"inputs": [{**text_image(), "shape": [1, 2]}]}, ["[N, 1]"]),
    ({"inputs": [{**text_image(), "shape": ["1"]}]}, ["shape"]),
    ({"inputs": [{**text_image(), "data": ["%%%"]}]}, ["base64"]),
    ({"inputs": [{**text_image(), "data": "x"}]}, ["JSON list"]),
    ({"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": [300] * 12}]}, ["0 to 255"]),
    ({"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 2, 2], "data": [0] * 4}]}, ["[N, height"]),
    ({"inputs": [text_image()], "outputs": [{"name": "LOGITS"}]}, ["LOGITS"]),
    ({"inputs": [text_image()], "outputs": [{"name": "PROBABILITIES", "parameters": {"classification": 0}}]},
     ["classification"]),
    ({"inputs": [text_image()], "parameters": {"timeout": -1}}, ["timeout"]),
    ({"inputs": [text_image()], "parameters": [1]}, ["parameters of the request"]),
    ({"inputs": [{**text_image(), "parameters": "x"}]}, ["parameters of an input"]),
    ({"inputs": [text_image()], "outputs": [{"name": "PROBABILITIES", "parameters": 3}]}, ["parameters of an output"]),
    ({"inputs": [text_image()], "outputs": [{"name": "PROBABILITIES", "parameters": {"binary_data": "yes"}}]},
     ["binary_data"]),
    ([1], ["JSON object"]),
])
def test_a_malformed_request_is_400_with_a_v2_error(patient_client, fake_redis, request_body, words):
    heartbeat(fake_redis)
    assert_v2_error(patient_client.post("/v2/models/tiny/infer", json=request_body), 400, *words)
    assert fake_redis.llen(KEYS.queue) == 0


def test_pixels_of_another_size_are_400_naming_the_models(patient_client, fake_redis):
    heartbeat(fake_redis)
    request = {"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": [0] * 12}]}
    assert_v2_error(patient_client.post("/v2/models/tiny/infer", json=request), 400, "[224, 224, 3]")


@pytest.mark.parametrize("body, headers, words", [
    (b"{not json", {}, ["not JSON"]),
    (b'{"inputs": []}', {v2.HEADER_LENGTH: "999"}, ["length"]),
    (json.dumps({"inputs": [image_input(1, 8)]}).encode() + b"\x09\x00\x00\x00abcd", None, ["runs past"]),
    (json.dumps({"inputs": [image_input(1, 3)]}).encode() + b"\x09\x00", None, ["binary_data_size"]),
])
def test_broken_binary_framing_is_400(patient_client, fake_redis, body, headers, words):
    heartbeat(fake_redis)
    if headers is None:
        headers = {v2.HEADER_LENGTH: str(body.index(b"}]}") + 3)}
    assert_v2_error(patient_client.post("/v2/models/tiny/infer", data=body, headers=headers), 400, *words)


def test_an_unreadable_image_fails_the_request_naming_it(patient_client, fake_redis):
    heartbeat(fake_redis)
    answer_next_request(fake_redis, worker_answer)
    images = length_prefixed(photo_bytes("chelsea.png"), b"not an image")
    body, headers = binary_request({"inputs": [image_input(2, len(images))]}, images)
    assert_v2_error(patient_client.post("/v2/models/tiny/infer", data=body, headers=headers), 400, "image 1")


def test_unknown_model_is_404_and_no_worker_503_as_v2_errors(patient_client, fake_redis):
    request = {"inputs": [text_image()]}
    assert_v2_error(patient_client.post("/v2/models/nope/infer", json=request), 404, "nope")
    heartbeat(fake_redis, age=60)  # known, but its worker is long gone
    response = patient_client.post("/v2/models/tiny/infer", json=request)
    assert_v2_error(response, 503, "no worker") and response.headers["Retry-After"]


def test_deeply_nested_json_data_is_a_clear_error_not_a_crash(patient_client, fake_redis):
    heartbeat(fake_redis)
    nested = "[" * 50_000 + "]" * 50_000
    body = ('{"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 224, 224, 3], "data": ' + nested
            + "}]}").encode()
    assert patient_client.post("/v2/models/tiny/infer", data=body).status_code == 400


def test_every_v2_answer_is_documented(patient_client, fake_redis):
    def check(path, response, template=None):
        assert_conforms(template or path, "get" if response.request.method == "GET" else "post",
                        response.status_code, response.headers, response.get_data())
    check("/v2/health/ready", patient_client.get("/v2/health/ready"))  # 503
    heartbeat(fake_redis)
    for path in ("/v2", "/v2/health/live", "/v2/health/ready"):
        check(path, patient_client.get(path))
    for suffix in ("", "/ready", "/config"):
        check("/v2/models/{name}" + suffix, patient_client.get("/v2/models/tiny" + suffix))
    answer_next_request(fake_redis, worker_answer)
    check("/v2/models/{name}/infer", patient_client.post("/v2/models/tiny/infer", json={"inputs": [text_image()]}))
    check("/v2/models/{name}/infer", patient_client.post("/v2/models/tiny/infer", json={"inputs": []}))
    check("/v2/models/{name}/versions/{version}/infer", patient_client.post("/v2/models/tiny/versions/9/infer",
                                                                     json={"inputs": [text_image()]}))
