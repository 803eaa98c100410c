"""The API's contract, against fakeredis: every answer is JSON, every failure has its status."""

import dataclasses
import hashlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import fakeredis
import numpy as np
import pytest
from PIL import Image

from app import create_app
from app.decode_budget import DecoderBusy
from app.decode_pool import DecodePool
from app.queue_client import InferenceQueue
from serving import protocol
from serving.config import Settings
from serving.preprocess import prepare
from serving.protocol import ClientKeys
from tests.images import MULTIPART_CONTENT_TYPE, PHOTOS, encode, photo_bytes, upload_of_size
from tests.unit.fake_api import KEYS, MODEL, SETTINGS, TABBY, answer_next_request, heartbeat, post_image, success
from worker.queue import WorkerQueue


def assert_error(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["success"] is False and body["error"]["code"] == code and body["error"]["message"]


def test_a_prediction_is_relayed_with_timing(client, fake_redis):
    heartbeat(fake_redis)
    seen = answer_next_request(fake_redis, success(TABBY))
    response = post_image(client, photo_bytes("chelsea.png"))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["success"] is True and body["predictions"] == TABBY and body["model"] == "tiny"
    assert {"preprocess_ms", "queue_ms", "inference_ms", "batch_size", "total_ms"} <= set(body["timing"])
    assert seen["request"].pixels.shape == (224, 224, 3)  # preprocessed to the announced model's input


def test_the_api_sends_exactly_what_prepare_makes_of_a_large_jpeg(client, fake_redis):
    """Decoded at reduced scale for the announced model, as the C++ client and the benchmarks do."""
    heartbeat(fake_redis)
    photo = Image.open(PHOTOS / "coffee.png").convert("RGB").resize((2400, 1600))
    data = encode(photo, "JPEG", quality=95)
    seen = answer_next_request(fake_redis, success([]))
    assert post_image(client, data, filename="x.jpg").status_code == 200
    assert np.array_equal(seen["request"].pixels, prepare(data, MODEL.resize_size, MODEL.input_size, 10**8))


@pytest.mark.parametrize("code, message", [
    ("inference_failed", "out of memory"),
    # A request whose workers kept dying: the reaper's answer names the cause.
    (protocol.ATTEMPTS_EXHAUSTED, "the worker processing this request died 3 times"),
])
def test_a_worker_error_becomes_a_500_with_its_code(client, fake_redis, code, message):
    heartbeat(fake_redis)
    answer_next_request(fake_redis, lambda r: protocol.encode_failure(r.job_id, code, message))
    response = post_image(client, photo_bytes("chelsea.png"))
    assert_error(response, 500, code)
    assert message in response.get_json()["error"]["message"]


def test_missing_image_field_is_400(client, fake_redis):
    heartbeat(fake_redis)
    assert_error(post_image(client, photo_bytes("chelsea.png"), field="file"), 400, "missing_image")


def test_a_body_that_is_neither_multipart_json_nor_an_image_is_400(client):
    response = client.post("/predict", data=b"chelsea.png", content_type="text/plain")
    assert_error(response, 400, "missing_image")


@pytest.mark.parametrize("data, code", [(b"", "empty_image"), (b"not an image", "invalid_image")])
def test_undecodable_upload_is_400(client, data, code):
    assert_error(post_image(client, data), 400, code)


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"  # Pillow would hand this to Ghostscript
       b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")


@pytest.mark.parametrize("data", [encode(Image.new("RGB", (8, 8)), "PPM"), encode(Image.new("RGB", (16, 16)), "ICO"),
                                  encode(Image.new("RGB", (8, 8)), "PCX"), EPS],
                         ids=["ppm", "ico", "pcx", "eps"])
def test_an_image_format_outside_the_accepted_ones_is_415(client, fake_redis, data):
    heartbeat(fake_redis)
    response = post_image(client, data)
    assert_error(response, 415, "unsupported_format")
    assert "JPEG, PNG, GIF, WEBP, TIFF, BMP" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("format", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_every_accepted_format_is_classified(client, fake_redis, format):
    heartbeat(fake_redis)
    answer_next_request(fake_redis, success(TABBY))
    assert post_image(client, encode(Image.new("RGB", (300, 260), (200, 120, 40)), format)).status_code == 200


def test_upload_over_the_size_limit_is_413_naming_the_limit(client):
    response = post_image(client, b"\0" * (SETTINGS.max_upload_bytes + 1))
    assert_error(response, 413, "request_entity_too_large")
    assert "MAX_UPLOAD_MB=1 MiB" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("server_terminates_input", [False, True])  # gunicorn sets wsgi.input_terminated
def test_a_body_of_exactly_the_size_limit_is_read_and_one_byte_more_is_413(client, server_terminates_input):
    """The limit nginx enforces in front (client_max_body_size in bytes): over it is 413, at it is not."""
    def post_body_of(size: int):
        return client.post("/predict", data=upload_of_size(size), content_type=MULTIPART_CONTENT_TYPE,
                           environ_overrides={"wsgi.input_terminated": True} if server_terminates_input else {})

    assert_error(post_body_of(SETTINGS.max_upload_bytes), 400, "invalid_image")  # read whole: not an image
    assert_error(post_body_of(SETTINGS.max_upload_bytes + 1), 413, "request_entity_too_large")


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_but_post_is_405_json(client, method):
    response = client.open("/predict", method=method)
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    if method != "HEAD":  # a HEAD answer has no body
        assert_error(response, 405, "method_not_allowed")
        assert response.get_json()["error"]["message"] == f"{method} is not allowed here; use POST"


def test_unknown_path_is_404_json(client):
    assert_error(client.get("/nope"), 404, "not_found")


def test_no_announced_worker_is_503_at_once(client):
    response = post_image(client, photo_bytes("chelsea.png"))
    assert_error(response, 503, "no_worker")
    assert response.headers["Retry-After"] == "1"


def test_a_request_admitted_as_the_last_worker_leaves_is_503_at_once_and_never_queued(client, fake_redis,
                                                                                       monkeypatch):
    """Admission saw the worker; between it and the push, the version's last worker closed the version. The push
    checks again, atomically, so no message waits in a queue that nobody will serve."""
    heartbeat(fake_redis)
    admit = InferenceQueue.admit

    def admitted_then_the_last_worker_stops(queue, charge=None):
        model = admit(queue, charge)
        assert WorkerQueue(fake_redis, KEYS, "w1").announce_stopping(SETTINGS.worker_timeout) == 0
        return model

    monkeypatch.setattr(InferenceQueue, "admit", admitted_then_the_last_worker_stops)
    assert_error(post_image(client, photo_bytes("chelsea.png")), 503, "no_worker")
    assert [fake_redis.llen(lane) for lane in KEYS.lanes] == [0, 0, 0] and not fake_redis.exists(KEYS.wake)


def test_a_key_refused_at_the_push_because_the_version_closed_gets_its_tokens_back(fake_redis, tmp_path,
                                                                                     monkeypatch):
    """Charged at admission, then 503 at the push (the last worker closed the version in between): a 503 costs the
    client nothing, there as at admission."""
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"ci {hashlib.sha256(b'secret').hexdigest()} 1 5\n")
    client = create_app(dataclasses.replace(SETTINGS, api_keys_file=str(keys_file)), fake_redis).test_client()
    heartbeat(fake_redis)
    admit = InferenceQueue.admit

    def admitted_then_the_last_worker_stops(queue, charge=None):
        model = admit(queue, charge)
        assert float(fake_redis.hget(ClientKeys(SETTINGS.key_prefix, "ci").limits, "tokens")) < 4.1  # charged
        WorkerQueue(fake_redis, KEYS, "w1").announce_stopping(SETTINGS.worker_timeout)
        return model

    monkeypatch.setattr(InferenceQueue, "admit", admitted_then_the_last_worker_stops)
    assert_error(post_image(client, photo_bytes("chelsea.png"), headers={"Authorization": "Bearer secret"}), 503,
                 "no_worker")
    limits = fake_redis.hgetall(ClientKeys(SETTINGS.key_prefix, "ci").limits)
    assert float(limits[b"tokens"]) == 5 and int(limits[b"used"]) == 0


def test_a_key_refused_for_want_of_decoding_room_gets_its_tokens_back(fake_redis, tmp_path, monkeypatch):
    """Charged at admission, then 503 decoder_busy (the process's decode budget stayed full): no tokens spent."""
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"ci {hashlib.sha256(b'secret').hexdigest()} 1 5\n")
    client = create_app(dataclasses.replace(SETTINGS, api_keys_file=str(keys_file)), fake_redis).test_client()
    heartbeat(fake_redis)

    def no_room(pool, tasks):
        raise DecoderBusy()

    monkeypatch.setattr(DecodePool, "run_all", no_room)
    assert_error(post_image(client, photo_bytes("chelsea.png"), headers={"Authorization": "Bearer secret"}), 503,
                 "decoder_busy")
    limits = fake_redis.hgetall(ClientKeys(SETTINGS.key_prefix, "ci").limits)
    assert float(limits[b"tokens"]) == 5 and int(limits[b"used"]) == 0


