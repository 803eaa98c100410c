"""The worker loop against a real Redis and a tiny real model: every message gets an answer or a reason."""

import dataclasses
import json
import logging
import socket
import threading
import time
import types

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from serving import fleet_scripts, protocol, worker_stats
from serving.config import ConfigError, Settings
from serving.protocol import FleetKeys, InferenceRequest, Keys, ModelInfo
from tests.unit.tiny_model import COLOURS, INPUT_SIZE, message, processed, stored, tiny_classifier
from worker import loop
from worker.__main__ import redis_client
from worker.loop import Worker
from worker.queue import ModelMismatch, WorkerQueue
from worker.retry import retry_on_redis_errors

SETTINGS = Settings(key_prefix="t", batch_size=8)
KEYS = Keys("t", "tiny@1")


@pytest.fixture
def worker(fake_redis):
    return Worker(fake_redis, tiny_classifier(), SETTINGS, worker_id="w1")


def result(worker, job_id):
    answers = worker.client.lrange(KEYS.result(job_id), 0, -1)
    return json.loads(answers[0]) if answers else None


def test_each_request_in_a_batch_gets_its_own_top_k(worker):
    asked = [("r1", "red", 2), ("r2", "blue", 3), ("r3", "green", 2)]
    processed(worker, [message(worker.client, job_id, colour, top_k=k) for job_id, colour, k in asked])
    for job_id, colour, k in asked:
        answer = result(worker, job_id)
        assert answer["success"] is True and (answer["model"], answer["version"]) == ("tiny", SETTINGS.model_version)
        predictions = answer["predictions"]
        assert len(predictions) == k and "probabilities" not in answer
        assert predictions[0]["label"] == colour
        assert predictions[0]["index"] == list(COLOURS).index(colour)
        assert predictions[0]["probability"] > predictions[1]["probability"] > 0
        assert answer["timing"]["batch_size"] == 3


def test_a_request_that_asks_for_every_probability_gets_them_beside_its_top_k(worker):
    processed(worker, [message(worker.client, "all", "blue", top_k=1, probabilities=True),
                    message(worker.client, "top", "blue", top_k=9)])
    everything = protocol.decode_result(worker.client.lrange(KEYS.result("all"), 0, -1)[0])
    assert [p.label for p in everything.predictions] == ["blue"]
    assert everything.probabilities.shape == (len(COLOURS),) and abs(everything.probabilities.sum() - 1) < 1e-5
    assert int(everything.probabilities.argmax()) == list(COLOURS).index("blue")
    assert len(result(worker, "top")["predictions"]) == len(COLOURS)  # a top_k past the classes gets them all


def test_a_malformed_message_gets_an_error_and_the_rest_of_the_batch_is_served(worker):
    broken = json.loads(message(worker.client, "bad"))
    broken["shape"] = "!!!"
    processed(worker, [json.dumps(broken).encode(), b"garbage without an id", message(worker.client, "good")])
    assert result(worker, "bad")["error"]["code"] == "malformed_message"
    assert result(worker, "good")["success"] is True


def test_an_image_of_the_wrong_shape_gets_an_error(worker):
    processed(worker, [message(worker.client, "r1", size=INPUT_SIZE + 1)])
    assert result(worker, "r1")["error"]["code"] == "wrong_input_shape"


def test_requests_past_their_deadline_are_skipped_and_counted(worker):
    processed(worker, [message(worker.client, "late", deadline_in=-1), message(worker.client, "on-time")])
    assert result(worker, "late") is None
    assert result(worker, "on-time")["success"] is True
    assert worker.expired == 1


def test_a_take_of_only_expired_requests_logs_no_empty_batch(worker, caplog):
    with caplog.at_level(logging.INFO, logger="worker"):
        processed(worker, [message(worker.client, "late", deadline_in=-1)])
    assert "took 1 messages and ran none" in caplog.text and "size=0" not in caplog.text


