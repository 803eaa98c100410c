"""A request waiting for its answer when Redis goes away: waited out when Redis keeps its data across a restart, an
error at once when it is known to keep nothing (its queued message is gone), never a wait for the whole outage.

The real Redis, stopped and started while clients post: tests/integration/test_reliability.py.
"""

from __future__ import annotations

import time

import fakeredis
import pytest
import redis

from app import queue_client
from app.queue_client import InferenceQueue, RedisPersistence
from serving import protocol
from serving.protocol import Failure, InferenceResult
from tests.unit.fake_api import KEYS

ANSWER = InferenceResult("job", error=Failure("inference_failed", "an answer; which one does not matter here"))


class RestartingRedis:
    """fakeredis whose blocking waits lose their connection `outage` times (Redis restarting) and whose INFO
    says `aof_enabled`, after failing `unreachable` times (while Redis is still down)."""

    def __init__(self, server: fakeredis.FakeRedis, aof_enabled: int | None, outage: int = 1, unreachable: int = 0):
        self.server, self.aof_enabled = server, aof_enabled
        self.outage, self.unreachable = outage, unreachable
        self.info_calls = 0

    def blpop(self, keys, timeout):
        if self.outage:
            self.outage -= 1
            raise redis.ConnectionError("Connection closed by server.")
        return self.server.blpop(keys, timeout=timeout)

    def info(self, section: str) -> dict:
        self.info_calls += 1
        if self.unreachable:
            self.unreachable -= 1
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        if self.aof_enabled is None:
            raise redis.ResponseError("NOPERM User api has no permissions to run the 'info' command")
        return {"aof_enabled": self.aof_enabled}

    def pipeline(self, transaction: bool = False):
        return self.server.pipeline(transaction=transaction)


def queue_on(client: RestartingRedis) -> InferenceQueue:
    return InferenceQueue(client, client, KEYS, max_queue=10)


def answered(fake_redis: fakeredis.FakeRedis) -> None:
    fake_redis.rpush(KEYS.result("job"), protocol.encode_result(ANSWER))


def test_a_request_waiting_when_a_redis_known_to_keep_nothing_goes_away_fails_at_once(fake_redis):
    client = RestartingRedis(fake_redis, aof_enabled=0)
    queue = queue_on(client)
    queue.persistence.read_if_stale()  # as every admission does
    client.unreachable = 1000  # down for good, as far as the wait goes
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        queue.await_results(["job"], deadline=time.time() + 30)
    assert time.monotonic() - started < 1  # not the deadline's 30 s: its message went with that Redis
    assert client.info_calls == 1  # the admission's reading; Redis was not asked again


def test_a_request_waiting_when_a_redis_that_keeps_its_data_restarts_gets_its_answer(fake_redis):
    client = RestartingRedis(fake_redis, aof_enabled=1)
    queue = queue_on(client)
    queue.persistence.read_if_stale()
    client.unreachable = 2  # the restart: Redis refuses connections twice, then answers with its data
    answered(fake_redis)
    assert queue.await_results(["job"], deadline=time.time() + 30) == {"job": ANSWER}
    assert client.info_calls == 4  # the admission's, the two refused, the one that found the data kept


def test_unknown_persistence_is_asked_of_the_redis_that_comes_back_and_waited_out_if_it_kept_its_data(fake_redis):
    """Unknown: the request began before any reading."""
    client = RestartingRedis(fake_redis, aof_enabled=1, unreachable=2)
    answered(fake_redis)
    assert queue_on(client).await_results(["job"], deadline=time.time() + 30) == {"job": ANSWER}
    assert client.info_calls == 3  # two refused, then the one that found the data kept


def test_unknown_persistence_is_asked_of_the_redis_that_comes_back_and_an_error_if_it_kept_nothing(fake_redis):
    client = RestartingRedis(fake_redis, aof_enabled=0, unreachable=2)
    answered(fake_redis)  # in a Redis that restarts empty it would be gone; the verdict comes from INFO alone
    with pytest.raises(redis.ConnectionError):
        queue_on(client).await_results(["job"], deadline=time.time() + 30)
    assert client.info_calls == 3


def test_a_client_that_may_not_run_info_never_waits_for_redis_to_come_back(fake_redis):
    client = RestartingRedis(fake_redis, aof_enabled=None)
    queue = queue_on(client)
    queue.persistence.read_if_stale()
    assert queue.persistence.read() is None and not queue.persistence.keeps_nothing()
    answered(fake_redis)
    with pytest.raises(redis.ConnectionError):
        queue.await_results(["job"], deadline=time.time() + 30)


def test_persistence_is_read_at_most_every_thirty_seconds(fake_redis, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(queue_client.time, "monotonic", lambda: now[0])
    client = RestartingRedis(fake_redis, aof_enabled=0)
    persistence = RedisPersistence(client)
    for step in (0, 10, 19.9):  # three admissions within 30 s: one reading
        now[0] += step
        persistence.read_if_stale()
    assert client.info_calls == 1 and persistence.keeps_nothing()
    client.aof_enabled = 1  # CONFIG SET appendonly yes
    now[0] += 0.1
    persistence.read_if_stale()
    assert client.info_calls == 2 and not persistence.keeps_nothing()
