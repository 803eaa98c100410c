"""The engine cache: a restart with the same model neither exports nor verifies again; a changed model does."""

import dataclasses
import hashlib
import json
import tempfile
import threading

import numpy as np
import pytest
import torch
import torchvision

from engines import choose, onnxruntime_cpu
from engines.base import EngineError
from engines.choose import open_engine
from engines.verify import ExportMismatch
from model_files import export
from model_files.architectures import Preprocessing
from model_files.card import ModelCard
from model_files.checkpoints import save_state_dict
from serving.config import Settings
from tests.full_disk import full_filesystem
from tests.model_files import save_classic
from tests.unit.tiny_model import MedianColour, tiny_loaded_model

CPU = "cpu"
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


def test_an_export_that_does_not_match_is_remembered_and_not_tried_at_every_start(tmp_path, monkeypatch):
    model = write_model(tmp_path / "model.pth", seed=0)
    made = []

    def mismatching_export(loaded, out):
        made.append(out)
        raise ExportMismatch("differs by 0.5")

    monkeypatch.setattr(export, "export_onnx", mismatching_export)
    settings = Settings(model_path=str(model), engine_cache_dir=str(tmp_path / "cache"), inference_threads=1)
    assert open_engine(settings, CPU).name == "torchscript"  # auto: both ONNX engines failed, the next one serves
    assert open_engine(settings, CPU).name == "torchscript"
    assert len(made) == 2  # onnxruntime and openvino once each, not again at the second start


def test_an_operator_the_onnx_exporter_refuses_is_remembered_and_not_tried_at_every_start(tmp_path, exports):
    loaded = tiny_loaded_model(MedianColour)
    model = save_classic(loaded.network, tmp_path / "median.pth", loaded.card)
    settings = Settings(model_path=str(model), model_trusted=True, engine_cache_dir=str(tmp_path / "cache"),
                        inference_threads=1)
    assert open_engine(settings, CPU).name == "torchscript"  # the real exporter: no symbol for aten::nanmedian
    assert open_engine(settings, CPU).name == "torchscript"
    assert len(exports) == 2


OUT_OF_MEMORY = RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: "
                             "you tried to allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("failure, backend, first_start", [
    (OUT_OF_MEMORY, "onnxruntime", None), (OUT_OF_MEMORY, "auto", "openvino"),
    (MemoryError(), "onnxruntime", None), (SystemError("a runtime's own failure"), "onnxruntime", None),
], ids=["torch out of memory", "torch out of memory under auto", "python out of memory", "unknown"])
def test_a_passing_failure_of_an_export_skips_the_engine_at_that_start_only(tmp_path, monkeypatch, failure, backend,
                                                                           first_start):
    model = write_model(tmp_path / "model.pth", seed=0)
    settings = Settings(model_path=str(model), backend=backend, engine_cache_dir=str(tmp_path / "cache"),
                        inference_threads=1)
    real_export, made = export.export_onnx, []

    def fails_once(loaded, out):
        made.append(out)
        if len(made) == 1:
            raise failure
        return real_export(loaded, out)

    monkeypatch.setattr(export, "export_onnx", fails_once)
    if first_start is None:  # BACKEND=onnxruntime: this start stops (the worker exits 2) ...
        with pytest.raises(EngineError, match="BACKEND=onnxruntime cannot serve this model"):
            open_engine(settings, CPU)
    else:  # ... under auto the next engine serves
        assert open_engine(settings, CPU).name == first_start
    assert open_engine(settings, CPU).name == "onnxruntime"  # ... and the next start has it again


def test_a_verdict_recorded_by_an_earlier_version_is_not_trusted(tmp_path, exports):
    # Earlier versions remembered any failure, an out-of-memory too, and kept no hash of the export.
    model = write_model(tmp_path / "model.pth", seed=0)
    assert start(model, tmp_path / "cache").name == "onnxruntime"
    record = only(tmp_path / "cache", "*.onnx.json")
    record.write_text(json.dumps({"verified": False, "reason": str(OUT_OF_MEMORY)}))
    assert start(model, tmp_path / "cache").name == "onnxruntime"
    assert len(exports) == 2


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize("damage", [flip_a_byte, truncate])
def test_a_cached_export_that_changed_on_disk_is_not_loaded_but_exported_and_verified_again(
        tmp_path, exports, monkeypatch, caplog, damage):
    model = write_model(tmp_path / "model.pth", seed=0)
    start(model, tmp_path / "cache")
    cached = only(tmp_path / "cache", "*.onnx")
    damage(cached)
    damaged = hashlib.sha256(cached.read_bytes()).hexdigest()
    opened = []

    def hashing_open(path, device, threads):
        opened.append(hashlib.sha256(path.read_bytes()).hexdigest())
        return onnxruntime_cpu.open_file(path, device, threads)

    monkeypatch.setitem(choose.EXPORT_ENGINES, "onnxruntime",
                        dataclasses.replace(onnxruntime_cpu.ENGINE, open=hashing_open))
    assert start(model, tmp_path / "cache").name == "onnxruntime"
    assert len(exports) == 2 and damaged not in opened
    assert "changed since it was verified" in caplog.text
    start(model, tmp_path / "cache")  # the export made again is recorded with its own hash: a hit
    assert len(exports) == 2


def test_a_full_cache_disk_costs_the_cache_not_the_engine(tmp_path, exports):
    model = write_model(tmp_path / "model.pth", seed=0)
    with full_filesystem(tmp_path / "full") as full:
        settings = Settings(model_path=str(model), engine_cache_dir=str(full / "cache"), inference_threads=1)
        assert open_engine(settings, CPU).name == "onnxruntime"  # auto's first choice, exported elsewhere
        assert not list((full / "cache").glob("*.onnx*"))
    assert len(exports) == 2  # into the full cache (no space left), then into a temporary folder


def test_with_the_temporary_folder_full_too_auto_serves_with_eager_torch(tmp_path, monkeypatch, caplog):
    model = write_model(tmp_path / "model.pth", seed=0)
    with full_filesystem(tmp_path / "full") as full:
        monkeypatch.setattr(tempfile, "tempdir", str(full))
        settings = Settings(model_path=str(model), engine_cache_dir=str(full / "cache"), inference_threads=1)
        engine = open_engine(settings, CPU)
    assert engine.name == "torch"  # needs no disk
    for name in ("onnxruntime", "openvino", "torchscript"):
        assert f"backend {name} skipped: [Errno 28] No space left on device" in caplog.text


def only(folder, pattern):
    (found,) = folder.glob(pattern)
    return found


def test_a_cache_folder_that_cannot_be_written_means_exporting_at_every_start_not_a_dead_worker(tmp_path, exports):
    model = write_model(tmp_path / "model.pth", seed=0)
    (tmp_path / "file").write_text("a file where the folder would go")
    assert start(model, tmp_path / "file" / "cache").name == "onnxruntime"
    assert len(exports) == 1
