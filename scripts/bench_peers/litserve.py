"""LitServe 0.2.19 with ONNX Runtime (servers/litserve_app.py), run by the venv's python."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scripts.bench_peers.peer import (
    BATCH_TIMEOUT_MS,
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


class LitServe(Peer):
    name = "litserve"
    title = f"LitServe 0.2.19, ONNX Runtime, batch {MAX_BATCH_SIZE} / {BATCH_TIMEOUT_MS} ms, {WORKERS} workers"
    requirements = "litserve"
    configuration = (f"LitAPI(max_batch_size={MAX_BATCH_SIZE}, batch_timeout={BATCH_TIMEOUT_MS / 1000}) with "
                     "decode_request (Pillow resize and crop), batch (np.stack), predict (an ONNX Runtime session, "
                     "one intra-op thread, no spinning), unbatch, encode_response (top 5); "
                     f"LitServer(accelerator='cpu', workers_per_device={WORKERS}), as many API servers as workers "
                     "(its default), uvicorn's access line per request")

    @contextmanager
    def serve(self, folder: Path, files: ModelFiles, python: Path | None) -> Iterator[Serving]:
        port = free_port()
        config = write_config(folder, peer_config(files, onnx_model=str(files.onnx), port=port))
        command = [str(python), str(SERVERS / "litserve_app.py")]
        with run_server(command, folder, python_environment(config), f"http://127.0.0.1:{port}/predict") as served:
            yield served
