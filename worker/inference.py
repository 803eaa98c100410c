"""The model on its device: a batch of uint8 images in, top-k predictions out."""

from __future__ import annotations

import time

import numpy as np

from engines.base import Engine
from serving.protocol import ModelInfo, Prediction


def choose_device(setting: str) -> str:
    """`auto` means the first GPU when torch sees one, else the CPU (the only device of a worker without torch)."""
    torch = _installed_torch()
    if torch is None:
        if setting not in ("auto", "cpu"):
            raise RuntimeError(f"DEVICE={setting} needs torch, which is not installed (requirements.txt)")
        return "cpu"
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"DEVICE={setting} but torch sees no CUDA device")
    return str(device)


def limit_torch_threads(threads: int) -> None:
    """torch's compute threads (its engines', and exporting at start); a worker without torch has none to limit."""
    torch = _installed_torch()
    if torch is not None:
        torch.set_num_threads(threads)


def _installed_torch():
    """The torch module, or None in a worker that serves ONNX files without it (requirements-worker-onnx.txt)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


class Classifier:
    def __init__(self, engine: Engine, device: str):
        self.card = engine.card
        self.engine_name = engine.name
        self.device = device
        self._run = engine.run
        size = engine.card.preprocessing.input_size
        self.input_shape = (size, size, 3)

    def describe(self, name: str, version: str, batch_size: int) -> ModelInfo:
        """What the heartbeat announces: the card's preprocessing and classes, and how this worker runs them."""
        card, preprocessing = self.card, self.card.preprocessing
        return ModelInfo(name=name, version=version, arch=card.arch, num_classes=len(card.class_names),
                         input_size=preprocessing.input_size, resize_size=preprocessing.resize_size,
                         mean=preprocessing.mean, std=preprocessing.std, sources=dict(card.sources),
                         device=self.device, batch_size=batch_size, backend=self.engine_name,
                         precision=card.precision,
                         agreement=card.agreement.to_json() if card.agreement is not None else None)

    def warm_up(self, batch_size: int) -> float:
        """A full batch before serving, so the first requests do not pay for lazy initialisation; its seconds."""
        images = np.zeros((batch_size, *self.input_shape), dtype=np.uint8)
        started = time.perf_counter()
        self.probabilities(images)
        return time.perf_counter() - started

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, one row per image of the uint8 NHWC batch."""
        return self._run(images)

    def top_k(self, row: np.ndarray, k: int) -> tuple[Prediction, ...]:
        """The k most probable classes of one image's probabilities, most probable first."""
        best = np.argsort(-row, kind="stable")[:k]
        return tuple(Prediction(int(i), self.card.class_names[i], float(row[i])) for i in best)
