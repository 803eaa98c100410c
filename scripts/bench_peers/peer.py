"""What every system in the comparison is to the driver: a name, a stated configuration, a door the shared load
client speaks, and a context manager that serves the model until it exits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from scripts.bench_peers.processes import server_process

SERVERS = Path(__file__).resolve().parent / "servers"  # the files that run inside the peers' venvs
REQUIREMENTS = Path(__file__).resolve().parent / "requirements"
# A skilled user's settings for a 2-core CPU box, the same for every peer that has the knob: two single-threaded
# model workers (one per core; a worker with two threads loses to two workers beside an HTTP server), batches of up
# to 8 gathered for at most 10 ms (4 to 8 is this CPU's best batch, docs/performance.md), ONNX Runtime without
# spinning threads.
WORKERS = 2
THREADS_PER_WORKER = 1
MAX_BATCH_SIZE = 8
BATCH_TIMEOUT_MS = 10


@dataclass(frozen=True)
class ModelFiles:
    """The one model every system serves, in the formats the peers load, and what the card says around it."""

    onnx: Path  # uint8 NHWC in, probabilities out, normalisation inside: the file our onnxruntime engine runs
    torchscript: Path  # the bare network, frozen: normalised float NCHW in, logits out (TorchServe's stock handler)
    labels: list[str]
    resize_size: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class Serving:
    """A system answering on `url`; `log` is where its output goes, for the message when it misbehaves."""

    url: str
    log: Path
    alive: Callable[[], bool]  # False once its main process has exited


class Peer:
    name = ""  # what --peers takes
    title = ""  # the table's row
    configuration = ""  # how it is set up, printed with the table and in docs/performance.md
    protocol = "native"  # scripts.loadtest's door: multipart field "image", or "torchserve" (a raw body)
    requirements: str | None = None  # the file under requirements/ its venv installs; None: runs in ours

    def serve(self, folder: Path, files: ModelFiles, python: Path | None) -> AbstractContextManager[Serving]:
        raise NotImplementedError

    def top1(self, payload: bytes) -> str:
        """The most probable label of an answer in TorchServe's image_classifier shape, {label: probability}."""
        answer = json.loads(payload)
        answer = answer[0] if isinstance(answer, list) else answer
        return max(answer, key=answer.get)


def peer_config(files: ModelFiles, onnx_model: str, port: int | None = None) -> dict:
    """What servers/classify.py reads (PEER_CONFIG): the model, the card's preprocessing, the shared settings."""
    return {"onnx_model": onnx_model, "resize_size": files.resize_size, "input_size": files.input_size,
            "mean": list(files.mean), "std": list(files.std), "labels": files.labels, "port": port,
            "workers": WORKERS, "threads": THREADS_PER_WORKER, "max_batch_size": MAX_BATCH_SIZE,
            "batch_timeout_ms": BATCH_TIMEOUT_MS}


def write_config(folder: Path, config: dict) -> Path:
    path = folder / "peer.json"
    path.write_text(json.dumps(config, indent=1) + "\n")
    return path


def python_environment(config_path: Path) -> dict[str, str]:
    """What every peer's Python processes get: the shared helpers importable, the config's path, one thread for
    the math libraries that do not take ONNX Runtime's setting, and no usage reporting (no network here)."""
    return {"PYTHONPATH": str(SERVERS), "PEER_CONFIG": str(config_path), "OMP_NUM_THREADS": str(THREADS_PER_WORKER),
            "BENTOML_DO_NOT_TRACK": "True", "PYTHONUNBUFFERED": "1"}


@contextmanager
def run_server(command: list[str], folder: Path, environment: dict[str, str], url: str) -> Iterator[Serving]:
    """A peer's server process in `folder`, its output in folder/server.log, serving on `url` until the block ends."""
    log = folder / "server.log"
    with server_process(command, folder, environment, log) as process:
        yield Serving(url, log, lambda: process.poll() is None)
