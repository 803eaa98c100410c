"""Endpoints for operators and people: readiness, metrics, the served model, the API description, a demo page."""

from __future__ import annotations

import json
from pathlib import Path

from flask import Blueprint, Response, current_app

from app import metrics
from app.fleet import Fleet
from app.queue_client import VersionStatus
from serving import routing
from serving.preprocess import RESIZE_FILTER
from serving.protocol import ModelInfo, model_id

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
    """Ready when POST /predict would be served: Redis answers and the version it goes to has a live worker. 503
    naming the cause otherwise: no worker (which version's heartbeat), several names and no default, Redis."""
    status = _fleet().ready_status()
    return {"status": "ready", "model": status.model.name, "version": status.model.version,
            "workers": status.workers_alive, "queue_depth": status.queue_depth}


@operations.get("/model")
def model():
    """The default model's version that requests go to now (GET /models/<name> lists every version)."""
    fleet = _fleet()
    return _describe(fleet.live_status(fleet.name_for(None)))


@operations.get("/models")
def models():
    """Every model name served, with each version's weight, live workers, queue depth and input size."""
    fleet = _fleet()
    snapshot = fleet.snapshot(fresh=True)
    default = fleet.default_name()  # once, not once per name
    return {"models": [_name_summary(fleet, name, default) for name in sorted(snapshot.versions)]}


@operations.get("/models/<name>")
def model_named(name: str):
    fleet = _fleet()
    return _name_summary(fleet, fleet.name_for(name), fleet.default_name())


@operations.get("/metrics")
def prometheus_metrics():
    return Response(metrics.render(_every_version_status), content_type=metrics.CONTENT_TYPE)


@operations.get("/openapi.json")
def openapi():
    return OPENAPI_DOCUMENT


def _fleet() -> Fleet:
    return current_app.extensions["fleet"]


def _every_version_status() -> dict[str, VersionStatus]:
    """model id -> its status, for every version the registry knows."""
    fleet = _fleet()
    snapshot = fleet.snapshot(fresh=True)
    return {model_id(name, version): fleet.queue(model_id(name, version)).version_status(fleet.worker_timeout)
            for name, versions in snapshot.versions.items() for version in versions}


def _name_summary(fleet: Fleet, name: str, default: str | None) -> dict:
    snapshot = fleet.snapshot()
    weights = snapshot.weights.get(name, {})
    versions = []
    for version in sorted(snapshot.versions[name], key=routing.version_order):
        status = fleet.queue(model_id(name, version)).version_status(fleet.worker_timeout)
        described = _describe(status) if status.model else {"version": version, "workers": 0,
                                                                 "queue_depth": status.queue_depth}
        versions.append({**described, "lanes": status.lane_depths, "weight": weights.get(version)})
    return {"name": name, "default": name == default,
            "routing": weights or "the only live version, or the lowest (no weights set)", "versions": versions}


def _precision(info: ModelInfo) -> dict:
    """What the model computes in and, for a reduced precision, its agreement report with float32."""
    if info.agreement is None:
        return {"precision": info.precision}
    try:
        return {"precision": info.precision, "agreement": json.loads(info.agreement)}
    except ValueError:  # a worker of another version: said, not shown as a report
        return {"precision": info.precision, "agreement": None}


def _describe(status: VersionStatus) -> dict:
    info = status.model
    preprocessing = {"resize_size": info.resize_size, "crop_size": info.input_size,
                     "interpolation": RESIZE_FILTER.name.lower(), "mean": list(info.mean), "std": list(info.std)}
    return {"name": info.name, "version": info.version, "arch": info.arch, "num_classes": info.num_classes,
            "input_size": info.input_size, "preprocessing": preprocessing, "sources": info.sources,
            **_precision(info),
            "backend": info.backend, "device": info.device, "batch_size": info.batch_size,
            "workers": status.workers_alive, "queue_depth": status.queue_depth}

