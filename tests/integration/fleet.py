"""What the tests of several models share: the operator's command, a second model, the live versions of a name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests
import torch
import torchvision

from stack.processes import REPO_ROOT, Stack

DEFAULT = "efficientnet_lite0"
SHAPES = ["circle", "square", "triangle"]


def model_tools(stack: Stack, *arguments: str) -> subprocess.CompletedProcess:
    """`python -m model_tools ...` against the stack's Redis, as an operator runs it."""
    env = {**os.environ, **stack.settings.as_env()}
    return subprocess.run([sys.executable, "-m", "model_tools", *arguments], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def live_versions(stack: Stack, name: str) -> list[str]:
    """The versions of `name` with a live worker, as GET /models/<name> lists them."""
    body = requests.get(f"{stack.url}/models/{name}", timeout=5).json()
    return [v["version"] for v in body.get("versions", []) if v["workers"] > 0]


def shapes_model(folder: Path, file_name: str = "shapes.pth") -> tuple[Path, Path]:
    """A 3-class mobilenet_v3_small as a bare state_dict (its architecture named by MODEL_ARCH), and its labels."""
    network = torchvision.models.mobilenet_v3_small(num_classes=len(SHAPES)).eval()
    torch.save(network.state_dict(), folder / file_name)
    (folder / "shapes.txt").write_text("\n".join(SHAPES) + "\n")
    return folder / file_name, folder / "shapes.txt"
