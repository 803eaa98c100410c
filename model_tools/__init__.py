"""Build, load, export and verify the models the service runs. Imports torch: never used by the API.

This file itself imports nothing, so `python -m model_tools ... --if-missing` answers without loading torch.
"""

IMPORT_COMMAND = "python -m model_tools import"  # named in the messages of files that need it
CARD_FILE = "model_card.json"  # the card's name inside TorchScript, torch.export and ONNX files
# Largest accepted difference of any probability between two engines; float32 reorderings stay near 1e-6.
TOLERANCE = 1e-4
