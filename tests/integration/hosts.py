"""Several hosts on one machine: network namespaces, each with its own address on a bridge (root only).

`network(names)` gives each named host a namespace and an address 10.213.N.i/24, joined by veth links to a
bridge in the root namespace, which has .254 so the test itself can reach every host. `cut` and `mend` take
one host's link down and up again: to the others it is as if its cable were pulled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


def _ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, timeout=10)


@dataclass(frozen=True)
class Host:
    name: str  # also its namespace's name
    address: str
    link: str  # the root namespace's end of its veth pair, which `cut` takes down

    def command(self, *arguments: str) -> list[str]:
        """`arguments` run as a process of this host."""
        return ["ip", "netns", "exec", self.name, *arguments]

    def cut(self) -> None:
        _ip("link", "set", self.link, "down")

    def mend(self) -> None:
        _ip("link", "set", self.link, "up")


@contextlib.contextmanager
def network(names: list[str]) -> Iterator[dict[str, Host]]:
    run = os.getpid() % 10000  # names and subnet of this run, so a leftover of another run cannot collide
    subnet = f"10.212.{os.getpid() % 250}"  # outside the ranges the container tests give dockerd (10.213/10.214)
    bridge = f"imgbr{run}"
    hosts = {name: Host(f"img{run}{name}", f"{subnet}.{index}", f"img{run}v{index}")
             for index, name in enumerate(names, start=1)}
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{subnet}.254/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        _forwarding(bridge, "-I")
        for host in hosts.values():
            _ip("netns", "add", host.name)
            _ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.name)
            _ip("link", "set", host.link, "master", bridge, "up")
            _ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.name, "link", "set", "eth0", "up")
            _ip("-n", host.name, "link", "set", "lo", "up")
        yield hosts
    finally:
        for host in hosts.values():
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True)  # its veth pair goes with it
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        _forwarding(bridge, "-D")


def _forwarding(bridge: str, action: str) -> None:
    """Let the hosts' traffic across the bridge through iptables' FORWARD chain (-I), or take that back (-D).

    Once dockerd has run on this machine (the container tests start one), br_netfilter sends bridged frames
    through FORWARD, whose policy dockerd set to DROP, and which stays so after it stops: every connection
    between the hosts would then time out. docker0's own rule is the same one.
    """
    if shutil.which("iptables"):
        subprocess.run(["iptables", "-w", action, "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"],
                       capture_output=True)
