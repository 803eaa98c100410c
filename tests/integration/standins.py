"""Stand-in models for integration tests, importable by the worker processes (the repository is on their path)."""

import os
import sys
import time

import torch
import torch.nn as nn


class SlowClassifier(nn.Module):
    """A heavy model's timing without its cost: a tiny linear classifier that sleeps `seconds` per forward pass
    of real pictures (the blank images of the worker's start-up checks pass at once, to keep tests short)."""

    def __init__(self, seconds: float, num_classes: int = 4):
        super().__init__()
        self.seconds = seconds
        self.head = nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.flatten(2).std(dim=2) > 0).any()):
            time.sleep(self.seconds)
        return self.head(x.mean(dim=(2, 3)))


class DiesOnWhite(nn.Module):
    """A model with a native crash on one input: it kills its process on an all-white image (1.0 everywhere once
    normalized with MEAN=0,0,0 and STD=1,1,1), and answers like a small linear classifier otherwise."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.head = nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.flatten(1).amin(dim=1) >= 1.0).any()):
            os._exit(70)
        return self.head(x.mean(dim=(2, 3)))


class SlowToLoad(nn.Module):
    """A heavy model's loading without its size: unpickling it says so on stderr, then sleeps `seconds`."""

    UNPICKLING = "SlowToLoad: unpickling"  # the line that says the worker is inside the model's load

    def __init__(self, seconds: float, num_classes: int = 4):
        super().__init__()
        self.seconds = seconds
        self.head = nn.Linear(3, num_classes)

    def __setstate__(self, state: dict) -> None:
        print(self.UNPICKLING, file=sys.stderr, flush=True)
        time.sleep(state["seconds"])
        super().__setstate__(state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


class SwallowsStops(SlowToLoad):
    """A load that catches every exception, a stop's too, and goes on loading: as C code does that calls back into
    Python and clears whatever was raised there (PyObject_HasAttr, for one)."""

    def __setstate__(self, state: dict) -> None:
        try:
            super().__setstate__(state)
        except BaseException:
            time.sleep(state["seconds"])
            nn.Module.__setstate__(self, state)
