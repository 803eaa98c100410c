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
import functools
import importlib.util
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model_tools import export
from model_tools.card import ModelCard, ModelLoadError, ModelOptions, card_fields, resolve_card
from model_tools.checkpoints import LoadedModel, is_serving_torchscript, load_model
from serving.config import Settings
from worker.engine_cache import EngineCache

log = logging.getLogger("worker")

BACKENDS = ("auto", "torch", "torchscript", "onnxruntime", "openvino")
# Fastest first in the service on this project's 2-core CPU with EfficientNet-Lite0 (docs/performance.md "make bench"):
# alone, openvino computes faster, but beside the API processes onnxruntime serves more.
CPU_PREFERENCE = ("onnxruntime", "openvino", "torchscript", "torch")
_NEEDS_MODULE = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
_EXPORT_SUFFIX = {"torchscript": ".ts.pt", "onnxruntime": ".onnx", "openvino": ".onnx"}

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
    options = ModelOptions.from_settings(settings)
    threads = settings.compute_threads
    if path.suffix == ".onnx":
        return _engine_for_onnx_file(path, options, settings.backend, device, threads)
    if is_serving_torchscript(path):
        return _engine_for_torchscript_file(path, options, settings.backend, device)
    loaded = load_model(path, options)
    return engine_for_checkpoint(loaded, settings.backend, device, threads, _engine_cache(settings, path))


