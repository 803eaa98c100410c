"""Prometheus metrics of `GET /metrics`.

Two sources. The API's own request counts and latencies live in this process,
or, under gunicorn (PROMETHEUS_MULTIPROC_DIR set, see app/gunicorn_conf.py), in
files that every API process writes and each scrape adds up. The fleet's state
(queue depth, live workers) and the workers' batch statistics are read from
Redis at scrape time (`InferenceQueue.version_status`), so they are right whichever
API process answers and however many workers there are.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from serving.protocol import split_model_id
from serving.worker_stats import Histogram as StoredHistogram

NAMESPACE = "imgcls"
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# registry=None: these are collected only by the per-scrape registry of `render`.
HTTP_REQUESTS = Counter("http_requests", "HTTP requests answered, by endpoint, method and status.",
                        ["endpoint", "method", "status"], namespace=NAMESPACE, registry=None)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HTTP_LATENCY = Histogram("http_request_duration_seconds", "Time from receiving a request to answering it.",
                         ["endpoint"], namespace=NAMESPACE, registry=None, buckets=LATENCY_BUCKETS)

REQUEST_IMAGES = Counter("request_images", "Images received in classification requests, by the endpoint (door) "
                         "that took them.", ["endpoint"], namespace=NAMESPACE, registry=None)
PREDICTIONS = Counter("predictions", "Images classified, by the model version that answered.",
                      ["model", "version"], namespace=NAMESPACE, registry=None)
PREDICTION_LATENCY = Histogram("prediction_duration_seconds", "Time from receiving an image to its answer, by the "
                               "model version that answered.", ["model", "version"], namespace=NAMESPACE,
                               registry=None, buckets=LATENCY_BUCKETS)

ROUTE_FALLBACKS = Counter("route_fallbacks", "Requests for a model name whose route prefers only versions without a "
                          "live worker, served by another live version of the name instead.", ["model"],
                          namespace=NAMESPACE, registry=None)

# By API key name (API_KEYS_FILE's, a bounded set), never the key.
KEY_REQUESTS = Counter("key_requests", "Requests that came with a valid API key, by its name and the status.",
                       ["key", "status"], namespace=NAMESPACE, registry=None)
KEY_IMAGES = Counter("key_images", "Images admitted to the queue, by the name of the API key they came with.", ["key"],
                     namespace=NAMESPACE, registry=None)

CONTENT_TYPE = CONTENT_TYPE_LATEST


# HTTP's methods; any other token a client sends counts as "other", so nobody can grow the series without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def observe_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(endpoint, method if method in KNOWN_METHODS else "other", str(status)).inc()
    HTTP_LATENCY.labels(endpoint).observe(seconds)


def observe_images(endpoint: str, count: int) -> None:
    REQUEST_IMAGES.labels(endpoint).inc(count)


def observe_prediction(model: str, version: str, seconds: float) -> None:
    PREDICTIONS.labels(model, version).inc()
    PREDICTION_LATENCY.labels(model, version).observe(seconds)


def observe_route_fallback(name: str) -> None:
    ROUTE_FALLBACKS.labels(name).inc()


def observe_key_request(key: str, status: int) -> None:
    KEY_REQUESTS.labels(key, str(status)).inc()


def observe_key_images(key: str, images: int) -> None:
    KEY_IMAGES.labels(key).inc(images)


def render(read_statuses) -> bytes:
    """The exposition text: this API's (or every API process's) metrics and the fleet's, read now.

    `read_statuses` returns every model version's VersionStatus by model id.
    """
    registry = CollectorRegistry()
    if MULTIPROCESS:
        MultiProcessCollector(registry)
    else:
        for own in (HTTP_REQUESTS, HTTP_LATENCY, REQUEST_IMAGES, PREDICTIONS, PREDICTION_LATENCY, ROUTE_FALLBACKS,
                    KEY_REQUESTS, KEY_IMAGES):
            registry.register(own)
    registry.register(_FleetCollector(read_statuses))
    return generate_latest(registry)


class _FleetCollector:
    """Metrics read from Redis, one series per model version; with Redis down only `imgcls_redis_up 0`, so the
    scrape itself still works."""

    def __init__(self, read_statuses):
        self.read_statuses = read_statuses

    def collect(self):
        redis_up = GaugeMetricFamily(f"{NAMESPACE}_redis_up", "1 when the API reached Redis during this scrape.")
        try:
            statuses = self.read_statuses()
        except Exception:  # redis.RedisError mostly; a scrape must never fail because of it
            redis_up.add_metric([], 0)
            yield redis_up
            return
        redis_up.add_metric([], 1)
        yield redis_up
        labels = ["model", "version"]
        depth = GaugeMetricFamily(f"{NAMESPACE}_queue_depth", "Images waiting in a version's queue for a worker.",
                                  labels=labels)
        lanes = GaugeMetricFamily(f"{NAMESPACE}_lane_depth", "Images waiting in one priority lane of a version's "
                                  "queue (API keys' PRIORITY).", labels=[*labels, "lane"])
        alive = GaugeMetricFamily(f"{NAMESPACE}_workers_alive",
                                  "Workers of a version whose last heartbeat is within WORKER_TIMEOUT.", labels=labels)
        batch_size = HistogramMetricFamily(f"{NAMESPACE}_batch_size", "Images per forward pass, over a version's "
                                           "workers.", labels=labels)
        inference = HistogramMetricFamily(f"{NAMESPACE}_inference_seconds", "Time of one forward pass (a whole "
                                          "batch), over a version's workers.", labels=labels)
        expired = CounterMetricFamily(f"{NAMESPACE}_requests_expired", "Requests a worker skipped because their "
                                      "client had already been answered 504.", labels=labels)
        for model, status in sorted(statuses.items()):
            values = list(split_model_id(model))
            depth.add_metric(values, status.queue_depth)
            for lane, lane_depth in status.lane_depths.items():
                lanes.add_metric([*values, lane], lane_depth)
            alive.add_metric(values, status.workers_alive)
            for family, stored in ((batch_size, status.stats.batch_size), (inference, status.stats.inference_seconds)):
                family.add_metric(values, _buckets(stored), stored.sum)
            expired.add_metric(values, status.stats.expired)
        live = sum(1 for status in statuses.values() if status.workers_alive > 0)
        yield GaugeMetricFamily(f"{NAMESPACE}_model_versions_live", "Model versions with at least one live worker "
                                "(0: every request is answered 503 no_worker).", value=live)
        yield from (depth, lanes, alive, batch_size, inference, expired)


def _buckets(stored: StoredHistogram) -> list[tuple[str, int]]:
    return [(floatToGoString(float(bound)), count) for bound, count in stored.buckets]  # "2" -> "2.0"
