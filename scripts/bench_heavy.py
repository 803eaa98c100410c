"""`make bench-heavy`: a user's heavy model, served as they saved it, at large batch sizes.

ResNeXt-101 32x8d with 5 classes (random weights stand in for fine-tuned ones)
saved the classic way, `torch.save({'model': m, 'model_state_dict': ...})`, with
a labels file, served by two workers under `--concurrency` clients at each batch
size: throughput, latency, statuses, and how often a worker was reaped (it should
never be: heartbeats go on while a batch computes). Every other setting is as `make
run` has it (REQUEST_TIMEOUT included) unless the environment says otherwise. First, the time until two
workers starting together are ready, with an empty engine cache (one ONNX export
and its verification) and then with the cache that start filled.

    python -m scripts.bench_heavy [--seconds 60] [--batch-sizes 8,16,32] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from scripts.loadtest import Client, Report, closed_loop, sample_photos, summarize
from serving.config import Settings
from stack.processes import Stack, free_port

ARCH = "resnext101_32x8d"
LABELS = ("daisy", "dandelion", "rose", "sunflower", "tulip")


def write_classic_checkpoint(folder: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    network = torchvision.models.get_model(ARCH, weights=None, num_classes=len(LABELS)).eval()
    checkpoint = folder / "resnext101_32x8.pth"
    torch.save({"model": network, "model_state_dict": network.state_dict()}, checkpoint)
    labels = folder / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    return checkpoint, labels


def seconds_until_ready(settings: Settings, logs: Path) -> float:
    started = time.monotonic()
    with Stack(settings, workers=2, log_dir=logs):
        return time.monotonic() - started


def under_load(settings: Settings, logs: Path, seconds: float, concurrency: int) -> tuple[Report, int]:
    """The closed-loop report at these settings, and how many times a worker was reaped meanwhile."""
    with Stack(settings, workers=2, log_dir=logs) as stack:
        client = Client(stack.url + "/predict", sample_photos(), timeout=settings.request_timeout + 30)
        report = summarize(f"batch {settings.batch_size}", closed_loop(client, concurrency, 10**6, seconds, False))
    reaped = sum(path.read_text().count("reaped dead worker") for path in logs.glob("worker*.log"))
    return report, reaped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each load run")
    parser.add_argument("--batch-sizes", default="8,16,32", help="comma-separated BATCH_SIZE values")
    parser.add_argument("--concurrency", type=int, default=32, help="clients sending back to back")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        checkpoint, labels = write_classic_checkpoint(scratch)
        settings = dataclasses.replace(
            Settings.from_env(), port=free_port(), model_path=str(checkpoint), model_trusted=True,
            labels_path=str(labels), engine_cache_dir=str(scratch / "engine-cache"))
        cold = seconds_until_ready(settings, scratch / "logs-cold")
        warm = seconds_until_ready(settings, scratch / "logs-warm")
        print(f"two workers ready: {cold:.1f} s with an empty engine cache, {warm:.1f} s with it filled", flush=True)
        rows = ["| BATCH_SIZE | images/s | p50 ms | p99 ms | statuses | mean batch | workers reaped |",
                "| ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            report, reaped = under_load(dataclasses.replace(settings, batch_size=batch_size),
                                        scratch / f"logs-{batch_size}", args.seconds, args.concurrency)
            latency = report.latency_ms
            rows.append(f"| {batch_size} | {report.throughput_rps:.2f} | {latency.get('p50', 0):.0f} | "
                        f"{latency.get('p99', 0):.0f} | {report.statuses} | {report.mean_batch_size} | {reaped} |")
            print(rows[-1], flush=True)
    print()
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
