"""Network architectures the loader can rebuild from a name, with their default preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch.nn as nn

# torchvision is imported where a function needs it, not here: importing it takes 1.2 s (its ops pull in
# torch._dynamo), and a worker serving the default model or an imported file never needs it.

_EFFICIENTNET_LITE_INPUT = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260,
                            "efficientnet_lite3": 280, "efficientnet_lite4": 300}


@dataclass(frozen=True)
class Preprocessing:
    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet categories in index order, as torchvision ships them (no download)."""
    import torchvision.models

    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def known_architectures() -> list[str]:
    import torchvision.models

    return sorted(_EFFICIENTNET_LITE_INPUT) + torchvision.models.list_models(module=torchvision.models)


def build_architecture(arch: str, num_classes: int) -> nn.Module:
    """An untrained network of the named architecture; raises ValueError for unknown names."""
    if arch in _EFFICIENTNET_LITE_INPUT:
        from efficientnet_lite_pytorch import EfficientNet
        return EfficientNet.from_name(arch.replace("_", "-"), num_classes=num_classes)
    import torchvision.models

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(known_architectures())}")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def default_preprocessing(arch: str) -> Preprocessing:
    """The preprocessing the architecture's published ImageNet weights were trained with; ValueError if unknown."""
    if arch in _EFFICIENTNET_LITE_INPUT:
        # EfficientNet-Lite was trained on inputs in [-1, 1], at the usual 0.875 crop ratio.
        size = _EFFICIENTNET_LITE_INPUT[arch]
        return Preprocessing(size, int(round(size / 0.875)), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    import torchvision.models

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"no published weights known for architecture {arch!r}")
    transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    return Preprocessing(transforms.crop_size[0], transforms.resize_size[0],
                         tuple(transforms.mean), tuple(transforms.std))
