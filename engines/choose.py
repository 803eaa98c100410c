"""Which engine serves the model: BACKEND's, or under `auto` the fastest that builds and gives eager PyTorch's answers.

The worker serves one model file (MODEL_PATH), which is either a checkpoint
(model_tools.checkpoints), a TorchScript file or an ONNX file (model_tools.export).
BACKEND picks the engine that runs it:

- `torch`: eager PyTorch, channels_last, any device.
- `torchscript`: a TorchScript file as it is, or a checkpoint traced and frozen at start.
- `onnxruntime`, `openvino`: an ONNX file, or a checkpoint exported to ONNX at start.
- `auto`: on a GPU `torch`; on the CPU the first of CPU_PREFERENCE that is installed, builds
  (exports, loads) and gives eager PyTorch's answers; for an ONNX file the first that loads it.

Every engine built from a checkpoint is checked against eager PyTorch before it
serves (engines.verify), so a faster engine can never mean other answers.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from engines import eager, onnxruntime_cpu, openvino_cpu, torchscript
from engines.base import BackendError, Engine, ExportBackend, Run
from engines.cache import EngineCache
from engines.verify import verify
from model_tools import export
from model_tools.card import ModelCard, ModelOptions, card_fields, resolve_card
from model_tools.checkpoints import LoadedModel, first_line, is_serving_torchscript, load_model
from model_tools.trust import TORCHSCRIPT_RUNS_CODE, require_trust
from serving.config import Settings

log = logging.getLogger("worker")

EXPORT_BACKENDS = {backend.name: backend for backend in (torchscript.BACKEND, onnxruntime_cpu.BACKEND,
                                                        openvino_cpu.BACKEND)}
BACKENDS = ("auto", eager.NAME, *EXPORT_BACKENDS)
# Fastest first in the service on this project's 2-core CPU with EfficientNet-Lite0 (docs/performance.md "make bench"):
# alone, openvino computes faster, but beside the API processes onnxruntime serves more.
CPU_PREFERENCE = ("onnxruntime", "openvino", "torchscript", "torch")
# The engines that run an ONNX file, in CPU_PREFERENCE's order: onnxruntime is also ONNX's reference.
ONNX_FILE_ENGINES = ("onnxruntime", "openvino")


def open_engine(settings: Settings, device: torch.device) -> Engine:
    """The engine BACKEND asks for, serving MODEL_PATH on `device`."""
    _require_known(settings.backend)  # before the file's kind, whose messages name what BACKEND may be
    path = Path(settings.model_path)
    options = ModelOptions.from_settings(settings)
    threads = settings.compute_threads
    if path.suffix == ".onnx":
        return _engine_for_onnx_file(path, options, settings.backend, device, threads)
    if is_serving_torchscript(path):
        return _engine_for_torchscript_file(path, options, settings.backend, device)
    loaded = load_model(path, options)
    return engine_for_checkpoint(loaded, settings.backend, device, threads, _engine_cache(settings, path))


def engine_for_checkpoint(loaded: LoadedModel, backend: str, device: torch.device, threads: int,
                          cache: EngineCache | None = None) -> Engine:
    """Build `backend` from a loaded model; `auto` keeps the first candidate that builds and matches eager PyTorch.

    With a cache, an export verified before is used without exporting or verifying again.
    """
    _require_known(backend)
    if backend in EXPORT_BACKENDS and EXPORT_BACKENDS[backend].cpu_only:
        _require_cpu(backend, device)
    reference = functools.cache(lambda: eager.open_loaded(loaded, device))  # only built when something needs it

    def build(name: str) -> Run:
        if name == eager.NAME:
            return reference()
        return _verified_export(EXPORT_BACKENDS[name], loaded, device, threads, reference, cache)

    name, run = _first_that_builds(backend, [backend] if backend != "auto" else _auto_candidates(device), build)
    return Engine(name, loaded.card, run)


def installed(backend: str) -> bool:
    return backend not in EXPORT_BACKENDS or EXPORT_BACKENDS[backend].installed()


def _first_that_builds(backend: str, candidates: list[str], build: Callable[[str], Run]) -> tuple[str, Run]:
    """The first candidate that builds, and its batch function.

    Anything raised while building counts against the candidate at this start (each exporter and runtime
    raises types of its own: torch.onnx's UnsupportedOperatorError, onnxruntime's and OpenVINO's load
    errors, a verification's ExportMismatch, an out-of-memory's RuntimeError): under `auto` the next
    candidate is tried; an explicit BACKEND stops.
    """
    failures = []
    for name in candidates:
        try:
            return name, build(name)
        except Exception as exc:
            reason = first_line(exc)
            if backend != "auto":
                raise BackendError(f"BACKEND={name} cannot serve this model: {reason}") from exc
            log.warning("backend %s skipped: %s", name, reason)
            failures.append(f"{name}: {reason}")
    raise BackendError(f"no engine can serve this model ({'; '.join(failures)})")


def _auto_candidates(device: torch.device) -> list[str]:
    if device.type != "cpu":
        return [eager.NAME]  # the ONNX engines are installed for the CPU only
    return [name for name in CPU_PREFERENCE if installed(name)]


def _verified_export(backend: ExportBackend, loaded: LoadedModel, device: torch.device, threads: int,
                     reference: Callable[[], Run], cache: EngineCache | None) -> Run:
    """The backend running an export of the model that gives eager PyTorch's answers, from the cache if it has one.

    A cache that cannot hold the export (a full or read-only disk) costs this start the cache, not the
    engine: the export is made again in a temporary folder, elsewhere.
    """
    _require_installed(backend)  # before the cache's key, which reads the runtime's version
    if cache is not None:
        try:
            return _cached_export(backend, loaded, device, threads, reference, cache)
        except OSError as exc:
            log.warning("backend %s: the engine cache cannot hold its export (%s): exporting in a temporary folder",
                        backend.name, exc.strerror or exc)
    with tempfile.TemporaryDirectory() as scratch:
        return _export_and_verify(backend, loaded, device, threads, reference, Path(scratch) / f"model{backend.suffix}")


def _cached_export(backend: ExportBackend, loaded: LoadedModel, device: torch.device, threads: int,
                   reference: Callable[[], Run], cache: EngineCache) -> Run:
    """The cache's verified export, else one made and verified now; only a verdict on the model is remembered."""
    with cache.entry(backend, device, loaded.card) as entry:
        if entry.verdict is not None:
            if not entry.verdict.verified:
                raise BackendError(f"{entry.verdict.reason} (remembered in {entry.path.parent})")
            log.info("backend %s from the engine cache (%s), verified before", backend.name, entry.path.name)
            return backend.open(entry.path, device, threads)
        try:
            run = _export_and_verify(backend, loaded, device, threads, reference, entry.path)
        except export.ExportError as exc:  # the exporter refuses this model, or its export differs: so at every start
            entry.remember_failure(first_line(exc))
            raise
        # Anything else (an out-of-memory, a full disk, a runtime's own error) is this start's: not remembered.
        entry.remember_success()
        return run


