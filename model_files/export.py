"""Export files of the serving model (TorchScript, ONNX): writing them, and reading them back with their card.

Every export is of `ServingModel`: uint8 NHWC RGB images with a dynamic batch
dimension in, softmax probabilities out, so normalization travels inside the
file. The model card (class names, resize, crop, mean, std) travels too, as
JSON: a TorchScript extra file named CARD_FILE, or an ONNX metadata property
with that key (model_files.onnx_file, which reads it back without torch). A
client needs only the file and the images. The engines that
run these files, and the check that they give the eager model's answers
(engines.verify), live in engines/.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from model_files import CARD_FILE
from model_files.card import ExportError, ModelCard, ModelLoadError, card_from_json, card_to_json, first_line
from model_files.checkpoints import LoadedModel
from model_files.files import write_atomically, write_serialized
from model_files.onnx_file import set_onnx_card
from model_files.serving_model import ServingModel

METHODS = ("trace", "script")
ONNX_OPSET = 17


def serving_module(loaded: LoadedModel) -> ServingModel:
    p = loaded.card.preprocessing
    return ServingModel(loaded.network, p.mean, p.std).eval()


def example_images(input_size: int) -> torch.Tensor:
    """Two noise images, what tracing and the ONNX exporter run the model on."""
    noise = np.random.default_rng(0).integers(0, 256, (2, input_size, input_size, 3), dtype=np.uint8)
    return torch.from_numpy(noise)


def export_torchscript(loaded: LoadedModel, out: str | os.PathLike, *, method: str = "trace",
                       optimize: bool = False) -> Path:
    """Write the serving model as TorchScript with the card inside; returns the path.

    method "trace" records one run on example images (EfficientNet-Lite, like most CNNs,
    only traces); "script" compiles the Python code and keeps its control flow. optimize
    freezes the module: weights become constants and freezing's graph passes fold
    conv+batchnorm (about 1.3x faster on the CPU here). torch.jit.optimize_for_inference
    is not applied: its MKLDNN-prepacked graph saves but does not load again ("required
    keyword attribute 'value' is undefined"). Verify the result (engines.verify): tracing
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
                raise ExportError(f"torch.jit.script cannot compile {loaded.card.arch}: "
                                     f"{first_line(exc)} (use method='trace')") from None
        else:
            converted = torch.jit.trace(module, example_images(loaded.card.preprocessing.input_size))
        if optimize:
            converted = torch.jit.freeze(converted.eval())
        return write_serialized(Path(out), lambda buffer: torch.jit.save(
            converted, buffer,
            _extra_files={CARD_FILE: card_to_json(loaded.card, {"method": method, "frozen": optimize})}))


def load_torchscript(path: str | os.PathLike, device: str = "cpu"
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
    images = example_images(loaded.card.preprocessing.input_size)
    out = Path(out)

    def write(partial: Path) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation and constant-folding notes
                torch.onnx.export(_traceable(module, images), (images,), str(partial),
                                  dynamo=False, opset_version=ONNX_OPSET,
                                  input_names=["images"], output_names=["probabilities"],
                                  dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}})
            model = onnx.load(str(partial))
            onnx.checker.check_model(model)
        except (torch.onnx.OnnxExporterError, onnx.checker.ValidationError) as exc:
            # Refusals of this model (an operator ONNX has no symbol for, an invalid graph); an out-of-memory
            # is a plain RuntimeError, a full disk an OSError, and go through as they are.
            raise ExportError(first_line(exc)) from exc
        set_onnx_card(model, loaded.card)
        onnx.save(model, str(partial))

    return write_atomically(out, write)


def _traceable(module: ServingModel, images: torch.Tensor) -> torch.nn.Module:
    """What the legacy ONNX exporter can take: the serving model, or its trace when its network is TorchScript.

    The exporter traces an eager module itself, and its trace cannot call into a TorchScript submodule
    (a TorchScript file's network, or a .mar's): "Tried to trace <...> but it is not part of the active
    trace". torch.jit.trace can, inlining the program; a ScriptModule the exporter converts as it is.
    The trace runs on the example images, at the card's input size, where the program is known to run.
    """
    if not any(isinstance(m, torch.jit.ScriptModule) for m in module.modules()):
        return module
    with torch.no_grad(), _quiet_jit():
        return torch.jit.trace(module, images)


@contextlib.contextmanager
def _quiet_jit():
    """Silence torch.jit's deprecation notices (a FutureWarning on every trace, freeze, save and load)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield
