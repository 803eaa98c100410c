"""The serving model's numeric contract: uint8 NHWC RGB in, torchvision's normalization, softmax out."""

import torch
import torch.nn as nn
from torchvision.transforms import v2

from model_files.serving_model import ServingModel

# ImageNet's constants: a different value in every channel, so a channel-order mistake shows.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_the_output_is_the_softmax_of_the_network_on_torchvision_normalized_rgb():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    images = torch.randint(0, 256, (3, 4, 4, 3), dtype=torch.uint8)
    expected = network(v2.Normalize(MEAN, STD)(images.permute(0, 3, 1, 2).float() / 255)).softmax(dim=1)
    with torch.inference_mode():
        torch.testing.assert_close(ServingModel(network, MEAN, STD)(images), expected, atol=1e-5, rtol=1e-5)
