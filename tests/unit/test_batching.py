"""Taking batches and publishing results: atomic, ordered, nothing taken twice or dropped."""

import threading
import time

import fakeredis
import numpy as np
import pytest
import redis

from app.queue_client import InferenceQueue, NoWorker, QueueFull
from serving import protocol
from serving.protocol import InferenceRequest, Keys
from worker.queue import WorkerQueue

KEYS = Keys("t", "tiny@1")


@pytest.fixture
def client():
    return fakeredis.FakeRedis()


def enqueue(client, *messages):
    for message in messages:
        client.lpush(KEYS.queue, message)  # the API's side: LPUSH, so the oldest is on the right


def take(client, worker="w1", max_size=4, wait=0.0):
    return WorkerQueue(client, KEYS, worker).take_batch(max_size, block_seconds=0.01, wait_for_more_seconds=wait)


def test_an_empty_queue_gives_an_empty_batch(client):
    assert take(client) == []


def test_takes_the_oldest_messages_up_to_the_batch_size(client):
    enqueue(client, b"m1", b"m2", b"m3", b"m4", b"m5", b"m6")
    assert take(client) == [b"m1", b"m2", b"m3", b"m4"]
    assert client.lrange(KEYS.queue, 0, -1) == [b"m6", b"m5"]


def test_taken_messages_wait_in_the_worker_processing_list(client):
    enqueue(client, b"m1", b"m2")
    batch = take(client)
    assert sorted(client.lrange(KEYS.processing("w1"), 0, -1)) == sorted(batch)


def test_two_workers_never_share_or_lose_a_message(client):
    messages = [f"m{i}".encode() for i in range(23)]
    enqueue(client, *messages)
    taken = []
    while batch := take(client, worker=f"w{len(taken) % 2}", max_size=3):
        taken.extend(batch)
    assert taken == messages


class OtherWorkerBetweenCommands:
    """A client after each of whose round trips another worker takes a batch: the worst interleaving, every time.

    A take must be atomic at each step for two workers to never share a message; a take that reads and then
    trims in two steps (LRANGE + LTRIM) hands the same messages to both here, deterministically.
    """

    def __init__(self, client, other_worker_takes):
        self._client, self._other_worker_takes = client, other_worker_takes

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if name == "pipeline":
            return lambda *args, **kwargs: OtherWorkerBetweenCommands(attribute(*args, **kwargs),
                                                                      self._other_worker_takes)
        in_pipeline = isinstance(self._client, redis.client.Pipeline)  # commands are only queued until execute()
        if not callable(attribute) or in_pipeline and name != "execute":
            return attribute

        def then_the_other_worker(*args, **kwargs):
            result = attribute(*args, **kwargs)
            self._other_worker_takes()
            return result
        return then_the_other_worker


def test_a_take_interleaved_with_another_workers_at_every_round_trip_shares_no_message(client):
    messages = [f"m{i}".encode() for i in range(40)]
    enqueue(client, *messages)
    taken_by_other: list[bytes] = []
    other_worker = lambda: taken_by_other.extend(take(client, worker="other", max_size=2))  # noqa: E731
    interleaved = OtherWorkerBetweenCommands(client, other_worker)
    taken = []
    while batch := take(interleaved, worker="w1", max_size=3):
        taken.extend(batch)
    assert sorted(taken + taken_by_other) == sorted(messages)  # each exactly once
    assert taken and taken_by_other


def test_waits_briefly_for_more_when_asked(client):
    enqueue(client, b"m1")
    threading.Timer(0.02, enqueue, (client, b"m2")).start()
    started = time.monotonic()
    assert take(client, wait=2.0, max_size=2) == [b"m1", b"m2"]
    assert time.monotonic() - started < 1.0  # a full batch stops the wait


def test_what_arrives_during_the_wait_never_overfills_the_batch(client):
    enqueue(client, b"m1")
    threading.Timer(0.02, client.lpush, (KEYS.queue, b"m2", b"m3", b"m4")).start()  # three at once
    assert take(client, wait=2.0, max_size=2) == [b"m1", b"m2"]
    assert client.lrange(KEYS.queue, 0, -1) == [b"m4", b"m3"]


def test_a_batch_is_held_oldest_first_until_published(client):
    """What a worker serves again after a Redis error is its batch, in the order it was taken."""
    enqueue(client, b"m1", b"m2", b"m3")
    batch = take(client)
    assert WorkerQueue(client, KEYS, "w1").held_messages() == batch == [b"m1", b"m2", b"m3"]


def test_a_retried_message_is_taken_alone_oldest_first_into_the_workers_processing_list(client):
    client.lpush(KEYS.retry, b"r1", b"r2")  # RETURN_UNFINISHED's side: LPUSH, so the oldest is on the right
    assert WorkerQueue(client, KEYS, "w1").take_retry() == [b"r1"]
    assert client.lrange(KEYS.processing("w1"), 0, -1) == [b"r1"] and client.lrange(KEYS.retry, 0, -1) == [b"r2"]
    queue = WorkerQueue(client, KEYS, "w1")
    assert queue.take_retry() == [b"r2"] and queue.take_retry() == []


def test_without_a_wait_a_partial_batch_goes_at_once(client):
    enqueue(client, b"m1")
    assert take(client, wait=0.0) == [b"m1"]


