"""Model files as users' training scripts and tools write them, for tests: model_tools itself writes no pickles."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn as nn

from model_files.card import ModelCard, card_fields


def save_classic(network: nn.Module, path: Path, card: ModelCard | None = None) -> Path:
    """The classic tutorial's `torch.save({'model': ..., 'model_state_dict': ...})`, with card fields if given."""
    torch.save({"model": network, "model_state_dict": network.state_dict(), **(card_fields(card) if card else {})},
               path)
    return path


ARCHIVER = Path(sys.executable).with_name("torch-model-archiver")  # PyPI torch-model-archiver, in the venv


def torchserve_archive(folder: Path, name: str, serialized: Path, *, handler: str = "image_classifier",
                       model_file: Path | None = None, extra_files: tuple[Path, ...] = ()) -> Path:
    """A .mar as TorchServe's users make one: the real `torch-model-archiver` command, default (zip) format."""
    command = [str(ARCHIVER), "--model-name", name, "--version", "1.0", "--serialized-file", str(serialized),
               "--handler", handler, "--export-path", str(folder)]
    if model_file:
        command += ["--model-file", str(model_file)]
    if extra_files:
        command += ["--extra-files", ",".join(map(str, extra_files))]
    # It gathers the files in TMPDIR/<name> first: a private TMPDIR keeps parallel tests' archives apart.
    scratch = folder / f"{name}-archiver-tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    subprocess.run(command, check=True, capture_output=True, timeout=300, env={**os.environ, "TMPDIR": str(scratch)})
    return folder / f"{name}.mar"
