"""An ONNX file's card, in its metadata (the property CARD_FILE): written, and read back once trust's check passed.

The onnx package alone reads it, no torch: a worker serving an ONNX file needs numpy, onnx and ONNX Runtime
(requirements-worker-onnx.txt). model_files.export writes the file itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from model_files import CARD_FILE
from model_files.card import ModelCard, ModelLoadError, ModelOptions, card_from_json, card_to_json
from model_files.trust import check_onnx


def set_onnx_card(model, card: ModelCard) -> None:
    """Put `card` in an ONNX model's metadata (an onnx.ModelProto), in place of any card it carried."""
    kept = [entry for entry in model.metadata_props if entry.key != CARD_FILE]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_FILE, card_to_json(card)


def read_onnx_card(path: str | os.PathLike, options: ModelOptions = ModelOptions()) -> ModelCard:
    """The card of an ONNX file model_tools wrote, once model_files.trust.check_onnx has passed the file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"ONNX file {path} does not exist (`python -m model_tools export-onnx` writes one)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not an ONNX file: {exc}") from None
    check_onnx(model, path, options)
    for entry in model.metadata_props:
        if entry.key == CARD_FILE:
            return card_from_json(entry.value)
    raise ModelLoadError(f"{path} carries no {CARD_FILE} metadata; export it with `python -m model_tools export-onnx`")
