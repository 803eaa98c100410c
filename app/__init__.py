"""The HTTP API. It preprocesses uploads and talks to workers through Redis; it never imports torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask

from app import access, cors, request_log
from app.decode_budget import DecodeBudget
from app.decode_pool import DecodePool, cores_available
from app.errors import register_error_handlers
from app.fleet import Fleet
from app.operations import operations
from app.routes import api
from app.torchserve import torchserve_api
from app.v2 import v2_api
from serving.config import Settings
from serving.redis_client import RedisClient, connect

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def create_app(settings: Settings | None = None, redis_client: RedisClient | None = None) -> Flask:
    """Application factory; gunicorn calls it as `app:create_app()`."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes  # werkzeug answers 413 before reading more
    app.wsgi_app = _read_to_content_length(app.wsgi_app)
    waiting_client = redis_client
    if redis_client is None:
        # Two pools: a hung Redis must cost a request REDIS_TIMEOUT, not the whole request timeout,
        # while the BLPOP for the answer needs a read timeout longer than the request's.
        redis_client = _redis(settings, settings.redis_timeout)
        waiting_client = _redis(settings, settings.request_timeout + settings.redis_timeout)
    app.extensions["fleet"] = Fleet(redis_client, waiting_client, settings.key_prefix, settings.max_queue,
                                    settings.worker_timeout, settings.default_model)
    app.extensions["decode_pool"] = DecodePool(DecodeBudget(settings.decode_pixel_budget), cores_available())
    register_error_handlers(app)
    request_log.install(app, settings.log_level)
    cors.install(app, settings.allowed_origins)  # before the keys: a preflight carries none, and a refusal is marked
    access.install(app, settings)  # after the request log: its line names the key, and a refused key is logged
    app.register_blueprint(api)
    app.register_blueprint(operations)
    app.register_blueprint(v2_api)
    app.register_blueprint(torchserve_api)
    return app


def _read_to_content_length(wsgi_app: WSGIApplication) -> WSGIApplication:
    """Have werkzeug read a body with a Content-Length to that length, so a body of exactly MAX_UPLOAD_MB passes.

    Under a server that sets `wsgi.input_terminated` (gunicorn does), werkzeug reads every body through a
    stream capped at MAX_CONTENT_LENGTH that refuses the read after the cap, which a body of exactly that
    size makes: 413 for a body that is not over the limit, while nginx in front lets it through. The
    Content-Length itself is still checked against the limit first; a body without one (chunked) keeps the cap.
    """
    def app(environ: WSGIEnvironment, start_response: StartResponse):
        if environ.get("CONTENT_LENGTH"):
            environ.pop("wsgi.input_terminated", None)
        return wsgi_app(environ, start_response)
    return app


def _redis(settings: Settings, read_timeout: float) -> RedisClient:
    return connect(settings.redis_url, settings.redis_timeout, read_timeout)
