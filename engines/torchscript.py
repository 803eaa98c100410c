"""TorchScript: model_tools' export, traced (and on the CPU frozen) from a checkpoint at start, or a file as it is.

torch (in model_files.export) is imported when a file is written or opened, as engines.eager says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engines.base import ExportEngine, Run, device_type
from engines.eager import run_module
from model_files.card import ModelCard

if TYPE_CHECKING:
    from model_files.checkpoints import LoadedModel


def write(loaded: LoadedModel, path: Path, device: str) -> Path:
    from model_files import export

    # Frozen on the CPU: weights become constants and conv+batchnorm fold (model_files.export says why
    # not optimize_for_inference).
    return export.export_torchscript(loaded, path, optimize=device_type(device) == "cpu")


def open_with_card(path: Path, device: str) -> tuple[Run, ModelCard]:
    """A TorchScript file model_tools wrote, on `device`, and the card inside it."""
    from model_files import export

    module, card = export.load_torchscript(path, device)
    return run_module(module, device), card


def open_file(path: Path, device: str, threads: int) -> Run:
    return open_with_card(path, device)[0]  # torch's own thread count (torch.set_num_threads) applies


ENGINE = ExportEngine("torchscript", ".ts.pt", write, open_file, runtimes=("torch",))
