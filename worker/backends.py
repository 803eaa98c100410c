"""Inference backends: engines that run the ServingModel contract, uint8 NHWC images in, probabilities out.

The worker serves one model file (MODEL_PATH), which is either a checkpoint
(model_tools.checkpoints), a TorchScript file or an ONNX file (model_tools.export).
BACKEND picks the engine that runs it:

- `torch`: eager PyTorch, channels_last, any device.
- `torchscript`: a TorchScript file as it is, or a checkpoint traced and frozen at
  start (model_tools.export says why not optimize_for_inference).
- `onnxruntime`, `openvino`: an ONNX file, or a checkpoint exported to ONNX at start.
- `auto`: on a GPU `torch`; on the CPU the fastest engine that is installed and
  whose output matches the reference, tried in the order of CPU_PREFERENCE.

Every engine built from a checkpoint is checked against eager PyTorch before it
serves (model_tools.export.verify), so a faster engine can never mean other answers.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model_tools import export
from model_tools.checkpoints import LoadedModel, ModelCard, ModelLoadError, load_model
from serving.config import Settings

log = logging.getLogger("worker")

BACKENDS = ("auto", "torch", "torchscript", "onnxruntime", "openvino")
# Fastest first in the service on this project's 2-core CPU with EfficientNet-Lite0 (README, Performance):
# alone, openvino computes faster, but beside the API processes onnxruntime serves more.
CPU_PREFERENCE = ("onnxruntime", "openvino", "torchscript", "torch")
_NEEDS_MODULE = {"onnxruntime": "onnxruntime", "openvino": "openvino"}

Run = Callable[[np.ndarray], np.ndarray]


class BackendError(RuntimeError):
    """The configured backend cannot serve this model file here; the message says why."""


@dataclass
class Engine:
    backend: str
    card: ModelCard
    run: Run  # uint8 NHWC batch -> float32 probabilities, one row per image


def open_engine(settings: Settings, device: torch.device) -> Engine:
    """The engine BACKEND asks for, serving MODEL_PATH on `device`."""
    if settings.backend not in BACKENDS:
        raise BackendError(f"BACKEND={settings.backend!r}; expected one of {', '.join(BACKENDS)}")
    path = Path(settings.model_path)
    threads = settings.compute_threads
    if path.suffix == ".onnx":
        return _engine_for_onnx_file(path, settings.backend, device, threads)
    if is_torchscript_file(path):
        return _engine_for_torchscript_file(path, settings.backend, device)
    loaded = load_model(path, settings.model_format, settings.model_arch, settings.model_trusted)
    return engine_for_checkpoint(loaded, settings.backend, device, threads)


def engine_for_checkpoint(loaded: LoadedModel, backend: str, device: torch.device, threads: int) -> Engine:
    """Build `backend` from a loaded checkpoint; `auto` keeps the first candidate that matches eager PyTorch."""
    if backend in _NEEDS_MODULE:
        _require_cpu(backend, device)
    reference = _torch_run(loaded, device)
    candidates = [backend] if backend != "auto" else _auto_candidates(device)
    for name in candidates:
        if name == "torch":
            return Engine("torch", loaded.card, reference)
        try:
            run = _build_from_checkpoint(name, loaded, device, threads)
            difference = export.verify(reference, run, loaded.card.preprocessing.input_size)
        except (BackendError, export.ExportMismatch) as exc:
            if backend != "auto":
                raise BackendError(f"BACKEND={name} cannot serve this model: {exc}") from None
            log.warning("backend %s skipped: %s", name, exc)
            continue
        log.info("backend %s matches eager PyTorch (largest probability difference %.2g)", name, difference)
        return Engine(name, loaded.card, run)
    raise AssertionError("unreachable: torch ends every candidate list")


def is_torchscript_file(path: Path) -> bool:
    """TorchScript archives are zip files with a code/ folder; torch.save's zip files have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def installed(backend: str) -> bool:
    module = _NEEDS_MODULE.get(backend)
    return module is None or importlib.util.find_spec(module) is not None


def _auto_candidates(device: torch.device) -> list[str]:
    if device.type != "cpu":
        return ["torch"]  # the ONNX engines are installed for the CPU only
    return [name for name in CPU_PREFERENCE if installed(name)]


def _build_from_checkpoint(backend: str, loaded: LoadedModel, device: torch.device, threads: int) -> Run:
    if backend == "torchscript":
        with tempfile.TemporaryDirectory() as scratch:
            path = export.export_torchscript(loaded, Path(scratch) / "model.ts.pt", optimize=device.type == "cpu")
            module, _ = export.load_torchscript(path, device)
        return export.torch_predictor(module, device)
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = export.export_onnx(loaded, Path(scratch) / "model.onnx")
        return _onnx_run(backend, onnx_path, threads)


def _engine_for_onnx_file(path: Path, backend: str, device: torch.device, threads: int) -> Engine:
    if backend in ("torch", "torchscript"):
        raise BackendError(f"{path} is an ONNX file; BACKEND={backend} needs a checkpoint or TorchScript file")
    _require_cpu("onnxruntime/openvino", device)
    card = export.read_onnx_card(path)
    backend = "onnxruntime" if backend == "auto" else backend  # the first CPU choice, and ONNX's reference
    return Engine(backend, card, _onnx_run(backend, path, threads))


def _engine_for_torchscript_file(path: Path, backend: str, device: torch.device) -> Engine:
    if backend not in ("auto", "torch", "torchscript"):
        raise BackendError(f"{path} is a TorchScript file; BACKEND={backend} needs a checkpoint or an ONNX file")
    module, card = export.load_torchscript(path, device)
    return Engine("torchscript", card, export.torch_predictor(module, device))


def _require_cpu(backend: str, device: torch.device) -> None:
    if device.type != "cpu":
        raise BackendError(f"BACKEND={backend} runs on the CPU only here; DEVICE={device} needs BACKEND=torch")


def _torch_run(loaded: LoadedModel, device: torch.device) -> Run:
    # A copy, because Module.to moves parameters in place: the checkpoint's own network must stay on
    # the CPU, where the TorchScript and ONNX exports built from it next trace their example images.
    model = copy.deepcopy(export.serving_module(loaded)).to(device).to(memory_format=torch.channels_last)
    return export.torch_predictor(model, device)


def _onnx_run(backend: str, path: Path, threads: int) -> Run:
    if not installed(backend):
        raise BackendError(f"BACKEND={backend} is not installed (pip install {_NEEDS_MODULE[backend]})")
    return export.onnx_predictor(path, threads) if backend == "onnxruntime" else _openvino_run(path, threads)


def _openvino_run(path: Path, threads: int) -> Run:
    import openvino

    # f32: OpenVINO would otherwise pick bf16 on CPUs that have it, which moves probabilities by ~0.03.
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    try:
        compiled = openvino.Core().compile_model(str(path), "CPU", config)
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
        raise ModelLoadError(f"openvino cannot load {path}: {exc}") from None
    return lambda images: compiled(images)[0]
