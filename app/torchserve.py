"""TorchServe's inference API, as its stock image classifier answers it: a door over app/inference.py.

`POST /predictions/{model}[/{version}]` takes the image as the raw body (`curl -T kitten.jpg`, `--data-binary`)
or as multipart files in the field `data` (or `body`), as TorchServe does, and answers like its
`image_classifier` handler: {"label": probability, ...}, the top k (TOP_K, or `?top_k=`) most probable first;
several files give a list of those, in order. `GET /ping` is TorchServe's health check. Errors are TorchServe's
shape, {"code", "type", "message"}.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, request

from app import inference
from app.errors import ApiError, failure_of, respond
from app.fleet import Fleet
from app.inference import Classification, Options
from app.multipart import request_form
from app.routes import TOP_K_FIELD, parse_top_k

torchserve_api = Blueprint("torchserve", __name__)

UPLOAD_FIELDS = ("data", "body")  # TorchServe's names for a request's input
# TorchServe's exception names, by status.
ERROR_TYPES = {400: "BadRequestException", 401: "InvalidKeyException", 404: "ModelNotFoundException",
               413: "BadRequestException", 415: "BadRequestException", 429: "TooManyRequestsException",
               503: "ServiceUnavailableException", 504: "RequestTimeoutException"}


@torchserve_api.errorhandler(Exception)
def torchserve_error(exc: Exception) -> Response:
    failure = failure_of(exc)
    return respond(failure, {"code": failure.status, "type": ERROR_TYPES.get(failure.status, "InternalServerException"),
                             "message": failure.message})


@torchserve_api.get("/ping")
def ping():
    """Healthy when /readyz is: POST /predict would be served."""
    fleet: Fleet = current_app.extensions["fleet"]
    fleet.ready_status()
    return {"status": "Healthy"}


# PUT too: `curl -T kitten.jpg URL`, TorchServe's own example, uploads with PUT.
@torchserve_api.route("/predictions/<name>", methods=["POST", "PUT"])
@torchserve_api.route("/predictions/<name>/<version>", methods=["POST", "PUT"])
def predictions(name: str, version: str | None = None):
    images = _inputs()
    done = inference.classify(name, version, images, Options(top_k=parse_top_k(request.args.get(TOP_K_FIELD))))
    answers = _label_probabilities(done)
    # In the stock handler's order, most probable first: Flask's own JSON would sort the labels.
    return current_app.response_class(json.dumps(answers[0] if len(answers) == 1 else answers),
                                      mimetype="application/json")


def _inputs() -> list[bytes]:
    if request.mimetype == "multipart/form-data":
        files = request_form().files_named(*UPLOAD_FIELDS)
        if not files:
            raise ApiError(400, "missing_image", f"no file in the form's field {' or '.join(UPLOAD_FIELDS)}")
        return files
    return [request.get_data()]


def _label_probabilities(done: Classification) -> list[dict[str, float]]:
    """The stock handler's answer per image (TorchServe has no per-image errors)."""
    return [{p.label: p.probability for p in result.predictions} for result in done.results_or_raise()]
