"""Beyond one machine: a Sentinel-watched master that fails over, a Redis Cluster, and hosts of their own.

Real servers on loopback (tests/integration/redis_topologies.py); the service reaches them by REDIS_URL alone.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import redis

from serving import protocol
from serving.preprocess import prepare
from serving.protocol import InferenceRequest, ModelInfo
from stack.processes import Stack
from tests.images import photo_bytes
from tests.integration.client import ClosedLoopClients, post_image, wait_until
from tests.integration.conftest import DISTINCT_IMAGES, stack_settings
from tests.integration.faults import (
    every_request_answered_despite,
    freeze_while_holding_work,
    keys_of,
    kill_while_holding_work,
    worker_id_of,
)
from tests.integration.hosts import Host, network
from tests.integration.redis_topologies import RedisProcesses, cluster_deployment, role, sentinel_deployment
from tests.integration.standins import SlowClassifier
from tests.model_files import save_classic


def test_a_sentinel_failover_under_load_is_503_for_moments_then_200_with_nothing_restarted(tmp_path):
    with sentinel_deployment(tmp_path) as (url, servers, master, replica):
        settings = stack_settings(redis_url=url)
        with Stack(settings, workers=1, private_redis=False, log_dir=tmp_path / "logs") as stack:
            pids = [stack.api_process.pid, *(p.pid for p in stack.worker_processes)]
            with ClosedLoopClients(stack.url, photo_bytes("coffee.png")) as clients:
                wait_until(lambda: clients.answered_since(0).count(200) >= 20, 30, what="20 answers before")
                servers.processes[master].kill()
                killed_at = time.monotonic()
                wait_until(lambda: role(replica) == "master", 30, 0.1, "the replica promoted")
                promoted_at = time.monotonic()
                wait_until(lambda: clients.answered_since(promoted_at + 2).count(200) >= 20, 30,
                           what="20 answers after the failover")
            statuses = [outcome.status for outcome in clients.outcomes]
            errors = {outcome.body["error"]["code"] for outcome in clients.outcomes if outcome.status != 200}
            assert set(statuses) <= {200, 503} and errors <= {"redis_unavailable"}, (set(statuses), errors)
            assert set(clients.answered_since(promoted_at + 2)) == {200}  # once promoted, every request served
            assert all(outcome.body["predictions"][0]["label"] == "espresso"
                       for outcome in clients.outcomes if outcome.status == 200)
            assert [stack.api_process.pid, *(p.pid for p in stack.worker_processes)] == pids
            assert all(p.poll() is None for p in [stack.api_process, *stack.worker_processes])
    last_refused = max(outcome.sent_at for outcome in clients.outcomes if outcome.status != 200)
    print(f"failover: replica promoted {promoted_at - killed_at:.1f}s after the master's kill, last 503 sent "
          f"{last_refused - killed_at:.1f}s after it; {statuses.count(503)} of {len(statuses)} requests 503")


def test_on_a_redis_cluster_every_request_is_answered_even_when_a_worker_dies_mid_batch(tmp_path,
                                                                                        images_and_answers):
    with cluster_deployment(tmp_path) as (url, servers, ports):
        settings = stack_settings(redis_url=url, request_timeout=30, worker_timeout=3)
        with Stack(settings, workers=2, private_redis=False, log_dir=tmp_path / "logs") as stack:
            every_request_answered_despite(stack, kill_while_holding_work, images_and_answers)  # reaped on the cluster
            logs = "".join(path.read_text() for path in (tmp_path / "logs").glob("*.log"))
            assert "CROSSSLOT" not in logs and "Traceback" not in logs
            # Every key of the queue sits on the one node that owns its hash tag's slot.
            keys = keys_of(stack)
            client = stack.redis()
            owner = client.get_node_from_key(keys.queue)
            assert client.get_node_from_key(keys.workers) == owner == client.get_node_from_key(keys.result("x"))
            assert client.exists(keys.workers) and client.exists(keys.worker_stats)


def test_on_a_redis_cluster_a_take_whose_reply_comes_late_is_answered_not_stranded(tmp_path):
    """The node holding the queue sleeps (DEBUG SLEEP) right after a push woke the idle worker's blocking wait
    (BLPOP on the wake list), longer than the worker's read timeout: the worker meets the Redis error, and the
    message is served once, nothing left in a list.

    The wait moves no message (the take that follows is one script, TAKE, whose own late reply is in
    test_no_blind_retries.py): redis-py's cluster client, left to itself, would send the wait again on the
    timeout, which costs a heartbeat period, nothing more. (A blocking take would strand what it moved in a
    live worker's processing list, which no reaper empties.)
    """
    # A tiny model at 32 x 32 pixels, so that the push and the sleep fit in the one read Redis makes of them:
    # the reply to the BLPOP it wakes is written only after the sleep (a large message is read in several
    # turns of Redis's event loop, and the reply may leave in between).
    model_path = save_classic(SlowClassifier(seconds=0).eval(), tmp_path / "tiny.pth")
    with cluster_deployment(tmp_path) as (url, servers, ports):
        # The worker reads for at most a heartbeat period plus REDIS_TIMEOUT: 1 s. The sleep lasts longer, yet
        # less than the cluster's node timeout (2 s), so no node is taken for failed.
        settings = stack_settings(redis_url=url, model_path=str(model_path), model_trusted=True, backend="torch",
                                  input_size=32, resize_size=32, worker_timeout=2.5, redis_timeout=0.5,
                                  request_timeout=30)
        sleep_seconds = settings.heartbeat_seconds + settings.redis_timeout + 0.5
        with Stack(settings, workers=1, private_redis=False, log_dir=tmp_path / "logs") as stack:
            keys, worker = keys_of(stack), worker_id_of(stack, 0)
            client = stack.redis()
            owner = client.get_node_from_key(keys.queue)
            node = redis.Redis(owner.host, owner.port, socket_timeout=30)
            wait_until(lambda: any(c["cmd"] == "blpop" and "b" in c["flags"] for c in node.client_list()), 10, 0.001,
                       "the worker blocked on the wake list")
            job_id = "late-reply"
            model = ModelInfo.from_json(client.get(keys.model))
            pixels = prepare(photo_bytes("coffee.png"), model.resize_size, model.input_size, settings.max_image_pixels)
            now = protocol.redis_seconds(node.time())  # deadlines are by Redis's clock
            encoded = protocol.encode_request(InferenceRequest(job_id, pixels, now, now + 30, 5))
            # One packet: the push (ENQUEUE's: the pixels, the message, the wake list's element) wakes the BLPOP,
            # whose reply Redis writes only after the sleep that follows.
            pipe = node.pipeline(transaction=False)
            pipe.set(keys.pixels(job_id), encoded.pixels, px=encoded.expire_ms)
            pipe.lpush(keys.queue, encoded.message)
            pipe.lpush(keys.wake, 1)
            pipe.execute_command("DEBUG", "SLEEP", sleep_seconds)
            pipe.execute()
            answers = wait_until(lambda: client.lrange(keys.result(job_id), 0, -1), 20, 0.05, "the request answered")
            time.sleep(1)  # room for a second answer, were the message served twice
            answers = client.lrange(keys.result(job_id), 0, -1)
            assert len(answers) == 1 and protocol.decode_result(answers[0]).success
            assert client.llen(keys.processing(worker)) == 0 and client.llen(keys.queue) == 0  # nothing stranded
            assert "redis error" in stack.log_path("worker0").read_text()  # the late reply met the timeout
            assert stack.worker_processes[0].poll() is None


class StackOnHosts(Stack):
    """The stack with the API and each worker on hosts of their own (tests/integration/hosts.py)."""

    def __init__(self, settings, hosts: dict[str, Host], **options):
        super().__init__(settings, workers=2, private_redis=False, **options)
        self.host_of = {"api": hosts["api"], "worker0": hosts["w1"], "worker1": hosts["w2"]}

    def _require_free_port(self) -> None:
        pass  # the API's host is a fresh namespace: nothing listens there

    def _spawn(self, name, command, env=None):
        return super()._spawn(name, self.host_of[name].command(*command), env)


def test_a_worker_host_cut_off_under_load_loses_nothing_and_rejoins_without_a_restart(tmp_path, images_and_answers):
    images = images_and_answers[0]
    password = "across-hosts"
    with network(["redis", "api", "w1", "w2"]) as hosts:
        redis_host = hosts["redis"]
        servers = RedisProcesses(tmp_path)
        try:
            servers.start_server_on(redis_host, 6379, password)
            settings = stack_settings(host=hosts["api"].address, port=8000, request_timeout=30, worker_timeout=2,
                                      redis_url=f"redis://:{password}@{redis_host.address}:6379/0")
            with StackOnHosts(settings, hosts, log_dir=tmp_path / "logs") as stack:
                cut_off = worker_id_of(stack, 0)

                def cut_while_holding_work(stack: Stack) -> None:
                    # Frozen while it holds a batch, then cut and let go: the cut surely finds a batch in hand
                    # (a batch is answered within milliseconds, so polling for one and then cutting can miss it).
                    freeze_while_holding_work(stack, 0)
                    hosts["w1"].cut()
                    os.kill(stack.worker_processes[0].pid, signal.SIGCONT)

                every_request_answered_despite(stack, cut_while_holding_work, images_and_answers)

                batches_before = stack.log_path("worker0").read_text().count(" batch=")
                hosts["w1"].mend()
                wait_until(lambda: worker_id_of_or_none(stack, cut_off), 30, 0.1, "the cut-off worker back")
                with ThreadPoolExecutor(max_workers=40) as pool:
                    again = list(pool.map(lambda i: post_image(stack.url, images[i % DISTINCT_IMAGES]), range(80)))
                assert [r.status_code for r in again] == [200] * 80
                assert stack.log_path("worker0").read_text().count(" batch=") > batches_before  # serving again
                assert all(p.poll() is None for p in stack.worker_processes)  # the same process: no restart
                # Each request was answered once: a second answer would wait, unread, under its result key.
                assert list(stack.redis().scan_iter(keys_of(stack).result("*"))) == []
        finally:
            servers.stop_all()


def worker_id_of_or_none(stack: Stack, worker_id: str) -> bool:
    """Is `worker_id` registered and alive again?"""
    score = stack.redis().zscore(keys_of(stack).workers, worker_id)
    return score is not None and score >= stack.redis().time()[0] - stack.settings.worker_timeout
