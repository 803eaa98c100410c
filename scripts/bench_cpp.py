"""Python eager vs Python TorchScript vs the C++ client, on the same photos, model, threads and batch.

    .venv/bin/python -m scripts.bench_cpp [--images 64] [--batch 8] [--threads 2] [--rounds 5]
    .venv/bin/python -m scripts.bench_cpp --causes     # docs/cpp-client.md "Why libtorch looked slower"

Every measurement is a fresh process doing the same work: decode + preprocess + infer every
photo of a folder, in batches, timed with a monotonic wall clock (model loading excluded);
"warm-up excluded" first runs each batch shape twice untimed, "included" does not. All three
keep freed memory in the heap (the C++ client by mallopt, Python by glibc's MALLOC_* environment
variables) and, when --threads leaves a core free, decode the next batch on a second thread
while the model runs, unless the row says otherwise. Runs are
interleaved over --rounds rounds and the median is reported, because a shared CPU drifts;
compare the ratios within one run. The C++ runs use cpp/build/classify-bench, the client built with
the switches that turn each of those settings off. Needs `make cpp` first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CLASSIFY_BENCH = ROOT / "cpp" / "build" / "classify-bench"
DEBUG_CLASSIFY_BENCH = ROOT / "cpp" / "build-debug" / "classify-bench"
DEFAULT_TS = ROOT / "models" / "efficientnet_lite0.ts.pt"
PHOTO_NAMES = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "hubble_deep_field.jpg",
               "motorcycle_left.png", "retina.jpg", "ihc.png"]
# What the C++ client does with mallopt() (keep_freed_memory in cpp/src/run.cpp): no mmap'ed blocks, no trimming.
KEEP_MEMORY_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def make_photo_folder(folder: Path, count: int) -> Path:
    """count JPEGs (quality 90): crops and mirror images of scikit-image's colour photos."""
    import skimage
    from PIL import Image

    for i in range(count):
        photo = Image.open(Path(skimage.data_dir) / PHOTO_NAMES[i % len(PHOTO_NAMES)]).convert("RGB")
        step = i // len(PHOTO_NAMES)
        w, h = photo.size
        crop = photo.crop((step * w // 40, step * h // 50, w - step * w // 60, h - step * h // 70))
        if step % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(folder / f"{i:04d}.jpg", quality=90)
    return folder


def python_run(kind: str, model: str, folder: str, batch: int, threads: int, warmup: bool, overlap: bool) -> dict:
    """One measurement in this process: kind is eager or torchscript.

    With overlap, a thread decodes the next batch while the model runs this one, as the C++
    client does: Pillow and TorchScript release the GIL while they work, so Python overlaps too.
    """
    import torch

    from model_files.checkpoints import load_model
    from model_files.export import load_torchscript, serving_module
    from serving.config import Settings
    from serving.preprocess import prepare

    torch.set_num_threads(threads)
    if kind == "eager":
        loaded = load_model(Settings().model_path)
        module, card = serving_module(loaded), loaded.card
    else:
        module, card = load_torchscript(model)
    p = card.preprocessing
    files = sorted(Path(folder).iterdir())
    batches = [files[first:first + batch] for first in range(0, len(files), batch)]

    def prepare_batch(paths: list[Path]) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        images = torch.stack([torch.from_numpy(prepare(f.read_bytes(), p.resize_size, p.input_size, 10**9))
                              for f in paths])
        return images, time.perf_counter() - start

    warmup_ms = []
    with torch.inference_mode(), ThreadPoolExecutor(1) as pool:
        if warmup:
            for n in sorted({min(batch, len(files)), len(files) % batch} - {0}):
                for _ in range(2):
                    start = time.perf_counter()
                    module(torch.zeros((n, p.input_size, p.input_size, 3), dtype=torch.uint8))
                    warmup_ms.append(1000 * (time.perf_counter() - start))
        decode = wait = inference = 0.0
        start_all = time.perf_counter()
        images, decode = prepare_batch(batches[0])
        wait = decode
        for index in range(len(batches)):
            following = batches[index + 1] if index + 1 < len(batches) else None
            upcoming = pool.submit(prepare_batch, following) if overlap and following else None
            start = time.perf_counter()
            module(images).topk(5)
            inference += time.perf_counter() - start
            if following:
                start = time.perf_counter()
                images, took = upcoming.result() if upcoming else prepare_batch(following)
                wait += time.perf_counter() - start
                decode += took
        wall = time.perf_counter() - start_all
    return {"images": len(files), "wall_ms": 1000 * wall, "decode_preprocess_ms": 1000 * decode,
            "decode_wait_ms": 1000 * wait, "inference_ms": 1000 * inference, "images_per_s": len(files) / wall,
            "warmup_ms": warmup_ms}


def default_overlap(threads: int) -> bool:
    """The C++ client's default, which the Python runs follow: overlap when the threads leave a core free."""
    return threads < (os.cpu_count() or 1)


def measure(config: dict, folder: Path, model: Path) -> dict:
    """One fresh process. config: kind (eager, torchscript or cpp), batch, threads; optional warmup
    (default True), overlap (None: the default rule), keep_memory (default True), and for cpp
    binary and further flags."""
    if config["kind"] == "cpp":
        flags = [*config.get("flags", [])]
        flags += [] if config.get("warmup", True) else ["--no-warmup"]
        flags += {True: ["--overlap"], False: ["--no-overlap"], None: []}[config.get("overlap")]
        flags += [] if config.get("keep_memory", True) else ["--malloc-default"]
        command = [str(config.get("binary", CLASSIFY_BENCH)), "--json", "--model", str(model),
                   "--batch", str(config["batch"]), "--threads", str(config["threads"]), *flags, str(folder)]
        completed = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(completed.stdout.splitlines()[-1])
    one = {"warmup": True, **config, "folder": str(folder), "model": str(model)}
    if one.get("overlap") is None:
        one["overlap"] = default_overlap(config["threads"])
    # The C++ client keeps freed memory with mallopt(); Python gets the same from glibc's environment.
    env = {**os.environ, **(KEEP_MEMORY_ENV if config.get("keep_memory", True) else {})}
    completed = subprocess.run([sys.executable, "-m", "scripts.bench_cpp", "--one", json.dumps(one)], cwd=ROOT,
                               capture_output=True, text=True, check=True, env=env)
    return json.loads(completed.stdout.splitlines()[-1])


def run_all(configs: dict[str, dict], folder: Path, model: Path, rounds: int) -> dict[str, list[dict]]:
    runs = {name: [] for name in configs}
    for round_number in range(rounds):
        for name, config in configs.items():
            runs[name].append(measure(config, folder, model))
            print(f"  round {round_number + 1}: {name}: {runs[name][-1]['images_per_s']:.1f} images/s",
                  file=sys.stderr)
    return runs


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, load average {load:.1f}"


def compare(args, folder: Path) -> None:
    """The three runs on the same work, then what overlap and memory keeping contribute to each."""
    base = {"batch": args.batch, "threads": args.threads}
    kinds = {"Python eager": "eager", "Python TorchScript": "torchscript", "C++ libtorch": "cpp"}
    configs = {name: {**base, "kind": kind} for name, kind in kinds.items()}
    for name, kind in kinds.items():
        configs[f"{name}, warm-up included"] = {**base, "kind": kind, "warmup": False}
    overlap = default_overlap(args.threads)  # what both do by default
    for name in ("Python TorchScript", "C++ libtorch"):
        configs[f"{name}, {'no overlap' if overlap else 'overlap'}"] = {**configs[name], "overlap": not overlap}
        configs[f"{name}, glibc malloc defaults"] = {**configs[name], "keep_memory": False}
    runs = run_all(configs, folder, args.model, args.rounds)
    reference = median(runs["Python TorchScript"], "images_per_s")
    print(f"\n{args.images} JPEG photos, batch {args.batch}, {args.threads} threads, {args.model.name}, "
          f"median of {args.rounds} interleaved rounds; {machine()}\n")
    print("| run | images/s | vs Python TorchScript | decode+preprocess ms | waiting for it ms | inference ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, measured in runs.items():
        rate = median(measured, "images_per_s")
        print(f"| {name} | {rate:.1f} | {rate / reference:.2f}x | {median(measured, 'decode_preprocess_ms'):.0f} "
              f"| {median(measured, 'decode_wait_ms'):.0f} | {median(measured, 'inference_ms'):.0f} |")


def causes(args, folder: Path) -> None:
    """Each cause of a slow-looking libtorch program, switched on alone, against the good baseline."""
    if not DEBUG_CLASSIFY_BENCH.is_file():
        subprocess.run([str(ROOT / "cpp" / "build.sh")], check=True, env={
            **os.environ, "BUILD_TYPE": "Debug", "BUILD_DIR": "build-debug"}, stdout=subprocess.DEVNULL)
    base = {"kind": "cpp", "batch": args.batch, "threads": args.threads}
    configs = {
        "baseline: Release, InferenceMode, warm-up, batch 8, 2 threads, memory kept": base,
        "glibc malloc defaults (freed blocks unmapped, page-faulted back each batch)": {
            **base, "flags": ["--malloc-default"]},
        "overlap on 2 busy cores (next batch decoded during inference)": {**base, "flags": ["--overlap"]},
        "no warm-up (first calls profiled and optimized in the timed region)": {**base, "warmup": False},
        "autograd on (no InferenceMode, no NoGradGuard)": {**base, "flags": ["--grad-mode", "enabled"]},
        "NoGradGuard instead of InferenceMode": {**base, "flags": ["--grad-mode", "no-grad"]},
        "1 thread": {**base, "threads": 1},
        "4 threads on 2 cores": {**base, "threads": 4},
        "Debug build of the client": {**base, "binary": DEBUG_CLASSIFY_BENCH},
        "batch 1": {**base, "batch": 1},
        "batch 1, autograd on, no warm-up": {**base, "batch": 1, "warmup": False, "flags": ["--grad-mode", "enabled"]},
    }
    runs = run_all(configs, folder, args.model, args.rounds)
    baseline = median(next(iter(runs.values())), "images_per_s")
    print(f"\n{args.images} JPEG photos, {args.model.name}, median of {args.rounds} interleaved rounds; {machine()}\n")
    print("| C++ client run | images/s | vs baseline | decode+preprocess ms | inference ms | clock() ms / wall ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, measured in runs.items():
        rate = median(measured, "images_per_s")
        print(f"| {name} | {rate:.1f} | {rate / baseline:.2f}x | {median(measured, 'decode_preprocess_ms'):.0f} | "
              f"{median(measured, 'inference_ms'):.0f} | "
              f"{median(measured, 'clock_cpu_ms'):.0f} / {median(measured, 'wall_ms'):.0f} |")
    first = [run["warmup_ms"] for run in runs[next(iter(runs))]]
    print("\nwarm-up calls of the baseline (ms, batch 8 then the last partial batch): "
          + "; ".join(", ".join(f"{ms:.0f}" for ms in calls) for calls in first))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="photos in the folder (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", type=Path, default=DEFAULT_TS, help="TorchScript file (default: %(default)s)")
    parser.add_argument("--causes", action="store_true", help="measure the causes of a slow-looking C++ client")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one Python measurement, as JSON
    args = parser.parse_args(argv)
    if args.one:
        config = json.loads(args.one)
        print(json.dumps(python_run(config["kind"], config["model"], config["folder"], config["batch"],
                                    config["threads"], config["warmup"], config["overlap"])))
        return 0
    if not CLASSIFY_BENCH.is_file() or not args.model.is_file():
        print("run `make cpp` first: it builds cpp/build/classify-bench and the TorchScript model", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_photo_folder(Path(tmp), args.images)
        (causes if args.causes else compare)(args, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
