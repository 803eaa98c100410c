"""TorchServe's inference API as a door, against fakeredis: its bodies, its stock classifier's answer, its errors."""

import io

import pytest

from serving import protocol
from tests.images import photo_bytes
from tests.openapi_check import assert_conforms
from tests.unit.fake_api import KEYS, answer_next_request, heartbeat

PREDICTIONS = [("tabby", 0.5), ("tiger cat", 0.3), ("lynx", 0.2)]


def worker_answer(request):
    predictions = tuple(protocol.Prediction(i, label, p) for i, (label, p) in enumerate(PREDICTIONS[:request.top_k]))
    return protocol.encode_result(protocol.InferenceResult(request.job_id, "tiny", "1", predictions, {}))


def assert_torchserve_error(response, status: int, type_: str, *words: str):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == status and body["type"] == type_ and all(w in body["message"] for w in words), body


@pytest.mark.parametrize("method", ["post", "put"])  # curl -T sends PUT
def test_a_raw_body_is_answered_label_to_probability_most_probable_first(patient_client, fake_redis, method):
    heartbeat(fake_redis)
    answer_next_request(fake_redis, worker_answer)
    response = getattr(patient_client, method)("/predictions/tiny", data=photo_bytes("chelsea.png"))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert list(response.get_json().items()) == PREDICTIONS  # TOP_K=5 of 3 classes: all, in order


def test_multipart_files_in_data_give_a_list_and_top_k_is_the_querys(patient_client, fake_redis):
    heartbeat(fake_redis)
    seen = answer_next_request(fake_redis, worker_answer, count=2)
    files = [(io.BytesIO(photo_bytes("chelsea.png")), "a.png"), (io.BytesIO(photo_bytes("rocket.jpg")), "b.jpg")]
    response = patient_client.post("/predictions/tiny/1?top_k=1", data={"data": files},
                                   content_type="multipart/form-data")
    assert response.get_json() == [{"tabby": 0.5}, {"tabby": 0.5}]
    assert [r.top_k for r in seen["requests"]] == [1, 1]


def test_ping_is_healthy_only_with_a_live_worker(patient_client, fake_redis):
    assert_torchserve_error(patient_client.get("/ping"), 503, "ServiceUnavailableException", "no worker")
    heartbeat(fake_redis)
    assert patient_client.get("/ping").get_json() == {"status": "Healthy"}


def test_errors_are_torchserves_shape(patient_client, fake_redis):
    assert_torchserve_error(patient_client.post("/predictions/nope", data=photo_bytes("chelsea.png")), 404,
                            "ModelNotFoundException", "nope")
    heartbeat(fake_redis)
    assert_torchserve_error(patient_client.post("/predictions/tiny", data=b"not an image"), 400, "BadRequestException",
                            "not an image")
    empty_form = patient_client.post("/predictions/tiny", data={"other": "x"}, content_type="multipart/form-data")
    assert_torchserve_error(empty_form, 400, "BadRequestException", "data")
    assert fake_redis.llen(KEYS.queue) == 0


def test_torchserves_answers_are_documented(patient_client, fake_redis):
    heartbeat(fake_redis)
    answer_next_request(fake_redis, worker_answer)
    for method, path, response in [("put", "/predictions/{name}", patient_client.put("/predictions/tiny",
                                                                            data=photo_bytes("chelsea.png"))),
                                   ("post", "/predictions/{name}/{version}", patient_client.post("/predictions/tiny/9",
                                                                                        data=b"x")),
                                   ("get", "/ping", patient_client.get("/ping"))]:
        assert_conforms(path, method, response.status_code, response.headers, response.get_data())
