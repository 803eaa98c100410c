"""`make bench`'s model ceilings measure each engine as the worker would serve it: MODEL_PATH in PRECISION.

Under PRECISION=bf16 the ceilings once measured float32 engines beside a bf16 pipeline and service, and the
table named no precision. The service run itself is tested end to end in tests/integration/test_bench.py.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from engines.choose import installed
from scripts import bench
from scripts.loadtest import sample_photos
from serving.config import Settings


def test_each_engine_is_opened_as_the_worker_opens_it_in_the_precision_it_serves(monkeypatch):
    opened = []

    def open_engine(settings, device):
        opened.append((settings.backend, settings.precision, settings.model_path, device))
        card = SimpleNamespace(preprocessing=SimpleNamespace(resize_size=256, input_size=224))
        return SimpleNamespace(card=card, run=lambda batch: np.zeros((len(batch), 10), np.float32))

    monkeypatch.setattr(bench, "open_engine", open_engine)
    settings = dataclasses.replace(Settings(), precision="bf16", model_path="models/mine.pth")
    ceilings = bench.model_ceilings(settings, sample_photos()[:2], 0.001, ["openvino"], [1, 4])
    assert opened == [("openvino", "bf16", "models/mine.pth", "cpu")]
    assert list(ceilings["openvino"]["images_per_s"]) == [1, 4]


@pytest.mark.parametrize("compute, model_path, able", [
    ("fp32", "models/mine.pth", ["torch", "torchscript", "openvino", "onnxruntime"]),
    ("fp32", "models/mine.onnx", ["openvino", "onnxruntime"]),
    ("bf16", "models/mine.pth", ["openvino"]),
    ("int8", "models/mine-int8.onnx", ["openvino", "onnxruntime"]),
])
def test_the_default_engines_are_those_that_compute_in_the_precision_and_run_the_file(compute, model_path, able):
    assert bench.default_backends(compute, model_path) == [name for name in able if installed(name)]


def test_an_engine_that_cannot_compute_in_the_precision_is_refused_before_anything_is_measured(monkeypatch, capsys):
    monkeypatch.setenv("PRECISION", "bf16")
    monkeypatch.setattr(bench, "model_ceilings", lambda *args: pytest.fail("measured an engine it should refuse"))
    with pytest.raises(SystemExit) as exited:
        bench.main(["--backends", "onnxruntime"])
    assert exited.value.code == 2
    assert "BACKEND=onnxruntime cannot compute in bf16" in capsys.readouterr().err


def test_batch_sizes_that_do_not_start_with_1_are_refused(capsys):
    with pytest.raises(SystemExit) as exited:
        bench.main(["--batch-sizes", "8,16"])
    assert exited.value.code == 2 and "--batch-sizes must start with 1, not 8" in capsys.readouterr().err


def test_the_table_names_the_precision_of_a_reduced_precision_run():
    assert bench.engine_label("openvino", "bf16") == "openvino bf16"
    assert bench.engine_label("onnxruntime", "fp32") == "onnxruntime"
