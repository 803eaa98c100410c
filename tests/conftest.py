"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from serving.config import Settings
from stack.processes import Stack
from tests.images import PHOTOS

# A test's kind is the folder it is in, marked here rather than in each file: `pytest -m unit` etc.
TEST_KINDS = ("unit", "repo", "integration")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = item.path.parent.name
        if kind in TEST_KINDS:
            item.add_marker(kind)


@pytest.fixture(scope="session")
def photos() -> Path:
    return PHOTOS


@pytest.fixture(scope="session")
def redis_stack():
    """A real redis-server on a free port for the whole session (no workers, no API)."""
    stack = Stack(Settings(), workers=0)
    stack.start_redis()
    yield stack
    stack.stop()


@pytest.fixture
def real_redis(redis_stack) -> redis.Redis:
    """A client of the session's real Redis, emptied before each test."""
    client = redis_stack.redis()
    client.flushall()
    return client
