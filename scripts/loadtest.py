"""Load test for any deployment of the API, through any of its doors.

It imports nothing of the repository: from another folder or host, run the file itself
(`python path/to/loadtest.py ...`; it needs numpy, tqdm and urllib3, and scikit-image for its default photos).

Closed loop (N clients, each sends its next request when the last is answered):
    python -m scripts.loadtest --url http://127.0.0.1:5000/predict --images DIR --concurrency 32 --requests 500
Open loop (requests start at a fixed rate whatever the answers do, so latency under load is honest):
    python -m scripts.loadtest --url ... --images DIR --rate 40 --duration 30
Doors (--protocol): native multipart (default), json (base64 in a JSON body), v2 (the Open Inference Protocol,
binary tensor data, as tritonclient sends it) and torchserve (a raw body; several images as multipart `data`);
--images-per-request sends several images in each request (throughput is then counted in images as well).

Both stop by themselves: after --requests or --duration, and never later than --max-time.
Latency in open loop counts from the moment a request was due, not from when a
thread got round to sending it, so a backed-up client cannot hide server slowness.
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from tqdm import tqdm
from urllib3 import encode_multipart_formdata

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}
# scikit-image's colour photos, PNG and JPEG, 451x300 to 1000x872 pixels: what the load test sends by default
# and what `make bench` measures with. (Its folder also holds a float64 TIFF no decoder here reads.)
SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "motorcycle_left.png",
                 "rocket.jpg")


@dataclass
class Outcome:
    started: float  # seconds since the test began (when the request was due, in open loop)
    latency: float  # seconds
    status: int  # HTTP status; 0 when no response came back (connection error, client timeout)
    batch_size: int | None = None  # the batch the service ran this image in
    error: str | None = None  # a failure's code, as the door names it


@dataclass
class Report:
    mode: str
    requests: int
    duration_s: float
    throughput_rps: float
    images_per_s: float  # throughput_rps times the images each request carries
    statuses: dict[str, int]
    errors: dict[str, dict[str, int]]  # status -> each failure code's count
    latency_ms: dict[str, float]
    batch_sizes: dict[str, int]
    mean_batch_size: float | None
    outcomes: list[Outcome] = field(repr=False)

    @property
    def succeeded(self) -> int:
        return self.statuses.get("200", 0)

    def to_json(self) -> dict:
        figures = asdict(self)
        figures.pop("outcomes")
        return figures


def load_images(path: str | Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of one image file, or of every image file in a folder (sorted)."""
    path = Path(path)
    if not path.exists():
        raise SystemExit(f"--images {path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise SystemExit(f"no image files in {path}")
    return [(p.name, p.read_bytes()) for p in files]


def sample_photos() -> list[tuple[str, bytes]]:
    """(name, bytes) of SAMPLE_PHOTOS."""
    import skimage  # installed with the test requirements; imported only when no --images is given

    return [(name, (Path(skimage.data_dir) / name).read_bytes()) for name in SAMPLE_PHOTOS]


PROTOCOLS = ("native", "json", "v2", "torchserve")
DEFAULT_MODEL = "efficientnet_lite0"  # `make run`'s


def default_url(protocol: str, model: str) -> str:
    """Where each door takes requests on `make run`'s address."""
    path = {"native": "/predict", "json": "/predict", "v2": f"/v2/models/{model}/infer",
            "torchserve": f"/predictions/{model}"}[protocol]
    return f"http://127.0.0.1:5000{path}"


def request_body(protocol: str, images: list[tuple[str, bytes]]) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one request carrying `images`, as each door's usual client sends them."""
    if protocol == "native":
        body, content_type = encode_multipart_formdata([("image", (name, data)) for name, data in images])
        return body, {"Content-Type": content_type}
    if protocol == "json":
        encoded = [base64.b64encode(data).decode() for _, data in images]
        fields = {"image": encoded[0]} if len(encoded) == 1 else {"images": encoded}
        return json.dumps(fields).encode(), {"Content-Type": "application/json"}
    if protocol == "v2":
        tensors = b"".join(struct.pack("<I", len(data)) + data for _, data in images)
        header = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [len(images), 1],
                                         "parameters": {"binary_data_size": len(tensors)}}],
                             "outputs": [{"name": "PROBABILITIES", "parameters": {"binary_data": True}}]}).encode()
        return header + tensors, {"Content-Type": "application/octet-stream",
                                  "Inference-Header-Content-Length": str(len(header))}
    if len(images) == 1:  # torchserve: curl --data-binary
        return images[0][1], {"Content-Type": "application/octet-stream"}
    body, content_type = encode_multipart_formdata([("data", (name, data)) for name, data in images])
    return body, {"Content-Type": content_type}


