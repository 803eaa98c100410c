"""Who may call, and how much: the API key of each request (API_KEYS_FILE), its rate limit and its daily quota.

With API_KEYS_FILE set, every route but the probes and the demo page's files needs a key, `Authorization:
Bearer KEY` or `X-API-Key: KEY`, checked before the route runs (401 `unauthorized` in the door's own error
shape). The key's name, never the key, goes in the request's log line and metrics. A request that classifies
images is also charged one token per image from the key's bucket in Redis, shared by every API process and host
(serving/rate_limit_scripts.py), in the same round trip as the queue's admission, once per request: over the rate
429 `rate_limited`, over the day's quota 429 `quota_exceeded`, each with Retry-After and RateLimit-* headers. A
request refused after its charge (no worker, a full queue, a top_k its model cannot answer) is given it back, here
(charged_for), and a request wrong in itself is refused before it is charged. Redis down is 503 as for any request:
no key's limit is ever skipped. A CORS preflight from an allowed origin (app/cors.py) carries no key and is
answered before the check; the request that follows needs one.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

from flask import Flask, Response, current_app, g, request

from app import metrics
from app.decode_budget import DecoderBusy
from app.errors import ApiError
from app.keys import ApiKey, KeyRing
from app.queue_client import NoWorker, QueueFull
from app.request_log import log_fields
from serving import rate_limit_scripts
from serving.config import Settings
from serving.protocol import ClientKeys
from serving.rate_limit_scripts import Allowance
from serving.redis_client import RedisClient, RedisPipeline

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


class OverLimit(ApiError):
    """429: the key's tokens or the day's quota do not cover the request, so nothing was taken."""


@dataclass(frozen=True)
class Charge:
    """What a request costs its key: one token and one image of its day per image it carries.

    Its id is the API's own (never the client's X-Request-ID, which a client could send again to ride on one charge):
    what makes a resent take take nothing (serving/rate_limit_scripts.py).
    """
    key: ApiKey
    keys: ClientKeys
    cost: int
    charge_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def queue_on(self, pipe: RedisPipeline) -> None:
        rate_limit_scripts.take_tokens(pipe, keys=self.keys, charge_id=self.charge_id, cost=self.cost,
                                       rate=self.key.rate, burst=self.key.burst, daily=self.key.daily)

    def judge(self, reply) -> None:
        """Let the request on, or raise its 429 (OverLimit); either way the RateLimit-* headers of its answer are
        set."""
        allowance = rate_limit_scripts.decode_allowance(reply)
        g.rate_limit_headers = self._headers(allowance)
        if allowance.verdict == rate_limit_scripts.TAKEN:
            return
        retry_after = (str(math.ceil(allowance.seconds)),)
        if allowance.verdict == rate_limit_scripts.OVER_QUOTA:
            resets = datetime.fromtimestamp(time.time() + allowance.seconds, timezone.utc).replace(microsecond=0)
            raise OverLimit(429, "quota_exceeded", f"the key {self.key.name} has used its {self.key.daily} images of "
                            f"today (UTC); the quota resets at {resets.isoformat()}", (("Retry-After", *retry_after),))
        raise OverLimit(429, "rate_limited", f"{self.cost} images would exceed the key {self.key.name}'s rate of "
                        f"{self.key.rate:g} images/s (burst {self.key.burst}); retry after {allowance.seconds:.2f}s",
                        (("Retry-After", *retry_after),))

    def refund(self, client: RedisClient) -> None:
        """Give the tokens back: the request was refused after all, which must cost the client nothing."""
        rate_limit_scripts.refund_tokens(client, keys=self.keys, cost=self.cost, rate=self.key.rate,
                                         burst=self.key.burst)

    def _headers(self, allowance: Allowance) -> tuple[tuple[str, str], ...]:
        """IETF's RateLimit fields of the limit that binds: the day's quota once it is spent or when the key has
        no rate, else the bucket (its size, whole tokens left, seconds until it is full or the request fits)."""
        if allowance.verdict == rate_limit_scripts.OVER_QUOTA or not self.key.rate:
            limit, remaining, seconds = self.key.daily, max(allowance.left_today, 0), allowance.day_seconds
        else:
            limit, remaining, seconds = self.key.burst, math.floor(allowance.tokens), allowance.seconds
        return (("RateLimit-Limit", str(limit)), ("RateLimit-Remaining", str(remaining)),
                ("RateLimit-Reset", str(math.ceil(seconds))))


# What refuses a request once its charge may have been taken, and so gives it back: the service's 503s (no worker
# or no room in the queue, at admission or at the push; no room to decode) and the request's own errors that only
# its model shows (a top_k over its classes). Not OverLimit: a 429 took nothing.
_REFUSED_AFTER_THE_CHARGE = (NoWorker, QueueFull, DecoderBusy, ApiError)


@contextmanager
def charged_for(images: int, client: RedisClient) -> Iterator[Charge | None]:
    """The charge of this request's images (None when its key has no limits), for the admission that takes it; the
    one place a charge is given back, when the request is refused within the block. 400 before anything is taken
    for a request that could never pass (more images than the key's burst or daily quota)."""
    charge = _charge(images)
    try:
        yield charge
    except OverLimit:
        raise
    except _REFUSED_AFTER_THE_CHARGE:
        if charge is not None:
            charge.refund(client)
        raise


def _charge(images: int) -> Charge | None:
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
