"""BentoML 1.4.40 with ONNX Runtime and adaptive batching (servers/bentoml_service.py), run by `bentoml serve`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scripts.bench_peers.peer import (
    MAX_BATCH_SIZE,
    SERVERS,
    WORKERS,
    ModelFiles,
    Peer,
    Serving,
    peer_config,
    python_environment,
    run_server,
    write_config,
)
from stack.processes import free_port


class BentoML(Peer):
    name = "bentoml"
    title = f"BentoML 1.4.40, ONNX Runtime, adaptive batching, {WORKERS} workers"
    requirements = "bentoml"
    configuration = (f"@bentoml.service(workers={WORKERS}) and a batchable @bentoml.api (max_batch_size "
                     f"{MAX_BATCH_SIZE}, max_latency_ms 1000: adaptive batching sets its own wait below that) "
                     "taking the multipart images as PIL images, Pillow resize and crop, an ONNX Runtime session "
                     "(one intra-op thread, no spinning), the top 5; BentoML's access line per request, usage "
                     "tracking off")

    @contextmanager
    def serve(self, folder: Path, files: ModelFiles, python: Path | None) -> Iterator[Serving]:
        port = free_port()
        config = write_config(folder, peer_config(files, onnx_model=str(files.onnx), port=port))
        command = [str(python.parent / "bentoml"), "serve", "bentoml_service:ImageClassifier", "--working-dir",
                   str(SERVERS), "--host", "127.0.0.1", "--port", str(port)]
        environment = {**python_environment(config), "BENTOML_HOME": str(folder / "bentoml-home")}
        with run_server(command, folder, environment, f"http://127.0.0.1:{port}/classify") as served:
            yield served
