"""The one place a Redis client is made, from REDIS_URL: one server, a Sentinel-watched master, or a Cluster.

Each kind is redis-py's own: `Redis`, `Sentinel.master_for` (every new connection asks the Sentinels
where the master is, so after a failover the next attempt reaches the promoted replica) and
`RedisCluster` (which follows the cluster's slot map). The rest of the code sees one client interface;
every key of a queue shares a hash tag (serving.protocol.Keys), so its transactions and scripts run on
one cluster node.

None of them repeats a command by itself. redis-py 8 sends a command again after a read timeout or a
lost connection unless told not to: `RedisCluster` up to ten times (refreshing its slot map in between),
as does a `Redis` made from a host and port, and the Sentinels' own clients; the connections of
`Redis.from_url` and `master_for` happen not to. A BLMOVE or ENQUEUE whose reply came late has run, so a
repeat takes a second message while the first sits in a live worker's processing list, or queues the
request twice. Every client here is told, so the error reaches our code, which knows what it sent: a
worker serves what its processing list holds (worker/loop.py), the API answers 503. A cluster client
still follows MOVED and ASK (its redirection loop is apart from the retries) and still refreshes its slot
map after a connection error, so the next call reaches the node that took over.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from serving.config import RedisAddress, parse_redis_url

RedisClient = redis.Redis | RedisCluster
RedisPipeline = redis.client.Pipeline | ClusterPipeline  # client.pipeline(): a Cluster's has no eval()
# Every way a Redis call can fail, whatever the deployment: redis-py's cluster client also raises
# RedisClusterException (no node covers a slot, ...), which is not a RedisError.
REDIS_ERRORS = (redis.RedisError, RedisClusterException)


def no_retries() -> Retry:
    """redis-py's policy for a client that never sends a command twice (each connection copies it)."""
    return Retry(NoBackoff(), 0)


def connect(redis_url: str, connect_timeout: float, read_timeout: float) -> RedisClient:
    """A client for REDIS_URL whose connects give up after `connect_timeout` and reads after `read_timeout`."""
    address = parse_redis_url(redis_url)
    if address.kind == "server":
        return redis.Redis.from_url(address.url, socket_connect_timeout=connect_timeout, socket_timeout=read_timeout,
                                    retry=no_retries())
    options = {"socket_connect_timeout": connect_timeout, "retry": no_retries(), "username": address.username,
               "password": address.password, **_tls(address)}
    if address.kind == "sentinel":
        # The Sentinels themselves: answered quickly or not at all; the password is the master's, as in
        # redis-py and Celery (Sentinels rarely have one).
        sentinels = Sentinel(list(address.nodes), sentinel_kwargs={
            "socket_connect_timeout": connect_timeout, "socket_timeout": connect_timeout, "retry": no_retries(),
            **_tls(address)})
        return sentinels.master_for(address.master, socket_timeout=read_timeout, db=address.db, **options)
    return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
                        socket_timeout=read_timeout, **options)


def _tls(address: RedisAddress) -> dict:
    return {"ssl": True, **dict(address.tls_options)} if address.tls else {}
