"""The API against fakeredis, with a stand-in worker: shared by the unit tests of the API's endpoints.

The fixtures `server`, `fake_redis` and `client` built from these live in tests/unit/conftest.py.
"""

from __future__ import annotations

import io
import threading
import time

import fakeredis

from serving import protocol
from serving.config import Settings
from serving.protocol import FleetKeys, Keys, ModelInfo
from tests.images import photo_bytes
from worker.queue import WorkerQueue

SETTINGS = Settings(request_timeout=0.3, max_upload_mb=1, worker_timeout=5)
KEYS = Keys(SETTINGS.key_prefix, "tiny@1")
FLEET = FleetKeys(SETTINGS.key_prefix)
SOURCES = {"class_names": "LABELS_PATH (labels.txt)", "input_size": "assumed: torchvision's ImageNet convention",
           "resize_size": "RESIZE_SIZE", "mean": "model file", "std": "model file"}
MODEL = ModelInfo("tiny", "tiny_arch", 3, 224, 256, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), "cpu", 8, "torch", SOURCES)
TABBY = [{"label": "tabby", "index": 281, "probability": 0.9}]


def heartbeat(fake_redis: fakeredis.FakeRedis, worker_id: str = "w1", age: float = 0.0,
              model: ModelInfo = MODEL) -> None:
    """What a worker's heartbeat writes: the model it serves, its own entry and its model's in the registries."""
    keys = Keys(SETTINGS.key_prefix, protocol.model_id(model.name, model.version))
    fake_redis.set(keys.model, model.to_json())
    fake_redis.zadd(keys.workers, {worker_id: time.time() - age})
    fake_redis.zadd(FLEET.models, {keys.model_id: time.time() - age})


def success(predictions: list[dict], model: ModelInfo = MODEL):
    """A make_result for answer_next_request: these predictions, with a worker's timing."""
    return lambda request: protocol.encode_result(protocol.InferenceResult(
        request.job_id, model.name, model.version, tuple(protocol.Prediction(**p) for p in predictions),
        {"queue_ms": 1.0, "inference_ms": 2.0, "batch_size": 1}))


def answer_next_request(fake_redis: fakeredis.FakeRedis, make_result, keys: Keys = KEYS, count: int = 1) -> dict:
    """A stand-in worker thread: takes the next `count` messages of `keys`' queue, one at a time, and publishes
    make_result(request) for each.

    Returns a dict that holds the first request under "request" once it has been taken, and all under "requests".
    """
    seen: dict = {"requests": []}

    def run():
        queue = WorkerQueue(fake_redis, keys, "w1")
        for _ in range(200):
            batch = queue.take_batch(1, block_seconds=0.01, wait_for_more_seconds=0)
            if batch:
                queued = protocol.decode_message(batch[0])
                request = protocol.decode_request(queued, queue.fetch_pixels([queued.job_id])[0])
                seen.setdefault("request", request)
                seen["requests"].append(request)
                queue.publish_results({request.job_id: make_result(request)}, batch)
                if len(seen["requests"]) == count:
                    return
            else:
                time.sleep(0.005)

    threading.Thread(target=run, daemon=True).start()
    return seen


def post_image(client, data: bytes | None = None, field: str = "image", filename: str = "chelsea.png",
               headers: dict[str, str] | None = None, path: str = "/predict"):
    """POST /predict (or `path`) through the Flask test client, as multipart with one file; chelsea.png by default."""
    data = photo_bytes("chelsea.png") if data is None else data
    return client.post(path, data={field: (io.BytesIO(data), filename)}, content_type="multipart/form-data",
                       headers=headers or {})
