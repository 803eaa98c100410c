"""`python -m stack` (what `make run` runs): start everything, serve until Ctrl-C, stop everything."""

from __future__ import annotations

import os
import signal
import sys
import time

from serving.config import LAUNCHER, program_settings
from serving.redis_client import REDIS_ERRORS
from stack.processes import Stack, StartupError

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# Seconds before a dead worker's replacement starts, by how many times that worker died in the last
# CRASH_WINDOW_SECONDS: a worker that keeps dying (a poison image, a broken model file) is restarted
# ever more slowly, while the API and Redis, and with them the queue, stay up.
RESTART_DELAYS = (0, 1, 2, 4, 8, 15, 30)
CRASH_WINDOW_SECONDS = 60.0


def main() -> int:
    settings = program_settings("python -m stack", "Runs the whole service on this machine (what `make run` runs): "
                                "a private Redis unless REDIS_URL is set, WORKERS workers, and the API on HOST:PORT "
                                "(behind nginx with PROXY=nginx). Ctrl-C stops everything. The API and the workers "
                                "read their own settings from the same environment (`python -m worker --help`, "
                                "docs/configuration.md).", LAUNCHER, sys.argv[1:])
    private_redis = not os.environ.get("REDIS_URL")
    stack = Stack(settings, workers=settings.workers, private_redis=private_redis)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM during start-up unwinds like Ctrl-C
    try:
        if not private_redis:
            stack.require_redis()
        with stack:
            redis_note = "private Redis" if private_redis else "Redis"
            # Its password is this run's own: commands beside it read the whole URL from the file (next line).
            beside = (f"\ncommands beside this one (python -m model_tools route, python -m worker) reach its Redis "
                      f"with: export REDIS_URL=\"$(cat {stack.redis_url_file})\"" if private_redis else "")
            print(f"listening on {stack.url} ({settings.workers} worker(s), {redis_note} at "
                  f"{stack.settings.redis_url_redacted}); Ctrl-C stops everything{beside}", flush=True)
            return _serve_until_stopped(stack)
    except StartupError as exc:
        print(f"start-up failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopped", flush=True)


def _serve_until_stopped(stack: Stack) -> int:
    """Sleep until a stop signal. A dead worker is replaced, later each time it keeps dying, unless it exited 0
    (stopped on purpose: SIGTERM to one worker retires it); a dead API or Redis stops everything."""
    # Blocked signals queue up for sigtimedwait instead of interrupting; children unblock them (stack/processes.py).
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS | {signal.SIGCHLD})
    deaths: dict[int, list[float]] = {}  # worker index -> times it died within the crash window
    due: dict[int, float] = {}  # worker index -> when its replacement starts
    retired: set[int] = set()  # workers stopped on purpose (exit 0), e.g. the old version's in a rollout
    while True:
        wait = max(min(due.values()) - time.monotonic(), 0) if due else None
        received = signal.sigwaitinfo(STOP_SIGNALS | {signal.SIGCHLD}) if wait is None else \
            signal.sigtimedwait(STOP_SIGNALS | {signal.SIGCHLD}, wait)
        if received is not None and received.si_signo in STOP_SIGNALS:
            return 0
        essential = [p for p in (stack.redis_process, stack.api_process, stack.proxy_process) if p is not None]
        if dead := [p for p in essential if p.poll() is not None]:
            names = ", ".join(f"{p.args[0] if p.args[0] != sys.executable else p.args[2]} (exit {p.returncode})"
                              for p in dead)
            print(f"{names} exited; stopping the rest", file=sys.stderr)
            if stack.redis_process in dead:
                print(f"redis-server's log ends:\n{stack.redis_log_tail()}", file=sys.stderr)
            return 1
        now = time.monotonic()
        for index, process in enumerate(stack.worker_processes):
            if index in retired or index in due or process.poll() is None:
                continue
            if process.returncode == 0:  # it was told to stop (SIGTERM) and left cleanly: a rollout, not a crash
                retired.add(index)
                print(f"worker{index} stopped on purpose (exit 0); not replaced", file=sys.stderr, flush=True)
            else:
                deaths[index] = [t for t in deaths.get(index, []) if t > now - CRASH_WINDOW_SECONDS] + [now]
                delay = RESTART_DELAYS[min(len(deaths[index]), len(RESTART_DELAYS)) - 1]
                due[index] = now + delay
                print(f"worker{index} died (exit {process.returncode}, {len(deaths[index])} time(s) in "
                      f"{CRASH_WINDOW_SECONDS:.0f}s); {_hand_back(stack, process.pid)}; starting a new one"
                      + (f" in {delay}s" if delay else ""), file=sys.stderr, flush=True)
        for index in [index for index, at in due.items() if at <= now]:
            stack.restart_worker_if_dead(index)
            del due[index]
            print(f"started a new worker{index}", file=sys.stderr, flush=True)


def _hand_back(stack: Stack, pid: int) -> str:
    """Hand a dead worker's unfinished requests back at once (not after WORKER_TIMEOUT); what happened, for the log."""
    try:
        requeued, answered = stack.hand_back_work_of(pid)
    except REDIS_ERRORS as exc:
        return f"its unfinished requests wait for the reaper (Redis: {exc})"
    return f"handed back its unfinished requests: {requeued} requeued, {answered} answered 500 attempts_exhausted"


if __name__ == "__main__":
    sys.exit(main())
