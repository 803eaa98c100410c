"""`python -m model_tools import`: a pickled checkpoint becomes a file that loads without unpickling, same answers."""

import json
import zipfile

import pytest
import torch
import torchvision

from engines.choose import open_engine
from model_files.architectures import Preprocessing
from model_files.card import FROM_FILE, ModelLoadError, ModelOptions
from model_files.checkpoints import load_model
from model_files.serving_model import ServingModel
from model_tools.__main__ import main as model_tools_main
from model_tools.importer import import_model
from serving.config import Settings
from tests.model_files import save_classic, torchserve_archive
from tests.unit.test_model_card import INDEX_TO_NAME_SHAPES, LABELS, SMALL_ARCH, FourClasses, labels_file

CPU = "cpu"


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
    reference = open_engine(Settings(model_path=str(source), model_trusted=True, backend="torch", mean=(0.4, 0.5, 0.6),
                                     labels_path=labels_file(tmp_path, "\n".join(LABELS))), CPU)
    images = torch.randint(0, 256, (4, 224, 224, 3), dtype=torch.uint8).numpy()
    assert engine.card.class_names == tuple(LABELS) and engine.card.preprocessing.mean == (0.4, 0.5, 0.6)
    assert abs(engine.run(images) - reference.run(images)).max() < 1e-4


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_torchscript_file_becomes_onnx_too(tmp_path):
    """The legacy ONNX exporter cannot trace into a TorchScript network; the import traces it first."""
    torch.manual_seed(0)
    network = torch.jit.trace(FourClasses().eval(), torch.rand(1, 3, 8, 8))
    network.save(str(tmp_path / "four.pt"))
    out = tmp_path / "four.onnx"
    report = import_model(tmp_path / "four.pt", ModelOptions(trusted=True, labels_path=labels_file(
        tmp_path, "\n".join(LABELS))), out)
    assert f"wrote {out}: ONNX, serves without trust" in report
    engine = open_engine(Settings(model_path=str(out), engine_cache_dir=""), CPU)
    images = torch.randint(0, 256, (3, 224, 224, 3), dtype=torch.uint8)
    p = engine.card.preprocessing
    with torch.inference_mode():
        expected = ServingModel(network, p.mean, p.std)(images).numpy()
    assert abs(engine.run(images.numpy()) - expected).max() < 1e-4


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


ARCH_WITH_ITS_OWN_EPS = "resnet18"  # whose BatchNorm layers, at random weights, pass the change on to the answers


def network_whose_written_form_differs() -> torch.nn.Module:
    """A named architecture with a setting its state_dict does not hold: rebuilt from the weights, it answers
    otherwise (probabilities up to 0.16 apart)."""
    torch.manual_seed(0)
    network = torchvision.models.get_model(ARCH_WITH_ITS_OWN_EPS, weights=None, num_classes=4).eval()
    for layer in network.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.eps = 0.5  # torchvision's is 1e-5
    return network


@pytest.mark.parametrize("earlier", [b"the model served until now", None], ids=["an earlier file", "none"])
def test_an_import_that_fails_its_check_leaves_out_as_it_was_and_no_partial_file(tmp_path, capsys, earlier):
    source = save_classic(network_whose_written_form_differs(), tmp_path / "classic.pth")
    folder = tmp_path / "models"
    folder.mkdir()
    out = folder / "served.pth"
    if earlier is not None:
        out.write_bytes(earlier)
    assert model_tools_main(["import", str(source), "--out", str(out), "--trusted", "--arch", ARCH_WITH_ITS_OWN_EPS,
                             "--labels", labels_file(tmp_path, "\n".join(LABELS))]) == 1
    assert "differ" in capsys.readouterr().err
    assert (out.read_bytes() if out.exists() else None) == earlier
    assert [path.name for path in folder.iterdir()] == ([out.name] if earlier is not None else [])


# TorchServe's model archives, made by the real torch-model-archiver.

