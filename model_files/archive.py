"""TorchServe's model archives (.mar): the network inside, its labels, and the stock handler's preprocessing.

`torch-model-archiver` writes a zip. MAR-INF/MANIFEST.json names the model (`model.modelName`), its
serialized file (`model.serializedFile`: TorchScript, or the state dict of an eager model whose class
`model.modelFile` defines) and its handler (`model.handler`); extra files such as index_to_name.json sit
beside them. TorchServe's BaseHandler loads the network the same way: with a modelFile, it imports that
file, takes the one class it defines, builds it without arguments and loads the state dict into it;
without, it loads the serialized file as TorchScript.

Only the stock `image_classifier` handler is read, because its preprocessing is fixed and so can go into
the card: Resize(256), CenterCrop(224), ToTensor, ImageNet's Normalize, softmax. Any other handler's
preprocessing is code, and the refusal says how to import the network inside instead.

Both kinds of network are code: model.py runs when imported, and a TorchScript program is a program. So
reading an archive needs trust (--trusted, MODEL_TRUSTED=1) whichever it holds, and this module refuses
before anything of the archive runs; `python -m model_tools import` then turns it once into ONNX (its
network is never a named architecture: a TorchScript program, or model.py's own class), which needs none.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import io
import json
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from model_files import IMPORT_COMMAND
from model_files.card import IMAGENET_CONVENTION, ModelLoadError, ModelOptions, first_line, labels_from_json

MANIFEST = "MAR-INF/MANIFEST.json"
LABELS_FILE = "index_to_name.json"  # where TorchServe's BaseHandler looks for labels, beside the manifest
STOCK_HANDLER = "image_classifier"
# ts/torch_handler/image_classifier.py's transforms are torchvision's ImageNet convention exactly.
STOCK_PREPROCESSING = IMAGENET_CONVENTION


def is_model_archive(path: Path) -> bool:
    """A file named .mar, or any zip holding TorchServe's manifest."""
    if path.suffix == ".mar":
        return True
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return MANIFEST in archive.namelist()


def read_archive(path: Path, options: ModelOptions) -> tuple[nn.Module, dict]:
    """The archive's network and its card fields (name, labels, the stock handler's preprocessing)."""
    with _open(path) as archive:
        model = _manifest(archive, path)
        serialized = _serialized_file(archive, model, path)
        fields = _card_fields(archive, model, path)
        _require_trust(path, model, options)  # nothing from the archive has run before this
        model_file = model.get("modelFile")
        if model_file:
            network = _eager_network(archive, str(model_file), serialized, path)
        else:
            network = _torchscript_network(archive.read(serialized), serialized, path)
    return network, fields


def _open(path: Path) -> zipfile.ZipFile:
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path} is not a zip file, as torch-model-archiver's default format writes "
                             "(archive it again without --archive-format tgz or no-archive)")
    return zipfile.ZipFile(path)


def _manifest(archive: zipfile.ZipFile, path: Path) -> dict:
    """The manifest's `model` section, once its handler is known to be the stock image classifier."""
    if MANIFEST not in archive.namelist():
        raise ModelLoadError(f"{path} holds no {MANIFEST}: not an archive torch-model-archiver made")
    try:
        model = json.loads(archive.read(MANIFEST))["model"]
        if not isinstance(model, dict):
            raise TypeError("'model' is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{MANIFEST} in {path} is not a manifest with a 'model' section: {exc!r}") from None
    handler = model.get("handler")
    if handler != STOCK_HANDLER:
        raise ModelLoadError(_custom_handler_advice(path, handler, model))
    return model


def _custom_handler_advice(path: Path, handler, model: dict) -> str:
    name, serialized = model.get("modelName") or path.stem, model.get("serializedFile") or "its serialized file"
    eager = (f" {serialized} is the state dict of the class in {model['modelFile']}: from your code, save the "
             "network whole (torch.save(model, 'model.pth')) and import that instead." if model.get("modelFile")
             else "")
    return (f"{path} uses the handler {handler!r}, not TorchServe's stock {STOCK_HANDLER}: a handler's "
            "preprocessing is code, and model_tools knows only the stock one's (resize 256, crop 224, ImageNet "
            f"mean and std). Import the network inside, saying what your handler does: unzip {path} and run "
            f"`{IMPORT_COMMAND} {serialized} --trusted --labels {LABELS_FILE} --resize-size N --input-size N "
            f"--mean R,G,B --std R,G,B --out models/{name}.onnx`.{eager}")


