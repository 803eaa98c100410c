"""The clients serving.redis_client makes never send a command twice by themselves (real servers, timing out for
real: tests/integration/test_no_blind_retries.py, and for a Cluster, whose client connects as it is made, there)."""

import pytest

from serving.redis_client import connect


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6399/0", "redis+sentinel://127.0.0.1:26399,127.0.0.1:26400/main/0"])
def test_neither_a_server_client_nor_a_sentinel_client_repeats_a_command(url):
    client = connect(url, 1.0, 1.0)
    assert client.connection_pool.make_connection().retry.get_retries() == 0


def test_the_sentinels_are_asked_once_each_too():
    """A hung Sentinel costs its timeout once, not eleven times (redis-py's default for them), before the next."""
    client = connect("redis+sentinel://127.0.0.1:26399,127.0.0.1:26400/main/0", 1.0, 1.0)
    sentinels = client.connection_pool.sentinel_manager.sentinels
    assert [s.connection_pool.make_connection().retry.get_retries() for s in sentinels] == [0, 0]
