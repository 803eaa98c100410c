"""Real Redis deployments on loopback for the scale-out tests: a Sentinel-watched master with a replica, a Cluster.

Each starts Debian's own programs (redis-server, redis-sentinel, redis-cli --cluster create) in a scratch
folder, waits until the deployment is whole, and stops every process it started, whatever happened.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import redis

from stack.processes import free_port
from tests.integration.client import wait_until
from tests.integration.hosts import Host

MASTER_NAME = "main"


class RedisProcesses:
    def __init__(self, folder: Path):
        self.folder = folder
        self.processes: dict[int, subprocess.Popen] = {}  # port -> process

    def start(self, program: str, port: int, *arguments: str, host: Host | None = None,
              password: str | None = None) -> subprocess.Popen:
        log = (self.folder / f"{program}-{port}.log").open("wb")
        command = [program, *arguments]
        process = subprocess.Popen(host.command(*command) if host else command, cwd=self.folder, stdout=log,
                                   stderr=subprocess.STDOUT)
        self.processes[port] = process
        address = host.address if host else "127.0.0.1"
        wait_until(lambda: _answers(address, port, password), 10, what=f"{program} on {address}:{port}")
        return process

    def start_server(self, port: int, *arguments: str) -> subprocess.Popen:
        return self.start("redis-server", port, *self._server_arguments(port, "127.0.0.1"), *arguments)

    def start_server_on(self, host: Host, port: int, password: str) -> subprocess.Popen:
        """A password-protected server on a host of its own (tests/integration/hosts.py), as across real hosts."""
        return self.start("redis-server", port, *self._server_arguments(port, host.address), "--requirepass",
                          password, host=host, password=password)

    def _server_arguments(self, port: int, address: str) -> list[str]:
        data = self.folder / f"data-{port}"
        data.mkdir()
        return ["--port", str(port), "--bind", address, "--save", "", "--appendonly", "no", "--dir", str(data)]

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.kill()
        for process in self.processes.values():
            process.wait()


def _answers(address: str, port: int, password: str | None) -> bool:
    try:
        return redis.Redis(address, port, password=password, socket_timeout=1).ping()
    except redis.RedisError:
        return False


@contextlib.contextmanager
def sentinel_deployment(folder: Path) -> Iterator[tuple[str, RedisProcesses, int, int]]:
    """A master, one replica and three Sentinels that agree (quorum 2) on failing over within seconds.

    Yields (REDIS_URL, processes, master port, replica port).
    """
    servers = RedisProcesses(folder)
    master, replica = free_port(), free_port()
    sentinels = [free_port() for _ in range(3)]
    try:
        servers.start_server(master)
        servers.start_server(replica, "--replicaof", "127.0.0.1", str(master))
        wait_until(lambda: redis.Redis(port=replica).info("replication")["master_link_status"] == "up", 10,
                   what="replica in sync")
        for port in sentinels:
            config = folder / f"sentinel-{port}.conf"  # Sentinel rewrites its file: one each, writable
            config.write_text(f"port {port}\nbind 127.0.0.1\n"
                              f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n"
                              f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                              f"sentinel failover-timeout {MASTER_NAME} 5000\n")
            servers.start("redis-sentinel", port, str(config))
        wait_until(lambda: all(_sentinel_knows_everyone(port, len(sentinels) - 1) for port in sentinels), 20,
                   what="Sentinels that know the replica and each other")
        hosts = ",".join(f"127.0.0.1:{port}" for port in sentinels)
        yield f"redis+sentinel://{hosts}/{MASTER_NAME}/0", servers, master, replica
    finally:
        servers.stop_all()


def _sentinel_knows_everyone(port: int, other_sentinels: int) -> bool:
    client = redis.Redis(port=port, decode_responses=True)
    state = client.execute_command("SENTINEL", "MASTER", MASTER_NAME)
    fields = dict(zip(state[::2], state[1::2])) if isinstance(state, list) else state
    return int(fields["num-slaves"]) >= 1 and int(fields["num-other-sentinels"]) >= other_sentinels


def _cluster_state(port: int) -> str:
    info = redis.Redis(port=port, decode_responses=True).execute_command("CLUSTER INFO")
    return info["cluster_state"] if isinstance(info, dict) else info.split("cluster_state:")[1].split()[0]


def role(port: int) -> str:
    return redis.Redis(port=port).execute_command("ROLE")[0].decode()


@contextlib.contextmanager
def cluster_deployment(folder: Path, masters: int = 3) -> Iterator[tuple[str, RedisProcesses, list[int]]]:
    """A Redis Cluster of `masters` masters and no replicas, its slots spread by redis-cli.

    Yields (REDIS_URL naming two of its nodes, processes, node ports).
    """
    servers = RedisProcesses(folder)
    ports = [free_port() for _ in range(masters)]
    try:
        for port in ports:
            # The bus port defaults to port + 10000, past 65535 for most ephemeral ports: a free one of its own.
            # DEBUG (SLEEP) from loopback, for tests that make a node answer late.
            servers.start_server(port, "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                                 "--cluster-port", str(free_port()), "--cluster-node-timeout", "2000",
                                 "--enable-debug-command", "local")
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        wait_until(lambda: all(_cluster_state(port) == "ok" for port in ports), 20, what="cluster_state:ok everywhere")
        yield f"redis+cluster://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", servers, ports
    finally:
        servers.stop_all()
