"""Integration fixtures: real redis-server, real worker processes, real gunicorn, real HTTP; the C++ build."""

from __future__ import annotations

import fcntl
import subprocess
from pathlib import Path

import pytest

from serving.config import Settings
from stack.processes import Stack, free_port
from tests.reference import assert_all_distinguishable, reference_top3, variants

ROOT = Path(__file__).resolve().parents[2]
DISTINCT_IMAGES = 20  # images_and_answers: each with its own reference answer, so a crossed answer shows


def stack_settings(**overrides) -> Settings:
    # Two workers share two cores, so each gets one intra-op thread.
    return Settings(**{"port": free_port(), "inference_threads": 1, **overrides})


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """The whole service as `make run` starts it, with two workers."""
    with Stack(stack_settings(), workers=2, log_dir=tmp_path_factory.mktemp("logs")) as stack:
        yield stack


@pytest.fixture(scope="session")
def images_and_answers():
    images = variants(DISTINCT_IMAGES)
    expected = reference_top3(images)
    assert_all_distinguishable(expected)
    return images, expected


@pytest.fixture(scope="session")
def cpp_build() -> Path:
    """`make cpp`: the default TorchScript model, libtorch, OpenCV and cpp/'s Release build, in cpp/build.

    Building is part of the tests: a missing compiler, libtorch or OpenCV is a failure, not a skip.
    """
    # `make test` runs test files in parallel (pytest-xdist): one build at a time, the others find it done.
    with open(ROOT / "cpp" / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build = subprocess.run(["make", "cpp"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if build.returncode != 0:
        pytest.fail(f"make cpp failed ({build.returncode}):\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
    return ROOT / "cpp" / "build"
