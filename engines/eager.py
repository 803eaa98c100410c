"""Eager PyTorch on any device, channels_last: the reference every export is verified against."""

from __future__ import annotations

import copy

import torch

from engines.base import Run
from model_files.checkpoints import LoadedModel
from model_files.export import serving_module

NAME = "torch"


def open_loaded(loaded: LoadedModel, device: torch.device) -> Run:
    """The serving model of a loaded checkpoint on `device`."""
    # A copy, because Module.to moves parameters in place: the checkpoint's own network must stay on
    # the CPU, where the TorchScript and ONNX exports built from it next trace their example images.
    model = copy.deepcopy(serving_module(loaded)).to(device).to(memory_format=torch.channels_last)
    return run_module(model, device)


def run_module(module: torch.nn.Module, device: str | torch.device = "cpu") -> Run:
    """A torch module (eager or TorchScript) on `device` as a numpy-in, numpy-out batch function."""
    def run(images):
        with torch.inference_mode():
            batch = torch.from_numpy(images).to(device, non_blocking=True)
            return module(batch).float().cpu().numpy()
    return run
