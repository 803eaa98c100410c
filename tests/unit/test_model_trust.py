"""Without MODEL_TRUSTED only files that hold data are read: hostile files are refused before anything of theirs runs.

Each hostile file (tests/hostile_models.py) is shown to be real: with trust its side effect happens.
"""

import onnx
import pytest

from engines.cache import EngineCache
from engines.choose import engine_for_checkpoint, open_engine
from model_files import export
from model_files.card import ModelLoadError, ModelOptions
from model_files.checkpoints import load_model
from serving.config import Settings
from tests.hostile_models import TORCHSCRIPT_ATTACKS, PrintsInForward, hostile_exported_program, hostile_torchscript
from tests.unit.tiny_model import tiny_loaded_model

CPU = "cpu"


@pytest.mark.parametrize("attack", TORCHSCRIPT_ATTACKS, ids=lambda attack: attack.__name__)
def test_a_hostile_torchscript_file_is_refused_untrusted_and_its_side_effect_does_not_happen(tmp_path, attack, capfd):
    target = tmp_path / "written-by-the-model"
    model = hostile_torchscript(attack, tmp_path / "hostile.pt", target)
    with pytest.raises(ModelLoadError, match=r"hostile.pt is TorchScript, whose code runs .*: MODEL_TRUSTED=1"):
        load_model(model)
    with pytest.raises(ModelLoadError, match="is TorchScript"):
        open_engine(Settings(model_path=str(model), engine_cache_dir=""), CPU)
    assert not target.exists() and "forward ran" not in capfd.readouterr().out

    load_model(model, ModelOptions(trusted=True))  # the file is really hostile: trusted, its code runs
    assert target.exists() or (attack is PrintsInForward and "forward ran" in capfd.readouterr().out)


def test_model_tools_own_torchscript_export_needs_trust_too_since_its_card_could_be_forged(tmp_path):
    model = export.export_torchscript(tiny_loaded_model(), tmp_path / "tiny.ts.pt")
    with pytest.raises(ModelLoadError, match="is TorchScript"):
        open_engine(Settings(model_path=str(model), engine_cache_dir=""), CPU)
    assert open_engine(Settings(model_path=str(model), model_trusted=True), CPU).name == "torchscript"


def test_a_torch_export_program_calling_a_custom_operator_is_refused_untrusted_before_it_loads(tmp_path):
    target = tmp_path / "written-by-the-model"
    model = hostile_exported_program(tmp_path / "hostile.pt2", target)
    with pytest.raises(ModelLoadError, match=r"hostile.pt2 is a torch.export program, and torch.export.load runs "):
        open_engine(Settings(model_path=str(model), engine_cache_dir=""), CPU)
    assert not target.exists()

    load_model(model, ModelOptions(trusted=True))
    assert target.exists()


def test_the_torchscript_the_worker_exports_into_its_engine_cache_serves_without_trust(tmp_path):
    cache = EngineCache(tmp_path / "cache", "digest of a tensors-only model file")
    for _ in range(2):  # exported, then opened from the cache
        assert engine_for_checkpoint(tiny_loaded_model(), "torchscript", CPU, 1, cache).name == "torchscript"
    assert list((tmp_path / "cache").glob("torchscript-*.ts.pt"))


@pytest.fixture
def onnx_file(tmp_path):
    return export.export_onnx(tiny_loaded_model(), tmp_path / "models" / "tiny.onnx")


def test_model_tools_onnx_export_serves_without_trust(onnx_file):
    assert open_engine(Settings(model_path=str(onnx_file)), CPU).name == "onnxruntime"


def rewritten(path, change) -> str:
    model = onnx.load(str(path))
    change(model)
    onnx.save(model, str(path))
    return str(path)


def with_a_custom_operator(model) -> None:
    model.graph.node.append(onnx.helper.make_node("RunShell", ["probabilities"], ["unused"], domain="com.evil"))
    model.opset_import.append(onnx.helper.make_opsetid("com.evil", 1))


def with_a_custom_operator_inside_a_branch(model) -> None:
    branch = onnx.helper.make_graph([onnx.helper.make_node("RunShell", [], ["y"], domain="com.evil")], "branch", [],
                                    [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    condition = onnx.helper.make_tensor("cond", onnx.TensorProto.BOOL, [], [True])
    model.graph.node.extend([onnx.helper.make_node("Constant", [], ["c"], value=condition),
                             onnx.helper.make_node("If", ["c"], ["unused"], then_branch=branch, else_branch=branch)])


def external_data_at(location: str):
    def change(model) -> None:
        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=location)
    return change


@pytest.mark.parametrize("change, refusal", [
    (with_a_custom_operator, "a node 'RunShell' of the custom operator domain 'com.evil'"),
    (with_a_custom_operator_inside_a_branch, "a node 'RunShell' of the custom operator domain 'com.evil'"),
    (external_data_at("/etc/hostname"), "from '/etc/hostname', outside the model file's folder"),
    (external_data_at("../secret.bin"), "from '../secret.bin', outside the model file's folder"),
], ids=["custom-domain", "custom-domain-in-a-branch", "absolute-external-data", "external-data-up-a-folder"])
def test_an_onnx_file_with_a_custom_operator_or_external_data_outside_its_folder_is_refused_untrusted(
        onnx_file, change, refusal):
    model = rewritten(onnx_file, change)
    with pytest.raises(ModelLoadError, match=f"tiny.onnx (has|reads tensor .scale.) {refusal}.*: MODEL_TRUSTED=1"):
        open_engine(Settings(model_path=model), CPU)


def test_onnx_external_data_beside_the_model_is_read_without_trust(onnx_file):
    model = onnx.load(str(onnx_file))
    onnx.save(model, str(onnx_file), save_as_external_data=True, all_tensors_to_one_file=True,
              location="tiny.onnx.data", size_threshold=0)
    assert (onnx_file.parent / "tiny.onnx.data").is_file()
    assert open_engine(Settings(model_path=str(onnx_file)), CPU).name == "onnxruntime"
