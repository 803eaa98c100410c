"""Our own service, as `make run` starts it (stack.Stack with the default settings), through `/predict`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from scripts.bench_peers.peer import ModelFiles, Peer, Serving
from scripts.bench_peers.processes import PeerUnavailable
from serving.config import Settings
from stack.processes import Stack, StartupError, free_port


class Ours(Peer):
    name = "ours"
    title = "ours (`make run`)"
    configuration = ("the defaults `make run` starts: 2 API processes (gunicorn), a private Redis, 2 workers "
                     "with ONNX Runtime and one inference thread each, batches of up to 8, one log line per "
                     "request; models/efficientnet_lite0.pth, its ONNX export made by the worker")

    overrides: dict[str, str] = {}  # settings (Settings field names) that differ from `make run`'s

    @contextmanager
    def serve(self, folder: Path, files: ModelFiles, python: Path | None) -> Iterator[Serving]:
        settings = dataclasses.replace(Settings.from_env(), port=free_port(), **self.overrides)
        with ExitStack() as started:
            try:  # a start that fails stops what it started (Stack's __enter__)
                stack = started.enter_context(Stack(settings, workers=settings.workers, log_dir=folder))
            except StartupError as exc:  # e.g. PRECISION=bf16 on a CPU without BF16: a row that says why
                raise PeerUnavailable(str(exc)) from None
            yield Serving(stack.url + "/predict", folder / "api.log", lambda: stack.api_process.poll() is None)

    def top1(self, payload: bytes) -> str:
        return json.loads(payload)["predictions"][0]["label"]


class OursBf16(Ours):
    """The same, computing in bfloat16 where the CPU can (docs/precision.md); refused to start elsewhere."""
    name = "ours-bf16"
    title = "ours, `PRECISION=bf16` (OpenVINO)"
    configuration = ("as ours, with PRECISION=bf16 BACKEND=openvino: OpenVINO's BF16 inference-precision hint, "
                     "its agreement with float32 checked by the worker at start (PRECISION_MIN_AGREEMENT)")
    overrides = {"precision": "bf16", "backend": "openvino"}
