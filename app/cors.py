"""Cross-origin requests from browser apps on CORS_ORIGINS (off by default): preflights answered, answers marked.

A page on another origin may call the API only if the answer says so (Access-Control-Allow-Origin). A
request with a body other than a plain form is preceded by a preflight, OPTIONS with
Access-Control-Request-Method, which is answered here for allowed origins before any route sees it; for
any other origin it goes on to the routes, which answer 405 as to any OPTIONS.
"""

from __future__ import annotations

from flask import Flask, Response, current_app, request

# What a browser app may send (the API's own headers and the protocols') and read back.
ALLOWED_HEADERS = ("Content-Type, Authorization, X-API-Key, X-Model-Version, X-Request-ID, "
                   "Inference-Header-Content-Length")
EXPOSED_HEADERS = ("X-Request-ID, Retry-After, Inference-Header-Content-Length, RateLimit-Limit, "
                   "RateLimit-Remaining, RateLimit-Reset")
PREFLIGHT_MAX_AGE_SECONDS = 600


def install(app: Flask, origins: tuple[str, ...]) -> None:
    if origins:
        app.before_request(_answer_preflight)
        app.after_request(_allow_origin)


def _allowed_origin() -> str | None:
    origin = request.headers.get("Origin")
    allowed = current_app.config["SETTINGS"].allowed_origins
    return origin if origin and (origin in allowed or "*" in allowed) else None


def _answer_preflight() -> Response | None:
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers or not _allowed_origin():
        return None
    response = current_app.response_class(status=204)
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT"
    response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
    response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_SECONDS)
    return response


def _allow_origin(response: Response) -> Response:
    origin = _allowed_origin()
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    response.vary.add("Origin")  # caches must not hand one origin's answer to another
    return response
