"""The API's decoding: a request's images decode in parallel on one pool per process, within a bounded number of
pixels; an upload that does not fit waits, then is 503."""

import gc
import threading
import time

import pytest
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from app import decode_budget, inference
from app.decode_budget import DecodeBudget, DecoderBusy
from app.decode_pool import DecodePool
from tests.images import PHOTOS, encode, photo_bytes
from tests.unit.fake_api import answer_next_request, heartbeat
from tests.unit.test_native_api import post_images, top_k_answer


def test_takings_share_the_budget_and_a_later_one_waits_for_room(monkeypatch):
    monkeypatch.setattr(decode_budget, "WAIT_SECONDS", 5.0)
    budget = DecodeBudget(100)
    order = []

    def second():
        budget.take(60)
        order.append("second decodes")
        budget.give_back(60)

    budget.take(60)
    waiting = threading.Thread(target=second)
    waiting.start()
    time.sleep(0.2)
    order.append("first done")
    budget.give_back(60)
    waiting.join()
    assert order == ["first done", "second decodes"]


def test_an_upload_that_finds_no_room_in_time_is_refused(monkeypatch):
    monkeypatch.setattr(decode_budget, "WAIT_SECONDS", 0.1)
    budget = DecodeBudget(100)
    budget.take(70)
    with pytest.raises(DecoderBusy):
        budget.take(40)
    budget.take(30)  # what fits goes ahead
    budget.give_back(30)
    budget.give_back(70)
    budget.take(100)  # everything was given back


class DecodeRecorder:
    """Stand-in decodes that record how many pixels are being decoded at once, and in what order they finish."""

    def __init__(self):
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.finished = []

    def task(self, name, pixels: int, seconds: float):
        def decode():
            with self.lock:
                self.in_flight += pixels
                self.peak = max(self.peak, self.in_flight)
            time.sleep(seconds)
            with self.lock:
                self.in_flight -= pixels
                self.finished.append(name)
            return name
        return pixels, decode


def test_a_requests_images_decode_at_once_and_come_back_in_their_order():
    recorder = DecodeRecorder()
    pool = DecodePool(DecodeBudget(1000), threads=4)
    # The first is the slowest: it finishes last, and still comes first.
    results = pool.run_all([recorder.task(i, 10, 0.4 - i * 0.1) for i in range(4)])
    assert results == [0, 1, 2, 3]
    assert recorder.finished == [3, 2, 1, 0] and recorder.peak == 40  # all four at once


def test_the_requests_own_thread_decodes_its_last_image_so_one_image_is_never_handed_over():
    pool = DecodePool(DecodeBudget(1000), threads=2)
    decoded_by = pool.run_all([(10, threading.current_thread) for _ in range(3)])
    assert decoded_by[-1] is threading.current_thread()
    assert all(thread is not threading.current_thread() for thread in decoded_by[:-1])
    assert pool.run_all([(10, threading.current_thread)]) == [threading.current_thread()]
    assert pool.run_all([]) == []


def test_never_more_pixels_are_decoding_than_the_budget_however_many_threads(monkeypatch):
    monkeypatch.setattr(decode_budget, "WAIT_SECONDS", 5.0)
    recorder = DecodeRecorder()
    budget = DecodeBudget(100)
    pool = DecodePool(budget, threads=8)
    requests = [threading.Thread(target=pool.run_all, args=([recorder.task((r, i), 40, 0.05) for i in range(4)],))
                for r in range(3)]  # three requests at once, 480 pixels in all
    for request in requests:
        request.start()
    for request in requests:
        request.join()
    assert len(recorder.finished) == 12
    assert recorder.peak == 80  # two images of 40 fit in 100 at a time, never a third
    budget.take(100)  # all given back


def test_a_request_whose_image_finds_no_room_fails_busy_and_gives_its_pixels_back(monkeypatch):
    monkeypatch.setattr(decode_budget, "WAIT_SECONDS", 0.1)
    recorder = DecodeRecorder()
    budget = DecodeBudget(100)
    pool = DecodePool(budget, threads=1)
    budget.take(50)  # another request's large image
    with pytest.raises(DecoderBusy):
        pool.run_all([recorder.task("fits", 40, 1.0), recorder.task("waits for the thread", 5, 0.0),
                      recorder.task("does not fit", 20, 0.0)])
    budget.give_back(50)
    time.sleep(1.5)
    assert recorder.finished == ["fits"]  # the one not yet started was cancelled
    budget.take(100)


def test_one_requests_images_are_decoded_at_the_same_time_by_the_api(patient_client, fake_redis, monkeypatch):
    """Each of two images' resize waits for the other's to start: decoded one after another, neither would."""
    both_decoding = threading.Barrier(2, timeout=5)
    fit_to_model = inference.fit_to_model

    def fit_when_both_are_decoding(*args):
        both_decoding.wait()
        return fit_to_model(*args)
    monkeypatch.setattr(inference, "fit_to_model", fit_when_both_are_decoding)
    patient_client.application.extensions["decode_pool"] = DecodePool(DecodeBudget(10**8), threads=2)  # any machine
    heartbeat(fake_redis)
    answer_next_request(fake_redis, top_k_answer, count=2)
    response = post_images(patient_client, [photo_bytes("chelsea.png"), photo_bytes("rocket.jpg")])
    assert response.status_code == 200, response.get_data(as_text=True)
    assert [r["success"] for r in response.get_json()["results"]] == [True, True]


def test_an_image_that_fails_to_decode_fails_alone_in_its_place(patient_client, fake_redis):
    heartbeat(fake_redis)
    answer_next_request(fake_redis, top_k_answer, count=2)
    truncated = photo_bytes("coffee.png")[:20_000]  # its header reads; its pixels do not
    response = post_images(patient_client, [photo_bytes("chelsea.png"), truncated, photo_bytes("rocket.jpg")])
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [r["success"] for r in results] == [True, False, True]
    assert results[1]["error"]["code"] == "invalid_image"


def decoded_jpegs_alive() -> int:
    """JPEG images whose decoded pixels are still held in memory."""
    return sum(1 for thing in gc.get_objects() if isinstance(thing, JpegImageFile) and thing._im is not None
               and type(thing._im).__name__ == "ImagingCore")


def test_a_decoded_jpeg_is_freed_before_its_pixels_go_back_to_the_budget(patient_client, fake_redis, monkeypatch):
    budget = patient_client.application.extensions["decode_pool"].budget
    alive_when_given_back = []
    give_back = budget.give_back

    def give_back_noting_what_is_alive(pixels):
        alive_when_given_back.append(decoded_jpegs_alive())
        give_back(pixels)
    monkeypatch.setattr(budget, "give_back", give_back_noting_what_is_alive)
    heartbeat(fake_redis)
    answer_next_request(fake_redis, top_k_answer, count=1)
    large = encode(Image.open(PHOTOS / "chelsea.png").convert("RGB").resize((1804, 1200)), "JPEG")
    response = post_images(patient_client, [large])
    assert response.status_code == 200, response.get_data(as_text=True)
    assert alive_when_given_back == [0]
