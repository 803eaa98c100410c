"""Each peer's venv and server process: installed from PyPI once, started in a process group of its own, stopped
with the whole group (TorchServe's Java frontend forks Python workers; LitServe and BentoML fork workers too).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

INSTALL_TIMEOUT_SECONDS = 1800.0  # TorchServe's venv takes torch and torchvision: several GB from this disk
STOP_GRACE_SECONDS = 20.0


class PeerUnavailable(RuntimeError):
    """A peer could not be installed or started; the message says which and where its log is."""


def last_lines(path: Path, count: int = 15) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(lines[-count:])


def requirements_digest(requirements: Path) -> str:
    return hashlib.sha256(requirements.read_bytes()).hexdigest()


def ensure_venv(venv: Path, requirements: Path, python: str) -> Path:
    """The venv's python, after `pip install -r requirements` unless the venv already has exactly these."""
    marker = venv / "installed-requirements.sha256"
    if marker.exists() and marker.read_text() == requirements_digest(requirements):
        return venv / "bin" / "python"
    log = venv.with_suffix(".install.log")
    venv.parent.mkdir(parents=True, exist_ok=True)
    print(f"  installing {requirements.name} into {venv} (log: {log})", flush=True)
    with log.open("w") as out:
        for command in ([python, "-m", "venv", str(venv)],
                        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r", str(requirements)]):
            try:
                done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                raise PeerUnavailable(f"{' '.join(command[:4])} took over {INSTALL_TIMEOUT_SECONDS:.0f} s; "
                                      f"log: {log}") from None
            if done.returncode != 0:
                raise PeerUnavailable(f"{' '.join(command[:4])} failed (exit {done.returncode}); "
                                      f"log {log} ends:\n{last_lines(log)}")
    marker.write_text(requirements_digest(requirements))
    return venv / "bin" / "python"


@contextmanager
def server_process(command: list[str], cwd: Path, environment: dict[str, str], log: Path) -> Iterator[
        subprocess.Popen]:
    """Run `command` in a new session (its own process group) and stop the whole group on the way out."""
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **environment}, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield process
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to the process group, SIGKILL to what is left of it after `grace` seconds (workers may outlive
    their parent), and wait until none of it runs."""
    _signal_group(process.pid, signal.SIGTERM)
    give_up_at = time.monotonic() + grace
    while live_members(process.pid) and time.monotonic() < give_up_at:
        time.sleep(0.1)
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()
    killed_by = time.monotonic() + grace
    while live_members(process.pid) and time.monotonic() < killed_by:  # SIGKILL takes effect as each one dies
        time.sleep(0.05)


def live_members(group: int) -> list[int]:
    """The processes of a process group that have not exited. Zombies do not count: an orphan's new parent
    (here PID 1 of a container) may never reap it, and killpg(group, 0) would call the group alive forever."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except OSError:  # exited meanwhile
            continue
        if int(fields[2]) == group and fields[0] != "Z":  # fields: state, parent, process group, ...
            members.append(int(stat.parent.name))
    return members


def _signal_group(group: int, which: signal.Signals) -> None:
    try:
        os.killpg(group, which)
    except ProcessLookupError:  # the group has already gone
        pass
