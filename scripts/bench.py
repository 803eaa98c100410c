"""`make bench`: how fast the service is, measured against what the model and the machine allow.

1. Model ceiling: each installed engine on preprocessed images already in memory,
   batch sizes 1..32, the worker's thread count, in PRECISION: images/s.
2. Pipeline ceiling: decode + preprocess + infer of the benchmark photos in one
   process (decoding on a thread pool while the model runs), no HTTP, no Redis.
3. The service as `make run` starts it (private Redis, default settings): saturation
   throughput (closed loop), latency at half that load (open loop), and one request
   at a time unloaded.

Everything is measured in one run on one machine, so the ratios mean something even
where the absolute numbers move with the machine's other load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle, islice
from pathlib import Path

import numpy as np
import torch

from engines import precision
from engines.base import EngineError
from engines.choose import CPU_PREFERENCE, ONNX_FILE_ENGINES, installed, open_engine
from scripts.loadtest import SAMPLE_PHOTOS, Client, Report, closed_loop, open_loop, sample_photos, summarize
from scripts.process_cpu import CpuMeter, CpuUse
from serving.config import Settings
from serving.preprocess import prepare
from stack.processes import Stack, free_port

BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def images_per_second(run, batch: np.ndarray, seconds: float) -> tuple[float, float]:
    """(images/s, median seconds per call) of run(batch), after two warm-up calls."""
    run(batch), run(batch)
    calls: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(calls) < 3:
        started = time.perf_counter()
        run(batch)
        calls.append(time.perf_counter() - started)
    return len(batch) * len(calls) / sum(calls), statistics.median(calls)


def model_ceilings(settings: Settings, photos: list[tuple[str, bytes]], seconds: float, backends: list[str],
                   batch_sizes: list[int]) -> dict[str, dict]:
    """Per engine, opened as the worker opens it (MODEL_PATH in PRECISION): images/s at each batch size and the
    latency of the first, on real preprocessed photos."""
    results = {}
    for backend in backends:
        engine = open_engine(dataclasses.replace(settings, backend=backend), "cpu")
        size = engine.card.preprocessing
        pixels = [prepare(data, size.resize_size, size.input_size, settings.max_image_pixels) for _, data in photos]
        rates, latency = {}, None
        for batch_size in batch_sizes:
            batch = np.stack(list(islice(cycle(pixels), batch_size)))
            rates[batch_size], per_call = images_per_second(engine.run, batch, seconds)
            latency = latency or per_call
        results[backend] = {"images_per_s": rates, "batch1_latency_ms": latency * 1000}
        print(f"  model ceiling {backend:12s} " + "  ".join(f"b{b}: {r:6.1f}" for b, r in rates.items())
              + f"  (batch-1 latency {latency * 1000:.1f} ms)", flush=True)
    return results


def pipeline_ceiling(settings: Settings, photos: list[tuple[str, bytes]],
                     seconds: float) -> tuple[float, int, str]:
    """Best (images/s, inference threads) for upload bytes -> predictions in one process, and the engine.

    The engine the worker opens (open_engine) and its batch size; the inference thread count
    that does best here, so the ceiling is what the machine allows, not what the service's
    setting allows.
    """
    rates, backend = {}, ""
    for threads in sorted({settings.compute_threads, os.cpu_count() or 1}):
        rates[threads], backend = _pipeline_rate(dataclasses.replace(settings, inference_threads=threads),
                                                 photos, seconds)
    best = max(rates, key=rates.get)
    return rates[best], best, backend


def _pipeline_rate(settings: Settings, photos: list[tuple[str, bytes]], seconds: float) -> tuple[float, str]:
    torch.set_num_threads(settings.compute_threads)  # for the torch engines; main() sets the worker's count back
    engine = open_engine(settings, "cpu")
    size = engine.card.preprocessing

    def decode(item: tuple[str, bytes]) -> np.ndarray:
        return prepare(item[1], size.resize_size, size.input_size, settings.max_image_pixels)

    uploads = cycle(photos)
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        def decoded_batch():
            return pool.map(decode, list(islice(uploads, settings.batch_size)))

        engine.run(np.stack(list(decoded_batch())))  # warm-up
        done, started = 0, time.perf_counter()
        upcoming = decoded_batch()
        while time.perf_counter() - started < seconds:
            current, upcoming = np.stack(list(upcoming)), decoded_batch()  # decode the next batch meanwhile
            engine.run(current)
            done += len(current)
        return done / (time.perf_counter() - started), engine.name


def service(settings: Settings, photos: list[tuple[str, bytes]], seconds: float,
            concurrency: int) -> tuple[dict[str, Report], CpuUse]:
    """Saturation, half load and unloaded figures of the service `make run` starts, and where the CPU went
    during the saturation run."""
    with tempfile.TemporaryDirectory() as logs, Stack(settings, workers=settings.workers, log_dir=Path(logs)) as stack:
        client = Client(stack.url + "/predict", photos, timeout=30)
        closed_loop(client, concurrency, 4 * concurrency, 60, progress=False)  # warm connections and caches
        meter = CpuMeter({"API": [stack.api_process.pid], "workers": [p.pid for p in stack.worker_processes],
                          "Redis": [stack.redis_process.pid]})
        saturation = summarize("saturation", closed_loop(client, concurrency, 10**6, seconds, progress=False))
        cpu = meter.used()
        half_rate = saturation.throughput_rps / 2
        half = summarize("half load", open_loop(client, half_rate, seconds, 256, progress=False))
        unloaded = summarize("unloaded", closed_loop(client, 1, 10**6, seconds / 2, progress=False))
    return {"saturation": saturation, "half_load": half, "unloaded": unloaded}, cpu


def cpu_per_image(cpu: CpuUse, saturation: Report) -> str:
    """The saturation run's CPU milliseconds per image served, per group of processes, and the machine's load."""
    images = round(saturation.images_per_s * cpu.seconds)
    shares = ", ".join(f"{name} {ms:.1f}" for name, ms in cpu.per_unit_ms(images).items())
    return f"{shares} (machine {100 * cpu.machine_busy:.0f} % busy)"


def engine_label(backend: str, compute: str) -> str:
    """An engine's name in the tables, with its precision when that is not float32."""
    return backend if compute == precision.FULL else f"{backend} {compute}"


