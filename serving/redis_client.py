"""The one place a Redis client is made, from REDIS_URL: one server, a Sentinel-watched master, or a Cluster.

Each kind is redis-py's own: `Redis`, `Sentinel.master_for` (every new connection asks the Sentinels
where the master is, so after a failover the next attempt reaches the promoted replica) and
`RedisCluster` (which follows the cluster's slot map). The rest of the code sees one client interface;
every key of a queue shares a hash tag (serving.protocol.Keys), so its transactions and scripts run on
one cluster node.
"""

from __future__ import annotations

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.sentinel import Sentinel

from serving.config import RedisAddress, parse_redis_url

RedisClient = redis.Redis | RedisCluster
# Every way a Redis call can fail, whatever the deployment: redis-py's cluster client also raises
# RedisClusterException (no node covers a slot, ...), which is not a RedisError.
REDIS_ERRORS = (redis.RedisError, RedisClusterException)


def connect(redis_url: str, connect_timeout: float, read_timeout: float) -> RedisClient:
    """A client for REDIS_URL whose connects give up after `connect_timeout` and reads after `read_timeout`."""
    address = parse_redis_url(redis_url)
    if address.kind == "server":
        return redis.Redis.from_url(address.url, socket_connect_timeout=connect_timeout, socket_timeout=read_timeout)
    options = {"socket_connect_timeout": connect_timeout, "username": address.username,
               "password": address.password, **_tls(address)}
    if address.kind == "sentinel":
        # The Sentinels themselves: answered quickly or not at all; the password is the master's, as in
        # redis-py and Celery (Sentinels rarely have one).
        sentinels = Sentinel(list(address.nodes), sentinel_kwargs={
            "socket_connect_timeout": connect_timeout, "socket_timeout": connect_timeout, **_tls(address)})
        return sentinels.master_for(address.master, socket_timeout=read_timeout, db=address.db, **options)
    return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
                        socket_timeout=read_timeout, **options)


def _tls(address: RedisAddress) -> dict:
    return {"ssl": True, **dict(address.tls_options)} if address.tls else {}
