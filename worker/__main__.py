"""`python -m worker`: load the configured model once and serve the queue until SIGTERM/SIGINT.

A stop signal that arrives while the worker starts (importing torch alone takes seconds here; loading,
exporting and warming up a large model, minutes) ends it at once, with exit code 0 and a log line: it has
taken no work yet, and a launcher that restarts workers which exit otherwise (`python -m stack`) must
not take a stop for a crash. So the signals are handled first, and the modules that import torch only
after that. The stop is an exception raised wherever start-up is, and code that catches everything can
stop it on its way out (C code that calls back into Python and clears what was raised there): start-up
that goes on regardless is ended STOP_GRACE_SECONDS later, or when it finishes, whichever comes first.

Serving an ONNX file needs no torch at all (requirements-worker-onnx.txt): torch is imported by the engines
of checkpoints and TorchScript files only, and by choose_device where it is installed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
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
# Far more than the clean-ups a stop's exception runs on its way out take (removing temporary export directories).
STOP_GRACE_SECONDS = 2.0


class StartupStop:
    """The stop signals' handler until the worker serves: raises StoppedWhileStarting, and makes sure of the exit
    should start-up go on all the same (the module docstring)."""

    def __init__(self):
        self.signal_name: str | None = None
        self._signalled = threading.Event()
        # Started now, not by the handler: a handler that started a thread could wait forever for a lock of
        # `threading` that the code it interrupted holds.
        threading.Thread(target=self._exit_after_grace, name="stop-while-starting", daemon=True).start()

    def __call__(self, signum: int, frame) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            self._signalled.set()
        raise StoppedWhileStarting(self.signal_name)

    def raise_if_stopped(self) -> None:
        """At the end of start-up: a stop whose exception was caught on its way out ends it here."""
        if self.signal_name is not None:
            raise StoppedWhileStarting(self.signal_name)

    def _exit_after_grace(self) -> None:
        self._signalled.wait()
        time.sleep(STOP_GRACE_SECONDS)
        log.warning("start-up went on after %s (its exception was caught on the way out)", self.signal_name)
        _exit_stopped_while_starting(self.signal_name)


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
    starting = StartupStop()
    _on_stop_signals(starting)
    try:
        log.info("loading model_path=%s backend=%s device=%s", settings.model_path, settings.backend,
                 settings.device)
        classifier = load_classifier(settings)
        if classifier is None:
            return 2
        from worker.loop import Worker
        starting.raise_if_stopped()
        stop = threading.Event()
        _on_stop_signals(lambda *_: stop.set())  # from now on a stop finishes the batch in hand first
    except StoppedWhileStarting as exc:
        _exit_stopped_while_starting(str(exc))
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


def _exit_stopped_while_starting(signal_name: str) -> NoReturn:
    """Exit 0 without the interpreter's teardown, which with torch and the engines' libraries loaded takes
    seconds (2.6-3.1 s on this 2-core VM under load, 0.1-0.3 s without it): a worker stopped while starting
    has taken and announced nothing, so there is nothing to finish but the log."""
    log.info("stopped by %s while starting; exiting before serving anything", signal_name)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _on_stop_signals(handler) -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


def redis_client(settings: Settings) -> RedisClient:
    # The read timeout must outlast the blocking wait on the wake list (one heartbeat period, WORKER_TIMEOUT / 5),
    # or every idle wait would look like a fault.
    return connect(settings.redis_url, settings.redis_timeout, settings.heartbeat_seconds + settings.redis_timeout)


if __name__ == "__main__":
    sys.exit(main())
