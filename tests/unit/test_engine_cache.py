"""The engine cache: a restart with the same model neither exports nor verifies again; a changed model does."""

import threading

import numpy as np
import pytest
import torch
import torchvision

from engines.choose import open_engine
from engines.verify import ExportMismatch
from model_tools import export
from model_tools.architectures import Preprocessing
from model_tools.card import ModelCard
from model_tools.checkpoints import save_state_dict
from serving.config import Settings

CPU = torch.device("cpu")
ARCH = "resnet18"
CARD = ModelCard("small", ARCH, ("a", "b", "c"), Preprocessing(64, 72, (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)))


@pytest.fixture
def exports(monkeypatch) -> list[str]:
    """Every ONNX export made from now on, by output path."""
    made, real_export = [], export.export_onnx

    def counting_export(loaded, out):
        made.append(str(out))
        return real_export(loaded, out)

    monkeypatch.setattr(export, "export_onnx", counting_export)
    return made


def write_model(path, seed: int):
    torch.manual_seed(seed)
    network = torchvision.models.get_model(ARCH, weights=None, num_classes=3).eval()
    return save_state_dict(network, CARD, path)


def start(model, cache_dir):
    return open_engine(Settings(model_path=str(model), backend="onnxruntime", engine_cache_dir=str(cache_dir),
                                inference_threads=1), CPU)


def test_a_restart_uses_the_cached_export_and_a_changed_model_is_exported_again(tmp_path, exports):
    model = write_model(tmp_path / "model.pth", seed=0)
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    first = start(model, tmp_path / "cache").run(images)
    assert len(exports) == 1
    second = start(model, tmp_path / "cache").run(images)
    assert len(exports) == 1 and np.array_equal(first, second)
    write_model(model, seed=1)  # retrained: same path, other weights
    third = start(model, tmp_path / "cache").run(images)
    assert len(exports) == 2 and not np.allclose(first, third)


def test_workers_starting_together_export_once(tmp_path, exports):
    model = write_model(tmp_path / "model.pth", seed=0)
    engines = []
    starters = [threading.Thread(target=lambda: engines.append(start(model, tmp_path / "cache"))) for _ in range(2)]
    for thread in starters:
        thread.start()
    for thread in starters:
        thread.join()
    assert len(engines) == 2 and len(exports) == 1


@pytest.mark.parametrize("failure, attempts", [
    (ExportMismatch("differs by 0.5"), 2),  # onnxruntime and openvino once each, not again at the second start
    (RuntimeError("Exporting the operator 'aten::nanmedian' to ONNX opset version 17 is not supported"), 2),
    (OSError(28, "No space left on device"), 4),  # the machine's state, not the model's: tried at every start
], ids=["mismatch", "exporter error", "full disk"])
def test_an_export_that_failed_is_remembered_and_not_tried_at_every_start(tmp_path, monkeypatch, failure, attempts):
    model = write_model(tmp_path / "model.pth", seed=0)
    made = []

    def broken_export(loaded, out):
        made.append(out)
        raise failure

    monkeypatch.setattr(export, "export_onnx", broken_export)
    settings = Settings(model_path=str(model), engine_cache_dir=str(tmp_path / "cache"), inference_threads=1)
    assert open_engine(settings, CPU).name == "torchscript"  # auto: both ONNX engines failed, the next one serves
    assert open_engine(settings, CPU).name == "torchscript"
    assert len(made) == attempts


def test_a_cache_folder_that_cannot_be_written_means_exporting_at_every_start_not_a_dead_worker(tmp_path, exports):
    model = write_model(tmp_path / "model.pth", seed=0)
    (tmp_path / "file").write_text("a file where the folder would go")
    assert start(model, tmp_path / "file" / "cache").name == "onnxruntime"
    assert len(exports) == 1
