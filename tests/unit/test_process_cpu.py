"""scripts.process_cpu: the CPU a process tree takes, measured from /proc on real processes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from scripts.process_cpu import CpuMeter, CpuUse, descendants_and_self

BURN = "while True: pass"
# A parent that only waits on a child that burns a core: the tree's CPU is the grandchild's.
PARENT_OF_A_BURNER = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {BURN!r}]).wait()"


@pytest.fixture
def started():
    processes = []

    def start(code: str) -> subprocess.Popen:
        processes.append(subprocess.Popen([sys.executable, "-c", code], start_new_session=True))
        return processes[-1]

    yield start
    for process in processes:
        subprocess.run(["pkill", "-KILL", "-s", str(process.pid)], check=False)
        process.wait()


def wait_for_tree(pid: int, size: int) -> None:
    give_up_at = time.monotonic() + 10
    while len(descendants_and_self(pid)) < size:
        assert time.monotonic() < give_up_at, "the child process never started"
        time.sleep(0.02)


def test_a_tree_counts_its_descendants_cpu_and_an_idle_process_counts_none(started):
    busy, idle = started(PARENT_OF_A_BURNER), started("import time; time.sleep(60)")
    wait_for_tree(busy.pid, 2)
    meter = CpuMeter({"busy": [busy.pid], "idle": [idle.pid]})
    time.sleep(1.0)
    use = meter.used()
    assert use.groups["busy"] > 0.2  # about 1 s on a quiet machine; the test suite's workers share the cores
    assert use.groups["idle"] < 0.05
    assert 0 < use.machine_busy <= 1 and use.seconds >= 1.0


def test_a_process_that_exits_during_the_measurement_counts_nothing_rather_than_less_than_nothing(started):
    short = started("import time\nstarted = time.process_time()\nwhile time.process_time() - started < 0.3: pass\n"
                    "time.sleep(0.5)")
    time.sleep(0.2)
    meter = CpuMeter({"short": [short.pid]})
    short.wait()
    assert meter.used().groups["short"] == 0.0


def test_cpu_per_image_divides_each_group_and_the_load_generator_by_the_images():
    use = CpuUse({"API": 2.0, "workers": 1.5}, own=0.25, machine_busy=0.9, seconds=10.0)
    assert use.per_unit_ms(500) == {"API": 4.0, "workers": 3.0, "load generator": 0.5}
    assert use.per_unit_ms(0) == {}
