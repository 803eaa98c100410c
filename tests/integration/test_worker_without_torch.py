"""A worker without torch: an ONNX export served with numpy, onnx and ONNX Runtime alone (requirements-worker-onnx.txt).

The worker is the real `python -m worker`, against a real redis-server and behind the real API, in this venv with
torch made unimportable (tests/without_torch/sitecustomize.py); beside it a worker with torch serves the
checkpoint the file was exported from, on eager PyTorch. A photo gets the same answer from both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.config import Settings
from stack.processes import REPO_ROOT, Stack
from tests.images import photo_bytes
from tests.integration.client import post_image, wait_until
from tests.integration.conftest import stack_settings
from tests.integration.fleet import live_versions

WITHOUT_TORCH = {"PYTHONPATH": str(REPO_ROOT / "tests" / "without_torch")}  # its sitecustomize hides torch
ONNX_NAME = "lite0-onnx"


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory) -> Path:
    """The default model exported as a user exports it, verified against eager PyTorch by the command."""
    out = tmp_path_factory.mktemp("export") / "efficientnet_lite0.onnx"
    subprocess.run([sys.executable, "-m", "model_tools", "export-onnx", "--checkpoint", Settings().model_path,
                    "--out", str(out)], cwd=REPO_ROOT, check=True, capture_output=True, timeout=600)
    return out


def test_the_python_without_torch_cannot_import_it():
    """The check can tell: in this venv torch is installed, and the sitecustomize hides it."""
    hidden = subprocess.run([sys.executable, "-c", "import torch"], env={**os.environ, **WITHOUT_TORCH},
                            capture_output=True, text=True, timeout=60)
    assert hidden.returncode == 1 and "No module named 'torch'" in hidden.stderr
    assert subprocess.run([sys.executable, "-c", "import torch"], timeout=60).returncode == 0


def test_a_worker_without_torch_serves_an_onnx_export_with_the_answers_of_the_worker_with_torch(tmp_path, onnx_export):
    with Stack(stack_settings(backend="torch"), workers=1, log_dir=tmp_path) as stack:
        worker = stack.start_worker({**WITHOUT_TORCH, "MODEL_PATH": str(onnx_export), "MODEL_NAME": ONNX_NAME,
                                     "BACKEND": "onnxruntime"})
        wait_until(lambda: live_versions(stack, ONNX_NAME) or worker.poll() is not None, 120,
                   what=f"{ONNX_NAME} served")
        log = stack.log_path("worker1").read_text()
        assert worker.poll() is None, log
        assert "with backend=onnxruntime on cpu" in log and f"ready model={ONNX_NAME}@1 device=cpu" in log
        for photo in ("chelsea.png", "coffee.png"):
            with_torch = post_image(stack.url, photo_bytes(photo), path="/models/efficientnet_lite0/predict")
            without = post_image(stack.url, photo_bytes(photo), path=f"/models/{ONNX_NAME}/predict")
            assert with_torch.status_code == without.status_code == 200, (with_torch.text, without.text)
            expected, got = with_torch.json()["predictions"][0], without.json()["predictions"][0]
            assert (got["index"], got["label"]) == (expected["index"], expected["label"]), photo
            assert got["probability"] == pytest.approx(expected["probability"], abs=1e-4), photo
