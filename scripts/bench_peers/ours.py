"""Our own service, as `make run` starts it (stack.Stack with the default settings), through `/predict`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scripts.bench_peers.peer import ModelFiles, Peer, Serving
from serving.config import Settings
from stack.processes import Stack, free_port


class Ours(Peer):
    name = "ours"
    title = "ours (`make run`)"
    configuration = ("the defaults `make run` starts: 2 API processes (gunicorn), a private Redis, 2 workers "
                     "with ONNX Runtime and one inference thread each, batches of up to 8, one log line per "
                     "request; models/efficientnet_lite0.pth, its ONNX export made by the worker")

    @contextmanager
    def serve(self, folder: Path, files: ModelFiles, python: Path | None) -> Iterator[Serving]:
        settings = dataclasses.replace(Settings.from_env(), port=free_port())
        with Stack(settings, workers=settings.workers, log_dir=folder) as stack:
            yield Serving(stack.url + "/predict", folder / "api.log", lambda: stack.api_process.poll() is None)

    def top1(self, payload: bytes) -> str:
        return json.loads(payload)["predictions"][0]["label"]
