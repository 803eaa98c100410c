"""The model-file library: what a classifier file holds and how to read and write each kind.

- `architectures`: networks rebuilt from a name, with their published weights' preprocessing.
- `card`: the model card (class names, preprocessing, precision) and where each value came from.
- `checkpoints`: loading any model file the service reads.
- `files`: writing files so that no reader sees half of one; telling the kinds of file apart.
- `archive`: TorchServe's model archives (.mar).
- `export`: the TorchScript and ONNX exports of the serving model, with their card inside.
- `onnx_file`: an ONNX file's card, read and written in its metadata.
- `serving_model`: the model as the service runs it (uint8 NHWC in, probabilities out).
- `trust`: which files may be read without MODEL_TRUSTED=1.
- `precision`: the agreement report of a reduced precision against float32.

Layers: the programs (model_tools' commands, the worker) and engines/ import this; it imports only serving/'s
configuration (tests/unit/test_layers.py holds the order). Only checkpoints, archive, export and
serving_model import torch: a worker serving an ONNX file reads its card without it. This file itself
imports nothing, so model_tools' command line reads its constants without loading torch.
"""

CARD_FILE = "model_card.json"  # the card's name inside TorchScript, torch.export and ONNX files
IMPORT_COMMAND = "python -m model_tools import"  # named in the messages of files that need it
# Largest accepted difference of any probability between an export and the model it was made from (engines.verify
# checks it); float32 reorderings stay near 1e-6.
TOLERANCE = 1e-4
