"""TorchScript: model_tools' export, traced (and on the CPU frozen) from a checkpoint at start, or a file as it is."""

from __future__ import annotations

from pathlib import Path

import torch

from engines.base import ExportBackend, Run
from engines.eager import run_module
from model_files import export
from model_files.card import ModelCard
from model_files.checkpoints import LoadedModel


def write(loaded: LoadedModel, path: Path, device: torch.device) -> Path:
    # Frozen on the CPU: weights become constants and conv+batchnorm fold (model_files.export says why
    # not optimize_for_inference).
    return export.export_torchscript(loaded, path, optimize=device.type == "cpu")


def open_with_card(path: Path, device: torch.device) -> tuple[Run, ModelCard]:
    """A TorchScript file model_tools wrote, on `device`, and the card inside it."""
    module, card = export.load_torchscript(path, device)
    return run_module(module, device), card


def open_file(path: Path, device: torch.device, threads: int) -> Run:
    return open_with_card(path, device)[0]  # torch's own thread count (torch.set_num_threads) applies


BACKEND = ExportBackend("torchscript", ".ts.pt", write, open_file, runtimes=("torch",))
