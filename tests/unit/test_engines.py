"""Engines: every engine gives the eager model's answers; `auto` picks the fastest that builds and does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engines import choose, onnxruntime_cpu
from engines.base import EngineError
from engines.choose import CPU_PREFERENCE, engine_for_checkpoint, installed, open_engine
from engines.verify import ExportMismatch
from model_files import export
from model_files.checkpoints import load_model, save_state_dict
from model_files.files import is_serving_torchscript, is_torchscript_file
from scripts.loadtest import SAMPLE_PHOTOS  # the photos the benchmarks send
from serving.config import Settings
from serving.preprocess import prepare
from tests.images import PHOTOS
from tests.model_files import save_classic
from tests.unit.tiny_model import COLOURS, INPUT_SIZE, MedianColour, tiny_loaded_model
from worker.inference import Classifier

CPU = "cpu"
ENGINES = ("torch", "torchscript", "onnxruntime", "openvino")


@pytest.fixture(scope="module")
def default_model():
    return load_model(Settings().model_path)


@pytest.fixture(scope="module")
def sample_batch(default_model) -> np.ndarray:
    size = default_model.card.preprocessing
    return np.stack([prepare((PHOTOS / name).read_bytes(), size.resize_size, size.input_size, 10**8)
                     for name in SAMPLE_PHOTOS])


def solid_colours() -> np.ndarray:
    return np.stack([np.full((INPUT_SIZE, INPUT_SIZE, 3), rgb, np.uint8) for rgb in COLOURS.values()])


def test_every_engine_is_installed():
    # requirements.txt installs them all, so `auto` is never quietly slower than docs/performance.md says
    assert all(installed(name) for name in ENGINES)


@pytest.mark.parametrize("name", ENGINES[1:])
def test_every_engine_gives_the_eager_top_1_on_real_photos(default_model, sample_batch, name):
    eager = engine_for_checkpoint(default_model, "torch", CPU, 1).run(sample_batch)
    engine = engine_for_checkpoint(default_model, name, CPU, 1)
    probabilities = engine.run(sample_batch)
    assert engine.name == name
    assert (probabilities.argmax(axis=1) == eager.argmax(axis=1)).all()
    assert np.abs(probabilities - eager).max() < 1e-3


def test_auto_on_the_cpu_picks_the_fastest_engine_that_matches():
    engine = engine_for_checkpoint(tiny_loaded_model(), "auto", CPU, 1)
    assert engine.name == CPU_PREFERENCE[0] == "onnxruntime"
    assert [engine.card.class_names[i] for i in engine.run(solid_colours()).argmax(axis=1)] == list(COLOURS)


def test_auto_skips_an_engine_whose_answers_differ(monkeypatch):
    real_verify = choose.verify

    def onnxruntime_disagrees(reference, candidate, input_size, **kwargs):
        if candidate.__module__ == onnxruntime_cpu.__name__:
            raise ExportMismatch("differs by 0.5")
        return real_verify(reference, candidate, input_size, **kwargs)

    monkeypatch.setattr(choose, "verify", onnxruntime_disagrees)
    assert engine_for_checkpoint(tiny_loaded_model(), "auto", CPU, 1).name == "openvino"


def test_an_explicit_engine_whose_answers_differ_refuses_to_serve(monkeypatch):
    def always_differs(*args, **kwargs):
        raise ExportMismatch("differs by 0.5")

    monkeypatch.setattr(choose, "verify", always_differs)
    with pytest.raises(EngineError, match="BACKEND=onnxruntime cannot serve this model: differs by 0.5"):
        engine_for_checkpoint(tiny_loaded_model(), "onnxruntime", CPU, 1)


UNSUPPORTED_BY_ONNX = "Exporting the operator 'aten::nanmedian' to ONNX opset version 17 is not supported"


def test_auto_goes_on_to_the_next_engine_when_one_cannot_export_the_model_and_the_worker_serves(tmp_path, caplog):
    model = save_classic(MedianColour().eval(), tmp_path / "median.pth", tiny_loaded_model().card)
    settings = Settings(model_path=str(model), model_trusted=True, engine_cache_dir="", inference_threads=1)
    classifier = Classifier(open_engine(settings, CPU), CPU)  # as `python -m worker` opens it
    assert classifier.engine_name == "torchscript"
    for name in ("onnxruntime", "openvino"):  # each skipped with the exporter's own words
        assert f"backend {name} skipped: {UNSUPPORTED_BY_ONNX}" in caplog.text
    top_1 = [classifier.top_k(row, 1)[0].label for row in classifier.probabilities(solid_colours())]
    assert top_1 == list(COLOURS)


def test_an_explicit_engine_that_cannot_export_the_model_refuses_to_serve():
    with pytest.raises(EngineError, match=f"BACKEND=onnxruntime cannot serve this model: {UNSUPPORTED_BY_ONNX}"):
        engine_for_checkpoint(tiny_loaded_model(MedianColour), "onnxruntime", CPU, 1)


def test_auto_goes_on_when_a_runtime_fails_with_an_error_of_its_own(monkeypatch):
    def crashing_open(path, device, threads):
        raise SystemError("the runtime's own failure")  # a type no engine module wraps

    monkeypatch.setitem(choose.EXPORT_ENGINES, "onnxruntime",
                        dataclasses.replace(onnxruntime_cpu.ENGINE, open=crashing_open))
    assert engine_for_checkpoint(tiny_loaded_model(), "auto", CPU, 1).name == "openvino"


def test_on_a_gpu_auto_means_eager_torch():
    assert choose._auto_candidates("cuda") == ["torch"]


def test_the_onnx_engines_refuse_a_gpu_device():
    with pytest.raises(EngineError, match="CPU only"):
        engine_for_checkpoint(tiny_loaded_model(), "onnxruntime", "cuda", 1)


def test_an_unknown_backend_is_a_clear_error(tmp_path):
    with pytest.raises(EngineError, match="BACKEND='tensorrt'; expected one of auto, torch"):
        open_engine(Settings(model_path=str(tmp_path / "m.pth"), backend="tensorrt"), CPU)


@pytest.fixture
def model_files(tmp_path):
    loaded = tiny_loaded_model()
    return {"state_dict": save_state_dict(loaded.network, loaded.card, tmp_path / "tiny.pth"),
            "onnx": export.export_onnx(loaded, tmp_path / "tiny.onnx"),
            "torchscript": export.export_torchscript(loaded, tmp_path / "tiny.ts.pt")}


@pytest.mark.parametrize("kind, backend, expected", [
    ("onnx", "auto", "onnxruntime"), ("onnx", "onnxruntime", "onnxruntime"), ("onnx", "openvino", "openvino"),
    ("torchscript", "auto", "torchscript"), ("torchscript", "torch", "torchscript"),
    ("torchscript", "torchscript", "torchscript"),
])
def test_exported_files_are_served_by_the_engines_that_can_run_them(model_files, kind, backend, expected):
    trusted = kind == "torchscript"  # TorchScript is code, whoever wrote it (tests/unit/test_model_trust.py)
    engine = open_engine(Settings(model_path=str(model_files[kind]), backend=backend, model_trusted=trusted), CPU)
    assert engine.name == expected
    assert [engine.card.class_names[i] for i in engine.run(solid_colours()).argmax(axis=1)] == list(COLOURS)


@pytest.mark.parametrize("kind, backend", [("onnx", "torch"), ("onnx", "torchscript"),
                                           ("torchscript", "onnxruntime"), ("torchscript", "openvino")])
def test_an_engine_that_cannot_run_the_file_says_so(model_files, kind, backend):
    with pytest.raises(EngineError, match=f"BACKEND={backend} needs"):
        open_engine(Settings(model_path=str(model_files[kind]), backend=backend), CPU)


def test_auto_serves_an_onnx_file_with_openvino_when_onnxruntime_cannot_load_it(model_files, monkeypatch):
    def cannot_load(path, device, threads):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Load model failed")

    monkeypatch.setitem(choose.EXPORT_ENGINES, "onnxruntime",
                        dataclasses.replace(onnxruntime_cpu.ENGINE, open=cannot_load))
    engine = open_engine(Settings(model_path=str(model_files["onnx"])), CPU)
    assert engine.name == "openvino"
    assert [engine.card.class_names[i] for i in engine.run(solid_colours()).argmax(axis=1)] == list(COLOURS)


def test_torchscript_files_are_told_apart_from_torch_save_zips(model_files):
    assert is_torchscript_file(model_files["torchscript"]) and is_serving_torchscript(model_files["torchscript"])
    assert not is_torchscript_file(model_files["state_dict"]) and not is_serving_torchscript(model_files["state_dict"])
    assert not is_torchscript_file(model_files["onnx"]) and not is_serving_torchscript(model_files["onnx"])


def test_the_eager_engine_leaves_the_checkpoint_network_on_the_cpu_for_the_exports(tmp_path):
    # "meta" stands in for a GPU: Module.to would move the shared network there in place, and the
    # TorchScript and ONNX exports built from it next trace CPU example images.
    loaded = tiny_loaded_model()
    engine_for_checkpoint(loaded, "torch", "meta", 1)
    assert {p.device.type for p in loaded.network.parameters()} == {"cpu"}
    export.export_torchscript(loaded, tmp_path / "tiny.ts.pt")
