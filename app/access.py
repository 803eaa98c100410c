"""Who may call, and how much: the API key of each request (API_KEYS_FILE), its rate limit and its daily quota.

With API_KEYS_FILE set, every route but the probes and the demo page's files needs a key, `Authorization:
Bearer KEY` or `X-API-Key: KEY`, checked before the route runs (401 `unauthorized` in the door's own error
shape). The key's name, never the key, goes in the request's log line and metrics. A request that classifies
images is also charged one token per image from the key's bucket in Redis, shared by every API process and host
(serving/protocol.py, TAKE_TOKENS), in the same round trip as the queue's admission: over the rate 429
`rate_limited`, over the day's quota 429 `quota_exceeded`, each with Retry-After and RateLimit-* headers. Redis
down is 503 as for any request: no key's limit is ever skipped. A CORS preflight from an allowed origin
(app/cors.py) carries no key and is answered before the check; the request that follows needs one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from flask import Flask, Response, current_app, g, request

from app import metrics
from app.errors import ApiError
from app.keys import ApiKey, KeyRing
from app.request_log import log_fields
from serving import protocol
from serving.config import Settings
from serving.protocol import Allowance, ClientKeys
from serving.redis_client import RedisClient

# Endpoints anyone may reach: liveness and readiness probes (Kubernetes, load balancers, TorchServe's and v2's
# clients check them before they have a key to send) and the demo page with its files, where a person pastes a key.
OPEN_ENDPOINTS = frozenset({"api.healthz", "operations.readyz", "torchserve.ping", "v2.live", "v2.ready",
                            "operations.demo_page", "static"})
METRICS_ENDPOINT = "operations.prometheus_metrics"
API_KEY_HEADER = "X-API-Key"
CHALLENGE = ("WWW-Authenticate", 'Bearer realm="imgcls"')


def install(app: Flask, settings: Settings) -> None:
    """Check every request's key when API_KEYS_FILE is set; without it, every request is let in as it was."""
    if not settings.api_keys_file:
        return
    app.extensions["key_ring"] = KeyRing(settings.api_keys_file)
    app.before_request(_require_key)
    app.after_request(_report_key)


def caller() -> ApiKey | None:
    """The key this request came with; None when no key is needed (API_KEYS_FILE unset, or an open endpoint)."""
    return g.get("api_key")


def _require_key() -> None:
    g.api_key = None
    if request.endpoint in OPEN_ENDPOINTS:
        return
    settings: Settings = current_app.config["SETTINGS"]
    if request.endpoint == METRICS_ENDPOINT and not settings.metrics_need_key:
        return
    presented = _presented_key()
    key = current_app.extensions["key_ring"].find(presented) if presented else None
    if key is None:
        raise ApiError(401, "unauthorized", "a valid API key is needed: send `Authorization: Bearer KEY` or "
                       f"`{API_KEY_HEADER}: KEY`" if not presented else "this API key is not valid", (CHALLENGE,))
    g.api_key = key
    log_fields(key=key.name)


def _presented_key() -> str:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get(API_KEY_HEADER, "").strip()


def _report_key(response: Response) -> Response:
    key = caller()
    if key is not None:
        metrics.observe_key_request(key.name, response.status_code)
    for name, value in g.get("rate_limit_headers", ()):
        response.headers[name] = value
    return response


@dataclass(frozen=True)
class Charge:
    """What a request costs its key: one token and one image of its day per image it carries."""
    key: ApiKey
    keys: ClientKeys
    cost: int

    def queue_on(self, pipe) -> None:
        protocol.take_tokens(pipe, self.keys, self.cost, self.key.rate, self.key.burst, self.key.daily)

    def judge(self, reply) -> None:
        """Let the request on, or raise its 429; either way the RateLimit-* headers of its answer are set."""
        allowance = protocol.decode_allowance(reply)
        g.rate_limit_headers = self._headers(allowance)
        if allowance.verdict == protocol.TAKEN:
            return
        retry_after = (str(math.ceil(allowance.seconds)),)
        if allowance.verdict == protocol.OVER_QUOTA:
            resets = datetime.fromtimestamp(time.time() + allowance.seconds, timezone.utc).replace(microsecond=0)
            raise ApiError(429, "quota_exceeded", f"the key {self.key.name} has used its {self.key.daily} images of "
                           f"today (UTC); the quota resets at {resets.isoformat()}", (("Retry-After", *retry_after),))
        raise ApiError(429, "rate_limited", f"{self.cost} images would exceed the key {self.key.name}'s rate of "
                       f"{self.key.rate:g} images/s (burst {self.key.burst}); retry after {allowance.seconds:.2f}s",
                       (("Retry-After", *retry_after),))

    def refund(self, client: RedisClient) -> None:
        """Give the tokens back: the request was refused after all (503), which must cost the client nothing."""
        protocol.refund_tokens(client, self.keys, self.cost, self.key.rate, self.key.burst)

    def _headers(self, allowance: Allowance) -> tuple[tuple[str, str], ...]:
        """IETF's RateLimit fields of the limit that binds: the day's quota once it is spent or when the key has
        no rate, else the bucket (its size, whole tokens left, seconds until it is full or the request fits)."""
        if allowance.verdict == protocol.OVER_QUOTA or not self.key.rate:
            limit, remaining, seconds = self.key.daily, max(allowance.left_today, 0), allowance.day_seconds
        else:
            limit, remaining, seconds = self.key.burst, math.floor(allowance.tokens), allowance.seconds
        return (("RateLimit-Limit", str(limit)), ("RateLimit-Remaining", str(remaining)),
                ("RateLimit-Reset", str(math.ceil(seconds))))


def charge_for(images: int) -> Charge | None:
    """What this request's images cost its key, None when it has no limits; 400 for a request that could never
    pass (more images than the key's burst or daily quota)."""
    key = caller()
    if key is None or not key.limited:
        return None
    ceiling = min(limit for limit in (key.burst, key.daily) if limit)
    if images > ceiling:
        raise ApiError(400, "too_many_images", f"{images} images in one request; the key {key.name} may send at "
                       f"most {ceiling} at once (its burst, or its daily quota): split the request")
    settings: Settings = current_app.config["SETTINGS"]
    return Charge(key, ClientKeys(settings.key_prefix, key.name), images)


def count_admitted(images: int) -> None:
    """Images of the caller's that were queued: its share of the service, in the metrics."""
    key = caller()
    if key is not None:
        metrics.observe_key_images(key.name, images)


def priority() -> str:
    """The queue lane of the caller's images: its key's priority; normal without keys."""
    key = caller()
    return key.priority if key is not None else "normal"
