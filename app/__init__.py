"""The HTTP API. It preprocesses uploads and talks to workers through Redis; it never imports torch."""

from __future__ import annotations

import redis
from flask import Flask

from app.errors import register_error_handlers
from app.queue_client import InferenceQueue
from app.routes import api
from serving.config import Settings


def create_app(settings: Settings | None = None, redis_client: redis.Redis | None = None) -> Flask:
    """Application factory; gunicorn calls it as `app:create_app()`."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes  # werkzeug answers 413 before reading more
    if redis_client is None:
        # The read timeout must outlast the longest BLPOP (one request timeout).
        redis_client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1,
                                            socket_timeout=settings.request_timeout + 5)
    app.extensions["inference_queue"] = InferenceQueue(redis_client, settings.key_prefix)
    register_error_handlers(app)
    app.register_blueprint(api)
    return app