def job(job_id: str) -> bytes:
    """A message as far as publishing reads one: the job id it starts with."""
    return b'{"id": "' + job_id.encode() + b'"}'


def test_publishing_answers_each_request_and_clears_the_batch(client):
    enqueue(client, job("r1"), job("r2"))
    batch = take(client)
    WorkerQueue(client, KEYS, "w1").publish_results({"r1": b"one", "r2": b"two"}, batch)
    assert client.lrange(KEYS.result("r1"), 0, -1) == [b"one"]
    assert client.lrange(KEYS.result("r2"), 0, -1) == [b"two"]
    assert 0 < client.pttl(KEYS.result("r1")) <= protocol.RESULT_TTL_SECONDS * 1000  # unread answers expire
    assert not client.exists(KEYS.processing("w1"))


def test_publishing_removes_only_the_messages_it_handled(client):
    enqueue(client, job("r1"), job("r2"), job("r3"))
    first, second = take(client, max_size=1), take(client, max_size=2)
    WorkerQueue(client, KEYS, "w1").publish_results({"r2": b"two", "r3": b"three"}, second)
    assert client.lrange(KEYS.processing("w1"), 0, -1) == first


def test_a_batch_takes_the_high_lane_before_normal_before_low_and_low_first_reverses_it(fake_redis):
    keys = Keys("imgcls", "tiny@1")
    for lane in ("low", "normal", "high"):
        fake_redis.lpush(keys.lane(lane), f"{lane}-1", f"{lane}-2")
    queue = WorkerQueue(fake_redis, keys, "w1")
    assert queue.take_batch(3, 0.01, 0) == [b"high-1", b"high-2", b"normal-1"]
    assert queue.take_batch(2, 0.01, 0, low_first=True) == [b"low-1", b"low-2"]
    assert queue.take_batch(8, 0.01, 0) == [b"normal-2"]
    assert queue.take_batch(8, 0.01, 0) == [] and not fake_redis.exists(keys.wake)


def images(priority, *job_ids) -> list[InferenceRequest]:
    pixels = np.zeros((2, 2, 3), dtype=np.uint8)
    return [InferenceRequest(job_id, pixels, 1000.0, 1010.0, 5, priority=priority) for job_id in job_ids]


def lane_ids(client, priority) -> list[str]:
    return [protocol.decode_message(raw).job_id for raw in client.lrange(KEYS.lane(priority), 0, -1)]


def test_a_request_goes_whole_into_its_keys_lane_while_the_lanes_together_have_room_and_the_version_is_open(client):
    """ENQUEUE: every image of a request in its key's lane, all or none, MAX_QUEUE counting the three lanes
    together; nothing once the version's last worker has closed it (its model key gone), room or not. The pixels
    of a request queued stay until their deadline; a refused one's go at once."""
    queue = InferenceQueue(client, client, KEYS, max_queue=6)
    client.set(KEYS.model, b"announced")
    client.lpush(KEYS.lane("low"), b"l1")
    client.lpush(KEYS.lane("normal"), b"n1")
    queue.enqueue(images("high", "h1", "h2", "h3"))
    assert lane_ids(client, "high") == ["h3", "h2", "h1"] and client.llen(KEYS.wake) == 1
    assert client.get(KEYS.pixels("h1")) == bytes(12)
    assert 0 < client.pttl(KEYS.pixels("h1")) <= (10 + protocol.PIXELS_GRACE_SECONDS) * 1000
    with pytest.raises(QueueFull):
        queue.enqueue(images("low", "x1", "x2"))  # 5 queued across the lanes, 2 more would pass 6: none goes
    assert client.lrange(KEYS.lane("low"), 0, -1) == [b"l1"]
    assert not client.exists(KEYS.pixels("x1"), KEYS.pixels("x2"))
    queue.enqueue(images("low", "l2"))  # exactly 6
    assert [client.llen(lane) for lane in KEYS.lanes] == [3, 1, 2] and client.llen(KEYS.wake) == 1
    client.delete(KEYS.lane("high"), KEYS.wake)
    client.delete(KEYS.model)  # what STOPPING does when the version's last worker stops
    with pytest.raises(NoWorker):
        queue.enqueue(images("normal", "n2"))
    assert [client.llen(lane) for lane in KEYS.lanes] == [0, 1, 2] and not client.exists(KEYS.wake)
    assert not client.exists(KEYS.pixels("n2"))


def test_a_worker_answers_only_what_it_still_holds_so_a_late_publish_adds_no_second_answer(client):
    """A worker taken for dead (a stall, a cut network whose packets reach Redis late) whose messages a reaper gave to
    another worker, which answered: its own publish, arriving after, answers nothing and deletes nothing."""
    enqueue(client, job("r1"))
    slow, other = WorkerQueue(client, KEYS, "slow"), WorkerQueue(client, KEYS, "other")
    batch = slow.take_batch(1, 0.01, 0)
    client.zadd(KEYS.workers, {"slow": 0})
    other.reap_dead_workers(worker_timeout=5, max_attempts=3)
    other.publish_results({"r1": b"from the other"}, other.take_retry())
    slow.publish_results({"r1": b"late"}, batch)
    assert client.lrange(KEYS.result("r1"), 0, -1) == [b"from the other"]
