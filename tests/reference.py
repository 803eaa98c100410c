"""Expected answers for test images, computed in the test process with the same model and preprocessing."""

from __future__ import annotations

import torch
from PIL import Image

from model_files.checkpoints import load_model
from model_files.serving_model import ServingModel
from serving.config import Settings
from serving.preprocess import prepare
from tests.images import PHOTOS, encode

COLOUR_PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "hubble_deep_field.jpg",
                 "motorcycle_left.png", "retina.jpg", "ihc.png", "color.png", "logo.png"]

Top3 = list[tuple[int, float]]


def variants(count: int) -> list[bytes]:
    """Different real images: crops and mirror images of the colour sample photos."""
    images = []
    for i in range(count):
        photo = Image.open(PHOTOS / COLOUR_PHOTOS[i % len(COLOUR_PHOTOS)]).convert("RGB")
        step = i // len(COLOUR_PHOTOS)
        w, h = photo.size
        crop = photo.crop((step * w // 9, step * h // 12, w - step * w // 14, h - step * h // 20))
        if step % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        images.append(encode(crop, "PNG"))
    return images


def reference_top3(images: list[bytes]) -> list[Top3]:
    """What the model says about each image in this process, one at a time: top-3 (index, probability)."""
    loaded = load_model(Settings().model_path)
    p = loaded.card.preprocessing
    model = ServingModel(loaded.network, p.mean, p.std).eval()
    answers = []
    with torch.inference_mode():
        for data in images:
            pixels = torch.from_numpy(prepare(data, p.resize_size, p.input_size, 10**8).copy())[None]
            probabilities, indices = model(pixels)[0].topk(3)
            answers.append([(int(i), float(q)) for i, q in zip(indices, probabilities)])
    return answers


def distinguishable(first: Top3, second: Top3) -> bool:
    return any(a[0] != b[0] or abs(a[1] - b[1]) > 2e-3 for a, b in zip(first, second))


def assert_all_distinguishable(expected: list[Top3]) -> None:
    """Precondition of crossed-answer checks: no two images could be mistaken for each other."""
    for i in range(len(expected)):
        for j in range(i):
            assert distinguishable(expected[i], expected[j]), (i, j)


def matches(predictions: list[dict], top3: Top3) -> bool:
    """Is this API answer the one expected for the image (indices equal, probabilities within 5e-4)?"""
    return ([p["index"] for p in predictions[:3]] == [i for i, _ in top3]
            and all(abs(p["probability"] - q) <= 5e-4 for p, (_, q) in zip(predictions, top3)))
