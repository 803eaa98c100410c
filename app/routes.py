"""The native HTTP API. A request goes: upload -> decode -> preprocess -> enqueue -> await results -> respond."""

from __future__ import annotations

import binascii
import json
from dataclasses import asdict

import pybase64
from flask import Blueprint, request

from app import inference
from app.errors import ApiError
from app.inference import ImageOutcome, Options
from app.multipart import Form, request_form
from app.request_log import log_fields

api = Blueprint("api", __name__)

UPLOAD_FIELD = "image"
TOP_K_FIELD = "top_k"


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
    """The native door: multipart (field `image`, repeatable), a JSON body or a raw image body; `top_k` optional."""
    images, top_k = _native_request()
    done = inference.classify(requested_name, request.headers.get(VERSION_HEADER), images, Options(top_k=top_k))
    if len(done.outcomes) == 1:  # one image: its answer is the response, its failure the response's status
        outcome = done.outcomes[0]
        if outcome.failure is not None:
            raise outcome.failure
        answer = _image_answer(outcome, done.total_ms)
        log_fields(**answer["timing"], top=answer["predictions"][0]["label"] if answer["predictions"] else "")
        return answer
    return {"success": True, "model": done.model, "version": done.version,
            "results": [_image_answer(outcome, done.total_ms) for outcome in done.outcomes]}


def _image_answer(outcome: ImageOutcome, total_ms: float) -> dict:
    if outcome.failure is not None:
        return {"success": False, "error": {"code": outcome.failure.code, "message": outcome.failure.message}}
    result = outcome.result
    timing = {"preprocess_ms": round(outcome.preprocess_ms, 2), **result.timing, "total_ms": round(total_ms, 2)}
    return {"success": True, "id": result.job_id, "predictions": [asdict(p) for p in result.predictions],
            "model": result.model, "version": result.version, "timing": timing}


def _native_request() -> tuple[list[bytes], int | None]:
    """The images (encoded files) and the top_k a native request carries, by its Content-Type."""
    if request.mimetype == "application/json":
        return _json_request()
    if request.mimetype == "multipart/form-data":
        form = request_form()
        return _uploads(form), parse_top_k(form.field(TOP_K_FIELD, request.args.get(TOP_K_FIELD)))
    if request.mimetype.startswith("image/") or request.mimetype == "application/octet-stream":
        return [request.get_data()], parse_top_k(request.args.get(TOP_K_FIELD))
    raise ApiError(400, "missing_image",
                   f"send the image as multipart/form-data in the file field '{UPLOAD_FIELD}', as a JSON body "
                   f'{{"image": "<base64>"}}, or as a raw image/* body (got Content-Type {request.mimetype or "none"})')


def _uploads(form: Form) -> list[bytes]:
    files = form.files_named(UPLOAD_FIELD)
    if not files:
        raise ApiError(400, "missing_image", f"no file field '{UPLOAD_FIELD}' in the form")
    return files


def _json_request() -> tuple[list[bytes], int | None]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", 'the body is not a JSON object like {"image": "<base64>"}')
    if ("image" in body) == ("images" in body):
        raise ApiError(400, "missing_image", 'send either "image": "<base64>" or "images": ["<base64>", ...]')
    encoded = [body["image"]] if "image" in body else body["images"]
    if not isinstance(encoded, list) or not all(isinstance(item, str) for item in encoded):
        raise ApiError(400, "invalid_json", '"images" must be a list of base64 strings, "image" one such string')
    top_k = body.get(TOP_K_FIELD)
    if top_k is not None and type(top_k) is not int:  # JSON's own numbers; bool is an int to Python
        raise ApiError(400, "invalid_top_k", f"top_k={json.dumps(top_k)[:20]}: expected a whole number")
    return [_base64(item, index) for index, item in enumerate(encoded)], (
        top_k if top_k is not None else parse_top_k(request.args.get(TOP_K_FIELD)))


def _base64(text: str, index: int) -> bytes:
    try:
        return pybase64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise ApiError(400, "invalid_base64", f"image {index} is not valid base64") from None


def parse_top_k(given: str | None) -> int | None:
    """`top_k` from a query or form field: a whole number (its range is checked against the model's classes)."""
    if given is None:
        return None
    if not (given.isascii() and given.isdigit()):
        raise ApiError(400, "invalid_top_k", f"top_k={given[:20]!r}: expected a whole number")
    return int(given)