def test_an_inference_failure_answers_the_batch_and_the_worker_carries_on(worker, monkeypatch, caplog):
    def explode(images):
        raise RuntimeError("device fell over at /opt/secret/model.bin")
    with monkeypatch.context() as patched:
        patched.setattr(worker.classifier, "probabilities", explode)
        processed(worker, [message(worker.client, "r1")])
    error = result(worker, "r1")["error"]
    assert error["code"] == "inference_failed" and "worker's log" in error["message"]
    assert "/opt/secret" not in error["message"]  # the exception's text goes to the log only
    assert "device fell over" in caplog.text and "job_ids=r1" in caplog.text
    processed(worker, [message(worker.client, "r2")])
    assert result(worker, "r2")["success"] is True


def test_the_batch_leaves_the_processing_list_once_answered(worker):
    worker.client.lpush(KEYS.queue, message(worker.client, "r1"))
    worker.serve_once()
    assert result(worker, "r1")["success"] is True
    assert not worker.client.exists(KEYS.processing("w1"))


def test_heartbeat_announces_the_model_and_the_worker_with_expiry(worker):
    worker.heartbeat.beat()
    info = protocol.ModelInfo.from_json(worker.client.get(KEYS.model))
    assert (info.name, info.input_size, info.num_classes, info.device) == ("tiny", INPUT_SIZE, 3, "cpu")
    assert 0 < worker.client.pttl(KEYS.model) <= SETTINGS.worker_timeout * 1000
    assert worker.client.zscore(KEYS.workers, "w1") == pytest.approx(time.time(), abs=5)


def test_stopping_hands_back_unstarted_work_without_counting_an_attempt(worker):
    worker.heartbeat.beat()
    worker.client.lpush(KEYS.processing("w1"), message(worker.client, "unstarted"))
    worker.sign_off()
    assert worker.client.zscore(KEYS.workers, "w1") is None
    assert protocol.decode_message(worker.client.rpop(KEYS.queue)).job_id == "unstarted"
    assert not worker.client.exists(KEYS.attempts)


@pytest.mark.parametrize("others_stay", [False, True])
def test_the_last_worker_of_a_version_serves_its_queue_before_it_stops(worker, others_stay):
    """Nobody else would: the version's queue is its own. With another worker of it staying, it just leaves."""
    worker.heartbeat.beat()
    if others_stay:
        worker.client.zadd(KEYS.workers, {"w2": float(worker.client.time()[0])})
    worker.client.lpush(KEYS.queue, *(message(worker.client, f"r{i}") for i in range(12)))
    stop = threading.Event()
    stop.set()  # told to stop before it took anything
    assert worker.run(stop)
    answered = [job_id for job_id in (f"r{i}" for i in range(12)) if result(worker, job_id)]
    assert (len(answered), worker.client.llen(KEYS.queue)) == ((0, 12) if others_stay else (12, 0))
    assert not worker.client.sismember(KEYS.stopping, "w1")


@pytest.mark.parametrize("others_stay", [False, True])
def test_the_last_worker_to_stop_closes_its_version_and_one_that_others_outlive_leaves_it_open(worker, others_stay):
    """Closed: no model description (the API answers no_worker at once) and not live in the fleet's registry."""
    worker.heartbeat.beat()
    if others_stay:
        worker.client.zadd(KEYS.workers, {"w2": float(worker.client.time()[0])})
    stop = threading.Event()
    stop.set()
    assert worker.run(stop)
    assert worker.client.exists(KEYS.model) == others_stay
    live = fleet_scripts.model_ages(worker.client, fleet=FleetKeys("t"))[KEYS.model_id] <= SETTINGS.worker_timeout
    assert live == others_stay


def test_the_heartbeats_of_a_draining_last_worker_keep_it_registered_but_do_not_reopen_its_version(worker):
    worker.heartbeat.beat()
    assert worker.queue.announce_stopping(SETTINGS.worker_timeout) == 0
    worker.heartbeat.beat()  # its heartbeat thread beats on while it serves what is queued
    assert not worker.client.exists(KEYS.model)
    assert fleet_scripts.model_ages(worker.client, fleet=FleetKeys("t"))[KEYS.model_id] > SETTINGS.worker_timeout
    assert worker.client.zscore(KEYS.workers, "w1") is not None  # not reaped while it drains


