"""`medbook dev` (what `make dev` runs) as a person meets it, with real servers and processes.

It serves bookings, is found by every command with no flag, refuses to start twice, restarts a
killed service without touching the data servers, ends with everything it started when its
whole process group is SIGKILLed, starts cleanly again on the same data, stops servers an
earlier run left behind, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import port_for
import psutil
import pytest

from medbook.devstack import lifetime
from medbook.devstack.servers import PostgresServer, RabbitMQServer, RedisServer
from tests.helpers import eligible_body

pytestmark = pytest.mark.slow


class Dev:
    """One `medbook dev` process on a data folder `.data` under ``home`` (its working dir)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.data_dir = home / ".data"
        self.ports = {n: port_for.select_random() for n in ("pg", "redis", "amqp", "http", "mx")}
        self.url = f"http://127.0.0.1:{self.ports['http']}"
        self.log = home / "dev.log"
        self.process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        p = self.ports
        return [
            sys.executable, "-m", "medbook.cli.main", "dev",
            "--postgres-port", str(p["pg"]), "--redis-port", str(p["redis"]),
            "--amqp-port", str(p["amqp"]), "--http-port", str(p["http"]),
            "--metrics-port", str(p["mx"]), "--sweep-every", "2",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        """No connection settings at all: the commands must find the stack by themselves."""
        return {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MEDBOOK_", "DB_", "REDIS_", "RABBITMQ_", "OTEL_"))
        }

    def start(self) -> subprocess.Popen[bytes]:
        self.process = subprocess.Popen(
            self.argv(),
            cwd=self.home,
            env=self.env(),
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal gives it
        )
        return self.process

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 240) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()[-3000:]
            if "medbook is running" in self.output():
                return
            time.sleep(0.2)
        raise AssertionError(f"medbook dev not ready in {timeout}s:\n{self.output()[-3000:]}")

    def medbook(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`medbook ...` run in the checkout, with no flag and no variable for any server."""
        return subprocess.run(
            [sys.executable, "-m", "medbook.cli.main", *args],
            cwd=self.home, env=self.env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def child(self, module: str) -> psutil.Process:
        assert self.process is not None
        for proc in psutil.Process(self.process.pid).children():
            if module in " ".join(proc.cmdline()):
                return proc
        raise AssertionError(f"no {module} under medbook dev")

    def server_pids(self) -> dict[str, int]:
        files = {"postgres": "postmaster.pid", "redis": "redis.pid", "rabbitmq": "rabbitmq.pid"}
        return {
            name: int((self.data_dir / name / file).read_text().split()[0])
            for name, file in files.items()
        }

    def processes(self) -> list[psutil.Process]:
        """Everything that belongs to the stack: its children, the servers (from their pid
        files) with their own children, and whatever carries the stack's tag (epmd)."""
        found: dict[int, psutil.Process] = {}
        roots = [psutil.Process(pid) for pid in self.server_pids().values()]
        if self.process is not None and self.process.poll() is None:
            roots.append(psutil.Process(self.process.pid))
        roots += lifetime.tagged(str(self.data_dir))
        for root in roots:
            with contextlib.suppress(psutil.Error):
                for proc in [root, *root.children(recursive=True)]:
                    found[proc.pid] = proc
        return list(found.values())


def alive(procs: list[psutil.Process]) -> list[str]:
    left = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid} {' '.join(proc.cmdline())[:80]}")
    return left


def wait_gone(procs: list[psutil.Process], timeout: float = 90) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def book(url: str, count: int) -> list[str]:
    return [
        httpx.post(f"{url}/booking", json=eligible_body()).json()["bookingId"] for _ in range(count)
    ]


def all_final(url: str, ids: list[str], timeout: float = 60) -> list[str]:
    """The bookings still PENDING after ``timeout`` (none, when the saga is whole)."""
    deadline = time.monotonic() + timeout
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        pending = [
            i for i in pending if httpx.get(f"{url}/booking/{i}").json()["status"] == "PENDING"
        ]
        time.sleep(0.2)
    return pending


@contextlib.contextmanager
def stopped_at_the_end(dev: Dev) -> Iterator[None]:
    try:
        yield
    finally:
        if dev.process is not None and dev.process.poll() is None:
            dev.process.send_signal(signal.SIGTERM)
            dev.process.wait(120)


