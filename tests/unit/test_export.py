"""TorchScript and ONNX exports: the card travels inside, and verification catches a wrong export."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from engines import onnxruntime_cpu
from engines.eager import run_module
from engines.verify import ExportMismatch, verify
from model_files.architectures import Preprocessing
from model_files.card import ExportError, ModelCard, ModelLoadError, card_from_json, card_to_json
from model_files.checkpoints import LoadedModel
from model_files.export import export_onnx, export_torchscript, load_torchscript, serving_module
from model_files.onnx_file import read_onnx_card
from model_tools.__main__ import main as model_tools_main
from serving.config import Settings
from tests.full_disk import full_filesystem
from tests.model_files import save_classic

ROOT = Path(__file__).resolve().parents[2]
CPU = "cpu"
SIZE = 16
CARD = ModelCard("small", "small_cnn", ("red", "green", "blue", "other"),
                 Preprocessing(SIZE, 18, (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().mean(dim=(2, 3)))


class BatchDependent(SmallCNN):
    """Answers differently for a single image: tracing at batch 2 silently drops that branch."""

    def forward(self, x):
        logits = self.fc(self.bn(self.conv(x)).relu().mean(dim=(2, 3)))
        if x.shape[0] == 1:
            return -logits
        return logits


def small_model(network_class=SmallCNN, seed=0) -> LoadedModel:
    torch.manual_seed(seed)
    network = network_class()
    with torch.no_grad():
        network.bn.running_mean.uniform_(-0.5, 0.5)
        network.bn.running_var.uniform_(0.5, 2.0)
    return LoadedModel(network.eval(), CARD)


def eager(loaded: LoadedModel):
    return run_module(serving_module(loaded))


def test_the_card_survives_json():
    assert card_from_json(card_to_json(CARD)) == CARD
    with pytest.raises(ModelLoadError):
        card_from_json('{"name": "no sizes"}')


@pytest.mark.parametrize("method, optimize", [("trace", False), ("trace", True), ("script", False)])
def test_a_torchscript_export_matches_the_eager_model_and_carries_its_card(tmp_path, method, optimize):
    loaded = small_model()
    path = export_torchscript(loaded, tmp_path / "m.ts.pt", method=method, optimize=optimize)
    module, card = load_torchscript(path)
    assert card == CARD
    assert verify(eager(loaded), run_module(module), SIZE, batch_sizes=(1, 3, 8)) < 1e-5
    assert not list(tmp_path.glob("*.partial*"))


def test_the_export_takes_uint8_nhwc_and_returns_probabilities(tmp_path):
    module, _ = load_torchscript(export_torchscript(small_model(), tmp_path / "m.ts.pt"))
    with torch.inference_mode():
        probabilities = module(torch.full((5, SIZE, SIZE, 3), 200, dtype=torch.uint8))
    assert probabilities.shape == (5, 4)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(5))


def test_an_onnx_export_matches_the_eager_model_and_carries_its_card(tmp_path):
    loaded = small_model()
    path = export_onnx(loaded, tmp_path / "m.onnx")
    assert read_onnx_card(path) == CARD
    assert verify(eager(loaded), onnxruntime_cpu.open_file(path, CPU, 0), SIZE, batch_sizes=(1, 8)) < 1e-5


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_verify_catches_a_trace_that_baked_in_the_example_batch_size(tmp_path):
    loaded = small_model(BatchDependent)
    module, _ = load_torchscript(export_torchscript(loaded, tmp_path / "m.ts.pt"))
    assert verify(eager(loaded), run_module(module), SIZE, batch_sizes=(2, 8)) < 1e-5  # looks fine ...
    with pytest.raises(ExportMismatch, match="differs"):
        verify(eager(loaded), run_module(module), SIZE, batch_sizes=(1, 8))  # ... until batch 1


def test_verify_catches_an_export_of_other_weights(tmp_path):
    wrong, _ = load_torchscript(export_torchscript(small_model(seed=1), tmp_path / "wrong.ts.pt"))
    with pytest.raises(ExportMismatch):
        verify(eager(small_model(seed=0)), run_module(wrong), SIZE)


def test_verify_catches_a_wrong_output_shape():
    with pytest.raises(ExportMismatch, match="shape"):
        verify(lambda x: np.zeros((len(x), 4)), lambda x: np.zeros((1, 4)), SIZE)


def test_script_refuses_what_it_cannot_compile(tmp_path):
    class Unscriptable(SmallCNN):
        def forward(self, x):
            return super().forward(x) * np.float32(1.0)  # numpy is opaque to torch.jit.script

    with pytest.raises(ExportError, match="torch.jit.script cannot compile"):
        export_torchscript(small_model(Unscriptable), tmp_path / "m.ts.pt", method="script")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_loading_a_file_without_card_or_not_torchscript_fails_clearly(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.jit.trace(SmallCNN().eval(), torch.rand(1, 3, 8, 8)).save(str(bare))
    with pytest.raises(ModelLoadError, match="carries no model_card.json"):
        load_torchscript(bare)
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="not a TorchScript file"):
        load_torchscript(tmp_path / "junk.pt")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_torchscript(tmp_path / "missing.pt")


def test_the_trace_command_verifies_the_default_model(tmp_path, capsys):
    out = tmp_path / "default.ts.pt"
    assert model_tools_main(["trace", "--checkpoint", Settings().model_path, "--out", str(out)]) == 0
    assert "max abs difference" in capsys.readouterr().out
    module, card = load_torchscript(out)
    assert card.arch == "efficientnet_lite0" and card.class_names[285] == "Egyptian cat"


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_the_trace_command_fails_on_a_mismatching_export_and_leaves_out_as_it_was(tmp_path, capsys):
    checkpoint = save_classic(small_model(BatchDependent).network, tmp_path / "branchy.pth", CARD)
    out = tmp_path / "branchy.ts.pt"
    out.write_bytes(b"the export made before")
    assert model_tools_main(["trace", "--trusted", "--checkpoint", str(checkpoint), "--out", str(out)]) == 1
    assert "differs from the eager model" in capsys.readouterr().err
    assert out.read_bytes() == b"the export made before"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["branchy.pth", "branchy.ts.pt"]
    # scripting keeps the branch, so the scripted export verifies
    assert model_tools_main(["trace", "--trusted", "--script", "--checkpoint", str(checkpoint), "--out",
                             str(out)]) == 0


def test_the_export_onnx_command_verifies(tmp_path, capsys):
    checkpoint = save_classic(small_model().network, tmp_path / "small.pth", CARD)
    out = tmp_path / "small.onnx"
    assert model_tools_main(["export-onnx", "--trusted", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert "ONNX" in capsys.readouterr().out and read_onnx_card(out) == CARD


def test_trace_if_missing_rebuilds_an_export_made_with_other_options_or_from_an_older_checkpoint(tmp_path, capsys):
    checkpoint = save_classic(small_model().network, tmp_path / "small.pth", CARD)
    out = tmp_path / "small.ts.pt"
    command = ["trace", "--trusted", "--if-missing", "--checkpoint", str(checkpoint), "--out", str(out)]
    assert model_tools_main(command) == 0 and "wrote" in capsys.readouterr().out  # plain trace
    assert model_tools_main(command) == 0 and capsys.readouterr().out == ""  # up to date: nothing to do
    assert model_tools_main([*command, "--optimize"]) == 0 and "frozen" in capsys.readouterr().out
    os.utime(checkpoint, (time.time() + 5, time.time() + 5))  # the model changed since
    assert model_tools_main([*command, "--optimize"]) == 0 and "wrote" in capsys.readouterr().out


# Every writer of a model file, run in a child process: before model_tools wrote torch's serializations
# through memory, torch.jit.save aborted the process (exit 134) on a full disk.
WRITE_EVERY_FORMAT = """
import sys
from pathlib import Path

from model_files import checkpoints, export
from tests.unit.tiny_model import tiny_loaded_model

loaded, folder = tiny_loaded_model(), Path(sys.argv[1])
writers = {
    "torchscript": lambda: export.export_torchscript(loaded, folder / "model.ts.pt", optimize=True),
    "onnx": lambda: export.export_onnx(loaded, folder / "model.onnx"),
    "state_dict": lambda: checkpoints.save_state_dict(loaded.network, loaded.card, folder / "model.pth"),
}
for name, write in writers.items():
    try:
        write()
    except OSError as exc:
        print(name, exc.strerror, flush=True)
"""


def test_every_model_file_writer_meets_a_full_disk_with_an_oserror_and_leaves_no_partial_file(tmp_path):
    with full_filesystem(tmp_path / "full") as full:
        child = subprocess.run([sys.executable, "-c", WRITE_EVERY_FORMAT, str(full)], cwd=ROOT,
                               capture_output=True, text=True, timeout=300)
        left = sorted(path.name for path in full.iterdir())
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.splitlines() == [f"{name} No space left on device"
                                         for name in ("torchscript", "onnx", "state_dict")]
    assert left == ["filler"]