def test_the_last_worker_stops_once_its_queue_is_empty_not_at_the_request_timeout(fake_redis):
    worker = Worker(fake_redis, tiny_classifier(), Settings(key_prefix="t", request_timeout=60), worker_id="w1")
    worker.heartbeat.beat()
    fake_redis.lpush(KEYS.queue, message(worker.client, "last"))
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    assert worker.run(stop)
    assert result(worker, "last")["success"] is True
    assert time.monotonic() - started < 30  # well short of the 60 s it may take with work still queued


def test_the_workers_redis_reads_outlast_its_blocking_take_whatever_the_worker_timeout():
    for worker_timeout in (5.0, 100.0):
        settings = Settings(worker_timeout=worker_timeout)
        timeout = redis_client(settings).connection_pool.connection_kwargs["socket_timeout"]
        assert timeout > settings.heartbeat_seconds


def test_a_batch_whose_publish_failed_is_answered_before_anything_new_is_taken(worker, monkeypatch):
    """A Redis error while publishing leaves the batch in the processing list; no later publish may drop it."""
    publish, failures = WorkerQueue.publish_results, []

    def fails_once(*args, **kwargs):
        if not failures:
            failures.append("connection reset")
            raise redis.ConnectionError("connection reset while publishing")
        return publish(*args, **kwargs)

    monkeypatch.setattr(WorkerQueue, "publish_results", fails_once)
    worker.client.lpush(KEYS.queue, message(worker.client, "a1", "red"), message(worker.client, "a2", "green"))
    with pytest.raises(redis.ConnectionError):
        worker.serve_once()
    worker.client.lpush(KEYS.queue, message(worker.client, "b1", "blue"))
    worker.serve_once()  # the held batch first
    worker.serve_once()  # then the new one
    assert [result(worker, r)["predictions"][0]["label"] for r in ("a1", "a2", "b1")] == ["red", "green", "blue"]
    assert not worker.client.exists(KEYS.processing("w1"))


def test_a_take_whose_reply_was_lost_is_answered_from_the_processing_list_before_anything_new(worker, monkeypatch,
                                                                                             caplog):
    """The take ran in Redis (TAKE, one script) but its reply never came: the error reaches the worker, whose next
    round serves what its processing list holds, so nothing waits there for a reaper that will not come."""
    take, lost = WorkerQueue._take_queued, []

    def reply_lost_once(self, *args, **kwargs):
        taken = take(self, *args, **kwargs)
        if taken and not lost:
            lost.append(taken)
            raise redis.TimeoutError("Timeout reading from socket")
        return taken

    monkeypatch.setattr(WorkerQueue, "_take_queued", reply_lost_once)
    worker.client.lpush(KEYS.queue, message(worker.client, "a1", "red"), message(worker.client, "a2", "green"))
    with pytest.raises(redis.TimeoutError):
        worker.serve_once()
    assert worker.client.llen(KEYS.processing("w1")) == 2 and worker.client.llen(KEYS.queue) == 0
    worker.client.lpush(KEYS.lane("high"), message(worker.client, "b1", "blue"))
    with caplog.at_level(logging.INFO, logger="worker"):
        worker.serve_once()  # the held batch first, though a high-priority image waits
    assert "serving 2 requests held since a Redis error" in caplog.text and result(worker, "b1") is None
    worker.serve_once()
    assert [result(worker, r)["predictions"][0]["label"] for r in ("a1", "a2", "b1")] == ["red", "green", "blue"]
    assert not worker.client.exists(KEYS.processing("w1"))


def test_a_retried_request_runs_alone_before_the_queue(worker):
    """A request whose worker died runs in a batch of its own, so a poison image takes no batch-mate down."""
    retried = message(worker.client, "r1", "red")
    worker.client.lpush(KEYS.retry, retried)
    worker.client.lpush(KEYS.queue, message(worker.client, "q1", "green"), message(worker.client, "q2", "blue"))
    worker.serve_once()
    assert result(worker, "r1")["timing"]["batch_size"] == 1 and result(worker, "q1") is None
    worker.serve_once()
    assert result(worker, "q1")["timing"]["batch_size"] == result(worker, "q2")["timing"]["batch_size"] == 2


