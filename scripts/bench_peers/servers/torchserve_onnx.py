"""A TorchServe handler running ONNX Runtime: a batch of raw image bodies in, TorchServe's top-5 answers out.
Runs in TorchServe's venv."""

from pathlib import Path

import classify
import numpy as np
from ts.torch_handler.base_handler import BaseHandler


class OnnxImageClassifier(BaseHandler):
    def initialize(self, context):
        model_dir = Path(context.system_properties["model_dir"])
        self.config = classify.load_config(model_dir / "peer.json")
        self.session = classify.onnx_session(str(model_dir / self.config["onnx_model"]), self.config["threads"])
        self.initialized = True

    def preprocess(self, data):
        return np.stack([classify.pixels(row.get("data") or row.get("body"), self.config) for row in data])

    def inference(self, data, *args, **kwargs):
        return classify.classify(self.session, data)

    def postprocess(self, data):
        return [classify.top_labels(probabilities, self.config["labels"]) for probabilities in data]
