"""Every failure the API reports, as one JSON shape: {"success": false, "error": {"code", "message"}}."""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from app.decode_budget import DecoderBusy
from app.fleet import NoDefaultModel, NotReady, UnknownModel, no_default_message
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
    """A failure as the client is told it: an HTTP status, a machine-readable code and a message for a person."""

    def __init__(self, status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def failure_of(exc: Exception) -> ApiError:
    """What the client is told of any exception a request raised: every protocol's routes render this their way."""
    settings = current_app.config["SETTINGS"]
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ImageError):
        return ApiError(image_error_status(exc.code), exc.code, str(exc))
    if isinstance(exc, UnknownModel):
        return ApiError(404, "unknown_model", f"no model {exc} is served here: GET /models lists them")
    if isinstance(exc, NoDefaultModel):
        return ApiError(404, "no_default_model", no_default_message(exc))
    if isinstance(exc, NoWorker):
        return ApiError(503, "no_worker", f"no worker available: {exc} (a worker is live while its last heartbeat "
                        f"is within WORKER_TIMEOUT={settings.worker_timeout:g}s)")
    if isinstance(exc, NotReady):
        return ApiError(503, "not_ready", str(exc))
    if isinstance(exc, DecoderBusy):
        return ApiError(503, "decoder_busy", f"this API process is decoding its limit of "
                        f"{settings.decode_pixel_budget} pixels (DECODE_PIXEL_BUDGET); retry later")
    if isinstance(exc, QueueFull):
        return ApiError(503, "queue_full", f"{exc} images are queued (MAX_QUEUE={settings.max_queue}); retry later")
    if isinstance(exc, REDIS_ERRORS):
        log.warning("redis unavailable: %s", exc)  # the log has the details; the client needs none of them
        return ApiError(503, "redis_unavailable", "the queue (Redis) is unavailable; retry later")
    if isinstance(exc, HTTPException):
        headers = tuple((name, value) for name, value in exc.get_headers()  # Allow on a 405, for one
                        if name.lower() != "content-type")
        return ApiError(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"),
                        _http_error_message(exc, settings), headers)
    log.exception("unhandled error")
    return ApiError(500, "internal_error", f"internal error: {type(exc).__name__}")


def _http_error_message(exc: HTTPException, settings) -> str:
    """werkzeug's description, or one that says what to do where werkzeug's does not."""
    if isinstance(exc, RequestEntityTooLarge):
        return (f"the request body is over MAX_UPLOAD_MB={settings.max_upload_mb:g} MiB "
                f"({settings.max_upload_bytes} bytes)")
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        return f"{request.method} is not allowed here; use {' or '.join(sorted(exc.valid_methods))}"
    return exc.description or exc.name


def respond(failure: ApiError, body: dict) -> Response:
    """A failure's response with the body a protocol gives it; its code goes in the request's log line."""
    response = jsonify(body)
    if "log_fields" in g:
        log_fields(error=failure.code)
    response.status_code = failure.status
    for name, value in failure.headers:
        response.headers[name] = value
    if failure.status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def native_error(exc: Exception) -> Response:
    """The native API's error: {"success": false, "error": {"code", "message"}}."""
    failure = failure_of(exc)
    return respond(failure, {"success": False, "error": {"code": failure.code, "message": failure.message}})


def register_error_handlers(app: Flask) -> None:
    """Every route answers errors natively unless its protocol's blueprint registers its own shape."""
    app.register_error_handler(Exception, native_error)
