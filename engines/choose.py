"""Which engine serves the model: BACKEND's, or under `auto` the fastest that builds and gives eager PyTorch's answers.

The worker serves one model file (MODEL_PATH), which is either a checkpoint
(model_files.checkpoints), a TorchScript file or an ONNX file (model_files.export).
BACKEND picks the engine that runs it:

- `torch`: eager PyTorch, channels_last, any device.
- `torchscript`: a TorchScript file as it is, or a checkpoint traced and frozen at start.
- `onnxruntime`, `openvino`: an ONNX file, or a checkpoint exported to ONNX at start.
- `auto`: on a GPU `torch`; on the CPU the first of CPU_PREFERENCE that is installed, builds
  (exports, loads) and gives eager PyTorch's answers; for an ONNX file the first that loads it.

Every engine built from a checkpoint is checked against eager PyTorch before it
serves (engines.verify), so a faster engine can never mean other answers. A
reduced PRECISION (engines.precision) cannot give the same probabilities: its
answers are judged by an agreement report instead, which must reach
PRECISION_MIN_AGREEMENT.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from engines import eager, onnxruntime_cpu, openvino_cpu, precision, torchscript
from engines.base import Engine, EngineError, ExportEngine, Run, device_type
from engines.cache import EngineCache
from engines.verify import verify
from model_files.card import ExportError, ModelCard, ModelOptions, card_fields, first_line, resolve_card
from model_files.files import is_serving_torchscript
from model_files.onnx_file import read_onnx_card
from model_files.precision import AgreementReport
from model_files.trust import TORCHSCRIPT_RUNS_CODE, require_trust
from serving.config import Settings

if TYPE_CHECKING:
    from model_files.checkpoints import LoadedModel

log = logging.getLogger("worker")

EXPORT_ENGINES = {engine.name: engine for engine in (torchscript.ENGINE, onnxruntime_cpu.ENGINE,
                                                    openvino_cpu.ENGINE)}
ENGINE_CHOICES = ("auto", eager.NAME, *EXPORT_ENGINES)
# Fastest first in the service on this project's 2-core CPU with EfficientNet-Lite0 (docs/performance.md "make bench"):
# alone, openvino computes faster, but beside the API processes onnxruntime serves more.
CPU_PREFERENCE = ("onnxruntime", "openvino", "torchscript", "torch")
# A batch function, and a reduced precision's agreement report (None in float32: verified to the tolerance instead).
Built = tuple[Run, AgreementReport | None]
# The engines that run an ONNX file, in CPU_PREFERENCE's order: onnxruntime is also ONNX's reference.
ONNX_FILE_ENGINES = ("onnxruntime", "openvino")


def open_engine(settings: Settings, device: str) -> Engine:
    """The engine BACKEND asks for, serving MODEL_PATH on `device` in PRECISION."""
    _require_known(settings.backend)  # before the file's kind, whose messages name what BACKEND may be
    precision.require_supported(settings, device)
    path = Path(settings.model_path)
    options = model_options(settings)
    threads = settings.compute_threads
    if path.suffix == ".onnx":
        engine = _engine_for_onnx_file(path, options, settings, device, threads)
    elif settings.precision == "int8":  # before loading the model: a checkpoint has no int8 answers to judge
        raise EngineError(f"PRECISION=int8 serves an ONNX file {precision.QUANTIZE_COMMAND} wrote; MODEL_PATH={path} "
                           "is not one")
    elif is_serving_torchscript(path):
        if settings.precision != precision.FULL:
            raise EngineError(f"PRECISION={settings.precision} needs a checkpoint or an ONNX file; {path} is "
                               "TorchScript, which runs in float32")
        engine = _engine_for_torchscript_file(path, options, settings.backend, device)
    else:
        from model_files.checkpoints import load_model  # torch: what serves a checkpoint runs it or its export

        engine = engine_for_checkpoint(load_model(path, options), settings.backend, device, threads,
                                       _engine_cache(settings, path), settings.precision)
    precision.require_serving_agreement(engine.card, settings)
    return engine


def model_options(settings: Settings) -> ModelOptions:
    """What the worker's settings say about MODEL_PATH, for whatever the file does not say itself."""
    return ModelOptions(settings.model_arch, settings.labels_path, settings.input_size, settings.resize_size,
                        settings.mean, settings.std, settings.model_trusted)


