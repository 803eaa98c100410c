"""What every peer's server runs around the model, with Pillow, NumPy and ONNX Runtime only (the LitServe and
BentoML venvs have no torch): the card's preprocessing written as a user would write it, torchvision's
Resize(resize_size) + CenterCrop(input_size) on the Pillow-decoded RGB photo, and the answer in the shape of
TorchServe's image_classifier ({label: probability}, the top five, most probable first).

The driver writes each peer's settings as a JSON file (scripts/bench_peers/peer.py: peer_config) into its
folder, and names it in the environment variable PEER_CONFIG.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image

TOP_K = 5  # as TorchServe's image_classifier answers


def load_config(path: str | os.PathLike | None = None) -> dict:
    """The driver's settings for this peer: from `path`, else from the file PEER_CONFIG names."""
    with open(path or os.environ["PEER_CONFIG"]) as file:
        return json.load(file)


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def resize_and_crop(image: Image.Image, resize_size: int, input_size: int) -> np.ndarray:
    """torchvision's Resize(resize_size) then CenterCrop(input_size) on a PIL image, as uint8 HWC."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(resize_size * long / short)  # torchvision truncates the long side
    size = (resize_size, new_long) if width == short else (new_long, resize_size)
    resized = image.resize(size, Image.Resampling.BILINEAR)
    left = int(round((size[0] - input_size) / 2.0))
    top = int(round((size[1] - input_size) / 2.0))
    return np.asarray(resized.crop((left, top, left + input_size, top + input_size)), dtype=np.uint8)


def pixels(data: bytes, config: dict) -> np.ndarray:
    """Upload bytes to the uint8 HWC crop the ONNX model takes (it normalises inside)."""
    return resize_and_crop(decode(data), config["resize_size"], config["input_size"])


def onnx_session(path: str, threads: int):
    """ONNX Runtime on the CPU with the configured thread count, no spinning: threads that spin while idle take
    the core from the other worker and the HTTP server on a 2-core box."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def classify(session, batch: np.ndarray) -> np.ndarray:
    """Probabilities of a uint8 NHWC batch."""
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def top_labels(probabilities: np.ndarray, labels: list[str]) -> dict[str, float]:
    best = np.argsort(probabilities)[::-1][:TOP_K]
    return {labels[i]: float(probabilities[i]) for i in best}
