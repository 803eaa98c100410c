"""The workers' batch statistics in Redis: what one batch adds, how they read back, and the loop's hook."""

import fakeredis
import pytest

from serving import worker_stats
from serving.config import Settings
from serving.protocol import Keys
from tests.unit.tiny_model import message, processed, tiny_classifier
from worker.loop import Worker
from worker.metrics import BatchStats

KEYS = Keys("t", "tiny@1")


def test_a_batch_adds_one_to_its_buckets_and_its_values_to_the_sums():
    assert worker_stats.batch_stats_increments(3, 0.02, expired=1) == {
        "expired": 1,
        "batch_size_le:4": 1, "batch_size_sum": 3,
        "inference_seconds_le:0.025": 1, "inference_seconds_sum": 0.02}


def test_a_batch_that_ran_nothing_adds_only_what_expired():
    assert worker_stats.batch_stats_increments(0, 0.0, expired=2) == {"expired": 2}
    assert worker_stats.batch_stats_increments(0, 0.0, expired=0) == {}


def test_values_beyond_the_last_bound_land_in_plus_inf():
    increments = worker_stats.batch_stats_increments(1000, 60.0, expired=0)
    assert increments["batch_size_le:+Inf"] == 1 and increments["inference_seconds_le:+Inf"] == 1


def test_stats_read_back_as_cumulative_histograms():
    client = fakeredis.FakeRedis()
    for size, seconds in [(1, 0.004), (3, 0.02), (8, 0.3)]:
        for field_name, amount in worker_stats.batch_stats_increments(size, seconds, expired=0).items():
            client.hincrbyfloat(KEYS.worker_stats, field_name, amount)
    stats = worker_stats.decode_worker_stats(client.hgetall(KEYS.worker_stats))
    assert stats.batches == 3 and stats.expired == 0
    assert dict(stats.batch_size.buckets) == {"1": 1, "2": 1, "4": 2, "8": 3, "16": 3, "32": 3, "64": 3, "128": 3,
                                              "+Inf": 3}
    assert stats.batch_size.sum == 12
    assert stats.inference_seconds.buckets[-1] == ("+Inf", 3)
    assert dict(stats.inference_seconds.buckets)["0.005"] == 1
    assert stats.inference_seconds.sum == pytest.approx(0.324)


def test_no_stats_yet_reads_as_zeros():
    stats = worker_stats.decode_worker_stats({})
    assert stats.batches == 0 and stats.batch_size.buckets[-1] == ("+Inf", 0) and stats.inference_seconds.sum == 0


def test_batch_stats_report_each_expired_request_once():
    client = fakeredis.FakeRedis()
    stats = BatchStats(client, KEYS)
    stats.record(2, 10.0, expired_total=1)
    stats.record(1, 10.0, expired_total=1)
    stats.record(0, 0.0, expired_total=4)
    totals = worker_stats.decode_worker_stats(client.hgetall(KEYS.worker_stats))
    assert totals.expired == 4 and totals.batches == 2 and totals.batch_size.sum == 3


def test_batch_stats_survive_a_redis_outage_and_report_the_expired_later():
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    stats = BatchStats(client, KEYS)
    server.connected = False
    stats.record(2, 10.0, expired_total=3)  # logged, not raised: the answers are already out
    server.connected = True
    stats.record(1, 10.0, expired_total=3)
    assert worker_stats.decode_worker_stats(client.hgetall(KEYS.worker_stats)).expired == 3


def test_the_worker_records_every_batch_it_serves(fake_redis):
    worker = Worker(fake_redis, tiny_classifier(), Settings(key_prefix="t"), worker_id="w1")
    processed(worker, [message(fake_redis, "a"), message(fake_redis, "b"), message(fake_redis, "late", deadline_in=-1)])
    stats = worker_stats.decode_worker_stats(fake_redis.hgetall(KEYS.worker_stats))
    assert stats.batches == 1 and stats.batch_size.sum == 2 and stats.expired == 1
    assert stats.inference_seconds.buckets[-1] == ("+Inf", 1) and stats.inference_seconds.sum > 0
