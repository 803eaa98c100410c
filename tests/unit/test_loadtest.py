"""The load test's arithmetic: statuses, throughput, percentiles and batch sizes from raw outcomes."""

import http.server
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scripts.loadtest import (
    SAMPLE_PHOTOS,
    Outcome,
    _error_code,
    parse_arguments,
    print_report,
    run,
    sample_photos,
    summarize,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_summary_counts_every_status_and_measures_only_successes():
    outcomes = [Outcome(started=i * 0.1, latency=0.1 + i / 1000, status=200, batch_size=4) for i in range(100)]
    outcomes += [Outcome(started=1.0, latency=0.01, status=503), Outcome(started=2.0, latency=5.0, status=0)]
    report = summarize("closed loop", outcomes)
    assert report.statuses == {"0": 1, "200": 100, "503": 1}
    assert report.succeeded == 100
    assert report.duration_s == pytest.approx(10.099, abs=0.01)  # first start to last answer
    assert report.throughput_rps == round(100 / 10.099, 2)
    assert report.latency_ms["p50"] == 149.5 and report.latency_ms["max"] == 199.0
    assert report.batch_sizes == {"4": 100} and report.mean_batch_size == 4.0


@pytest.mark.parametrize("payload, code", [
    (b'{"success": false, "error": {"code": "queue_full", "message": "..."}}', "queue_full"),  # native
    (b'{"error": "no worker available: none with a loaded model"}', "no worker available"),  # v2
    (b'{"code": 503, "type": "ServiceUnavailableException", "message": "..."}', "ServiceUnavailableException"),
    (b"<html>bad gateway</html>", "not JSON"),
])
def test_each_failure_is_counted_under_the_code_its_door_gives(payload, code, capsys):
    outcomes = [Outcome(0.0, 0.1, 200), Outcome(0.1, 0.1, 503, error=_error_code(503, payload)),
                Outcome(0.2, 0.1, 503, error=_error_code(503, payload))]
    report = summarize("closed loop", outcomes)
    assert report.errors == {"503": {code: 2}}
    print_report(report)
    assert f"503: 2 ({code} 2)" in capsys.readouterr().out


def test_a_run_without_successes_has_no_latency_figures():
    report = summarize("open loop", [Outcome(0.0, 0.5, 0), Outcome(0.1, 0.5, 503)])
    assert report.succeeded == 0 and report.throughput_rps == 0 and report.latency_ms == {}
    assert "outcomes" not in report.to_json()


def test_the_load_test_as_the_readme_runs_it_sends_the_sample_photos_by_default(tmp_path):
    finished = subprocess.run([sys.executable, "-m", "scripts.loadtest", "--help"], cwd=ROOT, capture_output=True,
                              text=True)
    assert finished.returncode == 0 and "--images" in finished.stdout
    assert parse_arguments([]).images is None
    assert [name for name, _ in sample_photos()] == list(SAMPLE_PHOTOS)


def test_the_load_test_runs_from_any_folder_as_a_file(tmp_path):
    """It needs nothing of the repository but itself: copied to a load-generating host, it runs as a file."""
    finished = subprocess.run([sys.executable, str(ROOT / "scripts" / "loadtest.py"), "--images",
                               str(tmp_path / "photos"), "--requests", "1"], cwd=tmp_path, capture_output=True,
                              text=True)
    assert finished.returncode == 1 and "no such file or folder" in finished.stderr, finished.stderr


def test_a_missing_image_path_is_one_line_not_a_traceback(tmp_path):
    finished = subprocess.run([sys.executable, "-m", "scripts.loadtest", "--images", str(tmp_path / "photos"),
                               "--requests", "1"], cwd=ROOT, capture_output=True, text=True)
    assert finished.returncode == 1
    assert finished.stderr.strip() == f"--images {tmp_path / 'photos'}: no such file or folder"


def test_open_loop_requests_arrive_at_the_rate_even_when_answers_are_slow():
    """The arrival times a server records, not the load test's own plan: one every 1/rate s, answers or not."""
    arrivals: list[float] = []

    class SlowServer(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            arrivals.append(time.monotonic())
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(0.5)  # ten times the interval: a closed loop would fall far behind
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        report = run(["--url", f"http://127.0.0.1:{server.server_port}/predict", "--rate", "20", "--duration", "2",
                      "--quiet"])
    finally:
        server.shutdown()
    assert report.requests == len(arrivals) == 40
    gaps = sorted(b - a for a, b in zip(sorted(arrivals), sorted(arrivals)[1:]))
    assert 0.035 < gaps[len(gaps) // 2] < 0.065  # the median gap is the planned 50 ms
    assert 1.8 < max(arrivals) - min(arrivals) < 2.3
