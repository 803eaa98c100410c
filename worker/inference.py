"""The model on its device: a batch of uint8 images in, top-k predictions out."""

from __future__ import annotations

import numpy as np
import torch

from model_tools.checkpoints import LoadedModel
from model_tools.serving_model import ServingModel


def choose_device(setting: str) -> torch.device:
    """`auto` means the first GPU when torch sees one, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"DEVICE={setting} but torch sees no CUDA device")
    return device


class Classifier:
    def __init__(self, loaded: LoadedModel, device: torch.device):
        self.card = loaded.card
        self.device = device
        preprocessing = loaded.card.preprocessing
        self.model = ServingModel(loaded.network, preprocessing.mean, preprocessing.std).to(device).eval()
        self.input_shape = (preprocessing.input_size, preprocessing.input_size, 3)

    def warm_up(self) -> None:
        """One forward pass before serving, so the first request does not pay for lazy initialisation."""
        self.probabilities(np.zeros((1, *self.input_shape), dtype=np.uint8))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, one row per image of the uint8 NHWC batch."""
        with torch.inference_mode():
            batch = torch.from_numpy(images).to(self.device, non_blocking=True)
            return self.model(batch).float().cpu().numpy()

    def top_k(self, probabilities: np.ndarray, k: int) -> list[list[dict]]:
        """The k most probable classes of each row, most probable first."""
        k = min(k, probabilities.shape[1])
        best = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [[{"label": self.card.class_names[i], "index": int(i), "probability": float(row[i])}
                 for i in indices] for row, indices in zip(probabilities, best)]
