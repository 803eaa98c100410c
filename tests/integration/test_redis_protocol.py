"""What only a real redis-server can show: takes that truly race, the commands Redis saw, whose clock counts.

The rest of the protocol's tests are unit tests on fakeredis (tests/unit/test_batching.py, test_recovery.py).
"""

import multiprocessing
import re
import threading
import time

import numpy as np
import redis

from app.queue_client import InferenceQueue
from serving import fleet_scripts, protocol
from serving.config import Settings
from serving.protocol import InferenceRequest, Keys
from stack.processes import Stack
from tests.unit.tiny_model import message, tiny_classifier
from worker.loop import Worker
from worker.queue import WorkerQueue

KEYS = Keys("t", "tiny@1")
TIMEOUT = 5.0
TRUE_TIME = time.time


def test_workers_taking_at_the_same_time_take_every_message_exactly_once(redis_stack):
    """Four worker processes race over one real Redis queue: no message is taken twice or lost.

    Processes, not threads, so the takes really overlap; a take that reads and then trims in two
    steps (LRANGE + LTRIM) hands the same messages to several of them.
    """
    client = redis_stack.redis()
    client.flushall()
    messages = [f"m{i}".encode() for i in range(4000)]
    for first in range(0, len(messages), 500):
        client.lpush(KEYS.queue, *messages[first:first + 500])
    with multiprocessing.get_context("fork").Pool(4) as pool:
        taken = pool.map(take_until_empty, [(redis_stack.settings.redis_url, f"w{n}") for n in range(4)])
    everything = [message for batch in taken for message in batch]
    assert sorted(everything) == sorted(messages)
    assert all(taken), "every worker took some"


def take_until_empty(arguments: tuple[str, str]) -> list[bytes]:
    url, worker = arguments
    client = redis.Redis.from_url(url)
    taken = []
    while batch := WorkerQueue(client, KEYS, worker).take_batch(8, block_seconds=0.05, wait_for_more_seconds=0):
        taken.extend(batch)
    return taken


def test_results_and_the_removal_of_their_messages_go_out_in_one_command(real_redis, redis_stack):
    """What Redis itself saw (MONITOR): a publish is one script, so its answers and removals are atomic."""
    real_redis.lpush(KEYS.queue, b'{"id": "r1"}', b'{"id": "r2"}')
    batch = WorkerQueue(real_redis, KEYS, "w1").take_batch(2, block_seconds=0.01, wait_for_more_seconds=0)
    with redis_stack.redis().monitor() as monitor:
        WorkerQueue(real_redis, KEYS, "w1").publish_results({"r1": b"one", "r2": b"two"}, batch)
        seen = []
        while not seen or seen[-1] != "EVAL":
            seen.append(monitor.next_command()["command"].split()[0].upper())
    assert seen[-1] == "EVAL" and "MULTI" not in seen
    assert [real_redis.lrange(KEYS.result(job), 0, -1) for job in ("r1", "r2")] == [[b"one"], [b"two"]]
    assert not real_redis.exists(KEYS.processing("w1"))


def test_heartbeats_and_the_reapers_cutoff_use_redis_time_not_the_hosts(real_redis, monkeypatch):
    """A worker host whose clock runs an hour ahead neither looks alive forever nor reaps live workers."""
    real_redis.zadd(KEYS.workers, {"dead": time.time() - TIMEOUT - 1})
    pixels = np.zeros((2, 2, 3), dtype=np.uint8)
    real_redis.lpush(KEYS.processing("dead"), protocol.encode_request(InferenceRequest("a", pixels, 0, 1, 5)).message)
    WorkerQueue(real_redis, KEYS, "live").announce(b"{}", "same-model", TIMEOUT)
    monkeypatch.setattr(time, "time", lambda: 3600 + TRUE_TIME())
    assert WorkerQueue(real_redis, KEYS, "reaper").reap_dead_workers(TIMEOUT, 3) == 1
    assert real_redis.zscore(KEYS.workers, "live") is not None and real_redis.llen(KEYS.retry) == 1
    pipe = real_redis.pipeline(transaction=False)
    fleet_scripts.queue_live_worker_count(pipe, keys=KEYS, worker_timeout=TIMEOUT)
    assert pipe.execute() == [1]