def test_every_low_lane_every_th_batch_starts_with_the_low_lane_so_low_keys_are_never_starved(fake_redis):
    """Under load the normal lane never empties, and a low key's images are still served: every LOW_LANE_EVERY-th
    batch takes the low lane first."""
    worker = Worker(fake_redis, tiny_classifier(), dataclasses.replace(SETTINGS, batch_size=1, low_lane_every=3),
                    worker_id="w1")
    jobs = {"normal": [f"normal{i}" for i in range(6)], "low": ["low0", "low1"]}
    for lane, ids in jobs.items():
        fake_redis.lpush(KEYS.lane(lane), *[message(fake_redis, job_id, priority=lane) for job_id in ids])
    served = []
    for _ in range(6):
        worker.serve_once()
        served += [job_id for job_id in jobs["normal"] + jobs["low"]
                   if job_id not in served and result(worker, job_id) is not None]
    assert served == ["normal0", "normal1", "low0", "normal2", "normal3", "low1"]


def test_a_heartbeat_that_fails_for_good_stops_the_worker_instead_of_serving_unannounced(fake_redis, monkeypatch):
    worker = Worker(fake_redis, tiny_classifier(), SETTINGS, worker_id="w1")
    beats = []

    def second_beat_breaks():
        beats.append(time.monotonic())
        if len(beats) > 1:
            raise ValueError("unexpected reply")
        fake_redis.zadd(KEYS.workers, {"w1": time.time()})
        worker.heartbeat.first_beat.set()

    monkeypatch.setattr(worker.heartbeat, "beat", second_beat_breaks)
    stop = threading.Event()
    finished = []
    thread = threading.Thread(target=lambda: finished.append(worker.run(stop)))
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and finished == [False]
    assert worker.client.zscore(KEYS.workers, "w1") is None  # signed off: its work goes back at once


def test_a_worker_of_another_model_than_its_versions_live_workers_refuses_to_run_and_touches_nothing(fake_redis):
    """Refused at its first heartbeat: run() is False at once, with the reason, and the queue is left to the others."""
    WorkerQueue(fake_redis, KEYS, "w0").announce(b"{}", "another model", SETTINGS.worker_timeout)
    fake_redis.lpush(KEYS.queue, message(fake_redis, "theirs"))
    worker = Worker(fake_redis, tiny_classifier(), SETTINGS, worker_id="w1")
    assert worker.run(threading.Event()) is False
    assert isinstance(worker.heartbeat.refusal, ModelMismatch)
    assert fake_redis.llen(KEYS.queue) == 1 and result(worker, "theirs") is None
    assert fake_redis.zscore(KEYS.workers, "w1") is None and fake_redis.zscore(KEYS.workers, "w0") is not None


def test_every_answer_names_its_request_and_a_failure_says_why(worker, monkeypatch):
    wrong_lane = json.loads(message(worker.client, "bad"))
    wrong_lane["priority"] = "urgent"
    processed(worker, [message(worker.client, "ok"), json.dumps(wrong_lane).encode(),
                    message(worker.client, "big", size=INPUT_SIZE + 1)])
    assert result(worker, "ok")["id"] == "ok"
    assert result(worker, "bad") == {"id": "bad", "success": False, "error": {
        "code": "malformed_message",
        "message": "the queued message is malformed: ValueError: priority 'urgent', expected one of high, normal, low"}}
    assert result(worker, "big") == {"id": "big", "success": False, "error": {
        "code": "wrong_input_shape", "message": "image of shape [9, 9, 3]; the model takes [8, 8, 3]"}}
    monkeypatch.setattr(worker.classifier, "probabilities", lambda images: 1 / 0)
    processed(worker, [message(worker.client, "unlucky")])
    assert result(worker, "unlucky") == {"id": "unlucky", "success": False, "error": {
        "code": "inference_failed", "message": "the model failed on the batch holding this image; the worker's log "
                                               "has the error under this request's job id"}}


