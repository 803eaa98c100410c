"""Exports of the serving model (TorchScript, ONNX) and their verification against the eager model.

Every export is of `ServingModel`: uint8 NHWC RGB images with a dynamic batch
dimension in, softmax probabilities out, so normalization travels inside the
file. The model card (class names, resize, crop, mean, std) travels too, as
JSON: a TorchScript extra file named CARD_FILE, or an ONNX metadata property
with that key. A client needs only the file and the images.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from model_tools import CARD_FILE, TOLERANCE
from model_tools.card import ModelCard, ModelLoadError, card_from_json, card_to_json
from model_tools.checkpoints import LoadedModel, first_line, write_atomically
from model_tools.serving_model import ServingModel

METHODS = ("trace", "script")
ONNX_OPSET = 17

Predict = Callable[[np.ndarray], np.ndarray]  # uint8 NHWC images -> probabilities


class ExportMismatch(RuntimeError):
    """An exported model does not compute what the eager model computes."""


def serving_module(loaded: LoadedModel) -> ServingModel:
    p = loaded.card.preprocessing
    return ServingModel(loaded.network, p.mean, p.std).eval()


def example_images(input_size: int) -> torch.Tensor:
    return torch.from_numpy(_random_images(np.random.default_rng(0), 2, input_size))


def export_torchscript(loaded: LoadedModel, out: str | os.PathLike, *, method: str = "trace",
                       optimize: bool = False) -> Path:
    """Write the serving model as TorchScript with the card inside; returns the path.

    method "trace" records one run on example images (EfficientNet-Lite, like most CNNs,
    only traces); "script" compiles the Python code and keeps its control flow. optimize
    freezes the module: weights become constants and freezing's graph passes fold
    conv+batchnorm (about 1.3x faster on the CPU here). torch.jit.optimize_for_inference
    is not applied: its MKLDNN-prepacked graph saves but does not load again ("required
    keyword attribute 'value' is undefined"). Verify the result with `verify`: tracing
    silently bakes in whatever branch the example took.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r}; expected one of {', '.join(METHODS)}")
    module = serving_module(loaded)
    with torch.no_grad(), _quiet_jit():
        if method == "script":
            try:
                converted = torch.jit.script(module)
            except Exception as exc:
                raise ExportMismatch(f"torch.jit.script cannot compile {loaded.card.arch}: "
                                     f"{first_line(exc)} (use method='trace')") from None
        else:
            converted = torch.jit.trace(module, example_images(loaded.card.preprocessing.input_size))
        if optimize:
            converted = torch.jit.freeze(converted.eval())
        return write_atomically(Path(out), lambda partial: torch.jit.save(
            converted, str(partial),
            _extra_files={CARD_FILE: card_to_json(loaded.card, {"method": method, "frozen": optimize})}))