class Client:
    """One keep-alive HTTP connection per thread, and each request's body encoded once.

    Plain http.client rather than requests: the load generator often shares the machine
    with the service, and every millisecond of its CPU is taken from the server.
    """

    def __init__(self, url: str, images: list[tuple[str, bytes]], timeout: float, protocol: str = "native",
                 images_per_request: int = 1):
        parts = urlsplit(url)
        self.connection_class = HTTPSConnection if parts.scheme == "https" else HTTPConnection
        self.netloc, self.path, self.timeout = parts.netloc, parts.path or "/", timeout
        self.images_per_request = images_per_request
        # Request i carries images i*n .. i*n+n-1 (in turn): every photo is sent, whatever n.
        self.bodies = [request_body(protocol, [images[(i * images_per_request + j) % len(images)]
                                               for j in range(images_per_request)]) for i in range(len(images))]
        self._local = threading.local()

    def send(self, index: int, due: float, clock_zero: float) -> Outcome:
        body, headers = self.bodies[index % len(self.bodies)]
        connection = getattr(self._local, "connection", None) or self._connect()
        try:
            connection.request("POST", self.path, body=body, headers=headers)
            response = connection.getresponse()
            status, payload = response.status, response.read()
        except (OSError, HTTPException):
            connection.close()
            self._local.connection = None  # the next request opens a new one
            return Outcome(due - clock_zero, time.monotonic() - due, 0)
        return Outcome(due - clock_zero, time.monotonic() - due, status, _batch_size(status, payload),
                       _error_code(status, payload))

    def _connect(self) -> HTTPConnection:
        self._local.connection = self.connection_class(self.netloc, timeout=self.timeout)
        return self._local.connection


def _batch_size(status: int, payload: bytes) -> int | None:
    """The batch the first image ran in, where the door's answer says (the native and JSON ones)."""
    if status != 200:
        return None
    try:
        answer = json.loads(payload)
        return (answer["results"][0] if "results" in answer else answer)["timing"]["batch_size"]
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def _error_code(status: int, payload: bytes) -> str | None:
    """A failure's code: the native door's `code`, TorchServe's `type`, or v2's message up to its first colon."""
    if status == 200:
        return None
    try:
        answer = json.loads(payload)
    except ValueError:
        return "not JSON"
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):
        return str(error.get("code"))
    if isinstance(error, str):
        return error.split(":")[0][:40]  # the message up to its detail
    return str(answer.get("type")) if isinstance(answer, dict) and "type" in answer else "unknown"