def test_an_answer_times_its_wait_in_the_queue_by_redis_clock_and_the_batch_inference_in_ms(worker, monkeypatch):
    taken_at = 5000.0  # Redis's clock when the batch was taken
    monkeypatch.setattr(worker.heartbeat.clock, "now", lambda: taken_at)
    ticks = iter([100.0, 100.0456789])  # the model runs for 45.6789 ms
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    pixels = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    waited = InferenceRequest("waited", pixels, taken_at - 0.0123456, taken_at + 10, 5)
    ahead = InferenceRequest("ahead", pixels, taken_at + 1, taken_at + 10, 5)  # an API host whose offset was off
    processed(worker, [stored(worker.client, KEYS, waited), stored(worker.client, KEYS, ahead)])
    assert result(worker, "waited")["timing"] == {"queue_ms": 12.35, "inference_ms": 45.68, "batch_size": 2}
    assert result(worker, "ahead")["timing"]["queue_ms"] == 0


def test_a_failed_batch_still_counts_its_inference_time_in_the_statistics(worker, monkeypatch):
    ticks = iter([100.0, 100.25])
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    monkeypatch.setattr(worker.classifier, "probabilities", lambda images: 1 / 0)
    processed(worker, [message(worker.client, "r1")])
    stats = worker_stats.decode_worker_stats(worker.client.hgetall(KEYS.worker_stats))
    assert stats.inference_seconds.sum == pytest.approx(0.25)


def test_expired_requests_are_counted_across_batches_and_a_batch_of_them_never_reaches_the_model(worker, caplog):
    processed(worker, [message(worker.client, "late1", deadline_in=-1)])
    processed(worker, [message(worker.client, "late2", deadline_in=-1)])
    assert worker.expired == 2
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]  # no empty batch was run


def test_the_heartbeat_announces_the_card_the_batch_size_and_the_engine(fake_redis):
    classifier = tiny_classifier()
    classifier.card = card = dataclasses.replace(classifier.card, sources={"arch": "the model file"})
    Worker(fake_redis, classifier, SETTINGS, worker_id="w1").heartbeat.beat()
    preprocessing = card.preprocessing
    assert ModelInfo.from_json(fake_redis.get(KEYS.model)) == ModelInfo(
        "tiny", "mean_colour", 3, preprocessing.input_size, preprocessing.resize_size, preprocessing.mean,
        preprocessing.std, "cpu", SETTINGS.batch_size, "torch", {"arch": "the model file"})


def test_a_partial_batch_waits_batch_wait_ms_for_more_then_goes(fake_redis):
    worker = Worker(fake_redis, tiny_classifier(), Settings(key_prefix="t", batch_size=8, batch_wait_ms=200),
                    worker_id="w1")
    fake_redis.lpush(KEYS.queue, message(worker.client, "alone"))
    serving = threading.Thread(target=worker.serve_once, daemon=True)
    started = time.monotonic()
    serving.start()
    serving.join(5)
    assert not serving.is_alive() and time.monotonic() - started >= 0.2
    assert result(worker, "alone")["timing"]["batch_size"] == 1


def test_a_retried_request_is_answered_and_leaves_no_processing_list_behind(worker):
    worker.client.lpush(KEYS.retry, message(worker.client, "r1"))
    worker.serve_once()
    assert result(worker, "r1")["success"] is True
    assert worker.client.keys("*processing*") == [] and worker.client.llen(KEYS.retry) == 0


def test_redis_errors_are_retried_after_a_delay_that_doubles_up_to_5_s_and_starts_over_after_a_success(worker):
    outcomes = ["fail"] * 7 + ["ok", "fail", "last"]
    waits = []

    class Stop:
        def is_set(self):
            return not outcomes

        def wait(self, seconds):
            waits.append(seconds)

    def step():
        outcome = outcomes.pop(0)
        if outcome == "fail":
            raise redis.ConnectionError("connection refused")

    retry_on_redis_errors(step, Stop(), worker_id="w1")
    assert waits == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 0.2])


