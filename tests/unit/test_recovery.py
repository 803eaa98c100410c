"""Recovering the work of dead workers (the Lua scripts run in fakeredis's Lua; a real server's clock in
tests/integration/test_redis_protocol.py)."""

import threading
import time

import numpy as np

from serving import protocol
from serving.protocol import InferenceRequest, Keys
from worker.queue import WorkerQueue

KEYS = Keys("t", "tiny@1")
TIMEOUT = 5.0
TRUE_TIME = time.time
DEADLINE = time.time() + 3600


def request(job_id, priority="normal") -> InferenceRequest:
    pixels = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    return InferenceRequest(job_id, pixels, 1000.25, DEADLINE, 5, priority=priority)


def encoded(r: InferenceRequest) -> bytes:
    return protocol.encode_request(r).message


def failed_before(client, job_id, times):
    """Record that workers died `times` times holding this job."""
    client.hset(KEYS.attempts, job_id, times)


def holding(client, worker_id, *requests, heartbeat_age=0.0):
    """Register a worker whose last heartbeat was heartbeat_age ago, holding these requests in order taken."""
    client.zadd(KEYS.workers, {worker_id: time.time() - heartbeat_age})
    for r in requests:
        client.lpush(KEYS.processing(worker_id), encoded(r))


def reaper(client) -> WorkerQueue:
    """A live worker's side of the queue, which reaps the others."""
    return WorkerQueue(client, KEYS, "reaper")


def reap(client, max_attempts=3):
    return reaper(client).reap_dead_workers(TIMEOUT, max_attempts)


def queued_ids(client, key=KEYS.queue):
    """A list's requests in the order workers will take them."""
    return [protocol.decode_message(raw).job_id for raw in reversed(client.lrange(key, 0, -1))]


def retried_ids(client):
    return queued_ids(client, KEYS.retry)


def test_a_dead_workers_requests_go_to_the_retry_list_in_order_with_an_attempt_counted(fake_redis):
    fake_redis.lpush(KEYS.queue, encoded(request("newcomer")))
    holding(fake_redis, "dead", request("a"), request("b"), heartbeat_age=TIMEOUT + 1)
    assert reap(fake_redis) == 1
    assert retried_ids(fake_redis) == ["a", "b"] and queued_ids(fake_redis) == ["newcomer"]
    assert fake_redis.hgetall(KEYS.attempts) == {b"a": b"1", b"b": b"1"}
    assert fake_redis.rpop(KEYS.retry) == encoded(request("a"))  # its bytes moved untouched
    assert fake_redis.zscore(KEYS.workers, "dead") is None
    assert not fake_redis.exists(KEYS.processing("dead"))


def test_a_live_worker_is_left_alone(fake_redis):
    holding(fake_redis, "busy", request("a"), heartbeat_age=TIMEOUT - 2)
    assert reap(fake_redis) == 0
    assert fake_redis.llen(KEYS.processing("busy")) == 1 and fake_redis.llen(KEYS.queue) == 0


def test_a_request_whose_workers_keep_dying_is_answered_with_an_error(fake_redis):
    failed_before(fake_redis, "poison", 2)
    holding(fake_redis, "dead", request("poison"), request("fine"), heartbeat_age=TIMEOUT + 1)
    reap(fake_redis, max_attempts=3)
    assert retried_ids(fake_redis) == ["fine"]
    assert fake_redis.hgetall(KEYS.attempts) == {b"fine": b"1"}  # the answered job's count is gone
    answer = protocol.decode_result(fake_redis.lpop(KEYS.result("poison")))
    assert answer.job_id == "poison" and not answer.success and answer.error.code == "attempts_exhausted"
    assert "died 3 times" in answer.error.message


def test_every_exhausted_request_is_answered_in_one_pass(fake_redis):
    for job_id in ("p1", "p2", "p3"):
        failed_before(fake_redis, job_id, 2)
    holding(fake_redis, "dead", request("p1"), request("p2"), request("p3"), heartbeat_age=TIMEOUT + 1)
    assert reaper(fake_redis).return_unfinished("dead", True, 3) == (0, 3)
    assert reaper(fake_redis).answer_exhausted(3) == 3
    assert all(fake_redis.exists(KEYS.result(job_id)) for job_id in ("p1", "p2", "p3"))
    assert not fake_redis.exists(KEYS.attempts)


def test_an_exhausted_answer_expires_if_nobody_reads_it(fake_redis):
    failed_before(fake_redis, "poison", 2)
    holding(fake_redis, "dead", request("poison"), heartbeat_age=TIMEOUT + 1)
    reap(fake_redis)
    assert 0 < fake_redis.pttl(KEYS.result("poison")) <= protocol.RESULT_TTL_SECONDS * 1000


def test_an_exhausted_request_is_answered_once_even_by_two_workers_and_after_its_reaper_died(fake_redis):
    """The script only sets the message aside; any worker's next pass answers it, and only one of them does."""
    failed_before(fake_redis, "poison", 2)
    holding(fake_redis, "dead", request("poison"), heartbeat_age=TIMEOUT + 1)
    assert reaper(fake_redis).return_unfinished("dead", True, 3) == (0, 1)  # its reaper dies right after this
    assert not fake_redis.exists(KEYS.result("poison"))
    assert reaper(fake_redis).answer_exhausted(3) == 1
    assert reaper(fake_redis).answer_exhausted(3) == 0  # a second worker finds nothing to answer
    assert fake_redis.llen(KEYS.result("poison")) == 1 and not fake_redis.exists(KEYS.exhausted)


