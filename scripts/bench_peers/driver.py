"""`make bench-peers`: our service and its peers side by side, one sitting, the same model, photos and client.

For each system chosen with --peers, in turn: install it into its own venv under .bench-peers/ (once), start it
on a free loopback port, wait until it answers a photo, refuse to report it unless its top-1 equals eager
PyTorch's on every photo, warm it up, then closed-loop load (scripts.loadtest's client) at each --clients count
for --seconds, and stop its whole process group. --rounds repeats that for every system, each round starting one
system later in the order (no system always first), so that each round compares systems measured minutes apart
(scripts/bench_peers/table.py). Then the table of issue 28 and how each system was configured (the same, with
the reasons, in docs/performance.md "Peers, side by side").
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from scripts.bench_peers.answers import WrongAnswers, check_answers
from scripts.bench_peers.bentoml import BentoML
from scripts.bench_peers.litserve import LitServe
from scripts.bench_peers.ours import Ours, OursBf16
from scripts.bench_peers.peer import REQUIREMENTS, ModelFiles, Peer, Serving
from scripts.bench_peers.processes import PeerUnavailable, ensure_venv, last_lines
from scripts.bench_peers.servers.classify import resize_and_crop
from scripts.bench_peers.table import Result, Round, markdown_table
from scripts.bench_peers.torchserve import TorchServeOnnx, TorchServeStock
from scripts.loadtest import SAMPLE_PHOTOS, Client, closed_loop, request_body, sample_photos, summarize
from stack.processes import REPO_ROOT

if TYPE_CHECKING:
    from model_files.checkpoints import LoadedModel

SYSTEMS: tuple[Peer, ...] = (Ours(), OursBf16(), BentoML(), LitServe(), TorchServeOnnx(), TorchServeStock())
WORK = REPO_ROOT / ".bench-peers"  # git-ignored: venvs, exported models, each run's configs and logs
READY_TIMEOUT_SECONDS = 300.0  # TorchServe starts a JVM, then two Python workers that import torch
REQUEST_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Sitting:
    photos: list[tuple[str, bytes]]
    reference: dict[str, str]  # photo -> eager PyTorch's top-1
    files: ModelFiles
    clients: list[int]
    seconds: float
    warmup_seconds: float
    python: str  # the interpreter the peers' venvs are made with
    work: Path = WORK  # venvs in it, each system's configs and logs under run/<name>


def export_model_files(model_path: Path, work: Path) -> tuple[ModelFiles, LoadedModel]:
    """The ONNX export our engine runs and the frozen TorchScript network TorchServe's stock handler takes, made
    once per model file (in a folder named by its digest, so a changed file is exported anew)."""
    import torch  # here, not at the top: the unit tests import this module and need no torch

    from model_files.card import ModelOptions
    from model_files.checkpoints import load_model
    from model_files.export import export_onnx

    loaded = load_model(model_path, ModelOptions())
    folder = work / f"{model_path.stem}-{hashlib.sha256(model_path.read_bytes()).hexdigest()[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    onnx, torchscript = folder / "model.onnx", folder / "network.ts.pt"
    if not onnx.exists():
        export_onnx(loaded, onnx)
    p = loaded.card.preprocessing
    if not torchscript.exists():
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notes: TorchServe runs it
            example = torch.rand(2, 3, p.input_size, p.input_size)
            traced = torch.jit.freeze(torch.jit.trace(loaded.network.eval(), example).eval())
            torch.jit.save(traced, str(torchscript))
    files = ModelFiles(onnx, torchscript, list(loaded.card.class_names), p.resize_size, p.input_size,
                       tuple(p.mean), tuple(p.std))
    return files, loaded


def eager_answers(loaded: LoadedModel, files: ModelFiles, photos: list[tuple[str, bytes]]) -> dict[str, str]:
    """Eager PyTorch's top-1 of each photo, through the same Pillow resize and crop the peers run."""
    import torch

    from model_files.export import serving_module

    crops = np.stack([resize_and_crop(Image.open(io.BytesIO(data)).convert("RGB"), files.resize_size,
                                      files.input_size) for _, data in photos])
    with torch.inference_mode():
        probabilities = serving_module(loaded)(torch.from_numpy(crops))
    return {name: files.labels[int(i)] for (name, _), i in zip(photos, probabilities.argmax(dim=1))}


def wait_until_answering(client: Client, serving: Serving, timeout: float) -> None:
    """Until the first photo gets a 200: a port that is open is not yet a model that is loaded."""
    give_up_at = time.monotonic() + timeout
    while time.monotonic() < give_up_at:
        if not serving.alive():
            raise PeerUnavailable(f"it exited while starting; log {serving.log} ends:\n{last_lines(serving.log)}")
        if client.send(0, time.monotonic(), 0.0).status == 200:
            return
        time.sleep(1.0)
    raise PeerUnavailable(f"no answer within {timeout:.0f} s; log {serving.log} ends:\n{last_lines(serving.log)}")


