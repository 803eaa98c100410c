"""Endpoints for operators and people: readiness, metrics, the served model, the API description, a demo page."""

from __future__ import annotations

import json
from pathlib import Path

from flask import Blueprint, Response, current_app

from app import metrics
from app.queue_client import FleetStatus, InferenceQueue, NoWorker
from serving.config import Settings
from serving.preprocess import RESIZE_FILTER

operations = Blueprint("operations", __name__)

OPENAPI_DOCUMENT = json.loads((Path(__file__).parent / "openapi.json").read_text())


@operations.get("/")
def demo_page():
    response = current_app.send_static_file("demo.html")
    # Everything the page needs comes from this server; nothing inline, nothing from elsewhere.
    response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' blob: data:; "
                                                   "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
    return response


@operations.get("/readyz")
def readyz():
    """Ready: Redis answers and a worker with its model loaded has a fresh heartbeat (a Redis error is 503 too)."""
    fleet = _fleet_status()
    _require_worker(fleet)
    return {"status": "ready", "model": fleet.model.name, "workers": fleet.workers_alive,
            "queue_depth": fleet.queue_depth}


@operations.get("/model")
def model():
    fleet = _fleet_status()
    _require_worker(fleet)
    info = fleet.model
    preprocessing = {"resize_size": info.resize_size, "crop_size": info.input_size,
                     "interpolation": RESIZE_FILTER.name.lower(), "mean": list(info.mean), "std": list(info.std)}
    return {"name": info.name, "arch": info.arch, "num_classes": info.num_classes, "input_size": info.input_size,
            "preprocessing": preprocessing, "sources": info.sources,
            "backend": info.backend, "device": info.device, "batch_size": info.batch_size,
            "workers": fleet.workers_alive}


@operations.get("/metrics")
def prometheus_metrics():
    return Response(metrics.render(_fleet_status), content_type=metrics.CONTENT_TYPE)


@operations.get("/openapi.json")
def openapi():
    return OPENAPI_DOCUMENT


def _fleet_status() -> FleetStatus:
    queue: InferenceQueue = current_app.extensions["inference_queue"]
    settings: Settings = current_app.config["SETTINGS"]
    return queue.fleet_status(settings.worker_timeout)


def _require_worker(fleet: FleetStatus) -> None:
    if fleet.model is None or fleet.workers_alive == 0:
        raise NoWorker()
