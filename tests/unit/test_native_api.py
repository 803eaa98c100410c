"""The native API's forms, against fakeredis: several images, JSON and raw bodies, a per-request top_k."""

import base64
import io
import json

import pytest
from PIL import Image

from app import create_app
from serving import protocol
from serving.config import Settings
from serving.preprocess import prepare
from tests.images import PHOTOS, encode, photo_bytes
from tests.openapi_check import assert_conforms
from tests.prometheus_text import sample_value
from tests.unit.fake_api import KEYS, MODEL, SETTINGS, answer_next_request, heartbeat, post_image, success
from tests.unit.test_api import assert_error

PREDICTIONS = [{"index": 0, "label": "cat", "probability": 0.5}, {"index": 1, "label": "dog", "probability": 0.3},
               {"index": 2, "label": "fox", "probability": 0.2}]  # the tiny model's three classes



def top_k_answer(request):
    """What a worker answers: the request's own top_k of PREDICTIONS."""
    return success(PREDICTIONS[:request.top_k])(request)


def post_images(patient_client, photos: list[bytes], path: str = "/predict", **form):
    files = [(io.BytesIO(data), f"{i}.png") for i, data in enumerate(photos)]
    return patient_client.post(path, data={"image": files, **form}, content_type="multipart/form-data")


def test_several_images_are_answered_in_upload_order_each_like_a_single_answer(patient_client, fake_redis):
    heartbeat(fake_redis)
    names = ["chelsea.png", "rocket.jpg", "horse.png"]
    seen = answer_next_request(fake_redis, top_k_answer, count=3)
    response = post_images(patient_client, [photo_bytes(name) for name in names])
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["success"] is True and (body["model"], body["version"]) == ("tiny", "1")
    assert [r["success"] for r in body["results"]] == [True] * 3
    assert {"preprocess_ms", "queue_ms", "inference_ms", "batch_size", "total_ms"} <= set(body["results"][0]["timing"])
    # Each result is its own image's: the worker saw each image's pixels under the id its result carries.
    pixels_by_id = {r.job_id: r.pixels for r in seen["requests"]}
    assert len(pixels_by_id) == 3
    for name, result in zip(names, body["results"]):
        expected = prepare(photo_bytes(name), MODEL.resize_size, MODEL.input_size, 10**8)
        assert (pixels_by_id[result["id"]] == expected).all()


def test_one_corrupt_image_fails_alone(patient_client, fake_redis):
    heartbeat(fake_redis)
    answer_next_request(fake_redis, top_k_answer, count=2)
    response = post_images(patient_client, [photo_bytes("chelsea.png"), b"not an image", photo_bytes("coffee.png")])
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [r["success"] for r in results] == [True, False, True]
    assert results[1]["error"]["code"] == "invalid_image" and results[1]["error"]["message"]


def test_a_worker_failure_for_one_image_is_that_images_error(patient_client, fake_redis):
    heartbeat(fake_redis)

    def fail_the_second(request, calls=[]):
        calls.append(request)
        if len(calls) == 2:
            return protocol.encode_failure(request.job_id, "inference_failed", "the model failed")
        return top_k_answer(request)
    answer_next_request(fake_redis, fail_the_second, count=2)
    results = post_images(patient_client, [photo_bytes("chelsea.png"), photo_bytes("coffee.png")]).get_json()["results"]
    assert sorted(r["success"] for r in results) == [False, True]
    assert [r["error"]["code"] for r in results if not r["success"]] == ["inference_failed"]


def test_images_whose_answer_does_not_come_in_time_are_timeouts_and_the_answered_ones_are_kept(client, fake_redis):
    heartbeat(fake_redis)
    answer_next_request(fake_redis, top_k_answer, count=1)  # a worker that answers one image, then is gone
    response = post_images(client, [photo_bytes("chelsea.png"), photo_bytes("coffee.png")])
    assert response.status_code == 200
    assert sorted((r["success"], r.get("error", {}).get("code")) for r in response.get_json()["results"]) == [
        (False, "timeout"), (True, None)]