def engine_for_checkpoint(loaded: LoadedModel, backend: str, device: str, threads: int,
                          cache: EngineCache | None = None, compute: str = precision.FULL) -> Engine:
    """Build `backend` from a loaded model; `auto` keeps the first candidate that builds and matches eager PyTorch.

    `compute` is the precision (PRECISION): a bf16 engine comes with its agreement report in its card, which the
    caller judges. With a cache, an export verified before is used without exporting or verifying again.
    """
    _require_known(backend)
    if backend in EXPORT_ENGINES and EXPORT_ENGINES[backend].cpu_only:
        _require_cpu(backend, device)
    reference = functools.cache(lambda: eager.open_loaded(loaded, device))  # only built when something needs it

    def build(name: str) -> Engine:
        if name == eager.NAME:
            return Engine(name, loaded.card, reference())
        run, report = _verified_export(EXPORT_ENGINES[name], loaded, device, threads, reference, cache, compute)
        return Engine(name, _card_in(loaded.card, compute, report), run)

    candidates = [backend] if backend != "auto" else _auto_candidates(device, compute)
    return _first_that_builds(backend, candidates, build)


def installed(name: str) -> bool:
    return name not in EXPORT_ENGINES or EXPORT_ENGINES[name].installed()


def _first_that_builds(backend: str, candidates: list[str], build: Callable[[str], Engine]) -> Engine:
    """The first candidate that builds, as an engine.

    Anything raised while building counts against the candidate at this start (each exporter and runtime
    raises types of its own: torch.onnx's UnsupportedOperatorError, onnxruntime's and OpenVINO's load
    errors, a verification's ExportMismatch, an out-of-memory's RuntimeError): under `auto` the next
    candidate is tried; an explicit BACKEND stops.
    """
    failures = []
    for name in candidates:
        try:
            return build(name)
        except Exception as exc:
            reason = first_line(exc)
            if backend != "auto":
                raise EngineError(f"BACKEND={name} cannot serve this model: {reason}") from exc
            log.warning("backend %s skipped: %s", name, reason)
            failures.append(f"{name}: {reason}")
    raise EngineError(f"no engine can serve this model ({'; '.join(failures)})")


def _auto_candidates(device: str, compute: str = precision.FULL) -> list[str]:
    if compute != precision.FULL:
        return precision.candidates(compute)
    if device_type(device) != "cpu":
        return [eager.NAME]  # the ONNX engines are installed for the CPU only
    return [name for name in CPU_PREFERENCE if installed(name)]


def _card_in(card: ModelCard, compute: str, report: AgreementReport | None) -> ModelCard:
    """The card of the model as an engine computes it: float32's as it is, a reduced precision's with its report."""
    return card if compute == precision.FULL else dataclasses.replace(card, precision=compute, agreement=report)


def _verified_export(engine: ExportEngine, loaded: LoadedModel, device: str, threads: int,
                     reference: Callable[[], Run], cache: EngineCache | None,
                     compute: str) -> Built:
    """The engine running an export of the model that gives eager PyTorch's answers, from the cache if it has one;
    in bf16, one whose answers are measured against eager PyTorch's, with the report.

    A cache that cannot hold the export (a full or read-only disk) costs this start the cache, not the
    engine: the export is made again in a temporary folder, elsewhere.
    """
    _require_installed(engine)  # before the cache's key, which reads the runtime's version
    if cache is not None:
        try:
            return _cached_export(engine, loaded, device, threads, reference, cache, compute)
        except OSError as exc:
            log.warning("backend %s: the engine cache cannot hold its export (%s): exporting in a temporary folder",
                        engine.name, exc.strerror or exc)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"model{engine.suffix}"
        return _export_and_verify(engine, loaded, device, threads, reference, path, compute)


def _cached_export(engine: ExportEngine, loaded: LoadedModel, device: str, threads: int,
                   reference: Callable[[], Run], cache: EngineCache, compute: str) -> Built:
    """The cache's verified export, else one made and verified now; only a verdict on the model is remembered.

    A bf16 entry keeps its agreement report: judged against PRECISION_MIN_AGREEMENT at every start, since the
    threshold may have changed, while the report itself is the model's and the runtime's.
    """
    with cache.entry(engine, device, loaded.card, compute) as entry:
        if entry.verdict is not None:
            if not entry.verdict.verified:
                raise EngineError(f"{entry.verdict.reason} (remembered in {entry.path.parent})")
            log.info("backend %s from the engine cache (%s), verified before", engine.name, entry.path.name)
            return _opener(engine, compute)(entry.path, device, threads), entry.verdict.agreement
        try:
            run, report = _export_and_verify(engine, loaded, device, threads, reference, entry.path, compute)
        except ExportError as exc:  # the exporter refuses this model, or its export differs: so at every start
            entry.remember_failure(first_line(exc))
            raise
        # Anything else (an out-of-memory, a full disk, a runtime's own error) is this start's: not remembered.
        entry.remember_success(report)
        return run, report