STOCK_HANDLER_PREPROCESSING = Preprocessing(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# An eager model as TorchServe's users write one: model.py defines the one class, built without arguments.
MODEL_PY = '''
import torch.nn as nn


class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.features(x))
'''


def index_to_name(folder, shape: dict):
    path = folder / "index_to_name.json"
    path.write_text(json.dumps(shape))
    return path


def eager_archive(folder, labels: dict, more_code: str = "", name: str = "tiny"):
    """model.py (MODEL_PY, then more_code) + its state dict, archived with the stock image_classifier handler;
    and the network archived."""
    folder.mkdir(parents=True, exist_ok=True)
    namespace: dict = {}
    exec(MODEL_PY, namespace)
    torch.manual_seed(0)
    network = namespace["TinyClassifier"]().eval()
    torch.save(network.state_dict(), folder / "weights.pth")
    (folder / "model.py").write_text(MODEL_PY + more_code)
    archive = torchserve_archive(folder, name, folder / "weights.pth", model_file=folder / "model.py",
                                 extra_files=(index_to_name(folder, labels),))
    return archive, network


@pytest.fixture(scope="module")
def torchscript_archive(tmp_path_factory):
    """A TorchScript resnet18 (random weights, traced on a small input) with its labels, and the network."""
    folder = tmp_path_factory.mktemp("torchscript-archive")
    torch.manual_seed(0)
    network = torch.jit.trace(torchvision.models.resnet18(weights=None, num_classes=4).eval(),
                              torch.rand(1, 3, 64, 64))
    network.save(str(folder / "resnet18.pt"))
    archive = torchserve_archive(folder, "resnet18", folder / "resnet18.pt",
                                 extra_files=(index_to_name(folder, INDEX_TO_NAME_SHAPES["wnid and name"]),))
    return archive, network


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory):
    return eager_archive(tmp_path_factory.mktemp("eager-archive"), INDEX_TO_NAME_SHAPES["name"])


def stock_handler_answers(network: torch.nn.Module, images: torch.Tensor):
    """What TorchServe's image_classifier gives for these (already resized and cropped) images: probabilities."""
    p = STOCK_HANDLER_PREPROCESSING
    with torch.inference_mode():
        return ServingModel(network, p.mean, p.std)(images).numpy()


def assert_imported_as_the_stock_handler_serves(out, report: str, archive, name: str, network) -> None:
    assert f"wrote {out}: ONNX, serves without trust" in report
    assert f"checked against {archive}: same top-1" in report  # the import's own verification
    engine = open_engine(Settings(model_path=str(out), engine_cache_dir=""), CPU)  # no trust, no options
    assert engine.card.name == name and engine.card.class_names == tuple(LABELS)
    assert engine.card.preprocessing == STOCK_HANDLER_PREPROCESSING
    images = torch.randint(0, 256, (3, 224, 224, 3), dtype=torch.uint8)
    assert abs(engine.run(images.numpy()) - stock_handler_answers(network, images)).max() < 1e-4


def test_a_torchserve_archive_of_torchscript_becomes_onnx_with_its_labels_and_the_stock_handlers_preprocessing(
        torchscript_archive, tmp_path, capsys):
    archive, network = torchscript_archive
    out = tmp_path / "resnet18.onnx"
    assert model_tools_main(["import", str(archive), "--trusted", "--out", str(out)]) == 0
    assert_imported_as_the_stock_handler_serves(out, capsys.readouterr().out, archive, "resnet18", network)


def test_a_torchscript_archive_is_never_a_named_architecture_so_its_import_asks_for_an_onnx_name(
        torchscript_archive, tmp_path):
    with pytest.raises(ModelLoadError, match="imported as ONNX: name the output .*resnet18.onnx"):
        import_model(torchscript_archive[0], ModelOptions(trusted=True, arch="resnet18"), tmp_path / "resnet18.pth")
    assert not (tmp_path / "resnet18.pth").exists()


@pytest.mark.parametrize("shape", INDEX_TO_NAME_SHAPES)
def test_an_eager_torchserve_archive_becomes_onnx_with_labels_of_every_shape(tmp_path, shape):
    archive, network = eager_archive(tmp_path, INDEX_TO_NAME_SHAPES[shape])
    out = tmp_path / "tiny.onnx"
    report = import_model(archive, ModelOptions(trusted=True), out)
    assert_imported_as_the_stock_handler_serves(out, report, archive, "tiny", network)


