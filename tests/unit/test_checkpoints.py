"""Loading models: the default one, the safe state_dict format, and refusing untrusted pickles."""

import hashlib

import pytest
import torch
import torchvision

from model_files.architectures import Preprocessing, default_preprocessing
from model_files.card import ModelCard, ModelLoadError, ModelOptions
from model_files.checkpoints import load_model, save_state_dict
from serving.config import Settings
from tests.model_files import save_classic

DEFAULT_MODEL = Settings().model_path
SMALL_ARCH = "mobilenet_v3_small"


@pytest.fixture(scope="module")
def small_network():
    torch.manual_seed(0)
    return torchvision.models.get_model(SMALL_ARCH, weights=None, num_classes=4).eval()


@pytest.fixture(scope="module")
def small_card():
    return ModelCard("small", SMALL_ARCH, ("a", "b", "c", "d"),
                     Preprocessing(96, 110, (0.4, 0.4, 0.4), (0.2, 0.2, 0.2)))


def same_outputs(first, second):
    x = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        return torch.allclose(first(x), second(x), atol=1e-6)


def test_the_default_model_is_efficientnet_lite0_with_imagenet_metadata():
    loaded = load_model(DEFAULT_MODEL)
    card = loaded.card
    assert card.arch == "efficientnet_lite0" and len(card.class_names) == 1000
    assert card.class_names[281] == "tabby" and card.class_names[967] == "espresso"
    assert card.preprocessing == Preprocessing(224, 256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    torch.load(DEFAULT_MODEL, weights_only=True)  # the default model needs no unpickling
    assert not loaded.network.training


def test_a_pickled_checkpoint_loads_only_with_model_trusted(tmp_path, small_network, small_card):
    path = save_classic(small_network, tmp_path / "m.pth", small_card)
    (tmp_path / "m.pth.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())  # proves nothing
    with pytest.raises(ModelLoadError, match="MODEL_TRUSTED=1"):
        load_model(path)
    loaded = load_model(path, ModelOptions(trusted=True))
    assert loaded.card == small_card and same_outputs(loaded.network, small_network)


def test_the_state_dict_format_loads_without_unpickling_code(tmp_path, small_network, small_card):
    path = save_state_dict(small_network, small_card, tmp_path / "m.pt")
    torch.load(path, weights_only=True)  # tensors and plain data only
    loaded = load_model(path)  # untrusted
    assert loaded.card == small_card and same_outputs(loaded.network, small_network)


def test_a_bare_state_dict_needs_its_architecture_named(tmp_path, small_network):
    path = tmp_path / "bare.pt"
    torch.save(small_network.state_dict(), path)
    with pytest.raises(ModelLoadError, match="MODEL_ARCH"):
        load_model(path)
    loaded = load_model(path, ModelOptions(arch=SMALL_ARCH))
    assert same_outputs(loaded.network, small_network)
    assert loaded.card.class_names == ("class_0", "class_1", "class_2", "class_3")
    assert loaded.card.preprocessing == default_preprocessing(SMALL_ARCH)


def test_a_state_dict_of_another_architecture_is_refused(tmp_path, small_network):
    path = tmp_path / "bare.pt"
    torch.save(small_network.state_dict(), path)
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_model(path, ModelOptions(arch="resnet18"))


def test_unknown_architectures_and_missing_files_are_clear_errors(tmp_path, small_network):
    path = tmp_path / "bare.pt"
    torch.save(small_network.state_dict(), path)
    with pytest.raises(ModelLoadError, match="unknown architecture"):
        load_model(path, ModelOptions(arch="not_a_net"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing.pth")


def test_torchvision_architectures_take_their_published_preprocessing():
    assert default_preprocessing("resnet50") == Preprocessing(224, 232, (0.485, 0.456, 0.406),
                                                              (0.229, 0.224, 0.225))


def test_weights_of_another_architecture_are_refused_in_one_line_naming_the_difference(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(ModelLoadError) as refused:
        load_model(path, ModelOptions(arch="resnet34"))
    message = str(refused.value)
    assert "\n" not in message and len(message) < 300, message
    assert "does not fit architecture 'resnet34' (96 weights missing, e.g. layer1.2.conv1.weight)" in message


def test_a_missing_model_file_says_what_its_relative_path_is_relative_to(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=f"nope.pth does not exist \\(relative paths are from the working "
                                             f"directory, {tmp_path}\\)$"):
        load_model("nope.pth")
    with pytest.raises(ModelLoadError, match="`make model` builds the default one"):
        load_model(Settings().model_path)
