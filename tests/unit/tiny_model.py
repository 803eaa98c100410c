"""A three-class model small enough for unit tests whose answer is easy to predict: the dominant colour."""

import time

import numpy as np
import torch
import torch.nn as nn

from engines.choose import engine_for_checkpoint
from model_files.architectures import Preprocessing
from model_files.card import ModelCard
from model_files.checkpoints import LoadedModel
from serving import protocol
from serving.protocol import InferenceRequest, Keys
from worker.inference import Classifier

INPUT_SIZE = 8
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


class MeanColour(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(3) * 10)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


class MedianColour(MeanColour):
    """The same answers on images of one colour, through an operator torch's ONNX exporter does not have."""

    def forward(self, x):
        return self.fc(x.flatten(2).nanmedian(dim=2).values)


def tiny_loaded_model(network_class: type[nn.Module] = MeanColour) -> LoadedModel:
    card = ModelCard("tiny", "mean_colour", tuple(COLOURS), Preprocessing(INPUT_SIZE, INPUT_SIZE, (0, 0, 0), (1, 1, 1)))
    return LoadedModel(network_class().eval(), card)


def tiny_classifier() -> Classifier:
    return Classifier(engine_for_checkpoint(tiny_loaded_model(), "torch", "cpu", 1), "cpu")


def message(client, job_id: str, colour: str = "red", deadline_in: float = 10.0, size: int = INPUT_SIZE,
            top_k: int = 5, probabilities: bool = False, keys: Keys = Keys("t", "tiny@1"),
            priority: str = "normal") -> bytes:
    """A queue message, as the API sends it, of an image in one colour (the tiny model's answer is that colour), its
    pixels written to `client` under `keys` as the API writes them."""
    pixels = np.full((size, size, 3), COLOURS[colour], dtype=np.uint8)
    now = time.time()
    return stored(client, keys, InferenceRequest(job_id, pixels, now, now + deadline_in, top_k, probabilities,
                                                 priority))


def stored(client, keys: Keys, request: InferenceRequest) -> bytes:
    """The request's message, its pixels written to `client` as ENQUEUE's transaction writes them."""
    encoded = protocol.encode_request(request)
    client.set(keys.pixels(encoded.job_id), encoded.pixels, px=encoded.expire_ms)
    return encoded.message


def processed(worker, messages: list[bytes]) -> None:
    """Have `worker` serve these messages as if it had taken them: into its processing list first, since a worker
    answers only what its list still holds."""
    worker.client.lpush(worker.queue.processing, *messages)
    worker.process(messages)
