"""Fixtures of the API's unit tests: the app against fakeredis (helpers in tests/unit/fake_api.py).

Unit tests need no redis-server: what only a real one shows is in tests/integration (test_redis_protocol.py).
"""

import dataclasses

import fakeredis
import pytest

from app import create_app
from tests.unit.fake_api import SETTINGS


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def fake_redis(server) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server)


@pytest.fixture
def client(fake_redis):
    """The API's Flask test client, on `fake_redis`: REQUEST_TIMEOUT is 0.3 s, for the tests of deadlines."""
    return create_app(SETTINGS, fake_redis).test_client()


@pytest.fixture
def patient_client(fake_redis):
    """The API on fake_redis with time to decode several photos on a loaded machine (REQUEST_TIMEOUT 5 s)."""
    return create_app(dataclasses.replace(SETTINGS, request_timeout=5.0), fake_redis).test_client()
