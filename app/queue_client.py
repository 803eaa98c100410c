"""The API's side of the Redis protocol: read the served model, submit an image, await its answer."""

from __future__ import annotations

import time
import uuid

import numpy as np
import redis

from serving import protocol
from serving.protocol import InferenceRequest, Keys, ModelInfo


class NoWorker(Exception):
    """No worker has announced a model recently: nobody would answer."""


class NoAnswer(Exception):
    """The deadline passed before a worker answered."""


class InferenceQueue:
    def __init__(self, client: redis.Redis, key_prefix: str):
        self.client = client
        self.keys = Keys(key_prefix)

    def model_info(self) -> ModelInfo:
        raw = self.client.get(self.keys.model)
        if raw is None:
            raise NoWorker()
        return ModelInfo.from_json(raw)

    def classify(self, pixels: np.ndarray, deadline: float) -> dict:
        """Queue one preprocessed image and block until its result or the deadline."""
        request = InferenceRequest(uuid.uuid4().hex, pixels, time.time(), deadline)
        self.client.lpush(self.keys.queue, protocol.encode_request(request))
        return self.await_result(request.id, request.deadline)

    def await_result(self, request_id: str, deadline: float) -> dict:
        # BLPOP wakes the moment the worker pushes the result: no polling, no sleeps.
        # Its timeout has one-millisecond resolution; zero would block forever.
        remaining = max(deadline - time.time(), 0.001)
        popped = self.client.blpop([self.keys.result(request_id)], timeout=remaining)
        if popped is None:
            raise NoAnswer()
        return protocol.decode_result(popped[1])
