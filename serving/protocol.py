"""The Redis protocol between API and worker: key names and message formats.

Nothing outside this module spells a key or a message field.

Flow of one request:
  API:    LPUSH {prefix}:queue <request JSON>
  worker: BLMOVE {prefix}:queue -> {prefix}:processing:<worker id>   (atomic take)
  worker: LPUSH {prefix}:result:<request id> <result JSON>, EXPIRE it,
          DEL its processing list                                 (one transaction)
  API:    BLPOP {prefix}:result:<request id> until the request's deadline
Every heartbeat, a worker refreshes {prefix}:model, the served model's
description, with a short TTL (the API reads its preprocessing from it; its
absence means no worker is up), and its own score in the sorted set
{prefix}:workers (worker id -> time of its last heartbeat).

Images travel as base64 of raw uint8 HWC pixels inside JSON: no pickle ever
crosses Redis, and a message is a quarter of the float32 the seed sent.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass

import numpy as np

HEARTBEAT_SECONDS = 1.0  # how often a worker announces itself
LIVENESS_SECONDS = 5.0  # a worker silent for longer is presumed dead; the model key expires then too


@dataclass(frozen=True)
class Keys:
    prefix: str

    @property
    def queue(self) -> str:
        return f"{self.prefix}:queue"

    @property
    def model(self) -> str:
        return f"{self.prefix}:model"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def processing(self, worker_id: str) -> str:
        return f"{self.prefix}:processing:{worker_id}"

    def result(self, request_id: str) -> str:
        return f"{self.prefix}:result:{request_id}"


class MalformedMessage(ValueError):
    """A queue message that cannot be decoded; `request_id` is set when it could be read."""

    def __init__(self, reason: str, request_id: str | None = None):
        super().__init__(reason)
        self.request_id = request_id


@dataclass(frozen=True)
class InferenceRequest:
    id: str
    pixels: np.ndarray  # uint8, height x width x 3
    enqueued_at: float  # epoch seconds
    deadline: float  # epoch seconds after which the client no longer waits


def encode_request(request: InferenceRequest) -> bytes:
    pixels = np.ascontiguousarray(request.pixels, dtype=np.uint8)
    return json.dumps({
        "id": request.id,
        "shape": list(pixels.shape),
        "dtype": "uint8",
        "image": base64.b64encode(pixels.data).decode("ascii"),
        "enqueued_at": request.enqueued_at,
        "deadline": request.deadline,
    }).encode()


def decode_request(raw: bytes) -> InferenceRequest:
    """Parse and validate one queue message; raises MalformedMessage."""
    try:
        fields = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise MalformedMessage("not a JSON object")
    request_id = fields.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise MalformedMessage("no request id")
    try:
        shape = tuple(int(n) for n in fields["shape"])
        if fields["dtype"] != "uint8":
            raise ValueError(f"dtype {fields['dtype']!r}, expected 'uint8'")
        if len(shape) != 3 or shape[2] != 3 or min(shape) <= 0:
            raise ValueError(f"shape {list(shape)}, expected [height, width, 3]")
        data = base64.b64decode(fields["image"], validate=True)
        if len(data) != shape[0] * shape[1] * shape[2]:
            raise ValueError(f"{len(data)} pixel bytes for shape {list(shape)}")
        pixels = np.frombuffer(data, dtype=np.uint8).reshape(shape)
        return InferenceRequest(request_id, pixels, float(fields["enqueued_at"]), float(fields["deadline"]))
    except KeyError as exc:
        raise MalformedMessage(f"missing field {exc}", request_id) from None
    except (TypeError, ValueError, binascii.Error) as exc:
        raise MalformedMessage(str(exc), request_id) from None


def encode_success(request_id: str, predictions: list[dict], model: str, timing: dict) -> bytes:
    return json.dumps({"id": request_id, "success": True, "predictions": predictions,
                       "model": model, "timing": timing}).encode()


def encode_failure(request_id: str, code: str, message: str) -> bytes:
    return json.dumps({"id": request_id, "success": False,
                       "error": {"code": code, "message": message}}).encode()


def decode_result(raw: bytes) -> dict:
    return json.loads(raw)


@dataclass(frozen=True)
class ModelInfo:
    """What a worker publishes about the model it serves."""
    name: str
    arch: str
    num_classes: int
    input_size: int  # side of the square crop the model takes
    resize_size: int  # the shorter image side is resized to this before cropping
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: str
    batch_size: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "ModelInfo":
        fields = json.loads(raw)
        fields["mean"], fields["std"] = tuple(fields["mean"]), tuple(fields["std"])
        return cls(**fields)