def test_an_unreadable_message_goes_back_untouched_for_a_worker_to_answer(fake_redis):
    fake_redis.zadd(KEYS.workers, {"dead": time.time() - TIMEOUT - 1})
    fake_redis.lpush(KEYS.processing("dead"), b"\xffnot json")
    reap(fake_redis)
    assert fake_redis.lrange(KEYS.queue, 0, -1) == [b"\xffnot json"]


def test_reaping_twice_requeues_once(fake_redis):
    holding(fake_redis, "dead", request("a"), heartbeat_age=TIMEOUT + 1)
    first = reaper(fake_redis).return_unfinished("dead", True, 3)
    second = reaper(fake_redis).return_unfinished("dead", True, 3)
    assert first == (1, 0) and second == (0, 0)
    assert retried_ids(fake_redis) == ["a"]


def test_a_heartbeat_between_the_check_and_the_script_keeps_the_worker(fake_redis, monkeypatch):
    """The reaper finds a worker silent, the worker's heartbeat lands, then the script runs: nothing is taken."""
    holding(fake_redis, "slow", request("a"), heartbeat_age=TIMEOUT + 1)
    find_silent = WorkerQueue.silent_workers

    def silent_then_heartbeat(queue, worker_timeout):
        silent = find_silent(queue, worker_timeout)
        WorkerQueue(queue.client, queue.keys, "slow").announce(b"{}", "same-model", TIMEOUT)
        return silent

    monkeypatch.setattr(WorkerQueue, "silent_workers", silent_then_heartbeat)
    assert reap(fake_redis) == 0
    assert fake_redis.llen(KEYS.processing("slow")) == 1 and not fake_redis.exists(KEYS.queue, KEYS.retry)
    assert fake_redis.zscore(KEYS.workers, "slow") is not None


def test_one_pass_reaps_every_dead_worker_even_after_one_that_came_back(fake_redis, monkeypatch):
    holding(fake_redis, "slow", request("s"), heartbeat_age=TIMEOUT + 3)  # the oldest heartbeat: found first
    holding(fake_redis, "dead1", request("a"), heartbeat_age=TIMEOUT + 2)
    holding(fake_redis, "dead2", request("b"), heartbeat_age=TIMEOUT + 1)
    find_silent = WorkerQueue.silent_workers

    def silent_then_heartbeat(queue, worker_timeout):
        silent = find_silent(queue, worker_timeout)
        assert silent[0] == "slow"
        WorkerQueue(queue.client, queue.keys, "slow").announce(b"{}", "same-model", TIMEOUT)
        return silent

    monkeypatch.setattr(WorkerQueue, "silent_workers", silent_then_heartbeat)
    assert reap(fake_redis) == 2
    assert sorted(retried_ids(fake_redis)) == ["a", "b"] and fake_redis.llen(KEYS.processing("slow")) == 1


def test_a_stopping_worker_hands_back_fresh_requests_to_the_queue_and_retried_ones_to_the_retry_list(fake_redis):
    failed_before(fake_redis, "retried", 1)
    holding(fake_redis, "stopping", request("fresh"), request("retried"))
    assert reaper(fake_redis).return_unfinished("stopping", False, 3) == (2, 0)
    assert queued_ids(fake_redis) == ["fresh"] and retried_ids(fake_redis) == ["retried"]
    assert fake_redis.hgetall(KEYS.attempts) == {b"retried": b"1"}  # a clean stop counts no attempt


def test_a_stopping_worker_hands_back_each_fresh_request_to_its_own_lane(fake_redis):
    holding(fake_redis, "stopping", request("urgent", "high"), request("usual"), request("bulk", "low"))
    assert reaper(fake_redis).return_unfinished("stopping", False, 3) == (3, 0)
    assert queued_ids(fake_redis, KEYS.lane("high")) == ["urgent"]
    assert queued_ids(fake_redis, KEYS.lane("normal")) == ["usual"]
    assert queued_ids(fake_redis, KEYS.lane("low")) == ["bulk"]


def test_requests_handed_back_wake_an_idle_worker_at_once_not_at_its_next_heartbeat(fake_redis):
    """A worker blocked on the wake list (as idle workers are, for a heartbeat period) takes a handed-back request
    the moment it is back, from its own lane, as it would a new one."""
    idle = WorkerQueue(fake_redis, KEYS, "idle")
    taken = []
    waiting = threading.Thread(target=lambda: taken.extend(idle.take_batch(8, block_seconds=20,
                                                                           wait_for_more_seconds=0)))
    waiting.start()
    time.sleep(0.2)  # blocked on the wake list by now
    holding(fake_redis, "stopping", request("urgent", "high"))
    started = time.monotonic()
    reaper(fake_redis).return_unfinished("stopping", False, 3)
    waiting.join(25)
    assert [protocol.decode_message(raw).job_id for raw in taken] == ["urgent"]
    assert time.monotonic() - started < 5  # the wake, not the block's 20 s


def test_a_dead_workers_requests_leave_the_wake_list_its_element_for_an_idle_worker(fake_redis):
    """The retry list is served before the lanes by a worker that was woken: the wake stays while it holds any."""
    holding(fake_redis, "dead", request("a"), request("b"), heartbeat_age=TIMEOUT + 1)
    reap(fake_redis)
    assert fake_redis.lrange(KEYS.wake, 0, -1) == [b"1"]
    assert WorkerQueue(fake_redis, KEYS, "woken").take_batch(8, 0.01, 0) == []  # nothing in the lanes...
    assert fake_redis.exists(KEYS.wake)  # ...but the next idle worker still wakes, for the retry list
