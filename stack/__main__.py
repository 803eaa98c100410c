"""`python -m stack` (what `make run` runs): start everything, serve until Ctrl-C, stop everything."""

from __future__ import annotations

import os
import signal
import sys
import time

from serving.config import ConfigError, Settings
from stack.processes import Stack, StartupError

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_WINDOW_SECONDS = 60.0


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    private_redis = not os.environ.get("REDIS_URL")
    stack = Stack(settings, workers=settings.workers, private_redis=private_redis)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM during start-up unwinds like Ctrl-C
    try:
        with stack:
            redis_note = "private Redis" if private_redis else "Redis"
            print(f"listening on {stack.url} ({settings.workers} worker(s), {redis_note} at "
                  f"{stack.settings.redis_url}); Ctrl-C stops everything", flush=True)
            return _serve_until_stopped(stack)
    except StartupError as exc:
        print(f"start-up failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopped", flush=True)


def _serve_until_stopped(stack: Stack) -> int:
    """Sleep until a stop signal. A dead worker is replaced; a dead API or Redis stops everything."""
    # Blocked signals queue up for sigwaitinfo instead of interrupting; children are already started,
    # so they do not inherit the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS | {signal.SIGCHLD})
    restarts: list[float] = []
    while True:
        received = signal.sigwaitinfo(STOP_SIGNALS | {signal.SIGCHLD})
        if received.si_signo in STOP_SIGNALS:
            return 0
        essential = [p for p in (stack.redis_process, stack.api_process) if p is not None]
        if dead := [p for p in essential if p.poll() is not None]:
            names = ", ".join(f"{p.args[0] if p.args[0] != sys.executable else p.args[2]} (exit {p.returncode})"
                              for p in dead)
            print(f"{names} exited; stopping the rest", file=sys.stderr)
            return 1
        for index in range(len(stack.worker_processes)):
            if stack.restart_worker_if_dead(index):
                print(f"worker{index} died; started a new one (its unfinished requests are requeued)",
                      file=sys.stderr, flush=True)
                restarts.append(time.monotonic())
        restarts = [t for t in restarts if t > time.monotonic() - CRASH_LOOP_WINDOW_SECONDS]
        if len(restarts) > CRASH_LOOP_RESTARTS:
            print(f"workers died {len(restarts)} times within {CRASH_LOOP_WINDOW_SECONDS:.0f}s; "
                  "giving up (see the worker log above)", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