def load_torchscript(path: str | os.PathLike, device: str | torch.device = "cpu"
                     ) -> tuple[torch.jit.ScriptModule, ModelCard]:
    """A TorchScript file written by export_torchscript, in eval mode on `device`, and its card."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"TorchScript file {path} does not exist (`python -m model_tools trace` writes one)")
    extra_files = {CARD_FILE: ""}
    try:
        with _quiet_jit():
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra_files)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a TorchScript file: {first_line(exc)}") from None
    if not extra_files[CARD_FILE]:
        raise ModelLoadError(f"{path} carries no {CARD_FILE}; export it with `python -m model_tools trace`")
    return module.eval(), card_from_json(extra_files[CARD_FILE])


def export_onnx(loaded: LoadedModel, out: str | os.PathLike) -> Path:
    """Write the serving model as ONNX (dynamic batch) with the card in metadata_props[CARD_FILE]."""
    import onnx

    module = serving_module(loaded)
    out = Path(out)

    def write(partial: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and constant-folding notes
            torch.onnx.export(module, (example_images(loaded.card.preprocessing.input_size),), str(partial),
                              dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["images"], output_names=["probabilities"],
                              dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}})
        model = onnx.load(str(partial))
        onnx.checker.check_model(model)
        entry = model.metadata_props.add()
        entry.key, entry.value = CARD_FILE, card_to_json(loaded.card)
        onnx.save(model, str(partial))

    return write_atomically(out, write)


def read_onnx_card(path: str | os.PathLike) -> ModelCard:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"ONNX file {path} does not exist (`python -m model_tools export-onnx` writes one)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not an ONNX file: {exc}") from None
    for entry in model.metadata_props:
        if entry.key == CARD_FILE:
            return card_from_json(entry.value)
    raise ModelLoadError(f"{path} carries no {CARD_FILE} metadata; export it with `python -m model_tools export-onnx`")


def torch_predictor(module: torch.nn.Module, device: str | torch.device = "cpu") -> Predict:
    """A torch module (eager or TorchScript) on `device` as a numpy-in, numpy-out callable."""
    def predict(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.from_numpy(images).to(device, non_blocking=True)
            return module(batch).float().cpu().numpy()
    return predict


def onnx_predictor(path: str | os.PathLike, threads: int = 0) -> Predict:
    """An ONNX file run by ONNX Runtime on the CPU with `threads` compute threads (0: its own choice)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle compute threads would otherwise spin, taking the CPU from the API processes beside a worker.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}") from None
    input_name = session.get_inputs()[0].name
    return lambda images: session.run(None, {input_name: images})[0]


def verify(reference: Predict, candidate: Predict, input_size: int, batch_sizes: Sequence[int] = (1, 8),
           tolerance: float = TOLERANCE) -> float:
    """Largest absolute probability difference between two models over several inputs per batch size.

    Inputs: uniform noise, smooth random images (which give confident, varied answers)
    and a constant image. Raises
    ExportMismatch above tolerance, or when the outputs' shapes differ.
    """
    rng = np.random.default_rng(1234)
    worst = 0.0
    for batch_size in batch_sizes:
        batches = [_random_images(rng, batch_size, input_size), _smooth_images(rng, batch_size, input_size),
                   np.full((batch_size, input_size, input_size, 3), 128, np.uint8)]
        for images in batches:
            expected = np.asarray(reference(images))
            try:
                got = np.asarray(candidate(images))
            except Exception as exc:  # each runtime raises its own types; a failing engine is not a match
                raise ExportMismatch(f"the export fails on a batch of {batch_size}: {first_line(exc)}") from None
            if expected.shape != got.shape:
                raise ExportMismatch(f"batch of {batch_size}: output shape {got.shape}, expected {expected.shape}")
            worst = max(worst, float(np.abs(expected.astype(np.float64) - got).max()))
    if not worst <= tolerance:  # also catches NaN
        raise ExportMismatch(f"exported model differs from the eager model by up to {worst:.3g} "
                             f"(tolerance {tolerance:g})")
    return worst


def _random_images(rng: np.random.Generator, batch_size: int, size: int) -> np.ndarray:
    return rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)


def _smooth_images(rng: np.random.Generator, batch_size: int, size: int) -> np.ndarray:
    """Blobs of colour: a coarse random grid, upsampled by repetition and box-blurred."""
    cells = 8
    coarse = rng.integers(0, 256, (batch_size, cells, cells, 3)).astype(np.float32)
    repeat = -(-size // cells)
    fine = coarse.repeat(repeat, axis=1).repeat(repeat, axis=2)[:, :size, :size]
    for axis in (1, 2):
        fine = sum(np.roll(fine, shift, axis=axis) for shift in range(-3, 4)) / 7
    return fine.round().clip(0, 255).astype(np.uint8)


@contextlib.contextmanager
def _quiet_jit():
    """Silence torch.jit's deprecation notices (a FutureWarning on every trace, freeze, save and load)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield
