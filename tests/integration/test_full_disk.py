"""A full disk under the engine cache: the default worker (BACKEND=auto) still starts and serves.

Before, ONNX's exports failed with ENOSPC and were skipped, then torch.jit.save aborted the worker from
a C++ destructor (exit 134) at every start. The disk is a real tmpfs with no space left (tests/full_disk.py).
Where the temporary folder is full too, eager torch serves: tests/unit/test_engine_cache.py (a full TMPDIR
alone shows nothing here, since Python's tempfile then picks /tmp by itself).
"""

from __future__ import annotations

import requests

from stack.processes import Stack
from tests.full_disk import full_filesystem
from tests.images import CAT_LABELS, photo_bytes
from tests.integration.client import post_image
from tests.integration.conftest import stack_settings


def test_the_default_worker_on_a_full_engine_cache_disk_starts_and_serves_with_its_first_choice(tmp_path):
    with full_filesystem(tmp_path / "full") as full:
        settings = stack_settings(engine_cache_dir=str(full / "engine-cache"))  # BACKEND=auto, the default model
        with Stack(settings, workers=1, log_dir=tmp_path / "logs") as stack:  # StartupError names a dead worker's code
            answer = post_image(stack.url, photo_bytes("chelsea.png"), timeout=60)
            served_by = requests.get(stack.url + "/model", timeout=10).json()["backend"]
            assert stack.worker_processes[0].poll() is None
        log = stack.log_path("worker0").read_text()
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] in CAT_LABELS
    assert served_by == "onnxruntime"  # exported in a temporary folder, since the cache has no room
    assert "the engine cache cannot hold its export (No space left on device)" in log