def answers_of(peer: Peer, serving: Serving, photos: list[tuple[str, bytes]]) -> dict[str, str]:
    """Each photo's top-1 as the system answers it, one request each through the load client's own door."""
    url = urlsplit(serving.url)
    answers = {}
    for photo in photos:
        body, headers = request_body(peer.protocol, [photo])
        connection = HTTPConnection(url.netloc, timeout=REQUEST_TIMEOUT_SECONDS)
        try:
            connection.request("POST", url.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        answers[photo[0]] = peer.top1(payload) if response.status == 200 else f"HTTP {response.status}"
    return answers


def measure(peer: Peer, serving: Serving, sitting: Sitting) -> Round:
    client = Client(serving.url, sitting.photos, REQUEST_TIMEOUT_SECONDS, peer.protocol)
    wait_until_answering(client, serving, READY_TIMEOUT_SECONDS)
    check_answers(peer.title, sitting.reference, answers_of(peer, serving, sitting.photos))
    closed_loop(client, max(sitting.clients), 10**6, sitting.warmup_seconds, progress=False)
    reports = {}
    for clients in sitting.clients:
        reports[clients] = summarize(f"{peer.name}, c={clients}",
                                     closed_loop(client, clients, 10**6, sitting.seconds, progress=False))
        report = reports[clients]
        print(f"    c={clients}: {report.throughput_rps:.1f} requests/s, latency {report.latency_ms}, "
              f"statuses {report.statuses}", flush=True)
    return reports


def run_system(peer: Peer, sitting: Sitting) -> Result:
    print(f"- {peer.title}", flush=True)
    result = Result(peer.title, is_peer=peer.requirements is not None)
    try:
        python = None  # ours runs in our own venv
        if peer.requirements:
            python = ensure_venv(sitting.work / peer.requirements, REQUIREMENTS / f"{peer.requirements}.txt",
                                 sitting.python)
        folder = sitting.work / "run" / peer.name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        with peer.serve(folder, sitting.files, python) as serving:
            result.rounds.append(measure(peer, serving, sitting))
    except (PeerUnavailable, WrongAnswers) as exc:
        result.refused = str(exc)
    except Exception as exc:  # a peer's own failure (its start-up, a config it refuses) must not end the sitting
        result.refused = f"{type(exc).__name__}: {exc}"
    if result.refused:
        print(f"    not reported: {result.refused}", flush=True)
    return result


def sit(chosen: list[Peer], sitting: Sitting, rounds: int) -> list[Result]:
    """Every chosen system measured in each round, round k starting with the k-th system; one refused is not
    run again."""
    results = {peer.name: Result(peer.title, is_peer=peer.requirements is not None) for peer in chosen}
    for index in range(rounds):
        if rounds > 1:
            print(f"round {index + 1} of {rounds}", flush=True)
        start = index % len(chosen)
        for peer in chosen[start:] + chosen[:start]:
            merged = results[peer.name]
            if merged.refused is None:
                this = run_system(peer, sitting)
                merged.rounds += this.rounds
                merged.refused = this.refused
    return [results[peer.name] for peer in chosen]


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    names = [peer.name for peer in SYSTEMS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", default=",".join(names),
                        help=f"systems to run, in turn (default: {','.join(names)})")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each closed-loop run")
    parser.add_argument("--clients", default="1,16", help="closed-loop client counts (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="times every system is measured, each round starting one system later (default: 1)")
    parser.add_argument("--warmup-seconds", type=float, default=5.0, help="load before timing, at the most clients")
    parser.add_argument("--python", default="python3", help="the interpreter the peers' venvs are made with")
    parser.add_argument("--model", default=str(REPO_ROOT / "models" / "efficientnet_lite0.pth"))
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args(argv)
    unknown = set(args.peers.split(",")) - set(names)
    if unknown:
        parser.error(f"--peers: unknown {', '.join(sorted(unknown))}; choose from {', '.join(names)}")
    try:
        args.clients = sorted({int(c) for c in args.clients.split(",")})
    except ValueError:
        parser.error("--clients takes client counts separated by commas, like 1,16")
    if args.clients[0] < 1 or args.seconds <= 0 or args.rounds < 1:
        parser.error("--clients and --rounds must be at least 1 and --seconds positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    chosen = [peer for peer in SYSTEMS if peer.name in args.peers.split(",")]
    photos = sample_photos()
    files, loaded = export_model_files(Path(args.model), WORK / "models")
    sitting = Sitting(photos, eager_answers(loaded, files, photos), files, args.clients, args.seconds,
                      args.warmup_seconds, args.python)
    print(f"photos: {', '.join(SAMPLE_PHOTOS)}; eager PyTorch's top-1: {sitting.reference}", flush=True)
    results = sit(chosen, sitting, args.rounds)
    print()
    print(markdown_table(results, args.clients))
    print()
    for peer in chosen:
        print(f"- {peer.title}: {peer.configuration}")
    if args.json:
        Path(args.json).write_text(json.dumps([result.to_json() for result in results], indent=2) + "\n")
    return 0 if any(result.measured for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
