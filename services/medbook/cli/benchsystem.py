"""The benchmark's fresh local system: servers once, services restarted per tracing level.

``medbook bench --local`` measures several configurations in one run, so that
every figure it compares (medbook against the ceiling, traced against
untraced, a year of data against an empty table) comes from the same machine
in the same minutes. The servers start once, durable as in production, in a
temporary folder; the services are started again for each tracing level with
the standard ``OTEL_*`` variables (sampler ``parentbased_traceidratio`` and
its ratio), their spans exported over OTLP/HTTP to a local receiver that
counts them. The CPU that each process tree used is read around each
measurement, for the CPU-per-booking figures.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import httpx
import port_for

from medbook.booking.migrations import upgrade
from medbook.cli.cpu import CpuMeter
from medbook.devstack.stack import DATABASE, DevStack, StackPorts

CEILING_DATABASE = "medbook_ceiling"
LOAD_GENERATOR = "load generator"


def tracing_env(sampling: float, sink_url: str | None) -> dict[str, str]:
    """The services' environment for a sampling ratio (0: tracing off)."""
    if sampling <= 0 or sink_url is None:
        return {}
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink_url,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": f"{sampling:g}",
        "OTEL_BSP_MAX_QUEUE_SIZE": "65536",  # a benchmark's bursts: keep every sampled span
    }


class LocalSystem:
    """PostgreSQL, Redis and RabbitMQ in a temporary folder, and the services on demand."""

    def __init__(self, daily_limit: int, *, redis_replicas: int = 0) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="medbook-bench-")
        self.data_dir = Path(self._tmp.name)
        self.base_env = {"MEDBOOK_DAILY_LIMIT": str(daily_limit), "MEDBOOK_LOG_LEVEL": "WARNING"}
        ports = StackPorts(*(port_for.select_random() for _ in range(5)))
        self.stack = DevStack(
            self.data_dir,
            ports,
            sweep_every=30,
            pending_timeout=3600,
            extra_env=self.base_env,
            redis_replicas=redis_replicas,
        )
        self._sink: subprocess.Popen[bytes] | None = None
        self.sink_url: str | None = None
        self.sampling: float | None = None  # of the services running, None: none running

    # -- life cycle -------------------------------------------------------------------

    def __enter__(self) -> LocalSystem:
        try:
            self.stack.start_infrastructure()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.stack.stop()
        finally:
            if self._sink is not None:
                self._sink.terminate()
                self._sink.wait(10)
            self._tmp.cleanup()

    def start_services(self, sampling: float) -> None:
        """(Re)start the booking service, the discount worker and the sweep at this sampling."""
        self.stop_services()
        if sampling > 0 and self.sink_url is None:
            self._start_sink()
        self.stack.extra_env = self.base_env | tracing_env(sampling, self.sink_url)
        self.stack.start_services()
        self.sampling = sampling

    def stop_services(self) -> None:
        for service in reversed(self.stack.services):
            service.stop()
        self.stack.services = []
        self.sampling = None

    def _start_sink(self) -> None:
        port = port_for.select_random()
        self._sink = subprocess.Popen(
            [sys.executable, "-m", "medbook.devstack.otlp_sink", "--port", str(port)]
        )
        self.sink_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{self.sink_url}/stats", timeout=1)
                return
            time.sleep(0.1)
        raise TimeoutError("the OTLP receiver did not start")

    # -- what the phases need -------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return self.stack.api_url

    @property
    def database_url(self) -> str:
        return self.stack.postgres.url_for(DATABASE)

    @property
    def worker_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.ports.discount_metrics}/metrics"

    def spans_exported(self) -> int | None:
        if self.sink_url is None:
            return None
        return int(httpx.get(f"{self.sink_url}/stats", timeout=5).json()["spans"])

    def cpu_meter(self) -> CpuMeter:
        """The servers and the running services, each as a process tree."""
        pids: dict[str, int | None] = {
            "postgres": self.stack.postgres.pid,
            "redis": self.stack.redis.pid,
            "rabbitmq": self.stack.rabbit.pid,
        }
        for index, replica in enumerate(self.stack.redis_replicas):
            pids[f"redis replica {index + 1}"] = replica.pid
        for service in self.stack.services:
            if service.process is not None:
                pids[service.name] = service.process.pid
        return CpuMeter(pids)

    @contextlib.contextmanager
    def ceiling_database(self) -> Iterator[str]:
        """A migrated database of the ceiling's own, dropped afterwards."""
        postgres = self.stack.postgres
        postgres.drop_database(CEILING_DATABASE)
        postgres.create_database(CEILING_DATABASE)
        url = postgres.url_for(CEILING_DATABASE)
        try:
            upgrade(url.replace("postgresql://", "postgresql+psycopg://", 1))
            yield url
        finally:
            postgres.drop_database(CEILING_DATABASE)

    @property
    def ceiling_redis_url(self) -> str:
        """Redis database 1: the ceiling's keys never meet the services' (database 0)."""
        return self.stack.redis.url.rsplit("/", 1)[0] + "/1"

    @property
    def amqp_url(self) -> str:
        return self.stack.rabbit.url


def own_cpu_seconds() -> float:
    """This process's own CPU (the load generator's), without its children's."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_booking_ms(cpu: dict[str, float], bookings: int) -> dict[str, float]:
    """CPU milliseconds per booking, by process, with their total."""
    if bookings <= 0:
        return {}
    figures = {name: 1000 * seconds / bookings for name, seconds in cpu.items()}
    figures["total"] = sum(figures.values())
    return figures


def load_average() -> float:
    """The machine's one-minute load average (how shared it was while measuring)."""
    return os.getloadavg()[0]
