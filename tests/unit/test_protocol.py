import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from serving import fleet_scripts, protocol
from serving.protocol import InferenceRequest, Keys, MalformedMessage, ModelInfo


def make_request(shape=(224, 224, 3), priority="normal") -> InferenceRequest:
    pixels = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    return InferenceRequest("abc123", pixels, 1000.0, 1010.0, 5, priority=priority)


def round_trip(request: InferenceRequest) -> InferenceRequest:
    encoded = protocol.encode_request(request)
    return protocol.decode_request(protocol.decode_message(encoded.message), encoded.pixels)


def test_request_round_trip_preserves_every_pixel_and_field():
    request = make_request(priority="high")
    decoded = round_trip(request)
    assert (decoded.job_id, decoded.enqueued_at, decoded.deadline, decoded.top_k, decoded.probabilities,
            decoded.priority) == ("abc123", 1000.0, 1010.0, 5, False, "high")
    assert decoded.pixels.dtype == np.uint8
    np.testing.assert_array_equal(decoded.pixels, request.pixels)


def test_the_wire_format_is_a_small_json_message_and_the_raw_pixels_apart():
    """What a lane holds for an image is a few hundred bytes whatever its size; the pixels are its bytes, no base64."""
    request = make_request((224, 224, 3), priority="low")
    encoded = protocol.encode_request(request)
    assert encoded.message == (b'{"id": "abc123", "priority": "low", "shape": [224, 224, 3], "enqueued_at": 1000.0, '
                               b'"deadline": 1010.0, "top_k": 5, "probabilities": false}')
    assert encoded.pixels == request.pixels.tobytes() and len(encoded.pixels) == 224 * 224 * 3
    assert encoded.job_id == "abc123"
    assert encoded.expire_ms == (10 + protocol.PIXELS_GRACE_SECONDS) * 1000  # the deadline, and its grace


def test_pixels_travel_as_uint8_whatever_integer_array_they_come_in():
    pixels = np.arange(2 * 2 * 3, dtype=np.int64).reshape(2, 2, 3)
    decoded = round_trip(InferenceRequest("r1", pixels, 1000.0, 1010.0, 5))
    assert decoded.pixels.dtype == np.uint8
    np.testing.assert_array_equal(decoded.pixels, pixels)


def test_the_job_id_a_message_starts_with_is_read_without_decoding_it():
    """What the reaper's script reads with the same pattern, to count failed deliveries by job."""
    assert protocol.leading_job_id(protocol.encode_request(make_request((2, 2, 3))).message) == "abc123"
    assert protocol.leading_job_id(b'{"shape": [1], "id": "abc123"}') is None
    assert protocol.leading_job_id(b'{"id": "", "shape": [1]}') is None
    assert protocol.leading_job_id(b'{"id": "a\\"b"}') is None
    assert protocol.leading_job_id(b'{"id": "a\xffb", "shape": [1]}') == "a\ufffdb"  # never an error


def tampered(**changes) -> bytes:
    fields = json.loads(protocol.encode_request(make_request((2, 2, 3))).message)
    fields.update(changes)
    return json.dumps({k: v for k, v in fields.items() if v is not None}).encode()


@pytest.mark.parametrize("raw, job_id", [
    (b"\x80not json", None),
    (b"[1, 2]", None),
    (tampered(id=None), None),
    (tampered(priority="urgent"), "abc123"),
    (tampered(priority=None), "abc123"),
    (tampered(deadline=None), "abc123"),
    (tampered(shape=[2, 2, 4]), "abc123"),
])
def test_malformed_messages_raise_with_the_job_id_when_readable(raw, job_id):
    with pytest.raises(MalformedMessage) as caught:
        protocol.decode_message(raw)
    assert caught.value.job_id == job_id


@pytest.mark.parametrize("raw, reason", [
    (b"\x80", "not JSON: UnicodeDecodeError: 'utf-8' codec can't decode byte 0x80 in position 0: invalid start byte"),
    (b"[1, 2]", "not a JSON object"),
    (tampered(id=5), "no job id"),
    (tampered(id=""), "no job id"),
    (tampered(priority="p" * 60), f"ValueError: priority {'p' * 20!r}, expected one of high, normal, low"),
    (tampered(shape=[1, 2, 4]), "ValueError: shape [1, 2, 4], expected [height, width, 3]"),
    (tampered(shape=[2, 1, 1, 3, 9]), "ValueError: shape [2, 1, 1, 3], expected [height, width, 3]"),
    (tampered(shape=[0, 2, 3]), "ValueError: shape [0, 2, 3], expected [height, width, 3]"),
    (tampered(enqueued_at="x" * 300), "ValueError: " + f"could not convert string to float: {'x' * 300!r}"[:200]),
    (tampered(top_k=0), "ValueError: top_k '0', expected a whole number of at least 1"),
    (tampered(probabilities="yes"), "ValueError: probabilities 'yes', expected true or false"),
])
def test_each_malformed_message_says_what_is_wrong_with_it(raw, reason):
    with pytest.raises(MalformedMessage) as caught:
        protocol.decode_message(raw)
    assert str(caught.value) == reason


