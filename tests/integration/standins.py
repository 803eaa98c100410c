"""Stand-in models for integration tests, importable by the worker processes (the repository is on their path)."""

import time

import torch
import torch.nn as nn


class SlowClassifier(nn.Module):
    """A heavy model's timing without its cost: a tiny linear classifier that sleeps `seconds` per forward pass."""

    def __init__(self, seconds: float, num_classes: int = 4):
        super().__init__()
        self.seconds = seconds
        self.head = nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.head(x.mean(dim=(2, 3)))
