"""Where a machine's CPU went during a measurement: each named group of processes (a process and all its
descendants, as they were when the measurement began), this process itself, and the whole machine, from Linux's
/proc. `make bench` divides it by the images served (docs/performance.md, "make bench").
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses); None once
    the process is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2:].split()


def descendants_and_self(pid: int) -> list[int]:
    """The process and every process below it now (gunicorn's master and its API processes, say)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))  # fields[1]: the parent's pid
    tree, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        tree.append(current)
        frontier.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time the process has used so far; None once it has exited."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND  # utime, stime


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _machine_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every CPU since boot; idle and waiting for I/O are not busy."""
    values = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds per group of processes and of this process over a measurement, the machine's busy share
    (0 to 1, all its CPUs) and the wall-clock seconds."""
    groups: dict[str, float]
    own: float
    machine_busy: float
    seconds: float

    def per_unit_ms(self, units: int) -> dict[str, float]:
        """Each group's CPU milliseconds per unit of work (an image), this process's as "load generator"."""
        every = {**self.groups, "load generator": self.own}
        return {name: 1000 * cpu / units for name, cpu in every.items()} if units else {}


class CpuMeter:
    """Started on groups of process trees (name -> root pids, each with the descendants it has now); `used()`
    is the CPU each has taken since. Processes started later are not counted, nor the CPU of one that exits
    before `used()` (Linux keeps no figures of a process once it is gone): meant for a steady service."""

    def __init__(self, groups: dict[str, list[int]]):
        self._before = {name: {pid: cpu_seconds(pid) for root in roots for pid in descendants_and_self(root)}
                        for name, roots in groups.items()}
        self._own, self._machine, self._started = _own_cpu_seconds(), _machine_ticks(), time.monotonic()

    def used(self) -> CpuUse:
        busy, every = (after - before for after, before in zip(_machine_ticks(), self._machine))
        return CpuUse({name: self._since(before) for name, before in self._before.items()},
                      _own_cpu_seconds() - self._own, busy / max(1, every), time.monotonic() - self._started)

    @staticmethod
    def _since(before: dict[int, float | None]) -> float:
        total = 0.0
        for pid, then in before.items():
            now = cpu_seconds(pid)
            if now is not None and then is not None:
                total += now - then
        return total