def test_the_stack_serves_restarts_a_killed_worker_and_dies_with_its_process_group(
    tmp_path: Path,
) -> None:
    dev = Dev(tmp_path)
    dev.start()
    with stopped_at_the_end(dev):
        dev.wait_ready()

        # A second `make dev` says, in one line, that it runs and where.
        again = subprocess.run(dev.argv(), cwd=tmp_path, env=dev.env(), capture_output=True,
                               text=True, timeout=60)  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert again.stderr.strip().splitlines() == [
            f"medbook dev is already running (pid {dev.process.pid}) on {dev.data_dir}: "
            f"the API at {dev.url}"
        ]

        # Every command finds it with no flag and no variable.
        ids = book(dev.url, 10)
        assert all_final(dev.url, ids) == []
        quota = dev.medbook("quota", "get", "--json")
        assert quota.returncode == 0, quota.stderr
        assert json.loads(quota.stdout)["used"] == 10
        stats = dev.medbook("bookings", "stats", "--json")
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["by_status"] == {"CONFIRMED": 10}
        dlq = dev.medbook("dlq", "list", "--json")
        assert dlq.returncode == 0, dlq.stderr
        exports = dev.medbook("dev", "env")
        assert exports.returncode == 0, exports.stderr
        assert f"export MEDBOOK_API_URL={dev.url}" in exports.stdout.splitlines()

        # SIGKILL the worker in the middle of bookings: it comes back, the servers are the same.
        servers = dev.server_pids()
        worker = dev.child("medbook.discount.main")
        more = book(dev.url, 10)
        worker.kill()
        more += book(dev.url, 10)
        deadline = time.monotonic() + 60
        while "discount restarted" not in dev.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "discount exited (killed by SIGKILL)" in dev.output(), dev.output()[-2000:]
        assert dev.child("medbook.discount.main").pid != worker.pid
        assert all_final(dev.url, ids + more) == []
        assert dev.server_pids() == servers
        assert not [name for name, pid in servers.items() if not psutil.pid_exists(pid)]

        # `medbook top` with no flag either: one frame when its output is not a terminal. (The
        # worker's quota gauge is re-read from Redis every 5 s: the restarted one catches up.)
        deadline = time.monotonic() + 30
        while True:
            view = dev.medbook("top", "--count", "1")
            assert view.returncode == 0, view.stderr
            if "30 of 100 (70 left)" in view.stdout or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert "30 of 100 (70 left)" in view.stdout, view.stdout
        assert "discount ready" in view.stdout and "backlog  from PostgreSQL" in view.stdout

        # SIGKILL the whole process group (a killed terminal): nothing of the stack survives.
        everything = dev.processes()
        names = " ".join(" ".join(p.cmdline()) for p in everything)
        for part in ("postgres", "beam.smp", "epmd", "medbook.booking.main", "lifetime"):
            assert part in names, f"{part} is not among the stack's processes"
        os.killpg(dev.process.pid, signal.SIGKILL)
        dev.process.wait(10)
        assert wait_gone(everything) == []

    # The next start is clean (nothing was left to stop) and finds the same data.
    dev.log.write_text("")
    dev.start()
    with stopped_at_the_end(dev):
        dev.wait_ready()
        assert "left running" not in dev.output()
        assert httpx.get(f"{dev.url}/booking/{ids[0]}").json()["status"] == "CONFIRMED"
        everything = dev.processes()
        dev.process.send_signal(signal.SIGTERM)
        assert dev.process.wait(120) == 0, dev.output()[-2000:]
    assert wait_gone(everything, timeout=10) == []
    assert "exit -15" not in dev.output()  # a clean stop says "booking stopped"
    assert "HTTP Request:" not in dev.output()  # httpx's line for each health probe
    assert "booking stopped" in dev.output()
    assert not (dev.data_dir / "stack.json").exists()


def test_servers_left_by_an_earlier_run_are_stopped_and_the_start_is_clean(
    tmp_path: Path,
) -> None:
    dev = Dev(tmp_path)
    # As a stack killed before this version left them: running, in their own sessions.
    left = [
        PostgresServer(dev.data_dir / "postgres", dev.ports["pg"]),
        RedisServer(dev.data_dir / "redis", dev.ports["redis"]),
        RabbitMQServer(dev.data_dir / "rabbitmq", dev.ports["amqp"]),
    ]
    try:
        for server in left:
            server.start()
        pids = dev.server_pids()
        before = [p for pid in pids.values() for p in [psutil.Process(pid)]]
        dev.start()
        with stopped_at_the_end(dev):
            dev.wait_ready()
            out = dev.output()
            assert (
                f"stopped what an earlier run of {dev.data_dir} left running: PostgreSQL (pid "
                f"{pids['postgres']}), Redis (pid {pids['redis']}), RabbitMQ (pid "
                f"{pids['rabbitmq']})"
            ) in out, out[-2000:]
            assert alive(before) == []
            assert all_final(dev.url, book(dev.url, 1)) == []
            everything = dev.processes()
        assert wait_gone(everything, timeout=10) == []
    finally:
        for server in left:
            with contextlib.suppress(Exception):
                server.kill()