def closed_loop(client: Client, concurrency: int, total: int, max_time: float, progress: bool) -> list[Outcome]:
    """`concurrency` clients send back to back until `total` requests are done or max_time is up."""
    outcomes: list[Outcome] = []
    counter = iter(range(total))
    lock = threading.Lock()
    zero = time.monotonic()
    bar = tqdm(total=total, unit="req", disable=not progress)

    def next_index() -> int | None:
        with lock:
            return None if time.monotonic() - zero > max_time else next(counter, None)

    def run_client() -> None:
        while (index := next_index()) is not None:
            outcome = client.send(index, time.monotonic(), zero)
            with lock:
                outcomes.append(outcome)
                bar.update()

    threads = [threading.Thread(target=run_client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bar.close()
    return outcomes


def open_loop(client: Client, rate: float, duration: float, max_in_flight: int, progress: bool) -> list[Outcome]:
    """Start a request every 1/rate seconds for `duration` seconds, whatever the answers do."""
    total = int(rate * duration)
    zero = time.monotonic()
    bar = tqdm(total=total, unit="req", disable=not progress)
    with ThreadPoolExecutor(max_workers=max_in_flight) as pool:
        futures = []
        for index in range(total):
            due = zero + index / rate
            time.sleep(max(0.0, due - time.monotonic()))
            future = pool.submit(client.send, index, due, zero)
            future.add_done_callback(lambda _: bar.update())
            futures.append(future)
        outcomes = [f.result() for f in futures]
    bar.close()
    return outcomes


def summarize(mode: str, outcomes: list[Outcome], images_per_request: int = 1) -> Report:
    if not outcomes:
        raise SystemExit("no request was sent")
    finished = max(o.started + o.latency for o in outcomes)
    duration = finished - min(o.started for o in outcomes)
    statuses = Counter(str(o.status) for o in outcomes)
    ok_latencies = np.array([o.latency for o in outcomes if o.status == 200]) * 1000
    batches = [o.batch_size for o in outcomes if o.batch_size is not None]
    latency = ({name: round(float(np.percentile(ok_latencies, q)), 1) for name, q in
                (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))} if len(ok_latencies) else {})
    throughput = statuses.get("200", 0) / duration if duration > 0 else 0.0
    return Report(mode=mode, requests=len(outcomes), duration_s=round(duration, 2),
                  throughput_rps=round(throughput, 2), images_per_s=round(throughput * images_per_request, 2),
                  statuses=dict(sorted(statuses.items())), errors=_errors_by_status(outcomes), latency_ms=latency,
                  batch_sizes={str(k): v for k, v in sorted(Counter(batches).items())},
                  mean_batch_size=round(float(np.mean(batches)), 2) if batches else None, outcomes=outcomes)


def _errors_by_status(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    errors: dict[str, Counter] = {}
    for outcome in outcomes:
        if outcome.error is not None:
            errors.setdefault(str(outcome.status), Counter())[outcome.error] += 1
    return {status: dict(codes.most_common()) for status, codes in sorted(errors.items())}


def print_report(report: Report) -> None:
    print(f"{report.mode}: {report.requests} requests in {report.duration_s:.1f} s")

    def described(status: str, count: int) -> str:
        codes = report.errors.get(status)
        detail = f" ({', '.join(f'{code} {n}' for code, n in codes.items())})" if codes else ""
        return f"{status if status != '0' else 'no response'}: {count}{detail}"
    print("  status  " + ", ".join(described(status, count) for status, count in report.statuses.items()))
    print(f"  throughput  {report.throughput_rps:.1f} successful requests/s ({report.images_per_s:.1f} images/s)")
    if report.latency_ms:
        print("  latency ms  " + "  ".join(f"{name} {value:.0f}" for name, value in report.latency_ms.items()))
    if report.batch_sizes:
        print(f"  batch sizes {report.batch_sizes} (mean {report.mean_batch_size})")


def plot(report: Report, path: Path) -> None:
    """Latency histogram and throughput over time, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display here
    import matplotlib.pyplot as plt

    figure, (histogram, timeline) = plt.subplots(1, 2, figsize=(11, 4))
    latencies = [o.latency * 1000 for o in report.outcomes if o.status == 200]
    histogram.hist(latencies, bins=40)
    histogram.set(title="Latency of successful requests", xlabel="ms", ylabel="requests")
    ends = np.array([o.started + o.latency for o in report.outcomes if o.status == 200])
    if len(ends):
        seconds = np.arange(0, int(ends.max()) + 2)
        counts, _ = np.histogram(ends, bins=seconds)
        timeline.plot(seconds[:-1], counts, drawstyle="steps-post")
    timeline.set(title="Throughput", xlabel="seconds since start", ylabel="answers/s")
    figure.suptitle(f"{report.mode}: {report.throughput_rps:.1f} req/s, p50 {report.latency_ms.get('p50', 0):.0f} ms")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run(argv: list[str] | None = None) -> Report:
    args = parse_arguments(argv)
    client = Client(args.url or default_url(args.protocol, args.model),
                    load_images(args.images) if args.images else sample_photos(), args.timeout, args.protocol,
                    args.images_per_request)
    progress = not args.quiet and sys.stderr.isatty()
    if args.rate:
        mode = f"open loop, {args.rate:g} requests/s for {args.duration:g} s"
        outcomes = open_loop(client, args.rate, min(args.duration, args.max_time), args.max_in_flight, progress)
    else:
        mode = f"closed loop, {args.concurrency} clients"
        outcomes = closed_loop(client, args.concurrency, args.requests, args.max_time, progress)
    mode += f", {args.protocol}" + (f", {args.images_per_request} images per request"
                                    if args.images_per_request > 1 else "")
    report = summarize(mode, outcomes, args.images_per_request)
    if not args.quiet:
        print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if args.plot:
        plot(report, Path(args.plot))
    return report


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="where to send; default: the protocol's route on 127.0.0.1:5000 "
                        "(/predict, /v2/models/MODEL/infer, /predictions/MODEL)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="native",
                        help="native multipart, a JSON body of base64, the Open Inference Protocol v2 (binary), "
                        "or TorchServe's (a raw body)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name in the v2 and torchserve default URLs")
    parser.add_argument("--images-per-request", type=int, default=1, help="images each request carries")
    parser.add_argument("--images", default=None, help="an image file, or a folder of them (used in turn); "
                        f"default: scikit-image's {', '.join(SAMPLE_PHOTOS)}")
    closed = parser.add_argument_group("closed loop (default)")
    closed.add_argument("--concurrency", type=int, default=16)
    closed.add_argument("--requests", type=int, default=500)
    opened = parser.add_argument_group("open loop")
    opened.add_argument("--rate", type=float, help="requests started per second")
    opened.add_argument("--duration", type=float, default=30.0, help="seconds to keep starting requests")
    opened.add_argument("--max-in-flight", type=int, default=256, help="most requests outstanding at once")
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, seconds")
    parser.add_argument("--max-time", type=float, default=600.0, help="hard limit on the whole test, seconds")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--plot", help="write a PNG (latency histogram, throughput over time) to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no printed report")
    args = parser.parse_args(argv)
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    if args.concurrency < 1 or args.requests < 1 or args.images_per_request < 1:
        parser.error("--concurrency, --requests and --images-per-request must be at least 1")
    return args


if __name__ == "__main__":
    report = run()
    sys.exit(0 if report.succeeded else 1)
