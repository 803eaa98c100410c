"""Integration fixtures: real redis-server, real worker processes, real gunicorn, real HTTP."""

from __future__ import annotations

import pytest

from serving.config import Settings
from stack.processes import Stack, free_port
from tests.reference import assert_all_distinguishable, reference_top3, variants

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
