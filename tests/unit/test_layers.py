"""The packages are layers: each imports only from its own layer and those below it, never from one above.

Top to bottom: the programs (the API, the worker, the launcher, model_tools' commands), the engines, the
model-file library, and what the API and the worker share (configuration, the Redis protocol, preprocessing).
Every import counts, a function's own included: an import inside a function is still a dependency, only a later one.
And torch is a dependency of some engines only: a worker serving an ONNX file imports none of it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

LAYERS = (
    ("app", "worker", "stack", "model_tools"),
    ("engines",),
    ("model_files",),
    ("serving",),
)
NOT_LAYERED = {"tests", "scripts", "mutants"}  # above every layer: they drive and check them all
WITHOUT_TORCH = ROOT / "tests" / "without_torch"  # on PYTHONPATH, its sitecustomize makes torch unimportable


def layer_of() -> dict[str, int]:
    """Package -> its layer's depth, 0 the top."""
    return {package: depth for depth, packages in enumerate(LAYERS) for package in packages}


def imported_packages(source: str) -> set[str]:
    """The top-level packages a module's source imports, anywhere in it (relative imports stay in the package)."""
    packages = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            packages |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            packages.add(node.module.split(".")[0])
    return packages


def upward_imports(root: Path) -> list[str]:
    """Every import of a layered package from one in a layer above it, as 'file imports package'."""
    layers = layer_of()
    found = []
    for package, depth in layers.items():
        for path in sorted((root / package).rglob("*.py")):
            for imported in sorted(imported_packages(path.read_text(encoding="utf-8"))):
                if layers.get(imported, depth) < depth:
                    found.append(f"{path.relative_to(root)} imports {imported}")
    return found


def test_no_package_imports_one_above_it():
    assert upward_imports(ROOT) == []


def test_every_package_of_the_repository_has_a_layer():
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert packages - NOT_LAYERED == set(layer_of())


def test_an_import_from_a_layer_above_is_found_even_inside_a_function(tmp_path):
    for package in layer_of():
        (tmp_path / package).mkdir()
    (tmp_path / "serving" / "config.py").write_text("import json\n\n\ndef f():\n    from engines.base import Run\n")
    (tmp_path / "model_files" / "card.py").write_text("import model_tools.importer\nfrom serving import config\n")
    (tmp_path / "engines" / "base.py").write_text("from model_files import card\nfrom . import eager\n")
    (tmp_path / "worker" / "loop.py").write_text("from stack import processes\nfrom engines import base\n")
    assert upward_imports(tmp_path) == ["model_files/card.py imports model_tools", "serving/config.py imports engines"]


def test_the_worker_and_the_engines_import_without_torch():
    """What `python -m worker` imports before it opens a model; the torch engines import torch when they open one."""
    code = "import worker.__main__, worker.loop, worker.inference, engines.choose, engines.cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WITHOUT_TORCH), str(ROOT)])}
    imported = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
    assert imported.returncode == 0, imported.stderr
    hidden = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, timeout=60)
    assert hidden.returncode == 1  # the check can tell
