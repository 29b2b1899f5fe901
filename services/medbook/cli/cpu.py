"""CPU used by process trees over an interval, for the benchmark's CPU-per-booking figures.

A server is a tree of processes that come and go (PostgreSQL starts a backend
per connection; RabbitMQ runs its VM under a shell script), so a tree's CPU is
its root's own time, plus what its reaped children used (the kernel adds it
to the parent), plus what its live descendants used so far. The difference
of two readings is what the tree used in between, whatever started or ended
meanwhile (a grandchild reaped by a child that is itself still alive is
counted once, in that child).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import psutil  # type: ignore[import-untyped]  # no stubs in the lock (types-psutil)


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by the process ``pid`` and everything under it."""
    try:
        root = psutil.Process(pid)
        total = _own_and_reaped(root)
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += _own_and_reaped(child)
    except psutil.Error:
        return 0.0
    return total


def _own_and_reaped(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


class CpuMeter:
    """Reads the CPU of named process trees; :meth:`since` gives the use since :meth:`start`."""

    def __init__(self, pids: Mapping[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid is not None}
        self._start: dict[str, float] = {}

    def read(self) -> dict[str, float]:
        return {name: tree_cpu_seconds(pid) for name, pid in self.pids.items()}

    def start(self) -> None:
        self._start = self.read()

    def since(self) -> dict[str, float]:
        now = self.read()
        return {name: now[name] - self._start.get(name, 0.0) for name in now}