def test_the_heartbeat_thread_reaps_dead_workers_with_the_configured_timeout_and_attempts(fake_redis):
    settings = Settings(key_prefix="t", worker_timeout=5.0, max_attempts=2)
    worker = Worker(fake_redis, tiny_classifier(), settings, worker_id="w1")
    pixels = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    fake_redis.zadd(KEYS.workers, {"dead": time.time() - 6})
    fake_redis.hset(KEYS.attempts, "poison", 1)
    for job_id in ("poison", "fine"):
        held = InferenceRequest(job_id, pixels, time.time(), time.time() + 60, 5)
        fake_redis.lpush(KEYS.processing("dead"), stored(fake_redis, KEYS, held))
    worker.heartbeat.start(threading.Event())
    try:
        for _ in range(100):
            if fake_redis.exists(KEYS.result("poison")):
                break
            time.sleep(0.05)
    finally:
        worker.heartbeat.end()
    assert result(worker, "poison")["error"]["code"] == "attempts_exhausted"  # its second attempt: MAX_ATTEMPTS=2
    assert 0 < fake_redis.pttl(KEYS.result("poison")) <= protocol.RESULT_TTL_SECONDS * 1000
    assert [protocol.decode_message(m).job_id for m in fake_redis.lrange(KEYS.retry, 0, -1)] == ["fine"]


def test_a_worker_stopped_before_its_first_heartbeat_stops():
    """Redis unreachable from the start: the worker waits for Redis's clock, but not past a stop."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the probe is closed
    unreachable = redis.Redis(port=port, retry=Retry(NoBackoff(), 0))  # fails at once, not after redis-py's retries
    worker = Worker(unreachable, tiny_classifier(), SETTINGS, worker_id="w1")
    stop = threading.Event()
    finished = []
    thread = threading.Thread(target=lambda: finished.append(worker.run(stop)), daemon=True)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive() and not worker.heartbeat.first_beat.is_set()
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and finished == [True]


def test_a_card_name_that_fails_model_names_rule_is_refused_unless_model_name_is_set(fake_redis):
    """The served name goes into every Redis key and URL of the model: a card's name is checked like MODEL_NAME."""
    odd = tiny_classifier()
    odd.card = dataclasses.replace(odd.card, name="odd/name}x")
    with pytest.raises(ConfigError, match=r"model card's name='odd/name\}x'.*set MODEL_NAME"):
        Worker(fake_redis, odd, Settings(key_prefix="t"))
    assert Worker(fake_redis, odd, Settings(key_prefix="t", model_name="tiny")).keys.tag == "{t:tiny@1}"


def test_an_image_whose_pixels_are_gone_gets_its_own_error_and_the_batch_is_served(worker):
    gone = message(worker.client, "gone")
    worker.client.delete(KEYS.pixels("gone"))  # expired: its deadline long past, or answered by another worker
    processed(worker, [gone, message(worker.client, "fine")])
    assert result(worker, "gone")["error"]["code"] == "image_missing"
    assert result(worker, "fine")["success"] is True
    assert worker.client.llen(KEYS.processing("w1")) == 0  # both handled; the worker serves on


def test_an_answer_deletes_its_pixels_and_a_repeated_delivery_never_hides_the_first_answer(worker):
    """A worker reaped while alive, and another that ran its messages again: the client reads the first answer."""
    first = message(worker.client, "twice")
    processed(worker, [first])
    assert not worker.client.exists(KEYS.pixels("twice"))
    processed(worker, [first])  # the repeated delivery finds no pixels
    assert [json.loads(a)["success"] for a in worker.client.lrange(KEYS.result("twice"), 0, -1)] == [True, False]
    assert json.loads(worker.client.lpop(KEYS.result("twice")))["success"] is True  # the end the API pops


def test_an_expired_requests_pixels_are_not_read_and_go_with_its_refusal(worker, monkeypatch):
    fetched = []
    monkeypatch.setattr(WorkerQueue, "fetch_pixels", lambda self, job_ids: fetched.extend(job_ids) or [])
    processed(worker, [message(worker.client, "late", deadline_in=-1)])
    assert fetched == [] and not worker.client.exists(KEYS.pixels("late"))
