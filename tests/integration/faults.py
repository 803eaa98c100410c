"""Fault-injection helpers for the integration tests: finding a worker's id and freezing it mid-batch."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serving.fleet_scripts import model_ages
from serving.protocol import FleetKeys, Keys
from stack.processes import Stack
from tests.integration.client import post_image, wait_until
from tests.reference import Top3, matches


def keys_of(stack: Stack) -> Keys:
    """The keys of the one model version the stack's workers serve."""
    models = list(model_ages(stack.redis(), fleet=FleetKeys(stack.settings.key_prefix)))
    assert len(models) == 1, models
    return Keys(stack.settings.key_prefix, models[0])


def worker_id_of(stack: Stack, index: int) -> str:
    pid = stack.worker_processes[index].pid
    ids = [w.decode() for w in stack.redis().zrange(keys_of(stack).workers, 0, -1)]
    return next(w for w in ids if f"-{pid}-" in w)


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def freeze_while_holding_work(stack: Stack, index: int, timeout: float = 30) -> None:
    """SIGSTOP worker `index` at a moment when its processing list holds messages."""
    pid = stack.worker_processes[index].pid
    processing = keys_of(stack).processing(worker_id_of(stack, index))
    give_up_at = time.monotonic() + timeout
    while time.monotonic() < give_up_at:
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: process_state(pid) == "T", 5, 0.001, "worker stopped")
        if stack.redis().llen(processing) > 0:
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.002)
    raise AssertionError("the worker never held work")


def reaped_counts(stack: Stack, dead_worker_id: str) -> list[int]:
    """How many requests each live worker's log says it requeued from the dead one."""
    pattern = re.compile(rf"reaped dead worker={re.escape(dead_worker_id)} requeued=(\d+)")
    logs = [stack.log_path(f"worker{i}").read_text() for i in range(len(stack.worker_processes))]
    return [int(n) for log in logs for n in pattern.findall(log)]


def kill_while_holding_work(stack: Stack) -> None:
    freeze_while_holding_work(stack, 0)
    stack.worker_processes[0].kill()


def every_request_answered_despite(stack: Stack, fault: Callable[[Stack], None],
                                   images_and_answers: tuple[list[bytes], list[Top3]], requests: int = 100) -> None:
    """`requests` concurrent requests of distinct images, `fault(stack)` on worker 0 while they are served: each
    is answered 200 with its own image's answer, and another worker's reaper recovered worker 0's batch."""
    images, expected = images_and_answers
    victim = worker_id_of(stack, 0)
    with ThreadPoolExecutor(max_workers=50) as pool:
        futures = [pool.submit(post_image, stack.url, images[i % len(images)]) for i in range(requests)]
        fault(stack)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * requests, [r.text for r in responses if not r.ok]
    assert all(matches(r.json()["predictions"], expected[i % len(images)]) for i, r in enumerate(responses))
    assert sum(reaped_counts(stack, victim)) >= 1  # its batch really was recovered, not just never taken
