"""`make run` (python -m stack): starts everything, serves, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from serving.config import Settings
from stack.processes import REPO_ROOT, STOP_GRACE_SECONDS, Stack, free_port
from tests.images import CAT_LABELS, encode, photo_bytes
from tests.integration.client import post_image, wait_until
from tests.integration.standins import DiesOnWhite
from tests.model_files import save_classic


def descendants(pid: int) -> set[int]:
    found = set()
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found |= {int(child)} | descendants(int(child))
    return found


def start_launcher(port: int, **settings: str) -> subprocess.Popen:
    env = {**os.environ, "PORT": str(port), "INFERENCE_THREADS": "1"}
    env.pop("REDIS_URL", None)  # a private Redis, as for a user who sets nothing
    env.update(settings)
    return subprocess.Popen([sys.executable, "-m", "stack"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_line(launcher: subprocess.Popen, text: str, timeout: float = 120) -> str:
    give_up_at = time.monotonic() + timeout
    for line in launcher.stdout:
        if text in line:
            return line
        assert time.monotonic() < give_up_at, f"no {text!r} within {timeout}s"
    raise AssertionError(f"launcher exited ({launcher.wait()}) before printing {text!r}")


def next_line(launcher: subprocess.Popen, timeout: float = 10) -> str:
    """The launcher's next line of output; TimeoutError if it writes none within `timeout`."""
    reader = ThreadPoolExecutor(max_workers=1)
    try:
        return reader.submit(launcher.stdout.readline).result(timeout)
    finally:
        reader.shutdown(wait=False)  # a reader still waiting ends when the launcher does


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def worker_pids(launcher: subprocess.Popen) -> set[int]:
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    return {int(pid) for pid in children
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", b"worker"]}


def blocked_signals(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16)


def kill_a_worker_and_await_its_replacement(launcher: subprocess.Popen) -> int:
    """SIGKILL one worker of a running launcher; the pid of the worker it starts in its place, once ready."""
    before = worker_pids(launcher)
    os.kill(min(before), signal.SIGKILL)
    wait_for_line(launcher, "started a new worker")
    # Between fork and exec the new child still reads as `python -m stack` in /proc: wait for its exec.
    give_up_at = time.monotonic() + 30
    while not worker_pids(launcher) - before and time.monotonic() < give_up_at:
        time.sleep(0.05)
    [replacement] = worker_pids(launcher) - before
    wait_for_line(launcher, f"-{replacement}-")  # its id carries its pid: "worker=<host>-<pid>-... ready"
    return replacement


def assert_a_command_beside_it_reaches_its_redis_as_it_says(launcher: subprocess.Popen) -> None:
    """The private Redis's password is this run's own: the launcher says how another terminal gets its REDIS_URL.

    Called right after the "listening on" line, which the launcher prints together with this one."""
    export = next_line(launcher).split("with: ", 1)[-1].strip()
    assert export.startswith("export REDIS_URL="), export
    env = {name: value for name, value in os.environ.items() if name != "REDIS_URL"}
    beside = subprocess.run(f"{export} && {shlex.quote(sys.executable)} -m model_tools route efficientnet_lite0",
                            shell=True, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert beside.returncode == 0, beside.stderr
    assert "1: weight -, live" in beside.stdout


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_run_serves_and_every_process_ends_with_the_launcher_even_a_restarted_worker(stop_signal):
    """Ctrl-C or SIGTERM stops everything cleanly; a killed launcher's children notice on their own.

    A worker started after a crash hears stop signals too (it inherits no blocked signals), and every
    worker hears SIGTERM at once: none waits out a grace period, nor behind another's.
    """
    port = free_port()
    launcher = start_launcher(port)
    try:
        line = wait_for_line(launcher, "listening on")
        assert f"http://127.0.0.1:{port}" in line
        assert_a_command_beside_it_reaches_its_redis_as_it_says(launcher)
        assert len(descendants(launcher.pid)) >= 4  # redis-server, worker, gunicorn master and its workers
        response = post_image(f"http://127.0.0.1:{port}", photo_bytes("chelsea.png"), filename="chelsea.png",
                              timeout=30)
        assert response.json()["predictions"][0]["label"] in CAT_LABELS
        replacement = kill_a_worker_and_await_its_replacement(launcher)
        # glibc blocks every signal for the moment a thread is being created, and the worker starts threads as it
        # begins to serve: an inherited mask stays, that moment passes.
        wait_until(lambda: blocked_signals(replacement) == 0, 10, what="the replacement worker blocks no signals")
        if stop_signal == signal.SIGINT:  # SIGTERM to one worker retires it (a rollout's old version): not replaced
            [other] = worker_pids(launcher) - {replacement}
            os.kill(other, signal.SIGTERM)
            wait_for_line(launcher, "stopped on purpose (exit 0); not replaced")
            assert worker_pids(launcher) == {replacement}
        children = descendants(launcher.pid)
        started = time.monotonic()
        launcher.send_signal(stop_signal)
        if stop_signal == signal.SIGKILL:  # no chance to clean up: the children must notice on their own
            launcher.wait()
        else:
            output = launcher.communicate(timeout=STOP_GRACE_SECONDS * 2)[0]
            assert launcher.returncode == 0
            assert re.search(rf"worker=\S*-{replacement}-\S* stopped after", output), output
            assert "Redis is now ready to exit" not in output  # the private Redis logs to a file
            assert "stopping took: API" in output and "killed after" not in output, output  # none outwaited its grace
        # Without the launcher each child hears SIGTERM from the kernel (the parent-death signal) and stops on its own
        # well within a grace period, which is what a process that ignored it would take at least.
        while [pid for pid in children if alive(pid)] and time.monotonic() < started + STOP_GRACE_SECONDS:
            time.sleep(0.1)
        assert not [pid for pid in children if alive(pid)]
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_a_process_that_ignores_its_stop_signal_is_killed_after_the_grace_period_and_named():
    """What the launcher's "stopping took" line reports: the pids it had to kill, the others stopping at once."""
    ignores = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"
    stubborn = subprocess.Popen([sys.executable, "-c", ignores], stdout=subprocess.PIPE, text=True)
    stubborn.stdout.readline()  # its handler is set
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = time.monotonic()
    assert Stack.stop_processes([stubborn, polite], grace=1.0) == [stubborn.pid]
    assert 1.0 <= time.monotonic() - started
    assert stubborn.returncode == -signal.SIGKILL and polite.returncode == -signal.SIGTERM


def test_a_poison_image_fails_alone_and_the_launcher_keeps_serving(tmp_path):
    """An image that kills every worker it reaches: it is answered 500 after MAX_ATTEMPTS deaths, its batch-mates
    200, and `make run` restarts the workers (later each time) instead of stopping the service. Three attempts
    over two workers: one of them dies twice, and its second restart waits."""
    model = tmp_path / "dies_on_white.pth"
    network = DiesOnWhite().eval()
    save_classic(network, model)
    port = free_port()
    launcher = start_launcher(port, MODEL_PATH=str(model), MODEL_TRUSTED="1", BACKEND="torch", MEAN="0,0,0",
                              STD="1,1,1", WORKER_TIMEOUT="2", REQUEST_TIMEOUT="120", BATCH_SIZE="8",
                              MAX_ATTEMPTS="3")
    output: list[str] = []
    try:
        wait_for_line(launcher, "listening on")
        threading.Thread(target=lambda: output.extend(launcher.stdout), daemon=True).start()  # never a full pipe
        url = f"http://127.0.0.1:{port}"
        white = encode(Image.new("RGB", (64, 64), (255, 255, 255)), "PNG")
        others = [encode(Image.new("RGB", (64, 64), (40 * i, 255 - 30 * i, 90)), "PNG") for i in range(7)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(lambda image: post_image(url, image, timeout=150), [white, *others]))
        poisoned, *survivors = responses
        assert poisoned.status_code == 500 and poisoned.json()["error"]["code"] == "attempts_exhausted"
        assert [r.status_code for r in survivors] == [200] * 7
        assert launcher.poll() is None, "".join(output)
        assert post_image(url, others[0], timeout=60).status_code == 200  # still serving
        assert any("in 1s" in line for line in output)  # the second death in a row waited before its restart
    finally:
        launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=60)


def test_with_the_default_timings_a_poison_image_is_500_within_request_timeout(tmp_path):
    """The launcher sees each worker it started die and hands its messages back at once (not after
    WORKER_TIMEOUT): MAX_ATTEMPTS deaths, and the answer, come well within REQUEST_TIMEOUT, all as shipped."""
    model = tmp_path / "dies_on_white.pth"
    save_classic(DiesOnWhite().eval(), model)
    port = free_port()
    launcher = start_launcher(port, MODEL_PATH=str(model), MODEL_TRUSTED="1", BACKEND="torch", MEAN="0,0,0",
                              STD="1,1,1")
    output: list[str] = []
    try:
        wait_for_line(launcher, "listening on")
        threading.Thread(target=lambda: output.extend(launcher.stdout), daemon=True).start()  # never a full pipe
        white = encode(Image.new("RGB", (64, 64), (255, 255, 255)), "PNG")
        started = time.monotonic()
        poisoned = post_image(f"http://127.0.0.1:{port}", white, timeout=60)
        elapsed = time.monotonic() - started
        assert poisoned.status_code == 500 and poisoned.json()["error"]["code"] == "attempts_exhausted", \
            (poisoned.json(), "".join(output))
        assert elapsed < Settings().request_timeout, elapsed
        # The launcher logs each hand-back after it, so the second line may follow the client's answer.
        for handed_back in ("1 requeued, 0 answered", "0 requeued, 1 answered 500"):
            wait_until(lambda: any(f"handed back its unfinished requests: {handed_back}" in line for line in output),
                       10, what=f"the launcher's line '{handed_back}'")
        print(f"poison image answered 500 after {elapsed:.1f}s (REQUEST_TIMEOUT={Settings().request_timeout:g}s)")
    finally:
        launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=60)


