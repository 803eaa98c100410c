"""Prometheus metrics of `GET /metrics`.

Two sources. The API's own request counts and latencies live in this process,
or, under gunicorn (PROMETHEUS_MULTIPROC_DIR set, see app/gunicorn_conf.py), in
files that every API process writes and each scrape adds up. The fleet's state
(queue depth, live workers) and the workers' batch statistics are read from
Redis at scrape time (`InferenceQueue.fleet_status`), so they are right whichever
API process answers and however many workers there are.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from serving.protocol import Histogram as StoredHistogram

NAMESPACE = "imgcls"
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# registry=None: these are collected only by the per-scrape registry of `render`.
HTTP_REQUESTS = Counter("http_requests", "HTTP requests answered, by endpoint, method and status.",
                        ["endpoint", "method", "status"], namespace=NAMESPACE, registry=None)
HTTP_LATENCY = Histogram("http_request_duration_seconds", "Time from receiving a request to answering it.",
                         ["endpoint"], namespace=NAMESPACE, registry=None,
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))

CONTENT_TYPE = CONTENT_TYPE_LATEST


# HTTP's methods; any other token a client sends counts as "other", so nobody can grow the series without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def observe_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(endpoint, method if method in KNOWN_METHODS else "other", str(status)).inc()
    HTTP_LATENCY.labels(endpoint).observe(seconds)


def render(read_fleet_status) -> bytes:
    """The exposition text: this API's (or every API process's) metrics and the fleet's, read now."""
    registry = CollectorRegistry()
    if MULTIPROCESS:
        MultiProcessCollector(registry)
    else:
        registry.register(HTTP_REQUESTS)
        registry.register(HTTP_LATENCY)
    registry.register(_FleetCollector(read_fleet_status))
    return generate_latest(registry)


class _FleetCollector:
    """Metrics read from Redis; with Redis down only `imgcls_redis_up 0`, so the scrape itself still works."""

    def __init__(self, read_fleet_status):
        self.read_fleet_status = read_fleet_status

    def collect(self):
        redis_up = GaugeMetricFamily(f"{NAMESPACE}_redis_up", "1 when the API reached Redis during this scrape.")
        try:
            fleet = self.read_fleet_status()
        except Exception:  # redis.RedisError mostly; a scrape must never fail because of it
            redis_up.add_metric([], 0)
            yield redis_up
            return
        redis_up.add_metric([], 1)
        yield redis_up
        yield GaugeMetricFamily(f"{NAMESPACE}_queue_depth", "Images waiting in the queue for a worker.",
                                value=fleet.queue_depth)
        yield GaugeMetricFamily(f"{NAMESPACE}_workers_alive",
                                "Workers whose last heartbeat is within WORKER_TIMEOUT.", value=fleet.workers_alive)
        stats = fleet.stats
        yield _histogram(f"{NAMESPACE}_batch_size", "Images per forward pass, over all workers.",
                         stats.batch_size)
        yield _histogram(f"{NAMESPACE}_inference_seconds",
                         "Time of one forward pass (a whole batch), over all workers.", stats.inference_seconds)
        yield CounterMetricFamily(f"{NAMESPACE}_requests_expired",
                                  "Requests a worker skipped because their client had already been answered 504.",
                                  value=stats.expired)


def _histogram(name: str, documentation: str, stored: StoredHistogram) -> HistogramMetricFamily:
    buckets = [(floatToGoString(float(bound)), count) for bound, count in stored.buckets]  # "2" -> "2.0"
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=stored.sum)