def test_run_survives_a_redis_outage_and_signs_off_when_stopped():
    """Redis stopped under a serving worker and started again: it retries with backoff, serves, re-registers."""
    outage = Stack(Settings(), workers=0)
    outage.start_redis()
    port = outage.redis_port()
    worker = Worker(outage.redis(), tiny_classifier(), Settings(key_prefix="t"), worker_id="w1")
    stop = threading.Event()
    finished = []
    thread = threading.Thread(target=lambda: finished.append(worker.run(stop)))
    try:
        thread.start()
        outage.stop_process(outage.redis_process)
        time.sleep(1.0)
        assert thread.is_alive()  # retrying with backoff, not dead
        outage.start_redis(port)
        outage.redis().lpush(KEYS.queue, message(outage.redis(), "after-outage"))
        answer = worker.client.blpop([KEYS.result("after-outage")], timeout=10)
        assert answer is not None and protocol.decode_result(answer[1]).success
        # The heartbeat thread backs off on its own schedule (up to 5 s), so it may come back after the serving loop.
        give_up_at = time.monotonic() + 10
        while worker.client.zscore(KEYS.workers, "w1") is None and time.monotonic() < give_up_at:
            time.sleep(0.05)
        assert worker.client.zscore(KEYS.workers, "w1") is not None  # a heartbeat re-registered it
        stop.set()
        thread.join(10)
        assert not thread.is_alive() and finished == [True]  # a clean stop, not a failed heartbeat
        assert worker.client.zscore(KEYS.workers, "w1") is None  # signed off
    finally:
        stop.set()
        thread.join(10)
        outage.stop()


def test_no_script_ever_sees_an_images_pixels(real_redis):
    """Every Lua script on a message's way (enqueue, take, reap, hand back, give up) gets arguments of a few hundred
    bytes while a 224x224 image travels: what Redis itself logged of each command (SLOWLOG, every command, each
    argument's length as Redis received it). The pixels go in one SET and come out in one MGET."""
    side = 224
    real_redis.set(KEYS.model, b"announced")
    real_redis.config_set("slowlog-log-slower-than", 0)
    real_redis.config_set("slowlog-max-len", 100_000)
    real_redis.slowlog_reset()
    try:
        pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
        now = time.time()
        api = InferenceQueue(real_redis, real_redis, KEYS, max_queue=10)
        api.enqueue([InferenceRequest(f"r{i}", pixels, now, now + 30, 5, priority="high") for i in range(3)])
        dead, live = WorkerQueue(real_redis, KEYS, "dead"), WorkerQueue(real_redis, KEYS, "live")
        real_redis.zadd(KEYS.workers, {"dead": 0})
        taken = dead.take_batch(3, block_seconds=0.01, wait_for_more_seconds=0)
        assert dead.fetch_pixels([protocol.decode_message(m).job_id for m in taken]) == [pixels.tobytes()] * 3
        assert live.reap_dead_workers(TIMEOUT, max_attempts=1) == 1  # all three exhausted, answered
        api.enqueue([InferenceRequest("r3", pixels, now, now + 30, 5)])
        live.take_batch(1, block_seconds=0.01, wait_for_more_seconds=0)
        live.sign_off(max_attempts=3)  # hands it back to its lane
        live.publish_results({"r3": b"answer"}, live.take_batch(1, 0.01, 0))
        logged = commands_logged(real_redis)
    finally:
        real_redis.config_set("slowlog-log-slower-than", 10_000)
    scripts = [arguments for arguments in logged if arguments[0].upper() in (b"EVAL", b"EVALSHA")]
    assert len(scripts) >= 6 and max(map(len, scripts)) < 30
    # Each script's arguments after its own text: keys, counts, messages.
    assert max(argument_length(argument) for arguments in scripts for argument in arguments[2:]) < 1000
    sets = [arguments for arguments in logged if arguments[0].upper() == b"SET"]
    assert [argument_length(arguments[2]) for arguments in sets] == [side * side * 3] * 4  # the log shows big ones


def commands_logged(client) -> list[list[bytes]]:
    """Every command in Redis's slow log, oldest first, as the list of its arguments (each cut to 128 bytes)."""
    raw = client.execute_command("SLOWLOG", "GET", -1)  # redis-py parses "SLOWLOG GET", not this spelling
    return [entry[3] for entry in reversed(raw)]


def argument_length(argument: bytes) -> int:
    """An argument's length as Redis received it: the log keeps 128 bytes of a longer one, and says how many more."""
    cut = re.fullmatch(rb"(.{128})\.\.\. \((\d+) more bytes\)", argument, re.DOTALL)
    return 128 + int(cut.group(2)) if cut else len(argument)
