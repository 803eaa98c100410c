"""Every failure the API reports, as one JSON shape: {"success": false, "error": {"code", "message"}}."""

from __future__ import annotations

import logging

from flask import Flask, current_app, g, jsonify
from werkzeug.exceptions import HTTPException

from app.decode_budget import DecoderBusy
from app.fleet import NoDefaultModel, UnknownModel
from app.queue_client import NoWorker, QueueFull
from app.request_log import log_fields
from serving.preprocess import ImageError
from serving.redis_client import REDIS_ERRORS

log = logging.getLogger("api")

_IMAGE_ERROR_STATUS = {"image_too_large": 413, "unsupported_format": 415}  # any other ImageError: 400


def image_error_status(code: str) -> int:
    """The HTTP status of an image that cannot be classified for this ImageError code."""
    return _IMAGE_ERROR_STATUS.get(code, 400)


RETRY_AFTER_SECONDS = 1  # told to clients on every 503: the conditions behind it pass quickly or not at all


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str):
    response = jsonify({"success": False, "error": {"code": code, "message": message}})
    if "log_fields" in g:  # the request's log line names the error
        log_fields(error=code)
    response.status_code = status
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(ImageError)
    def image_error(exc: ImageError):
        return error_response(image_error_status(exc.code), exc.code, str(exc))

    @app.errorhandler(UnknownModel)
    def unknown_model(exc: UnknownModel):
        return error_response(404, "unknown_model", f"no model {exc} is served here: GET /models lists them")

    @app.errorhandler(NoDefaultModel)
    def no_default_model(exc: NoDefaultModel):
        return error_response(404, "no_default_model", f"several models are served ({', '.join(exc.args[0])}) "
                              "and DEFAULT_MODEL names none of them: POST /models/<name>/predict")

    @app.errorhandler(NoWorker)
    def no_worker(exc: NoWorker):
        timeout = current_app.config["SETTINGS"].worker_timeout
        return error_response(503, "no_worker", "no worker available: none with a loaded model has sent a "
                              f"heartbeat within WORKER_TIMEOUT={timeout:g}s")

    @app.errorhandler(DecoderBusy)
    def decoder_busy(exc: DecoderBusy):
        budget = current_app.config["SETTINGS"].decode_pixel_budget
        return error_response(503, "decoder_busy", f"this API process is decoding its limit of {budget} pixels "
                              "(DECODE_PIXEL_BUDGET); retry later")

    @app.errorhandler(QueueFull)
    def queue_full(exc: QueueFull):
        max_queue = current_app.config["SETTINGS"].max_queue
        return error_response(503, "queue_full", f"{exc} images are queued (MAX_QUEUE={max_queue}); retry later")

    def redis_unavailable(exc: Exception):
        log.warning("redis unavailable: %s", exc)  # the log has the details; the client needs none of them
        return error_response(503, "redis_unavailable", "the queue (Redis) is unavailable; retry later")

    for error in REDIS_ERRORS:
        app.register_error_handler(error, redis_unavailable)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or exc.name)
        for name, value in exc.get_headers():  # Allow on a 405, for one
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", f"internal error: {type(exc).__name__}")