def test_a_forged_heartbeat_with_a_huge_crop_is_no_usable_worker_not_a_500(client, fake_redis):
    """Whoever writes Redis cannot make the API allocate what a heartbeat's sizes say: 503, at once."""
    heartbeat(fake_redis)
    forged = {**json.loads(MODEL.to_json()), "input_size": 10**6, "resize_size": 10**6}
    fake_redis.set(KEYS.model, json.dumps(forged))
    response = post_image(client, photo_bytes("chelsea.png"))
    assert_error(response, 503, "no_worker")
    assert fake_redis.llen(KEYS.queue) == 0
    assert_error(client.get("/model"), 503, "no_worker")
    assert client.get("/readyz").status_code == 503


def test_no_answer_before_the_deadline_is_504(client, fake_redis):
    heartbeat(fake_redis)
    assert_error(post_image(client, photo_bytes("chelsea.png")), 504, "timeout")


def test_unreachable_redis_is_503(server):
    server.connected = False
    client = create_app(SETTINGS, fakeredis.FakeRedis(server=server)).test_client()
    response = post_image(client, photo_bytes("chelsea.png"))
    assert_error(response, 503, "redis_unavailable")
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["error"]["message"] == "the queue (Redis) is unavailable; retry later"


def test_healthz_answers_without_redis(server):
    server.connected = False
    client = create_app(SETTINGS, fakeredis.FakeRedis(server=server)).test_client()
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_the_api_never_imports_torch():
    code = ("import sys, app; app.create_app(); "
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')); "
            "print(loaded); sys.exit(1 if loaded else 0)")
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stdout + finished.stderr


def test_a_full_queue_is_503_with_retry_after_at_once(fake_redis):
    client = create_app(Settings(request_timeout=5, max_queue=3), fake_redis).test_client()
    heartbeat(fake_redis)
    fake_redis.lpush(KEYS.queue, b"1", b"2", b"3")
    response = post_image(client, photo_bytes("chelsea.png"))
    assert_error(response, 503, "queue_full")
    assert response.headers["Retry-After"] == "1"
    assert fake_redis.llen(KEYS.queue) == 3  # nothing added



def test_concurrent_requests_at_a_queue_one_below_the_limit_admit_exactly_one(fake_redis):
    """Sixteen uploads race for the last place: one is queued (and times out, no worker), fifteen get 503."""
    client = create_app(Settings(request_timeout=1, max_queue=5), fake_redis).test_client()
    heartbeat(fake_redis)
    fake_redis.lpush(KEYS.queue, b"1", b"2", b"3", b"4")
    photo = photo_bytes("chelsea.png")
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = sorted(pool.map(lambda _: post_image(client, photo).status_code, range(16)))
    assert statuses == [503] * 15 + [504]
    assert fake_redis.llen(KEYS.queue) == 5
