"""The interface every engine has: a name, the model's card, and a batch function.

A device is named as torch names it ("cpu", "cuda", "cuda:1"), a string: the engines that run an ONNX file
never need torch, and a worker serving one has none (requirements-worker-onnx.txt).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model_files.card import ModelCard

if TYPE_CHECKING:
    from model_files.checkpoints import LoadedModel

Run = Callable[[np.ndarray], np.ndarray]  # uint8 NHWC batch -> float32 probabilities, one row per image


class EngineError(RuntimeError):
    """The configured engine cannot serve this model file here; the message says why."""


@dataclass(frozen=True)
class Engine:
    """A model ready to serve."""

    name: str  # the BACKEND that runs it
    card: ModelCard
    run: Run


@dataclass(frozen=True)
class ExportEngine:
    """An engine that runs an export file of the serving model: one model_tools writes, here or beforehand."""

    name: str  # its BACKEND value
    suffix: str  # of the files it runs
    write: Callable[[LoadedModel, Path, str], Path]  # the export of a loaded model for this device
    open: Callable[[Path, str, int], Run]  # a file on the device, computing with that many threads
    # The distributions whose versions change what its export computes: part of the engine cache's key.
    runtimes: tuple[str, ...]
    package: str = ""  # the module of its runtime, where that is not always installed ("": none)
    cpu_only: bool = False
    # The file computing in bfloat16 (PRECISION=bf16), on engines that can; None: this engine cannot.
    open_bf16: Callable[[Path, str, int], Run] | None = None

    def installed(self) -> bool:
        return not self.package or importlib.util.find_spec(self.package) is not None


def write_onnx(loaded: LoadedModel, path: Path, device: str) -> Path:
    """The ONNX export, the same file for every device: the engines that run ONNX share it."""
    from model_files import export  # torch, which only exporting a checkpoint needs

    return export.export_onnx(loaded, path)


def device_type(device: str) -> str:
    """What kind of device it is, as torch.device(device).type says: "cuda" for "cuda:1"."""
    return device.partition(":")[0]