def test_the_readmes_rollout_commands_reach_the_private_redis_make_run_prints():
    """Pasted beside `make run`, the README's rollout block reaches its private Redis: the block carries the
    `export REDIS_URL=...` line the launcher prints, in full."""
    block = readme_block("## Models and versions")
    [export] = [line for line in block if line.startswith("export REDIS_URL=")]
    routing = [line for line in block if line.split("#")[0].strip().endswith("model_tools route efficientnet_lite0")]
    launcher = start_launcher(free_port(), WORKERS="1")
    try:
        printed = wait_for_line(launcher, "export REDIS_URL=")
        printed = printed[printed.index("export REDIS_URL="):].strip()
        shape = r'export REDIS_URL="\$\(cat (\S+)\)"'
        assert re.fullmatch(shape, printed) and re.fullmatch(shape, export.split("#")[0].strip()), (printed, export)
        env = {name: value for name, value in os.environ.items() if name != "REDIS_URL"}
        pasted = subprocess.run(["bash", "-c", f"{printed}\n{routing[-1]}"], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert pasted.returncode == 0 and "  1: weight -, live" in pasted.stdout, pasted.stderr
    finally:
        launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=60)


def readme_block(heading: str) -> list[str]:
    """The lines of the first ```sh block under a README heading."""
    text = (REPO_ROOT / "README.md").read_text().split(heading + "\n", 1)[1]
    return text.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()