def _export_and_verify(backend: ExportBackend, loaded: LoadedModel, device: torch.device, threads: int,
                       reference: Callable[[], Run], path: Path) -> Run:
    backend.write(loaded, path, device)
    run = backend.open(path, device, threads)
    difference = verify(reference(), run, loaded.card.preprocessing.input_size)
    log.info("backend %s matches eager PyTorch (largest probability difference %.2g)", backend.name, difference)
    return run


def _engine_for_onnx_file(path: Path, options: ModelOptions, backend: str, device: torch.device,
                          threads: int) -> Engine:
    if backend not in ("auto", *ONNX_FILE_ENGINES):
        raise BackendError(f"{path} is an ONNX file; BACKEND={backend} needs a checkpoint or TorchScript file")
    _require_cpu("/".join(ONNX_FILE_ENGINES), device)
    card = _checked_card(export.read_onnx_card(path, options), options, path)

    def load(name: str) -> Run:
        _require_installed(EXPORT_BACKENDS[name])
        return EXPORT_BACKENDS[name].open(path, device, threads)

    name, run = _first_that_builds(backend, [backend] if backend != "auto" else list(ONNX_FILE_ENGINES), load)
    return Engine(name, card, run)


def _engine_for_torchscript_file(path: Path, options: ModelOptions, backend: str, device: torch.device) -> Engine:
    if backend not in ("auto", eager.NAME, torchscript.BACKEND.name):
        raise BackendError(f"{path} is a TorchScript file; BACKEND={backend} needs a checkpoint or an ONNX file")
    if backend == eager.NAME:
        log.warning("BACKEND=torch with a TorchScript export (%s): it runs on the TorchScript engine", path)
    require_trust(path, TORCHSCRIPT_RUNS_CODE, options)
    run, card = torchscript.open_with_card(path, device)
    return Engine(torchscript.BACKEND.name, _checked_card(card, options, path), run)


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


def _checked_card(card: ModelCard, options: ModelOptions, path: Path) -> ModelCard:
    """An export's own card, with the configuration checked against it (it may add nothing: the card is whole)."""
    return resolve_card(card_fields(card), options, path, lambda _: len(card.class_names))


def _require_known(backend: str) -> None:
    if backend not in BACKENDS:
        raise BackendError(f"BACKEND={backend!r}; expected one of {', '.join(BACKENDS)}")


def _require_cpu(backend: str, device: torch.device) -> None:
    if device.type != "cpu":
        raise BackendError(f"BACKEND={backend} runs on the CPU only here; DEVICE={device} needs BACKEND=torch")


def _require_installed(backend: ExportBackend) -> None:
    if not backend.installed():
        raise BackendError(f"BACKEND={backend.name} is not installed (pip install {backend.package})")
