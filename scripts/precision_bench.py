"""Reduced precision measured: images/s of float32, BF16 and INT8 per engine, and INT8's agreement per calibration.

    .venv/bin/python -m scripts.precision_bench [--methods minmax,percentile,entropy] [--rounds 3] [--seconds 5]

The model only (docs/precision.md): batch 8 of preprocessed photos in memory, one compute thread, every variant
measured in each round in turn, so that the machine's other load falls on all of them alike; the ratios to
float32 are taken within a round. Each is counted in images per second of this process's CPU time as well as of
the clock's: on a machine shared with other work the clock measures the neighbours, the CPU time the model.
Photos: scikit-image's sample photos, never downloaded, split by
`photo_split` into calibration and held-out photos (with mirror images and crops of each, never mixing
the two sets).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage
from PIL import Image

from engines import onnxruntime_cpu, openvino_cpu
from engines.base import EngineError
from engines.precision import require_supported
from model_files.card import ModelOptions
from model_files.checkpoints import load_model
from model_files.export import export_onnx
from model_files.precision import PrecisionRefused, compare
from model_tools.quantize import METHODS, batched_probabilities, photos_in, quantize
from serving.config import Settings

PHOTOS = Path(skimage.data_dir)
BATCH = 8
CPU = "cpu"


def photo_split(folder: Path, photos: int = 25) -> tuple[Path, Path]:
    """Folders of calibration and held-out images from the first `photos` distinct sample photos (sorted by
    name): the even-numbered ones calibrate, the odd-numbered ones are held out; each with its mirror image
    and a crop of its middle 80 %, so that a held-out set never holds a variant of a calibration photo."""
    calibration, held_out = folder / "calibration", folder / "held-out"
    for index, (name, photo) in enumerate(distinct_photos()[:photos]):
        target = calibration if index % 2 == 0 else held_out
        target.mkdir(parents=True, exist_ok=True)
        w, h = photo.size
        for variant, image in (("", photo), ("-mirrored", photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
                               ("-cropped", photo.crop((w // 10, h // 10, w - w // 10, h - h // 10)))):
            image.save(target / f"{name}{variant}.png")
    return calibration, held_out


def distinct_photos() -> list[tuple[str, Image.Image]]:
    """The sample photos as RGB, by name, without repeats: chessboard_GRAY.png is chessboard_RGB.png in grey
    (quantize refuses a held-out image that is also a calibration image)."""
    photos, seen = [], set()
    for path in sorted(path for path in PHOTOS.iterdir() if path.suffix in (".png", ".jpg")):
        photo = Image.open(path).convert("RGB")
        if photo.tobytes() not in seen:
            seen.add(photo.tobytes())
            photos.append((path.stem, photo))
    return photos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.precision_bench")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    settings = Settings()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        calibration, held_out = photo_split(folder)
        loaded = load_model(settings.model_path)
        fp32 = export_onnx(loaded, folder / "fp32.onnx")
        int8 = {}
        for method in args.methods.split(","):
            out = folder / f"int8-{method}.onnx"
            try:
                report = quantize(fp32, calibration, held_out, out, method, 0.0, ModelOptions())
            except PrecisionRefused as exc:
                print(f"  int8 {method}: {exc}")
                continue
            print(f"  int8 {method:10s} {report.summary()}", flush=True)
            int8[method] = out
        print_bf16_agreement(fp32, np.concatenate([photos_in(calibration, loaded.card),
                                                   photos_in(held_out, loaded.card)]))
        print_throughput(fp32, int8, photos_in(held_out, loaded.card)[:BATCH], args.rounds, args.seconds)
    return 0


def variants(fp32: Path, int8: dict[str, Path]) -> dict[str, object]:
    """Every engine and precision this machine runs, by name; BF16 only where the CPU has it."""
    runs = {"onnxruntime fp32": onnxruntime_cpu.open_file(fp32, CPU, 1),
            "openvino fp32": openvino_cpu.open_file(fp32, CPU, 1)}
    try:
        require_supported(Settings(precision="bf16", backend="openvino"), CPU)
        runs["openvino bf16"] = openvino_cpu.open_bf16(fp32, CPU, 1)
    except EngineError as exc:
        print(f"  openvino bf16: {exc}")
    for method, path in int8.items():
        runs[f"onnxruntime int8 ({method})"] = onnxruntime_cpu.open_file(path, CPU, 1)
        runs[f"openvino int8 ({method})"] = openvino_cpu.open_file(path, CPU, 1)
    return runs


def print_bf16_agreement(fp32: Path, photos: np.ndarray) -> None:
    """BF16's report on every photo (BF16 calibrates on nothing, so none is held out): against the same file in
    float32 on OpenVINO, as the worker judges it at start on engines.verify's synthetic images."""
    try:
        require_supported(Settings(precision="bf16", backend="openvino"), CPU)
    except EngineError:
        return  # variants() says why
    reference, candidate = (openvino_cpu.open_file(fp32, CPU, 1), openvino_cpu.open_bf16(fp32, CPU, 1))
    report = compare(batched_probabilities(reference, photos), batched_probabilities(candidate, photos), "bf16",
                     images_source=f"{len(photos)} sample photos and their variants", engine="openvino")
    print(f"  bf16 {' ' * 10} {report.summary()}", flush=True)


def images_per_second(run, batch: np.ndarray, seconds: float) -> tuple[float, float]:
    """(images per second of the clock, images per second of this process's CPU time) of run(batch), after two
    warm-up calls, over at least `seconds` of the clock and three calls."""
    run(batch), run(batch)
    calls, wall_started, cpu_started = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() < wall_started + seconds or calls < 3:
        run(batch)
        calls += 1
    images = len(batch) * calls
    return images / (time.perf_counter() - wall_started), images / (time.process_time() - cpu_started)


def print_throughput(fp32: Path, int8: dict[str, Path], batch: np.ndarray, rounds: int, seconds: float) -> None:
    runs = variants(fp32, int8)
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            rates[name].append(images_per_second(run, batch, seconds))
    print(f"\nbatch {BATCH}, one thread, {rounds} rounds of {seconds:g} s each: images per CPU-second and per "
          "clock-second (medians), and the ratio to the same engine's float32 within each round (median)")
    for name, measured in rates.items():
        base = rates[f"{name.split()[0]} fp32"]
        cpu_ratio = statistics.median(r[1] / b[1] for r, b in zip(measured, base))
        wall_ratio = statistics.median(r[0] / b[0] for r, b in zip(measured, base))
        print(f"  {name:32s} CPU {statistics.median(r[1] for r in measured):6.1f}/s x{cpu_ratio:.2f}   "
              f"clock {statistics.median(r[0] for r in measured):6.1f}/s x{wall_ratio:.2f}   "
              f"(CPU rounds: {', '.join(f'{r[1]:.0f}' for r in measured)})")


if __name__ == "__main__":
    sys.exit(main())