def _export_and_verify(engine: ExportEngine, loaded: LoadedModel, device: str, threads: int,
                       reference: Callable[[], Run], path: Path, compute: str) -> Built:
    engine.write(loaded, path, device)
    run = _opener(engine, compute)(path, device, threads)
    input_size = loaded.card.preprocessing.input_size
    if compute != precision.FULL:
        report = precision.agreement_on_test_images(reference(), run, input_size, compute, engine.name)
        log.info("backend %s against eager PyTorch: %s", engine.name, report.summary())
        return run, report
    difference = verify(reference(), run, input_size)
    log.info("backend %s matches eager PyTorch (largest probability difference %.2g)", engine.name, difference)
    return run, None


def _opener(engine: ExportEngine, compute: str) -> Callable[[Path, str, int], Run]:
    """How `engine` opens a file to compute in `compute`; EngineError where it cannot."""
    if compute == precision.FULL:
        return engine.open
    if compute == "bf16" and engine.open_bf16 is not None:
        return engine.open_bf16
    raise EngineError(f"BACKEND={engine.name} cannot compute in {compute}")


def _engine_for_onnx_file(path: Path, options: ModelOptions, settings: Settings, device: str,
                          threads: int) -> Engine:
    """An ONNX file as it is (int8 when quantized), or in bf16 judged against the same file in float32."""
    backend = settings.backend
    if backend not in ("auto", *ONNX_FILE_ENGINES):
        raise EngineError(f"{path} is an ONNX file; BACKEND={backend} needs a checkpoint or TorchScript file")
    _require_cpu("/".join(ONNX_FILE_ENGINES), device)
    in_file = read_onnx_card(path, options)
    precision.require_file_precision(in_file, settings.precision, str(path))
    card = _checked_card(in_file, options, path)
    compute = "bf16" if settings.precision == "bf16" else precision.FULL  # an int8 file's precision is in its weights

    def load(name: str) -> Engine:
        engine = EXPORT_ENGINES[name]
        _require_installed(engine)
        run = _opener(engine, compute)(path, device, threads)
        if compute == precision.FULL:
            return Engine(name, card, run)
        report = precision.agreement_on_test_images(engine.open(path, device, threads), run,
                                                    card.preprocessing.input_size, compute, name)
        return Engine(name, _card_in(card, compute, report), run)

    candidates = [backend] if backend != "auto" else (
        precision.candidates(settings.precision) if settings.precision != precision.FULL else list(ONNX_FILE_ENGINES))
    return _first_that_builds(backend, candidates, load)


def _engine_for_torchscript_file(path: Path, options: ModelOptions, backend: str, device: str) -> Engine:
    if backend not in ("auto", eager.NAME, torchscript.ENGINE.name):
        raise EngineError(f"{path} is a TorchScript file; BACKEND={backend} needs a checkpoint or an ONNX file")
    if backend == eager.NAME:
        log.warning("BACKEND=torch with a TorchScript export (%s): it runs on the TorchScript engine", path)
    require_trust(path, TORCHSCRIPT_RUNS_CODE, options)
    run, card = torchscript.open_with_card(path, device)
    return Engine(torchscript.ENGINE.name, _checked_card(card, options, path), run)


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
    """An export's own card, with the configuration checked against it (it may add nothing: the card is whole),
    and what the file computes in kept (the configuration has no say in it)."""
    checked = resolve_card(card_fields(card), options, path, lambda _: len(card.class_names))
    return dataclasses.replace(checked, precision=card.precision, agreement=card.agreement)


def _require_known(backend: str) -> None:
    if backend not in ENGINE_CHOICES:
        raise EngineError(f"BACKEND={backend!r}; expected one of {', '.join(ENGINE_CHOICES)}")


def _require_cpu(backend: str, device: str) -> None:
    if device_type(device) != "cpu":
        raise EngineError(f"BACKEND={backend} runs on the CPU only here; DEVICE={device} needs BACKEND=torch")


def _require_installed(engine: ExportEngine) -> None:
    if not engine.installed():
        raise EngineError(f"BACKEND={engine.name} is not installed (pip install {engine.package})")
