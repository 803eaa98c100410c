"""BentoML with ONNX Runtime and adaptive batching: requests' images merged into batches of up to the configured
size. Runs in BentoML's venv: `bentoml serve bentoml_service:ImageClassifier` with PEER_CONFIG set."""

import bentoml
import classify
import numpy as np
from PIL.Image import Image

CONFIG = classify.load_config()


@bentoml.service(workers=CONFIG["workers"], traffic={"timeout": 60})
class ImageClassifier:
    def __init__(self):
        self.session = classify.onnx_session(CONFIG["onnx_model"], CONFIG["threads"])

    @bentoml.api(batchable=True, max_batch_size=CONFIG["max_batch_size"], max_latency_ms=1000)
    def classify(self, image: list[Image]) -> list[dict[str, float]]:
        batch = np.stack([classify.resize_and_crop(i.convert("RGB"), CONFIG["resize_size"], CONFIG["input_size"])
                          for i in image])
        return [classify.top_labels(p, CONFIG["labels"]) for p in classify.classify(self.session, batch)]
