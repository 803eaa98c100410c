"""The model as the service runs it: uint8 NHWC images in, class probabilities out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn


class ServingModel(nn.Module):
    """Wraps a classifier with its input normalization and softmax.

    Keeping the numeric contract inside the module means it runs on the
    worker's device and travels with every export (TorchScript, ONNX), so no
    client can normalize differently. Permuting NHWC input to NCHW gives a
    channels_last tensor for free.
    """

    def __init__(self, network: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.network = network
        std_tensor = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        mean_tensor = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std, folded into one multiply-add
        self.register_buffer("scale", 1.0 / (255.0 * std_tensor))
        self.register_buffer("shift", mean_tensor / std_tensor)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() * self.scale - self.shift
        return self.network(x).softmax(dim=1)
