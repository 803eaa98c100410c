"""Eager PyTorch on any device, channels_last: the reference every export is verified against.

torch is imported when a model opens, not with this module, which engines.choose imports to name every engine:
a worker serving an ONNX file has no torch (requirements-worker-onnx.txt).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from engines.base import Run

if TYPE_CHECKING:
    import torch

    from model_files.checkpoints import LoadedModel

NAME = "torch"


def open_loaded(loaded: LoadedModel, device: str) -> Run:
    """The serving model of a loaded checkpoint on `device`."""
    import torch

    from model_files.export import serving_module

    # A copy, because Module.to moves parameters in place: the checkpoint's own network must stay on
    # the CPU, where the TorchScript and ONNX exports built from it next trace their example images.
    model = copy.deepcopy(serving_module(loaded)).to(device).to(memory_format=torch.channels_last)
    return run_module(model, device)


def run_module(module: torch.nn.Module, device: str = "cpu") -> Run:
    """A torch module (eager or TorchScript) on `device` as a numpy-in, numpy-out batch function."""
    import torch

    def run(images):
        with torch.inference_mode():
            batch = torch.from_numpy(images).to(device, non_blocking=True)
            return module(batch).float().cpu().numpy()
    return run
