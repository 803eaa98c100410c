"""`make bench` end to end, with short measurements: a model ceiling, the pipeline ceiling, the service table.

One engine at two batch sizes: every engine's answers are checked in tests/unit/test_engines.py; here only
the benchmark's plumbing is, and each engine costs seconds of export and measurement.
"""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_measures_ceilings_and_the_service_and_prints_the_table(tmp_path):
    figures_file = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--seconds", "2", "--model-seconds", "0.2", "--concurrency", "8",
         "--backends", "onnxruntime", "--batch-sizes", "1,8", "--json", str(figures_file)],
        capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = json.loads(figures_file.read_text())
    assert list(figures["model_ceilings"]) == ["onnxruntime"]
    assert list(figures["model_ceilings"]["onnxruntime"]["images_per_s"]) == ["1", "8"]
    assert figures["pipeline_ceiling"] > 0
    service = figures["service"]
    assert {name: run["statuses"] for name, run in service.items()} == {
        name: {"200": service[name]["requests"]} for name in ("saturation", "half_load", "unloaded")}
    cpu = figures["saturation_cpu_seconds"]  # every group did work serving the saturation run's images
    assert set(cpu) == {"API", "workers", "Redis", "load generator"} and all(seconds > 0 for seconds in cpu.values())
    assert 0 < figures["saturation_machine_busy"] <= 1
    assert "| CPU ms per image at saturation | API " in completed.stdout
    assert "| Service / pipeline ceiling |" in completed.stdout
    assert "| onnxruntime |" in completed.stdout
