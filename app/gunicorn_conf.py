"""gunicorn settings, derived from serving.config: `gunicorn -c python:app.gunicorn_conf 'app:create_app()'`."""

import ctypes
import os
import shutil
import tempfile
from pathlib import Path

from serving.config import Settings

_settings = Settings.from_env()


def _tune_malloc_for_uploads() -> None:
    """Decoded images (tens to hundreds of MB, allocated by Pillow in 16 MB blocks) go straight to mmap and back;
    request bodies (under 1 MB) reuse memory the process already has.

    glibc raises its mmap threshold after the first large free, after which such blocks come from per-thread
    arenas that keep their memory: a process whose threads each decoded one large upload stays at the sum of
    their peaks, well past DECODE_PIXEL_BUDGET. A fixed threshold disables that. It also fixes the trim
    threshold, at 128 KB unless set: every freed body was handed back to the kernel and the next one faulted
    its pages in afresh, about 750 page faults and 0.7 ms of system CPU per request (docs/performance.md,
    "Levers measured"). An arena keeps up to 8 MB free instead. Set here, in the master, so every forked API
    process inherits it.
    """
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
    libc = ctypes.CDLL(None)
    if hasattr(libc, "mallopt"):  # glibc only; musl (Alpine) returns large blocks to the system anyway
        libc.mallopt(M_MMAP_THRESHOLD, 1024 * 1024)
        libc.mallopt(M_TRIM_THRESHOLD, 8 * 1024 * 1024)


_tune_malloc_for_uploads()

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.api_processes
# Requests spend most of their life blocked on Redis, so threads, not processes, carry the concurrency.
worker_class = "gthread"
threads = _settings.api_threads
# How long an idle client connection stays open. nginx reuses its connections to the API (deploy/nginx/:
# upstream keepalive) and closes an idle one sooner than this, so it never sends a request down a connection
# gunicorn is closing at that moment (nginx does not resend a POST: the client would get a 502).
keepalive = 5
timeout = int(_settings.request_timeout) + 30
graceful_timeout = int(_settings.request_timeout) + 5  # lets in-flight requests finish on SIGTERM
accesslog = None  # the app logs one structured line per request itself (app/request_log.py)
loglevel = _settings.log_level.lower()
# gunicorn's control socket lives at one fixed path per user, so two servers would fight over it.
control_socket_disable = True

# prometheus_client's multiprocess mode: each API process writes its metrics to files in one directory and
# /metrics adds them up. prometheus_client picks the mode when it is first imported, so the directory is
# set here, in the master, before a worker process imports the app. Without one given, a fresh one per start.
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_own_metrics_dir = not os.environ.get(_MULTIPROC_ENV)
if _own_metrics_dir:
    os.environ[_MULTIPROC_ENV] = tempfile.mkdtemp(prefix="imgcls-metrics-")


def on_starting(server):
    """A given directory may hold an earlier run's files, whose counts would be added to this run's."""
    directory = Path(os.environ[_MULTIPROC_ENV])
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(os.environ[_MULTIPROC_ENV], ignore_errors=True)
