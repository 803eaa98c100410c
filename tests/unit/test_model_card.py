"""Serving the checkpoint users have: what the file does not say comes from configuration, then defaults.

Covers the classic `{'model', 'model_state_dict'}` file, a whole pickled module,
label files in three formats, where each card value came from, and the errors
a wrong configuration gets.
"""

import json
import logging

import pytest
import torch
import torch.nn as nn
import torchvision

from engines.choose import model_options
from model_files.architectures import Preprocessing
from model_files.card import (
    ASSUMED,
    FROM_FILE,
    IMAGENET_CONVENTION,
    ModelCard,
    ModelLoadError,
    ModelOptions,
    read_labels,
)
from model_files.checkpoints import load_model, save_state_dict
from serving.config import ConfigError, Settings
from tests.model_files import save_classic


class FourClasses(nn.Module):
    """Not a torchvision architecture: the loader cannot rebuild it by name."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        return self.head(x.mean(dim=(2, 3)))


LABELS = ["cat", "dog", "bird", "fish"]
# LABELS in each shape of index_to_name.json that TorchServe's load_label_mapping reads.
INDEX_TO_NAME_SHAPES = {
    "wnid and name": {str(i): ["n0000000%d" % i, name] for i, name in enumerate(LABELS)},
    "name": {"1": "dog", "0": "cat", "3": "fish", "2": "bird"},
    "object_type_names": {"object_type_names": LABELS},  # its older examples
}
SMALL_ARCH = "mobilenet_v3_small"


@pytest.fixture
def classic(tmp_path):
    """A checkpoint saved the way the classic tutorial does: the module and its state_dict, nothing else."""
    network = FourClasses().eval()
    path = tmp_path / "classic.pth"
    save_classic(network, path)
    return path


def labels_file(tmp_path, text: str, name: str = "labels.txt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_classic_checkpoint_loads_when_trusted_with_labels_and_normalization_from_configuration(classic, tmp_path):
    settings = Settings.from_env({"MODEL_TRUSTED": "1", "LABELS_PATH": labels_file(tmp_path, "\n".join(LABELS) + "\n"),
                                  "MEAN": "0.4,0.5,0.6", "STD": "0.2,0.25,0.3"})
    card = load_model(classic, model_options(settings)).card
    assert card.class_names == tuple(LABELS)
    assert card.preprocessing.mean == (0.4, 0.5, 0.6) and card.preprocessing.std == (0.2, 0.25, 0.3)
    assert (card.preprocessing.input_size, card.preprocessing.resize_size) == (224, 256)
    # The label file's name, not where it lies: GET /model shows the sources to every client.
    assert card.sources == {"class_names": "LABELS_PATH (labels.txt)", "mean": "MEAN", "std": "STD",
                            "input_size": ASSUMED, "resize_size": ASSUMED}


def test_what_nobody_says_is_torchvisions_imagenet_convention_and_logged_as_assumed(classic, caplog):
    with caplog.at_level(logging.WARNING, logger="model_files"):
        card = load_model(classic, ModelOptions(trusted=True)).card
    assert card.preprocessing == IMAGENET_CONVENTION
    assert card.class_names == ("class_0", "class_1", "class_2", "class_3")
    assert card.sources["class_names"] == "assumed: no labels given, class_N"
    assert "assumed" in caplog.text and "input_size=224" in caplog.text and "class_0..class_3" in caplog.text


def test_sizes_from_configuration(classic):
    card = load_model(classic, ModelOptions(trusted=True, input_size=96, resize_size=110)).card
    assert (card.preprocessing.input_size, card.preprocessing.resize_size) == (96, 110)
    assert card.sources["input_size"] == "INPUT_SIZE"


def test_a_whole_pickled_module_loads_when_trusted(tmp_path):
    network = FourClasses().eval()
    path = tmp_path / "model.pt"
    torch.save(network, path)  # the other common way to save
    with pytest.raises(ModelLoadError, match="MODEL_TRUSTED=1"):
        load_model(path)
    loaded = load_model(path, ModelOptions(trusted=True))
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.network(x), network(x))


def test_the_refusal_of_an_untrusted_pickle_names_the_import_command(classic):
    with pytest.raises(ModelLoadError, match=f"python -m model_tools import {classic} --trusted"):
        load_model(classic)


def test_a_label_count_other_than_the_models_outputs_is_an_error_naming_both(classic, tmp_path):
    options = ModelOptions(trusted=True, labels_path=labels_file(tmp_path, "cat\ndog\nbird\n"))
    with pytest.raises(ModelLoadError, match="names 3 classes, but the model in .* has 4 outputs"):
        load_model(classic, options)


@pytest.mark.parametrize("name, text", [
    ("labels.txt", "cat\ndog\r\nbird\nfish"),
    ("labels.json", json.dumps(LABELS)),
    *(("index_to_name.json", json.dumps(shape)) for shape in INDEX_TO_NAME_SHAPES.values()),
])
def test_labels_come_as_text_json_or_torchserves_index_to_name(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert read_labels(path) == LABELS


@pytest.mark.parametrize("name, text, complaint", [
    ("labels.txt", "cat\n\ndog\n", "line 2 is empty"),
    ("labels.json", '{"0": "cat", "2": "dog"}', "keys of an index_to_name.json must be 0 to N-1"),
    ("labels.json", '[1, 2]', "expected a JSON list of class names"),
    ("labels.json", '[', "not valid JSON"),
])
def test_a_malformed_label_file_is_a_clear_error(tmp_path, name, text, complaint):
    (tmp_path / name).write_text(text)
    with pytest.raises(ModelLoadError, match=complaint):
        read_labels(tmp_path / name)


def test_configuration_that_contradicts_the_file_is_an_error_not_a_silent_choice(tmp_path):
    network = torchvision.models.get_model(SMALL_ARCH, weights=None, num_classes=4).eval()
    card = ModelCard("small", SMALL_ARCH, tuple(LABELS), Preprocessing(96, 110, (0.4, 0.4, 0.4), (0.2, 0.2, 0.2)))
    path = save_state_dict(network, card, tmp_path / "small.pth")
    assert load_model(path, ModelOptions(mean=(0.4, 0.4, 0.4))).card.sources["mean"] == FROM_FILE  # agrees
    with pytest.raises(ModelLoadError, match=r"MEAN is 0.5,0.5,0.5 but .* says 0.4,0.4,0.4"):
        load_model(path, ModelOptions(mean=(0.5, 0.5, 0.5)))
    with pytest.raises(ModelLoadError, match="LABELS_PATH=.* names other classes"):
        load_model(path, ModelOptions(labels_path=labels_file(tmp_path, "a\nb\nc\nd\n")))


@pytest.mark.parametrize("variable, value", [("MEAN", "0.5,0.5"), ("MEAN", "a,b,c"), ("STD", "0.2,0,0.2"),
                                             ("STD", "nan,1,1")])
def test_malformed_mean_or_std_is_a_configuration_error(variable, value):
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value})