def _serialized_file(archive: zipfile.ZipFile, model: dict, path: Path) -> str:
    serialized = model.get("serializedFile")
    if not serialized:
        raise ModelLoadError(f"{path}: its manifest names no serializedFile, so the archive holds no weights "
                             "(archive it again with --serialized-file)")
    if serialized not in archive.namelist():
        raise ModelLoadError(f"{path}: its manifest names the serializedFile {serialized}, which the archive "
                             "does not hold")
    return str(serialized)


def _require_trust(path: Path, model: dict, options: ModelOptions) -> None:
    if options.trusted:
        return
    code = (f"{model['modelFile']}, Python that runs when imported" if model.get("modelFile")
            else f"{model['serializedFile']}, a TorchScript program")
    name = model.get("modelName") or path.stem
    raise ModelLoadError(
        f"{path} holds code: {code}. Where you trust the archive, convert it once into a file that runs no code "
        f"of its own: `{IMPORT_COMMAND} {path} --trusted --out models/{name}.onnx`, and serve that; or, to serve "
        f"it as it is: {options.names['trusted']}.")


def _card_fields(archive: zipfile.ZipFile, model: dict, path: Path) -> dict:
    """What the archive says of the card: its name, its labels, and the stock handler's preprocessing."""
    fields = {"name": model.get("modelName") or path.stem, **dataclasses.asdict(STOCK_PREPROCESSING)}
    if LABELS_FILE in archive.namelist():  # without one TorchServe answers with indices; the card's defaults apply
        text = archive.read(LABELS_FILE).decode("utf-8", errors="replace")
        fields["class_names"] = labels_from_json(text, f"{LABELS_FILE} in {path}")
    return fields


def _torchscript_network(data: bytes, serialized: str, path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice on every load
            return torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(f"{serialized} in {path} is not TorchScript ({first_line(exc)}); an eager model's "
                             "manifest names the modelFile that defines its class") from None


def _eager_network(archive: zipfile.ZipFile, model_file: str, serialized: str, path: Path) -> nn.Module:
    """TorchServe's way: import model_file beside the archive's other files, build its one class, load weights."""
    if model_file not in archive.namelist():
        raise ModelLoadError(f"{path}: its manifest names the modelFile {model_file}, which the archive does not hold")
    with tempfile.TemporaryDirectory(prefix="mar-") as folder:
        archive.extractall(folder)  # model.py may import the archive's other files, as in TorchServe's model_dir
        network = _build(_model_class(Path(folder), model_file, path), model_file, path)
    state_dict = _state_dict(archive.read(serialized), serialized, path)
    try:
        network.load_state_dict(state_dict)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"{serialized} in {path} does not fit the class in {model_file}: "
                             f"{first_line(exc)}") from None
    return network


def _model_class(folder: Path, model_file: str, path: Path) -> type:
    """The one class model_file defines (TorchServe's rule), imported under the module name TorchServe uses."""
    module_name = Path(model_file).stem
    spec = importlib.util.spec_from_file_location(module_name, folder / model_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # as importlib.import_module would: dataclasses and pickling look it up
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code raises whatever it raises
        raise ModelLoadError(f"{model_file} in {path} fails on import: {first_line(exc)}") from None
    finally:
        sys.path.remove(str(folder))
    classes = [member for _, member in inspect.getmembers(module, inspect.isclass)
               if member.__module__ == module.__name__]
    if len(classes) != 1 or not issubclass(classes[0], nn.Module):
        defined = ", ".join(c.__name__ for c in classes) or "none"
        raise ModelLoadError(f"{model_file} in {path} must define exactly one class, the network (an nn.Module), "
                             f"as TorchServe requires; it defines: {defined}")
    return classes[0]


def _build(model_class: type, model_file: str, path: Path) -> nn.Module:
    try:
        return model_class()
    except Exception as exc:
        raise ModelLoadError(f"{model_class.__name__} in {model_file} of {path} cannot be built without "
                             f"arguments, as TorchServe builds it: {first_line(exc)}") from None


def _state_dict(data: bytes, serialized: str, path: Path) -> dict:
    try:
        state_dict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for bytes that are not its format
        raise ModelLoadError(f"{serialized} in {path} is not a tensors-only state dict: {first_line(exc)}") from None
    if not isinstance(state_dict, dict):
        raise ModelLoadError(f"{serialized} in {path} holds {type(state_dict).__name__}, not a state dict")
    return state_dict
