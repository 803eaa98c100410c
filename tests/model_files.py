"""Model files as users' training scripts write them, for tests: model_tools itself writes no pickles."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from model_tools.card import ModelCard, card_fields


def save_classic(network: nn.Module, path: Path, card: ModelCard | None = None) -> Path:
    """The classic tutorial's `torch.save({'model': ..., 'model_state_dict': ...})`, with card fields if given."""
    torch.save({"model": network, "model_state_dict": network.state_dict(), **(card_fields(card) if card else {})},
               path)
    return path