def test_pixels_of_another_size_than_the_shape_are_malformed_and_absent_ones_missing():
    queued = protocol.decode_message(protocol.encode_request(make_request((1, 2, 3))).message)
    with pytest.raises(MalformedMessage, match=r"^5 pixel bytes for shape \[1, 2, 3\]$") as caught:
        protocol.decode_request(queued, b"\0" * 5)
    assert caught.value.job_id == "abc123" and not isinstance(caught.value, protocol.MissingPixels)
    with pytest.raises(protocol.MissingPixels) as caught:
        protocol.decode_request(queued, None)
    assert caught.value.job_id == "abc123"


def test_the_smallest_image_and_a_non_square_one_decode():
    for shape in [(1, 1, 3), (2, 3, 3)]:
        pixels = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
        np.testing.assert_array_equal(round_trip(InferenceRequest("r", pixels, 1.0, 2.0, 5)).pixels, pixels)


def test_a_malformed_message_says_what_is_wrong_with_it():
    with pytest.raises(MalformedMessage) as caught:
        protocol.decode_message(tampered(deadline=math.inf))
    assert str(caught.value) == "ValueError: inf is not a finite time"


def test_redis_time_replies_are_epoch_seconds():
    assert protocol.redis_seconds((5, 500000)) == 5.5
    assert protocol.redis_seconds((b"1700000000", b"0")) == 1700000000.0


def test_the_redis_clock_is_the_local_clock_plus_the_offset_measured_at_the_middle_of_the_round_trip(monkeypatch):
    clock = protocol.RedisClock()
    clock.observe(1000.5, sent_at=10.0, received_at=12.0)  # Redis read its clock at local time 11
    monkeypatch.setattr(protocol.time, "time", lambda: 20.0)
    assert clock.now() == 1009.5


def test_every_key_of_a_queue_lies_in_one_cluster_slot_and_results_are_per_request():
    keys = Keys("svc", "resnet50@v3")
    names = [keys.queue, keys.model, keys.retry, keys.workers, keys.worker_stats, keys.processing("w1"),
             keys.result("r1")]
    assert all(name.startswith("{svc:resnet50@v3}:") for name in names)
    assert {key_slot(name.encode()) for name in names} == {key_slot(b"svc:resnet50@v3")}  # the tag decides
    assert len(set(names)) == len(names)
    assert keys.result("r1") != keys.result("r2")


def test_the_fleets_keys_lie_under_the_prefix_alone():
    fleet = protocol.FleetKeys("svc")
    assert (fleet.models, fleet.routes("resnet50")) == ("{svc}:models", "{svc}:routes:resnet50")


def test_model_ages_are_each_models_own(fake_redis):
    now = float(fake_redis.time()[0])
    fake_redis.zadd(protocol.FleetKeys("svc").models, {"a@1": now - 10, "b@2": now - 1})
    ages = fleet_scripts.model_ages(fake_redis, fleet=protocol.FleetKeys("svc"))
    assert sorted(ages) == ["a@1", "b@2"]
    assert ages["a@1"] == pytest.approx(10, abs=1.5) and ages["b@2"] == pytest.approx(1, abs=1.5)


def test_results_carry_success_or_a_coded_error():
    prediction = protocol.Prediction(281, "tabby", 0.5)
    ok = protocol.InferenceResult("r1", "m", "1", (prediction,), {"inference_ms": 1.0})
    assert json.loads(protocol.encode_result(ok)) == {
        "id": "r1", "success": True, "model": "m", "version": "1", "timing": {"inference_ms": 1.0},
        "predictions": [{"index": 281, "label": "tabby", "probability": 0.5}]}
    assert protocol.decode_result(protocol.encode_result(ok)) == ok
    failed = protocol.decode_result(protocol.encode_failure("r1", "inference_failed", "boom"))
    assert failed == protocol.InferenceResult("r1", error=protocol.Failure("inference_failed", "boom"))
    assert json.loads(protocol.encode_failure("r1", "inference_failed", "boom")) == {
        "id": "r1", "success": False, "error": {"code": "inference_failed", "message": "boom"}}