def test_more_images_than_max_images_per_request_are_400_and_nothing_is_queued(fake_redis):
    client = create_app(Settings(max_images_per_request=2), fake_redis).test_client()
    heartbeat(fake_redis)
    assert_error(post_images(client, [photo_bytes("chelsea.png")] * 3), 400, "too_many_images")
    assert fake_redis.llen(KEYS.queue) == 0


def test_a_request_whose_images_do_not_all_fit_the_queue_is_503_and_queues_none(fake_redis):
    client = create_app(Settings(max_queue=4, request_timeout=0.3), fake_redis).test_client()
    heartbeat(fake_redis)
    fake_redis.lpush(KEYS.queue, b"a", b"b")
    response = post_images(client, [photo_bytes("chelsea.png")] * 3)  # 2 + 3 > MAX_QUEUE=4
    assert_error(response, 503, "queue_full")
    assert fake_redis.llen(KEYS.queue) == 2


def test_a_request_of_several_images_queues_them_in_one_round_trip(client, fake_redis, monkeypatch):
    """One transaction: each image's pixels (a plain SET) and then the one script that queues the messages."""
    heartbeat(fake_redis)
    sent = []  # the commands of each pipeline the API executed
    original = fake_redis.pipeline

    def recording(*args, **kwargs):
        pipe = original(*args, **kwargs)
        execute = pipe.execute
        pipe.execute = lambda *a, **k: sent.append([args[0] for args, _ in pipe.command_stack]) or execute(*a, **k)
        return pipe

    monkeypatch.setattr(fake_redis, "pipeline", recording)
    post_images(client, [photo_bytes("chelsea.png")] * 4)  # no worker answers: a timeout, after the push
    assert [commands for commands in sent if "SET" in commands] == [["SET"] * 4 + ["EVAL"]]  # beside admission's
    assert fake_redis.llen(KEYS.queue) == 4


def test_a_json_body_carries_one_or_several_base64_images_and_a_top_k(patient_client, fake_redis):
    heartbeat(fake_redis)
    answer_next_request(fake_redis, top_k_answer)
    chelsea = base64.b64encode(photo_bytes("chelsea.png")).decode()
    one = patient_client.post("/predict", json={"image": chelsea, "top_k": 2})
    assert one.status_code == 200, one.get_data(as_text=True)
    assert one.get_json()["predictions"] == PREDICTIONS[:2]
    answer_next_request(fake_redis, top_k_answer, count=2)
    several = patient_client.post("/predict", json={"images": [base64.b64encode(photo_bytes(n)).decode()
                                                       for n in ("chelsea.png", "coffee.png")]})
    assert [len(r["predictions"]) for r in several.get_json()["results"]] == [3, 3]  # TOP_K=5, the model has 3


@pytest.mark.parametrize("body, code", [
    ({"image": "not base64!"}, "invalid_base64"),
    ({"images": ["aGVsbG8=", "%%%"]}, "invalid_base64"),
    ({"image": 17}, "invalid_json"),
    ({"images": "aGVsbG8="}, "invalid_json"),
    ({"images": [None]}, "invalid_json"),
    ({}, "missing_image"),
    ({"image": "aGVsbG8=", "images": ["aGVsbG8="]}, "missing_image"),
    ([1, 2], "invalid_json"),
    ({"images": []}, "missing_image"),
])
def test_a_malformed_json_body_is_400_with_its_code(patient_client, fake_redis, body, code):
    heartbeat(fake_redis)
    assert_error(patient_client.post("/predict", json=body), 400, code)


def test_a_body_that_is_not_json_is_400(patient_client, fake_redis):
    heartbeat(fake_redis)
    response = patient_client.post("/predict", data=b"{not json", content_type="application/json")
    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream"])
def test_a_raw_image_body_is_one_image(patient_client, fake_redis, content_type):
    heartbeat(fake_redis)
    seen = answer_next_request(fake_redis, top_k_answer)
    response = patient_client.post("/predict?top_k=1", data=photo_bytes("coffee.png"), content_type=content_type)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["predictions"] == PREDICTIONS[:1]
    assert (seen["request"].pixels == prepare(photo_bytes("coffee.png"), MODEL.resize_size, MODEL.input_size,
                                              10**8)).all()