def test_an_archive_with_a_custom_handler_is_refused_saying_how_to_import_the_network_inside(tmp_path):
    (tmp_path / "handler.py").write_text("from ts.torch_handler.image_classifier import ImageClassifier\n")
    torch.jit.trace(FourClasses().eval(), torch.rand(1, 3, 8, 8)).save(str(tmp_path / "four.pt"))
    archive = torchserve_archive(tmp_path, "custom", tmp_path / "four.pt", handler=str(tmp_path / "handler.py"))
    with pytest.raises(ModelLoadError, match=r"uses the handler 'handler.py', not TorchServe's stock image_classifier"
                                             r".*unzip .* and run `python -m model_tools import four.pt --trusted "
                                             r"--labels index_to_name.json --resize-size N"):
        import_model(archive, ModelOptions(trusted=True), tmp_path / "out.onnx")


def test_an_archive_is_refused_without_trust_before_any_of_its_code_runs(tmp_path, torchscript_archive, capsys):
    marker = tmp_path / "model.py ran"
    archive, _ = eager_archive(tmp_path / "archive", INDEX_TO_NAME_SHAPES["name"],
                               more_code=f"\nimport pathlib\npathlib.Path({str(marker)!r}).touch()  # any code could\n")
    assert model_tools_main(["import", str(archive), "--out", str(tmp_path / "out.onnx")]) == 1
    error = capsys.readouterr().err
    assert "holds code: model.py, Python that runs when imported" in error and "--trusted" in error
    assert "--out models/tiny.onnx" in error
    assert not marker.exists()
    with pytest.raises(ModelLoadError, match="holds code: resnet18.pt, a TorchScript program.*--trusted"):
        import_model(torchscript_archive[0], ModelOptions(), tmp_path / "resnet18.onnx")
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "resnet18.onnx").exists()
    load_model(archive, ModelOptions(trusted=True))
    assert marker.exists()  # trusted, its code runs: what the refusal prevented


def rewritten(archive, out, **members: bytes | None):
    """A copy of `archive` with members replaced (bytes) or left out (None); keys spell '/' as '__'."""
    changes = {name.replace("__", "/"): data for name, data in members.items()}
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(out, "w") as copy:
        for name in source.namelist():
            if name not in changes:
                copy.writestr(name, source.read(name))
        for name, data in changes.items():
            if data is not None:
                copy.writestr(name, data)
    return out


SECOND_CLASS_PY = MODEL_PY + "\n\nclass Helper:\n    pass\n"


@pytest.mark.parametrize("members, complaint", [
    ({"MAR-INF__MANIFEST.json": None}, "holds no MAR-INF/MANIFEST.json: not an archive torch-model-archiver made"),
    ({"MAR-INF__MANIFEST.json": b"{"}, "MAR-INF/MANIFEST.json in .* is not a manifest with a 'model' section"),
    ({"weights.pth": None}, "names the serializedFile weights.pth, which the archive does not hold"),
    ({"model.py": None}, "names the modelFile model.py, which the archive does not hold"),
    ({"weights.pth": b"not a state dict"}, "weights.pth in .* is not a tensors-only state dict"),
    ({"model.py": b"raise ImportError('needs timm')"}, "model.py in .* fails on import: needs timm"),
    ({"model.py": SECOND_CLASS_PY.encode()}, "must define exactly one class.*it defines: Helper, TinyClassifier"),
    ({"index_to_name.json": b'{"0": 1}'}, "index_to_name.json in .*: expected a JSON list of class names"),
])
def test_an_archive_with_missing_or_malformed_files_is_refused_clearly(tiny_archive, tmp_path, members, complaint):
    broken = rewritten(tiny_archive[0], tmp_path / "broken.mar", **members)
    with pytest.raises(ModelLoadError, match=complaint):
        import_model(broken, ModelOptions(trusted=True), tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_a_mar_that_is_not_a_zip_is_refused_naming_the_archivers_default_format(tmp_path):
    (tmp_path / "model.mar").write_bytes(b"\x1f\x8b a tgz archive")
    with pytest.raises(ModelLoadError, match="is not a zip file.*without --archive-format tgz"):
        load_model(tmp_path / "model.mar", ModelOptions(trusted=True))


def test_a_trusted_worker_serves_a_torchserve_archive_as_it_is(torchscript_archive):
    archive, network = torchscript_archive
    engine = open_engine(Settings(model_path=str(archive), model_trusted=True, backend="torch", engine_cache_dir=""),
                         CPU)
    images = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    assert engine.card.name == "resnet18" and engine.card.class_names == tuple(LABELS)
    assert abs(engine.run(images.numpy()) - stock_handler_answers(network, images)).max() < 1e-4