def test_a_result_carries_every_probability_exactly_when_asked():
    probabilities = np.array([0.25, 0.125, 0.625], dtype=np.float32)
    with_all = protocol.InferenceResult("r1", "m", "1", (), {}, probabilities)
    decoded = protocol.decode_result(protocol.encode_result(with_all))
    assert decoded.probabilities.dtype == np.float32 and np.array_equal(decoded.probabilities, probabilities)
    assert protocol.decode_result(protocol.encode_result(protocol.InferenceResult("r1"))).probabilities is None


def test_model_info_round_trip():
    info = ModelInfo("m", "resnet50", 1000, 224, 256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "cpu", 8)
    assert ModelInfo.from_json(info.to_json()) == info


GOOD_INFO = json.loads(ModelInfo("m", "resnet50", 1000, 224, 256, (0.5,) * 3, (0.2,) * 3, "cpu", 8).to_json())


@pytest.mark.parametrize("forged", [
    {"input_size": 10**6, "resize_size": 10**6},  # the API would allocate a 3 TB crop
    {"input_size": protocol.MAX_IMAGE_SIDE + 1, "resize_size": protocol.MAX_IMAGE_SIDE + 1},
    {"resize_size": 100},  # below the crop
    {"input_size": 0}, {"input_size": -224}, {"input_size": 224.5}, {"input_size": "224"}, {"input_size": True},
    {"mean": [0.5, 0.5]}, {"mean": [0.5, 0.5, float("nan")]}, {"std": [0.2, 0.2, 0]}, {"std": "abc"},
    {"num_classes": 0}, {"batch_size": None},
    {"name": "odd/name}x"}, {"version": ""}, {"name": 7}, {"arch": ["x"]}, {"sources": {"mean": 1}},
], ids=repr)
def test_a_model_description_out_of_bounds_is_malformed(forged):
    with pytest.raises(protocol.MalformedModelInfo):
        ModelInfo.from_json(json.dumps({**GOOD_INFO, **forged}).encode())


def test_the_largest_bounded_sizes_are_a_model_description_still():
    side = protocol.MAX_IMAGE_SIDE
    assert ModelInfo.from_json(json.dumps({**GOOD_INFO, "input_size": side, "resize_size": side}).encode())


@settings(max_examples=200, deadline=None)
@given(raw=st.one_of(st.binary(max_size=200), st.dictionaries(st.sampled_from(sorted(GOOD_INFO)), st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), st.lists(st.floats(), max_size=4)),
    ).map(lambda fields: json.dumps({**GOOD_INFO, **fields}).encode())))
def test_any_model_description_parses_within_bounds_or_is_malformed_never_another_error(raw):
    try:
        info = ModelInfo.from_json(raw)
    except protocol.MalformedModelInfo:
        return
    assert 1 <= info.input_size <= info.resize_size <= protocol.MAX_IMAGE_SIDE


MESSAGE_FIELDS = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.text(max_size=8), st.integers(), st.none()),
    "shape": st.one_of(st.lists(st.one_of(st.integers(), st.floats(), st.text(max_size=3)), max_size=4), st.text()),
    "priority": st.one_of(st.sampled_from(protocol.PRIORITIES), st.text(max_size=5), st.integers()),
    "top_k": st.one_of(st.integers(), st.booleans(), st.floats()),
    "probabilities": st.one_of(st.booleans(), st.integers()),
    "enqueued_at": st.one_of(st.floats(), st.integers(), st.text(max_size=5), st.none()),
    "deadline": st.one_of(st.floats(), st.integers(min_value=-10**400, max_value=10**400), st.none()),
})


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.binary(max_size=300), MESSAGE_FIELDS.map(lambda f: json.dumps(f).encode())),
       pixels=st.one_of(st.none(), st.binary(max_size=20)))
def test_any_message_and_pixels_decode_or_are_malformed_never_another_error(raw, pixels):
    try:
        request = protocol.decode_request(protocol.decode_message(raw), pixels)
    except protocol.MalformedMessage:
        return
    assert request.pixels.shape[2] == 3 and math.isfinite(request.deadline)


@pytest.mark.parametrize("raw", [
    b'{"id": "x", "priority": "normal", "shape": [1, 1, 3], "enqueued_at": 1e999, "deadline": 1, "top_k": 1, '
    b'"probabilities": false}',
    b'{"id": "x", "priority": "normal", "shape": [1e999, 1, 3], "enqueued_at": 0, "deadline": 1, "top_k": 1, '
    b'"probabilities": false}',
    b'{"id": "x", "priority": "normal", "shape": [1, 1, 3], "enqueued_at": 0, "deadline": NaN, "top_k": 1, '
    b'"probabilities": false}',
    b'[' * 100_000 + b']' * 100_000,
])
def test_crafted_messages_that_used_to_kill_the_worker_are_malformed(raw):
    with pytest.raises(protocol.MalformedMessage):
        protocol.decode_message(raw)
