"""`medbook dev` (what `make dev` runs): starts everything, serves a booking, stops cleanly, keeps data."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import port_for
import psutil

from tests.helpers import eligible_body


def start_dev(data_dir: Path, ports: dict[str, int], log: Path) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "medbook.cli.main",
        "dev",
        "--data-dir",
        str(data_dir),
        "--postgres-port",
        str(ports["pg"]),
        "--redis-port",
        str(ports["redis"]),
        "--amqp-port",
        str(ports["amqp"]),
        "--http-port",
        str(ports["http"]),
        "--metrics-port",
        str(ports["metrics"]),
        "--sweep-every",
        "2",
    ]
    return subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"medbook dev not ready in {timeout}s:\n{log.read_text()[-3000:]}")


def descendants_and_servers(data_dir: Path) -> list[psutil.Process]:
    """Every process that belongs to this stack: anything whose command line names its data dir."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(str(data_dir) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_dev_stack_serves_a_booking_stops_cleanly_and_keeps_its_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "dev.log"
    ports = {name: port_for.select_random() for name in ("pg", "redis", "amqp", "http", "metrics")}
    url = f"http://127.0.0.1:{ports['http']}"

    process = start_dev(data_dir, ports, log)
    try:
        wait_ready(url, process, log)
        created = httpx.post(
            f"{url}/booking", json=eligible_body(serviceNames=["General Consultation"])
        )
        assert created.status_code == 201
        booking_id = created.json()["bookingId"]
        deadline = time.monotonic() + 20
        booking = httpx.get(f"{url}/booking/{booking_id}").json()
        while booking["status"] == "PENDING" and time.monotonic() < deadline:
            time.sleep(0.1)
            booking = httpx.get(f"{url}/booking/{booking_id}").json()
        assert booking["status"] == "CONFIRMED"
        assert booking["finalPrice"] == 440  # 12% off 500
        started = psutil.Process(process.pid).children(recursive=True) + descendants_and_servers(
            data_dir
        )
        names = " ".join(" ".join(p.cmdline()) for p in started)
        for part in (
            "medbook.booking.main",
            "medbook.discount.main",
            "medbook.booking.sweep",
            "redis-server",
            "postgres",
            "beam.smp",
        ):
            assert part in names, f"{part} is not running"
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
    assert code == 0, log.read_text()[-3000:]
    assert [p for p in started if alive(p)] == []
    assert descendants_and_servers(data_dir) == []

    process = start_dev(data_dir, ports, log)  # a second run reuses the data
    try:
        wait_ready(url, process, log)
        again = httpx.get(f"{url}/booking/{booking_id}")
        assert again.status_code == 200
        assert again.json()["status"] == "CONFIRMED"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    assert descendants_and_servers(data_dir) == []
