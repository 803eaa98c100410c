"""LitServe with ONNX Runtime: the multipart upload decoded, resized and cropped in the inference workers, batched
by LitServe. Runs in LitServe's venv: `python litserve_app.py` with PEER_CONFIG set."""

import classify
import litserve as ls
import numpy as np


class ImageClassifierAPI(ls.LitAPI):
    def setup(self, device):
        self.config = classify.load_config()
        self.session = classify.onnx_session(self.config["onnx_model"], self.config["threads"])

    def decode_request(self, request):
        return classify.pixels(request["image"].file.read(), self.config)

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, batch):
        return classify.classify(self.session, batch)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, probabilities):
        return classify.top_labels(probabilities, self.config["labels"])


if __name__ == "__main__":
    config = classify.load_config()
    api = ImageClassifierAPI(max_batch_size=config["max_batch_size"], batch_timeout=config["batch_timeout_ms"] / 1000)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=config["workers"], timeout=60)
    server.run(host="127.0.0.1", port=config["port"], generate_client_file=False)