def test_top_k_comes_from_the_query_or_the_form_and_reaches_the_worker(patient_client, fake_redis):
    heartbeat(fake_redis)
    seen = answer_next_request(fake_redis, top_k_answer)
    assert len(post_image(patient_client, path="/predict?top_k=2").get_json()["predictions"]) == 2
    assert seen["request"].top_k == 2
    seen = answer_next_request(fake_redis, top_k_answer)
    response = patient_client.post("/predict", data={"image": (io.BytesIO(photo_bytes("chelsea.png")), "a.png"),
                                             "top_k": "1"}, content_type="multipart/form-data")
    assert len(response.get_json()["predictions"]) == 1 and seen["request"].top_k == 1


def test_without_top_k_the_worker_is_asked_for_top_k_at_most_the_models_classes(patient_client, fake_redis):
    heartbeat(fake_redis)
    seen = answer_next_request(fake_redis, top_k_answer)
    post_image(patient_client)
    assert seen["request"].top_k == min(SETTINGS.top_k, MODEL.num_classes)


@pytest.mark.parametrize("top_k", ["0", "4", "-1", "two", "1.5", "١"])  # the tiny model has 3 classes
def test_a_top_k_outside_one_to_the_models_classes_is_400_and_nothing_is_queued(patient_client, fake_redis, top_k):
    heartbeat(fake_redis)
    response = post_image(patient_client, path=f"/predict?top_k={top_k}")
    assert_error(response, 400, "invalid_top_k")
    assert fake_redis.llen(KEYS.queue) == 0


@pytest.mark.parametrize("top_k", [0, 2.0, "2", True, None, [1]])
def test_a_json_top_k_must_be_a_whole_number_in_range(patient_client, fake_redis, top_k):
    heartbeat(fake_redis)
    image = base64.b64encode(photo_bytes("chelsea.png")).decode()
    response = patient_client.post("/predict", data=json.dumps({"image": image, "top_k": top_k}),
                           content_type="application/json")
    if top_k is None:  # null: not given
        assert response.status_code != 400
    else:
        assert_error(response, 400, "invalid_top_k")


def test_every_image_of_a_request_counts_against_the_decode_budget_one_at_a_time(fake_redis):
    """The budget bounds the decoding memory: with room for one image, a request's images decode one after another."""
    photo = encode(Image.open(PHOTOS / "coffee.png").convert("RGB"), "PNG")
    width, height = Image.open(io.BytesIO(photo)).size
    client = create_app(Settings(max_image_pixels=width * height, decode_pixel_budget=width * height,
                                 request_timeout=1), fake_redis).test_client()
    heartbeat(fake_redis)
    answer_next_request(fake_redis, top_k_answer, count=2)
    response = post_images(client, [photo, photo])
    assert [r["success"] for r in response.get_json()["results"]] == [True, True]


def test_the_several_images_answer_and_the_json_body_are_documented(patient_client, fake_redis):
    heartbeat(fake_redis)
    answer_next_request(fake_redis, top_k_answer, count=1)
    response = post_images(patient_client, [photo_bytes("chelsea.png"), b"not an image"])
    assert_conforms("/predict", "post", response.status_code, response.headers, response.get_data())
    bad = patient_client.post("/predict", json={"image": "%%%"})
    assert_conforms("/predict", "post", bad.status_code, bad.headers, bad.get_data())


def test_metrics_count_a_requests_images_by_door_and_its_predictions_by_image(patient_client, fake_redis):
    heartbeat(fake_redis)

    def counts():
        text = patient_client.get("/metrics").get_data(as_text=True)
        return (sample_value(text, "imgcls_request_images_total", endpoint="/predict") or 0,
                sample_value(text, "imgcls_predictions_total", model="tiny", version="1") or 0)
    images_before, predictions_before = counts()
    answer_next_request(fake_redis, top_k_answer, count=3)
    assert post_images(patient_client, [photo_bytes("chelsea.png")] * 3).status_code == 200
    images, predictions = counts()
    assert (images - images_before, predictions - predictions_before) == (3, 3)