def test_a_worker_stopped_while_it_starts_is_retired_not_restarted():
    """SIGTERM to the worker the launcher started after a crash, while that one loads: it exits 0 at once, which
    the launcher takes for a stop on purpose, not for one more crash to restart."""
    launcher = start_launcher(free_port(), WORKERS="1")
    output: list[str] = []
    try:
        wait_for_line(launcher, "listening on")
        threading.Thread(target=lambda: output.extend(launcher.stdout), daemon=True).start()  # never a full pipe
        [crashed] = worker_pids(launcher)
        os.kill(crashed, signal.SIGKILL)
        [replacement] = wait_until(lambda: worker_pids(launcher) - {crashed}, 30, what="the replacement's exec")
        wait_until(lambda: any("loading model_path=" in line for line in output), 60, what="the replacement loading")
        os.kill(replacement, signal.SIGTERM)
        wait_until(lambda: any("worker0 stopped on purpose (exit 0); not replaced" in line for line in output), 30,
                   what="the launcher retiring it")
        time.sleep(2)  # a crashed worker's replacement would start at once, or 1 s later the second time
        assert worker_pids(launcher) == set()
        assert sum("started a new worker" in line for line in output) == 1, "".join(output)
        assert any("stopped by SIGTERM while starting" in line for line in output)
    finally:
        launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=60)


def test_a_port_in_use_is_said_at_once():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        launcher = start_launcher(port)
        output = launcher.communicate(timeout=30)[0]
    assert launcher.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in output and "listening on" not in output


def test_an_unreachable_redis_url_is_said_within_seconds_without_its_password():
    started = time.monotonic()
    launcher = start_launcher(free_port(), REDIS_URL=f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    output = launcher.communicate(timeout=30)[0]
    assert launcher.returncode == 1 and time.monotonic() - started < 15
    assert "Redis at redis://:***@127.0.0.1:" in output and "does not answer" in output
    assert "hunter2" not in output
