"""On PYTHONPATH, makes this Python one without torch: `import torch` (or torchvision) fails as if not installed.

Python imports sitecustomize at start-up, before any program code; the finder goes first on sys.meta_path, so
no installed copy is ever found. What an image without torch would do (requirements-worker-onnx.txt), in the
test venv, which has torch.
"""

import sys

MISSING = ("torch", "torchvision")


class WithoutTorch:
    """A meta-path finder that finds nothing, except for torch's packages, which it says are not installed."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in MISSING:
            raise ModuleNotFoundError(f"No module named {name!r} (tests/without_torch)", name=name)
        return None


sys.meta_path.insert(0, WithoutTorch())
