"""Moving off TorchServe: its .mar, made by the real torch-model-archiver, imported once and served by the real
service, answers `PUT /predictions/<name>` as the stock image_classifier would.

The reference is TorchServe's own recipe run here on the eager model: Resize(256) (bilinear, shorter side),
CenterCrop(224), ToTensor, ImageNet's Normalize, softmax. Our preprocessing is Pillow's too but resamples only
the crop's region (serving.preprocess.fit_to_model); measured on these photos, that moves some pixels by one
level of 255, and the default model's probabilities by at most 5.5e-4 (chelsea 3.7e-4, rocket.jpg 5.5e-4,
motorcycle_left 1.8e-4, coffee 0). PROBABILITY_TOLERANCE is about four times that. The five labels' order
must match too: neighbours stand at least 7e-3 apart in chelsea, rocket and motorcycle_left; coffee's fourth
and fifth are 3.2e-4 apart, but its pixels come out the same, and the engines agree within 1e-4.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import requests
import torch
from PIL import Image
from torchvision import transforms

from model_files.checkpoints import load_model
from serving.config import Settings
from stack.processes import REPO_ROOT, Stack
from tests.images import photo_bytes
from tests.integration.conftest import stack_settings
from tests.model_files import torchserve_archive

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
PROBABILITY_TOLERANCE = 2e-3
TOP_K = 5  # the stock handler's topk
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def default_network():
    """The default model's network (EfficientNet-Lite0, real ImageNet weights) and its class names."""
    loaded = load_model(Settings().model_path)
    return loaded.network.eval(), loaded.card.class_names


@pytest.fixture(scope="module")
def served_answers(default_network, tmp_path_factory):
    """The network traced and archived as TorchServe users do, imported, served; its answer to each photo."""
    network, class_names = default_network
    folder = tmp_path_factory.mktemp("torchserve")
    torch.jit.trace(network, torch.rand(1, 3, 224, 224)).save(str(folder / "lite0.pt"))
    labels = folder / "index_to_name.json"
    labels.write_text(json.dumps({str(i): name for i, name in enumerate(class_names)}))
    archive = torchserve_archive(folder, "lite0", folder / "lite0.pt", extra_files=(labels,))
    imported = folder / "lite0.onnx"  # ONNX: served below without trust
    subprocess.run([sys.executable, "-m", "model_tools", "import", str(archive), "--trusted", "--out", str(imported)],
                   cwd=REPO_ROOT, check=True, capture_output=True, timeout=600)
    with Stack(stack_settings(model_path=str(imported)), workers=1, log_dir=folder / "logs") as stack:
        return {name: requests.put(f"{stack.url}/predictions/lite0", data=photo_bytes(name), timeout=60).json()
                for name in PHOTOS}


def torchserve_reference(network: torch.nn.Module, class_names: tuple[str, ...], photo: bytes) -> dict[str, float]:
    """What TorchServe's image_classifier answers: its transforms, the eager model, softmax, the top five."""
    recipe = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                 transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    with torch.inference_mode():
        probabilities = network(recipe(Image.open(io.BytesIO(photo)).convert("RGB"))[None]).softmax(dim=1)[0]
    top = probabilities.topk(TOP_K)
    return {class_names[int(i)]: float(p) for p, i in zip(top.values, top.indices)}


@pytest.mark.parametrize("photo", PHOTOS)
def test_an_imported_torchserve_archive_answers_predictions_as_the_stock_handler_on_the_eager_model(
        served_answers, default_network, photo):
    expected = torchserve_reference(*default_network, photo_bytes(photo))
    served = served_answers[photo]
    assert list(served) == list(expected)  # the same five labels, most probable first
    assert max(abs(served[label] - expected[label]) for label in expected) < PROBABILITY_TOLERANCE
