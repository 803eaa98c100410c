"""`make bench` end to end, with short measurements: every backend, both ceilings, the service table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_bench_measures_ceilings_and_the_service_and_prints_the_table(tmp_path):
    figures_file = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--seconds", "2", "--model-seconds", "0.2", "--concurrency", "8",
         "--json", str(figures_file)], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = json.loads(figures_file.read_text())
    assert set(figures["model_ceilings"]) == {"torch", "torchscript", "onnxruntime", "openvino"}
    assert all(len(backend["images_per_s"]) == 6 for backend in figures["model_ceilings"].values())
    assert figures["pipeline_ceiling"] > 0
    service = figures["service"]
    assert {name: run["statuses"] for name, run in service.items()} == {
        name: {"200": service[name]["requests"]} for name in ("saturation", "half_load", "unloaded")}
    assert "| Service / pipeline ceiling |" in completed.stdout
    assert "| onnxruntime |" in completed.stdout
