"""HTTP endpoints. A request goes: upload -> decode -> preprocess -> enqueue -> await result -> respond."""

from __future__ import annotations

import time

from flask import Blueprint, current_app, request
from werkzeug.datastructures import FileStorage

from app import metrics
from app.decode_budget import DecodeBudget
from app.errors import ApiError
from app.fleet import Fleet
from app.queue_client import NoAnswer
from app.request_log import log_fields, new_job_id
from serving.config import Settings
from serving.preprocess import decode, fit_to_model, read_header

api = Blueprint("api", __name__)

UPLOAD_FIELD = "image"


@api.get("/healthz")
def healthz():
    """Liveness: the API process answers. It does not look at Redis or the workers."""
    return {"status": "ok"}


# A client may pin its requests to one version of a model (a canary's own testers, a comparison).
VERSION_HEADER = "X-Model-Version"


@api.post("/predict", provide_automatic_options=False)  # OPTIONS is 405 like every method but POST
def predict():
    """The default model: DEFAULT_MODEL, or the only one served."""
    return _classify(None)


@api.post("/models/<name>/predict", provide_automatic_options=False)
def predict_with(name: str):
    return _classify(name)


def _classify(requested_name: str | None):
    started = time.perf_counter()
    settings: Settings = current_app.config["SETTINGS"]
    fleet: Fleet = current_app.extensions["fleet"]
    deadline = time.time() + settings.request_timeout

    upload = read_header(_single_upload().read(), settings.max_image_pixels)
    name = fleet.name_for(requested_name)
    queue = fleet.queue_for(name, request.headers.get(VERSION_HEADER))
    log_fields(model=queue.keys.model_id)
    model = queue.admit()  # 503 now (app/errors.py) rather than after decoding, if nobody would answer
    budget: DecodeBudget = current_app.extensions["decode_budget"]
    width, height = upload.header.size
    with budget.reserve(width * height):
        image = decode(upload, min_side=model.resize_size)
        pixels = fit_to_model(image, model.resize_size, model.input_size)
        del image  # the decoded image's memory goes back with its share of the budget
    preprocess_ms = (time.perf_counter() - started) * 1000
    job_id = new_job_id()
    log_fields(job_id=job_id)
    try:
        result = queue.classify(pixels, deadline, job_id)
    except NoAnswer:
        raise ApiError(504, "timeout", f"no answer within REQUEST_TIMEOUT={settings.request_timeout:g}s") from None
    if not result["success"]:
        error = result["error"]
        raise ApiError(500, error["code"], error["message"])
    timing = {"preprocess_ms": round(preprocess_ms, 2), **result["timing"],
              "total_ms": round((time.perf_counter() - started) * 1000, 2)}
    log_fields(**timing, top=result["predictions"][0]["label"] if result["predictions"] else "")
    metrics.observe_prediction(result["model"], result["version"], (time.perf_counter() - started))
    return {"success": True, "id": result["id"], "predictions": result["predictions"],
            "model": result["model"], "version": result["version"], "timing": timing}


def _single_upload() -> FileStorage:
    files = request.files.getlist(UPLOAD_FIELD)
    if not files:
        if request.mimetype != "multipart/form-data":
            raise ApiError(400, "missing_image",
                           f"send the image as multipart/form-data in the file field '{UPLOAD_FIELD}' "
                           f"(got Content-Type {request.mimetype or 'none'})")
        raise ApiError(400, "missing_image", f"no file field '{UPLOAD_FIELD}' in the form")
    if len(files) > 1:
        raise ApiError(400, "too_many_images", f"send one image per request; got {len(files)} in '{UPLOAD_FIELD}'")
    return files[0]

