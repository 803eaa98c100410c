"""`python -m worker`: load the configured model once and serve the queue until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import sys
import threading

import torch

from engines.base import BackendError
from engines.choose import open_engine
from model_tools.card import ModelLoadError
from serving.config import LOG_FORMAT, ConfigError, Settings, program_settings
from serving.protocol import MalformedModelInfo
from serving.redis_client import RedisClient, connect
from worker.inference import Classifier, choose_device
from worker.loop import Worker

log = logging.getLogger("worker")


def main() -> int:
    settings = program_settings("python -m worker", "One batching worker: loads MODEL_PATH, then serves the queue "
                                "in REDIS_URL until SIGTERM or SIGINT, finishing the batch in hand.", sys.argv[1:])
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT)
    torch.set_num_threads(settings.compute_threads)
    try:
        device = choose_device(settings.device)
        classifier = Classifier(open_engine(settings, device), device)
        batch_seconds = classifier.warm_up(settings.batch_size)
    except (ModelLoadError, BackendError, RuntimeError) as exc:
        log.error("cannot serve the model: %s", exc)
        return 2
    log.info("serving %s with backend=%s on %s; a batch of %d takes %.2fs", classifier.card.name,
             classifier.backend, device, settings.batch_size, batch_seconds)
    if 2 * batch_seconds > settings.request_timeout:
        # A request that arrives while a full batch computes waits for it, then runs in the next one.
        log.warning("REQUEST_TIMEOUT=%gs is shorter than two full batches of %d (%.1fs): when batches fill, "
                    "requests can get 504; lower BATCH_SIZE or raise REQUEST_TIMEOUT", settings.request_timeout,
                    settings.batch_size, 2 * batch_seconds)

    try:
        worker = Worker(redis_client(settings), classifier, settings)
    except (ConfigError, MalformedModelInfo) as exc:  # a card name or size the service cannot announce
        log.error("cannot serve the model: %s", exc)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return 0 if worker.run(stop) else 1


def redis_client(settings: Settings) -> RedisClient:
    # The read timeout must outlast BLMOVE's blocking wait (one heartbeat period, WORKER_TIMEOUT / 5),
    # or every idle wait would look like a fault.
    return connect(settings.redis_url, settings.redis_timeout, settings.heartbeat_seconds + settings.redis_timeout)


if __name__ == "__main__":
    sys.exit(main())