def _engine_cache(settings: Settings, model_path: Path) -> EngineCache | None:
    """ENGINE_CACHE_DIR's cache for this model file; None when it is unset or cannot be written."""
    if not settings.engine_cache_dir:
        return None
    directory = Path(settings.engine_cache_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("ENGINE_CACHE_DIR=%s cannot be created (%s): engines are exported at every start", directory,
                    exc.strerror)
        return None
    if not os.access(directory, os.W_OK):
        log.warning("ENGINE_CACHE_DIR=%s is not writable: engines are exported at every start", directory)
        return None
    return EngineCache.for_model_file(directory, model_path)


def engine_for_checkpoint(loaded: LoadedModel, backend: str, device: torch.device, threads: int,
                          cache: EngineCache | None = None) -> Engine:
    """Build `backend` from a loaded model; `auto` keeps the first candidate that builds and matches eager PyTorch.

    With a cache, an export verified before is used without exporting or verifying again.
    """
    if backend in _NEEDS_MODULE:
        _require_cpu(backend, device)
    reference = functools.cache(lambda: _torch_run(loaded, device))  # only built when something needs it
    candidates = [backend] if backend != "auto" else _auto_candidates(device)
    for name in candidates:
        if name == "torch":
            return Engine("torch", loaded.card, reference())
        try:
            run = _verified_export(name, loaded, device, threads, reference, cache)
        except (BackendError, ModelLoadError, export.ExportMismatch) as exc:
            if backend != "auto":
                raise BackendError(f"BACKEND={name} cannot serve this model: {exc}") from None
            log.warning("backend %s skipped: %s", name, exc)
            continue
        return Engine(name, loaded.card, run)
    raise AssertionError("unreachable: torch ends every candidate list")


def installed(backend: str) -> bool:
    module = _NEEDS_MODULE.get(backend)
    return module is None or importlib.util.find_spec(module) is not None


def _auto_candidates(device: torch.device) -> list[str]:
    if device.type != "cpu":
        return ["torch"]  # the ONNX engines are installed for the CPU only
    return [name for name in CPU_PREFERENCE if installed(name)]


def _verified_export(backend: str, loaded: LoadedModel, device: torch.device, threads: int,
                     reference: Callable[[], Run], cache: EngineCache | None) -> Run:
    """The backend running an export of the model that gives eager PyTorch's answers, from the cache if it has one."""
    _require_installed(backend)  # before the cache's key, which reads the runtime's version
    if cache is None:
        with tempfile.TemporaryDirectory() as scratch:
            return _export_and_verify(backend, loaded, device, threads, reference,
                                      Path(scratch) / f"model{_EXPORT_SUFFIX[backend]}")
    with cache.entry(backend, device, loaded.card, _EXPORT_SUFFIX[backend]) as entry:
        if entry.verdict is not None:
            if not entry.verdict.verified:
                raise BackendError(f"{entry.verdict.reason} (remembered in {entry.path.parent})")
            log.info("backend %s from the engine cache (%s), verified before", backend, entry.path.name)
            return _open_export(backend, entry.path, device, threads)
        try:
            run = _export_and_verify(backend, loaded, device, threads, reference, entry.path)
        except (BackendError, ModelLoadError, export.ExportMismatch) as exc:
            entry.remember_failure(str(exc))
            raise
        entry.remember_success()
        return run


def _export_and_verify(backend: str, loaded: LoadedModel, device: torch.device, threads: int,
                       reference: Callable[[], Run], path: Path) -> Run:
    if backend == "torchscript":
        export.export_torchscript(loaded, path, optimize=device.type == "cpu")
    else:
        export.export_onnx(loaded, path)
    run = _open_export(backend, path, device, threads)
    difference = export.verify(reference(), run, loaded.card.preprocessing.input_size)
    log.info("backend %s matches eager PyTorch (largest probability difference %.2g)", backend, difference)
    return run


def _open_export(backend: str, path: Path, device: torch.device, threads: int) -> Run:
    if backend == "torchscript":
        module, _ = export.load_torchscript(path, device)
        return export.torch_predictor(module, device)
    return _onnx_run(backend, path, threads)


def _engine_for_onnx_file(path: Path, options: ModelOptions, backend: str, device: torch.device,
                          threads: int) -> Engine:
    if backend in ("torch", "torchscript"):
        raise BackendError(f"{path} is an ONNX file; BACKEND={backend} needs a checkpoint or TorchScript file")
    _require_cpu("onnxruntime/openvino", device)
    card = _checked_card(export.read_onnx_card(path), options, path)
    backend = "onnxruntime" if backend == "auto" else backend  # the first CPU choice, and ONNX's reference
    return Engine(backend, card, _onnx_run(backend, path, threads))


def _engine_for_torchscript_file(path: Path, options: ModelOptions, backend: str, device: torch.device) -> Engine:
    if backend not in ("auto", "torch", "torchscript"):
        raise BackendError(f"{path} is a TorchScript file; BACKEND={backend} needs a checkpoint or an ONNX file")
    if backend == "torch":
        log.warning("BACKEND=torch with a TorchScript export (%s): it runs on the TorchScript engine", path)
    module, card = export.load_torchscript(path, device)
    return Engine("torchscript", _checked_card(card, options, path), export.torch_predictor(module, device))


def _checked_card(card: ModelCard, options: ModelOptions, path: Path) -> ModelCard:
    """An export's own card, with the configuration checked against it (it may add nothing: the card is whole)."""
    return resolve_card(card_fields(card), options, path, lambda _: len(card.class_names))


def _require_cpu(backend: str, device: torch.device) -> None:
    if device.type != "cpu":
        raise BackendError(f"BACKEND={backend} runs on the CPU only here; DEVICE={device} needs BACKEND=torch")


def _torch_run(loaded: LoadedModel, device: torch.device) -> Run:
    # A copy, because Module.to moves parameters in place: the checkpoint's own network must stay on
    # the CPU, where the TorchScript and ONNX exports built from it next trace their example images.
    model = copy.deepcopy(export.serving_module(loaded)).to(device).to(memory_format=torch.channels_last)
    return export.torch_predictor(model, device)


def _require_installed(backend: str) -> None:
    if not installed(backend):
        raise BackendError(f"BACKEND={backend} is not installed (pip install {_NEEDS_MODULE[backend]})")


def _onnx_run(backend: str, path: Path, threads: int) -> Run:
    _require_installed(backend)
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
