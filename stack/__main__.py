"""`python -m stack` (what `make run` runs): start everything, serve until Ctrl-C, stop everything."""

from __future__ import annotations

import os
import signal
import sys

from serving.config import ConfigError, Settings
from stack.processes import Stack, StartupError

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


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
    """Sleep until a stop signal, or until a child dies (then stop the rest and fail)."""
    # Blocked signals queue up for sigwaitinfo instead of interrupting; children are already started,
    # so they do not inherit the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS | {signal.SIGCHLD})
    expected = [stack.redis_process, *stack.worker_processes, stack.api_process]
    expected = [p for p in expected if p is not None]
    while True:
        received = signal.sigwaitinfo(STOP_SIGNALS | {signal.SIGCHLD})
        if received.si_signo in STOP_SIGNALS:
            return 0
        dead = [p for p in expected if p.poll() is not None]
        if dead:
            names = ", ".join(f"{' '.join(p.args[:3])} (exit {p.returncode})" for p in dead)
            print(f"a process of the stack exited: {names}; stopping the rest", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
