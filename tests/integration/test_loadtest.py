"""scripts/loadtest.py against the real service: closed and open loop, reports, plots, and its bounds."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from PIL import Image

from scripts.loadtest import run
from stack.processes import free_port
from tests.images import PHOTOS


def test_closed_loop_reports_statuses_latency_and_batch_sizes(service, tmp_path):
    report = run(["--url", service.url + "/predict", "--images", str(PHOTOS / "chelsea.png"),
                  "--concurrency", "4", "--requests", "24", "--json", str(tmp_path / "r.json"),
                  "--plot", str(tmp_path / "r.png"), "--quiet"])
    assert report.statuses == {"200": 24}
    figures = json.loads((tmp_path / "r.json").read_text())
    assert figures["requests"] == 24 and figures["throughput_rps"] > 0
    assert set(figures["latency_ms"]) == {"p50", "p90", "p99", "max"}
    assert sum(figures["batch_sizes"].values()) == 24
    with Image.open(tmp_path / "r.png") as plot:
        assert plot.format == "PNG" and plot.width > 500


def test_open_loop_starts_requests_at_the_given_rate(service, tmp_path):
    for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
        (tmp_path / name).write_bytes((PHOTOS / name).read_bytes())
    (tmp_path / "notes.txt").write_text("not an image, so not sent")
    started = time.monotonic()
    report = run(["--url", service.url + "/predict", "--images", str(tmp_path), "--rate", "20",
                  "--duration", "2", "--quiet"])
    assert report.requests == 40 and report.succeeded == 40
    assert 1.9 < time.monotonic() - started < 10


def test_it_stops_at_max_time_and_counts_unanswered_requests():
    nobody = f"http://127.0.0.1:{free_port()}/predict"
    started = time.monotonic()
    report = run(["--url", nobody, "--images", str(PHOTOS / "chelsea.png"), "--requests", "1000000",
                  "--max-time", "1", "--quiet"])
    assert time.monotonic() - started < 5
    assert set(report.statuses) == {"0"}  # no response: counted, not lost


def test_the_command_prints_a_summary_and_fails_when_nothing_succeeds(service):
    command = [sys.executable, "-m", "scripts.loadtest", "--images", str(PHOTOS / "coffee.png"), "--requests", "5"]
    ok = subprocess.run(command + ["--url", service.url + "/predict"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "status  200: 5" in ok.stdout and "latency ms  p50" in ok.stdout
    failed = subprocess.run(command + ["--url", f"http://127.0.0.1:{free_port()}/predict"],
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and "no response: 5" in failed.stdout


@pytest.mark.parametrize("protocol, path", [("native", "/predict"), ("json", "/predict"),
                                            ("v2", "/v2/models/efficientnet_lite0/infer"),
                                            ("torchserve", "/predictions/efficientnet_lite0")])
@pytest.mark.parametrize("images", [1, 3])
def test_every_door_takes_the_load_tests_requests(service, protocol, path, images):
    report = run(["--url", service.url + path, "--protocol", protocol, "--images-per-request", str(images),
                  "--concurrency", "2", "--requests", "6", "--quiet"])
    assert report.statuses == {"200": 6}
    assert report.images_per_s == pytest.approx(report.throughput_rps * images, rel=0.01)
    if protocol in ("native", "json"):  # the doors whose answers carry the batch size
        assert sum(report.batch_sizes.values()) == 6
