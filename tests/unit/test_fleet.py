"""The fleet's snapshot: one registry read at a time, its outcome shared, no request waiting behind another's.

A real hung Redis under real gunicorn: tests/integration/test_unavailable.py.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import fakeredis
import pytest
import redis

from app.fleet import Fleet
from app.queue_client import NoWorker
from serving import fleet_scripts
from serving.protocol import FleetKeys, Keys, ModelInfo

REDIS_TIMEOUT = 0.5
CALLERS = 16


class SlowRegistry:
    """fakeredis whose registry read (MODEL_AGES) takes `seconds`, then answers or, with `fails`, times out."""

    def __init__(self, seconds: float, fails: bool = False):
        self.redis = fakeredis.FakeRedis()
        fleet_scripts.register_model(self.redis, fleet=FleetKeys("t"), model_id="tiny@1", worker_timeout=60)
        self.seconds, self.fails = seconds, fails
        self.reads = 0

    def eval(self, *args):
        self.reads += 1
        time.sleep(self.seconds)
        if self.fails:
            raise redis.TimeoutError("Timeout reading from socket")
        return self.redis.eval(*args)

    def pipeline(self, *args, **kwargs):
        return self.redis.pipeline(*args, **kwargs)


def fleet_on(client) -> Fleet:
    return Fleet(client, client, "t", max_queue=10, worker_timeout=10, default_model="")


def snapshot_outcomes(fleet: Fleet) -> list[tuple[object, float]]:
    """CALLERS threads asking for a fresh snapshot at once: each one's snapshot or error, and when it came."""
    start = threading.Barrier(CALLERS)

    def ask(_):
        start.wait()
        started = time.monotonic()
        try:
            outcome = fleet.snapshot(fresh=True)
        except Exception as exc:
            outcome = exc
        return outcome, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=CALLERS) as pool:
        return list(pool.map(ask, range(CALLERS)))


def test_concurrent_requests_share_one_read_of_the_registry():
    client = SlowRegistry(seconds=0.2)
    outcomes = snapshot_outcomes(fleet_on(client))
    assert client.reads == 1
    assert all(snapshot.versions == {"tiny": ["1"]} for snapshot, _ in outcomes)


def test_a_read_that_times_out_is_every_waiting_requests_error_at_once_not_one_timeout_each():
    client = SlowRegistry(seconds=REDIS_TIMEOUT, fails=True)
    outcomes = snapshot_outcomes(fleet_on(client))
    assert client.reads == 1
    assert all(isinstance(error, redis.RedisError) for error, _ in outcomes)  # each answered 503
    assert max(seconds for _, seconds in outcomes) < 2 * REDIS_TIMEOUT  # in turn, the last would wait 16 of them


def test_a_read_slow_for_want_of_cpu_not_of_redis_is_every_waiting_requests_snapshot_not_a_503():
    """Redis answered each round trip in time; the reading thread itself was slow to run (a large PNG decoding
    in its process holds the GIL for seconds under load). Waiting requests have the read's outcome, not a
    clock of their own that would blame Redis: a timeout is Redis's socket timeout, in the reader's round trip."""
    client = SlowRegistry(seconds=4 * REDIS_TIMEOUT)
    outcomes = snapshot_outcomes(fleet_on(client))
    assert client.reads == 1
    assert [snapshot.versions for snapshot, _ in outcomes] == [{"tiny": ["1"]}] * CALLERS


def test_a_failed_read_is_not_remembered_the_next_request_reads_again():
    client = SlowRegistry(seconds=0, fails=True)
    fleet = fleet_on(client)
    for _ in range(2):
        with pytest.raises(redis.TimeoutError):
            fleet.snapshot()
    client.fails = False
    assert fleet.snapshot().versions == {"tiny": ["1"]} and client.reads == 3


def test_a_routed_version_closed_since_the_last_read_sends_the_request_to_a_live_one_not_a_503():
    """Each API process reads the registry at most once a REFRESH_SECONDS: between two reads the routed version's last
    worker may leave (its model key goes, the registry retires it). Its admission says so; the request is chosen for
    again from a fresh read and served by the version still live. A request pinned to the closed version is not."""
    client = fakeredis.FakeRedis()
    fleet_keys = FleetKeys("t")
    for version in ("1", "2"):
        keys = Keys("t", f"tiny@{version}")
        client.set(keys.model, ModelInfo("tiny", "tiny", 3, 224, 256, (0.5,) * 3, (0.5,) * 3, "cpu", 8).to_json())
        fleet_scripts.register_model(client, fleet=fleet_keys, model_id=keys.model_id, worker_timeout=10)
    client.hset(fleet_keys.routes("tiny"), mapping={"1": 0, "2": 100})
    fleet = fleet_on(client)
    assert fleet.admitted("tiny", None)[0].keys.model_id == "tiny@2"  # the snapshot that counts 2 live

    client.delete(Keys("t", "tiny@2").model)  # v2's last worker stops (STOPPING) and leaves (RETIRE_MODEL)
    fleet_scripts.retire_model(client, fleet=fleet_keys, model_id="tiny@2", worker_timeout=10)
    assert "2" in fleet.snapshot().live["tiny"]  # this process has not read the registry since
    queue, model = fleet.admitted("tiny", None)
    assert (queue.keys.model_id, model.name) == ("tiny@1", "tiny")
    with pytest.raises(NoWorker):
        fleet.admitted("tiny", "2")
