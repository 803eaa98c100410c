"""TorchServe's stock image_classifier handler, its transform set to the model card's (TorchServe's documented way
to change it: subclass ImageClassifier and set image_processing). Runs in TorchServe's venv."""

from pathlib import Path

import torch
from classify import load_config
from torchvision import transforms
from ts.torch_handler.image_classifier import ImageClassifier


class CardImageClassifier(ImageClassifier):
    def initialize(self, context):
        super().initialize(context)
        config = load_config(Path(context.system_properties["model_dir"]) / "peer.json")
        torch.set_num_threads(config["threads"])
        self.image_processing = transforms.Compose([
            transforms.Resize(config["resize_size"]), transforms.CenterCrop(config["input_size"]),
            transforms.ToTensor(), transforms.Normalize(mean=config["mean"], std=config["std"])])
