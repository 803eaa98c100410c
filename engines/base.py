"""The interface every engine has: a name, the model's card, and a batch function."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model_files import export
from model_files.card import ModelCard
from model_files.checkpoints import LoadedModel

Run = Callable[[np.ndarray], np.ndarray]  # uint8 NHWC batch -> float32 probabilities, one row per image


class BackendError(RuntimeError):
    """The configured backend cannot serve this model file here; the message says why."""


@dataclass(frozen=True)
class Engine:
    """A model ready to serve."""

    name: str  # the BACKEND that runs it
    card: ModelCard
    run: Run


@dataclass(frozen=True)
class ExportBackend:
    """An engine that runs an export file of the serving model: one model_tools writes, here or beforehand."""

    name: str  # its BACKEND value
    suffix: str  # of the files it runs
    write: Callable[[LoadedModel, Path, torch.device], Path]  # the export of a loaded model for this device
    open: Callable[[Path, torch.device, int], Run]  # a file on the device, computing with that many threads
    # The distributions whose versions change what its export computes: part of the engine cache's key.
    runtimes: tuple[str, ...]
    package: str = ""  # what it needs installed beyond torch ("": nothing)
    cpu_only: bool = False
    # The file computing in bfloat16 (PRECISION=bf16), on engines that can; None: this engine cannot.
    open_bf16: Callable[[Path, torch.device, int], Run] | None = None

    def installed(self) -> bool:
        return not self.package or importlib.util.find_spec(self.package) is not None


def write_onnx(loaded: LoadedModel, path: Path, device: torch.device) -> Path:
    """The ONNX export, the same file for every device: the engines that run ONNX share it."""
    return export.export_onnx(loaded, path)
