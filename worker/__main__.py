"""`python -m worker`: load the configured model once and serve the queue until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import sys
import threading

import redis
import torch

from model_tools.card import ModelLoadError
from serving.config import LOG_FORMAT, Settings
from worker.backends import BackendError, open_engine
from worker.inference import Classifier, choose_device
from worker.loop import Worker

log = logging.getLogger("worker")


def main() -> int:
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT)
    torch.set_num_threads(settings.compute_threads)
    try:
        device = choose_device(settings.device)
        classifier = Classifier(open_engine(settings, device), device)
        classifier.warm_up()
    except (ModelLoadError, BackendError, RuntimeError) as exc:
        log.error("cannot serve the model: %s", exc)
        return 2
    log.info("serving %s with backend=%s on %s", classifier.card.name, classifier.backend, device)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    Worker(redis_client(settings), classifier, settings).run(stop)
    return 0


def redis_client(settings: Settings) -> redis.Redis:
    # The read timeout must outlast BLMOVE's blocking wait (one heartbeat period, WORKER_TIMEOUT / 5),
    # or every idle wait would look like a fault.
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=settings.redis_timeout,
                                socket_timeout=settings.heartbeat_seconds + settings.redis_timeout)


if __name__ == "__main__":
    sys.exit(main())