def markdown(ceilings: dict, pipeline: float, pipeline_threads: int, backend: str, compute: str,
             runs: dict[str, Report], cpu: CpuUse) -> str:
    model = ceilings[backend]
    best_batch, best_rate = max(model["images_per_s"].items(), key=lambda item: item[1])
    saturation, half, unloaded = runs["saturation"], runs["half_load"], runs["unloaded"]
    batch1 = model["batch1_latency_ms"]
    rows = [
        ("Service saturation throughput", f"{saturation.throughput_rps:.1f} images/s "
         f"({saturation.mean_batch_size} mean batch, {saturation.latency_ms.get('p50', 0):.0f} ms p50)"),
        ("Pipeline ceiling (decode + preprocess + infer, one process)",
         f"{pipeline:.1f} images/s ({pipeline_threads} inference threads)"),
        ("CPU ms per image at saturation", cpu_per_image(cpu, saturation)),
        ("Service / pipeline ceiling", f"**{saturation.throughput_rps / pipeline:.2f}** (target >= 0.85)"),
        (f"Model ceiling, {engine_label(backend, compute)}", f"{best_rate:.1f} images/s at batch {best_batch}"),
        (f"Latency at half load ({half.throughput_rps:.1f} requests/s)",
         f"p50 {half.latency_ms['p50']:.0f} ms, p99 {half.latency_ms['p99']:.0f} ms "
         f"(**{half.latency_ms['p99'] / unloaded.latency_ms['p50']:.1f}x** unloaded p50; target <= 3x)"),
        ("Unloaded request p50 vs model batch-1 latency",
         f"{unloaded.latency_ms['p50']:.1f} ms vs {batch1:.1f} ms "
         f"(**+{unloaded.latency_ms['p50'] - batch1:.1f} ms**; target <= +10 ms)"),
    ]
    table = ["| Measure | Value |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in rows)]
    batch_sizes = list(model["images_per_s"])
    backends = ["", "| Backend | " + " | ".join(f"batch {b}" for b in batch_sizes) + " | batch-1 latency |",
                "| --- |" + " ---: |" * (len(batch_sizes) + 1)]
    for name, figures in ceilings.items():
        rates = " | ".join(f"{figures['images_per_s'][b]:.1f}" for b in batch_sizes)
        backends.append(f"| {engine_label(name, compute)} | {rates} | {figures['batch1_latency_ms']:.1f} ms |")
    return "\n".join(table + backends)


def default_backends(compute: str, model_path: str) -> list[str]:
    """Every installed engine that computes in `compute` (PRECISION) and runs the file, in the order the table
    lists them."""
    able = CPU_PREFERENCE if compute == precision.FULL else precision.candidates(compute)
    if model_path.endswith(".onnx"):
        able = [name for name in able if name in ONNX_FILE_ENGINES]
    return [name for name in reversed(CPU_PREFERENCE) if name in able and installed(name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each service measurement")
    parser.add_argument("--model-seconds", type=float, default=2.0, help="length of each model measurement")
    parser.add_argument("--concurrency", type=int, default=32, help="clients of the saturation run")
    parser.add_argument("--backends", help="engines whose model ceiling to measure (default: every installed one "
                        "that computes in PRECISION)")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)),
                        help="batch sizes of the model ceilings, 1 first (default: %(default)s)")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args(argv)
    settings = dataclasses.replace(Settings.from_env(), port=free_port())
    backends = args.backends.split(",") if args.backends else default_backends(settings.precision, settings.model_path)
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    if batch_sizes[0] != 1:  # the unloaded request is compared with one image's pass through the model
        parser.error(f"--batch-sizes must start with 1, not {batch_sizes[0]}: the unloaded request is compared with "
                     "batch 1's latency")
    try:
        for backend in backends:  # before minutes of measuring: an engine that cannot compute in PRECISION
            precision.require_supported(dataclasses.replace(settings, backend=backend), "cpu")
    except EngineError as refused:
        parser.error(str(refused))
    photos = sample_photos()
    torch.set_num_threads(settings.compute_threads)  # the worker's thread count, for every engine

    print(f"{os.cpu_count()} CPUs, {settings.compute_threads} inference threads, torch {torch.__version__}; "
          f"photos: {', '.join(SAMPLE_PHOTOS)}", flush=True)
    ceilings = model_ceilings(settings, photos, args.model_seconds, backends, batch_sizes)
    pipeline, pipeline_threads, backend = pipeline_ceiling(settings, photos, args.seconds / 2)
    torch.set_num_threads(settings.compute_threads)
    print(f"  pipeline ceiling {pipeline:.1f} images/s ({pipeline_threads} inference threads)", flush=True)
    runs, cpu = service(settings, photos, args.seconds, args.concurrency)
    for report in runs.values():
        print(f"  service {report.mode}: {report.throughput_rps:.1f} requests/s, latency {report.latency_ms}, "
              f"statuses {report.statuses}", flush=True)
    print()
    print(markdown(ceilings, pipeline, pipeline_threads, backend, settings.precision, runs, cpu))
    if args.json:
        figures = {"precision": settings.precision, "model_ceilings": ceilings, "pipeline_ceiling": pipeline,
                   "pipeline_threads": pipeline_threads,
                   "backend": backend,
                   "service": {name: report.to_json() for name, report in runs.items()},
                   "saturation_cpu_seconds": {**cpu.groups, "load generator": cpu.own},
                   "saturation_machine_busy": cpu.machine_busy}
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
