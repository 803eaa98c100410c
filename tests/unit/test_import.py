"""`python -m model_tools import`: a pickled checkpoint becomes a file that loads without unpickling, same answers."""

import pytest
import torch
import torchvision

from engines.choose import open_engine
from model_tools.__main__ import main as model_tools_main
from model_tools.card import FROM_FILE, ModelLoadError, ModelOptions
from model_tools.checkpoints import load_model
from model_tools.importer import import_model
from serving.config import Settings
from tests.model_files import save_classic
from tests.unit.test_model_card import LABELS, SMALL_ARCH, FourClasses, labels_file

CPU = torch.device("cpu")


def same_answers(first: torch.nn.Module, second: torch.nn.Module, size: int = 64) -> bool:
    x = torch.rand(3, 3, size, size)
    with torch.inference_mode():
        return torch.allclose(first(x), second(x), atol=1e-5)


def test_a_classic_checkpoint_of_a_named_architecture_becomes_a_state_dict(tmp_path, capsys):
    torch.manual_seed(0)
    network = torchvision.models.get_model(SMALL_ARCH, weights=None, num_classes=4).eval()
    source = save_classic(network, tmp_path / "classic.pth")
    out = tmp_path / "imported.pth"
    assert model_tools_main(["import", str(source), "--out", str(out), "--trusted", "--arch", SMALL_ARCH,
                             "--labels", labels_file(tmp_path, "\n".join(LABELS))]) == 0
    report = capsys.readouterr().out
    assert f"wrote {out}: state_dict of {SMALL_ARCH}" in report and "chelsea.png: " in report
    torch.load(out, weights_only=True)  # tensors and plain data only
    loaded = load_model(out)  # no trust, no options: the file says everything
    assert loaded.card.class_names == tuple(LABELS) and set(loaded.card.sources.values()) == {FROM_FILE}
    assert same_answers(loaded.network, network)


def test_a_module_of_an_unknown_architecture_becomes_onnx_the_worker_serves_without_trust(tmp_path):
    network = FourClasses().eval()
    source = save_classic(network, tmp_path / "classic.pth")
    out = tmp_path / "imported.onnx"
    report = import_model(source, ModelOptions(trusted=True, labels_path=labels_file(tmp_path, "\n".join(LABELS)),
                                               mean=(0.4, 0.5, 0.6)), out)
    assert f"wrote {out}: ONNX, serves without trust" in report
    engine = open_engine(Settings(model_path=str(out), engine_cache_dir=""), CPU)
    reference = open_engine(Settings(model_path=str(source), model_trusted=True, backend="torch", mean="0.4,0.5,0.6",
                                     labels_path=labels_file(tmp_path, "\n".join(LABELS))), CPU)
    images = torch.randint(0, 256, (4, 224, 224, 3), dtype=torch.uint8).numpy()
    assert engine.card.class_names == tuple(LABELS) and engine.card.preprocessing.mean == (0.4, 0.5, 0.6)
    assert abs(engine.run(images) - reference.run(images)).max() < 1e-4


def test_an_import_that_becomes_onnx_asks_for_an_onnx_name(tmp_path):
    source = save_classic(FourClasses().eval(), tmp_path / "classic.pth")
    with pytest.raises(ModelLoadError, match="imported as ONNX: name the output .*out.onnx"):
        import_model(source, ModelOptions(trusted=True), tmp_path / "out.pt2")


def test_a_wrong_label_file_stops_the_import_with_both_counts(tmp_path):
    source = save_classic(FourClasses().eval(), tmp_path / "classic.pth")
    with pytest.raises(ModelLoadError, match="names 2 classes, but the model in .* has 4 outputs"):
        import_model(source, ModelOptions(trusted=True, labels_path=labels_file(tmp_path, "a\nb\n")),
                     tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_import_of_an_untrusted_pickle_is_refused_and_names_the_flag(tmp_path, capsys):
    source = save_classic(FourClasses().eval(), tmp_path / "classic.pth")
    assert model_tools_main(["import", str(source), "--out", str(tmp_path / "out.pt2")]) == 1
    assert "--trusted" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["import"], ["export-onnx", "--checkpoint"]])
def test_model_tools_writes_no_file_whose_name_a_worker_would_refuse(tmp_path, capsys, command):
    """Without a name in the file or an --arch, the card takes the file's: one that MODEL_NAME's rule refuses."""
    source = save_classic(FourClasses().eval(), tmp_path / "odd name}x.pth")
    out = tmp_path / "out.pt2"
    assert model_tools_main([*command, str(source), "--out", str(out), "--trusted",
                             "--labels", labels_file(tmp_path, "\n".join(LABELS))]) == 1
    assert "the model card's name='odd name}x': expected 1-64 letters" in capsys.readouterr().err
    assert not out.exists()
