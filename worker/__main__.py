"""`python -m worker`: load the configured model once and serve the queue until SIGTERM/SIGINT.

A stop signal that arrives while the worker starts (importing torch alone takes seconds here; loading,
exporting and warming up a large model, minutes) ends it at once, with exit code 0 and a log line: it has
taken no work yet, and a launcher that restarts workers which exit otherwise (`python -m stack`) must
not take a stop for a crash. So the signals are handled first, and the modules that import torch only
after that.

Serving an ONNX file needs no torch at all (requirements-worker-onnx.txt): torch is imported by the engines
of checkpoints and TorchScript files only, and by choose_device where it is installed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from model_files.card import model_fingerprint
from serving.config import LOG_FORMAT, WORKER, ConfigError, Settings, program_settings
from serving.protocol import MalformedModelInfo
from serving.redis_client import RedisClient, connect

if TYPE_CHECKING:
    from worker.inference import Classifier

log = logging.getLogger("worker")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StoppedWhileStarting(BaseException):
    """A stop signal before the worker serves, raised wherever start-up is.

    A BaseException, as KeyboardInterrupt is, so that no loader's `except Exception` swallows it; what
    start-up leaves behind is cleaned up on the way out (temporary export directories; the engine
    cache only ever renames a finished file into place).
    """


def main() -> int:
    settings = program_settings("python -m worker", "One batching worker: loads MODEL_PATH, then serves the queue "
                                "in REDIS_URL until SIGTERM or SIGINT, finishing the batch in hand.", WORKER,
                                sys.argv[1:])
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT)
    _on_stop_signals(_stop_starting)
    try:
        log.info("loading model_path=%s backend=%s device=%s", settings.model_path, settings.backend,
                 settings.device)
        classifier = load_classifier(settings)
        if classifier is None:
            return 2
        from worker.loop import Worker
        stop = threading.Event()
        _on_stop_signals(lambda *_: stop.set())  # from now on a stop finishes the batch in hand first
    except StoppedWhileStarting as exc:
        log.info("stopped by %s while starting; exiting before serving anything", exc)
        _exit_at_once()
    try:
        worker = Worker(redis_client(settings), classifier, settings,
                        fingerprint=model_fingerprint(classifier.card, Path(settings.model_path)))
    except (ConfigError, MalformedModelInfo) as exc:  # a card name or size the service cannot announce
        log.error("cannot serve the model: %s", exc)
        return 2
    if worker.run(stop):
        return 0
    return 2 if worker.heartbeat.refusal else 1  # 2: another model serves its name@version; restarting cannot help


def load_classifier(settings: Settings) -> Classifier | None:
    """The model on its engine, warmed up; None (said in the log) when it cannot be served."""
    # Here, not at the top: torch only once the stop signals are handled (the module docstring).
    from engines.base import EngineError
    from engines.choose import open_engine
    from model_files.card import ModelLoadError
    from worker.inference import Classifier, choose_device, limit_torch_threads

    limit_torch_threads(settings.compute_threads)
    try:
        device = choose_device(settings.device)
        classifier = Classifier(open_engine(settings, device), device)
        batch_seconds = classifier.warm_up(settings.batch_size)
    except (ModelLoadError, EngineError, RuntimeError) as exc:
        log.error("cannot serve the model: %s", exc)
        return None
    log.info("serving %s with backend=%s on %s; a batch of %d takes %.2fs", classifier.card.name,
             classifier.engine_name, device, settings.batch_size, batch_seconds)
    if 2 * batch_seconds > settings.request_timeout:
        # A request that arrives while a full batch computes waits for it, then runs in the next one.
        log.warning("REQUEST_TIMEOUT=%gs is shorter than two full batches of %d (%.1fs): when batches fill, "
                    "requests can get 504; lower BATCH_SIZE or raise REQUEST_TIMEOUT", settings.request_timeout,
                    settings.batch_size, 2 * batch_seconds)
    return classifier


def _exit_at_once() -> NoReturn:
    """Exit 0 without the interpreter's teardown, which with torch and the engines' libraries loaded takes
    seconds (2.6-3.1 s on this 2-core VM under load, 0.1-0.3 s without it): a worker stopped while starting
    has taken and announced nothing, so there is nothing to finish but the log."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _on_stop_signals(handler) -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


def _stop_starting(signum: int, frame) -> None:
    raise StoppedWhileStarting(signal.Signals(signum).name)


def redis_client(settings: Settings) -> RedisClient:
    # The read timeout must outlast the blocking wait on the wake list (one heartbeat period, WORKER_TIMEOUT / 5),
    # or every idle wait would look like a fault.
    return connect(settings.redis_url, settings.redis_timeout, settings.heartbeat_seconds + settings.redis_timeout)


if __name__ == "__main__":
    sys.exit(main())
