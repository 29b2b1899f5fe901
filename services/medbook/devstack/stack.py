"""The local system: PostgreSQL, Redis and RabbitMQ, migrated, with both services and the sweep.

Everything runs from this machine's binaries on loopback ports that are not
the servers' standard ones, with its data under one folder of the checkout
(``.data`` by default), so a second start reuses the data. :meth:`DevStack.stop`
stops what :meth:`DevStack.start` started, services first, and leaves no
process behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from medbook.booking.migrations import upgrade
from medbook.devstack.servers import PostgresServer, RabbitMQServer, RedisServer

log = logging.getLogger(__name__)

DATABASE = "medbook"


@dataclass(frozen=True)
class StackPorts:
    postgres: int = 54329
    redis: int = 63799
    amqp: int = 56729
    http: int = 3000
    discount_metrics: int = 9464


@dataclass
class ServiceProcess:
    """One medbook process started by the stack, its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    health_url: str | None = None
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_healthy(self, timeout: float = 30.0) -> None:
        if self.health_url is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(
                    f"{self.name} exited with {self.process and self.process.returncode}; "
                    f"see {self.log_path}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.health_url, timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s; see {self.log_path}")

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs: killing it", self.name, grace)
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
        return self.process.returncode


class DevStack:
    def __init__(
        self,
        data_dir: Path,
        ports: StackPorts | None = None,
        *,
        sweep_every: float = 10.0,
        pending_timeout: int = 300,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir.absolute()
        self.ports = ports or StackPorts()
        self.sweep_every = sweep_every
        self.pending_timeout = pending_timeout
        self.extra_env = dict(extra_env or {})
        self.postgres = PostgresServer(self.data_dir / "postgres", self.ports.postgres)
        self.redis = RedisServer(self.data_dir / "redis", self.ports.redis)
        self.rabbit = RabbitMQServer(self.data_dir / "rabbitmq", self.ports.amqp)
        self.services: list[ServiceProcess] = []

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    def env(self) -> dict[str, str]:
        """The environment the services (and the ``medbook`` command) run with."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MEDBOOK_", "DB_", "REDIS_", "RABBITMQ_", "BOOKING_"))
        }
        env.update(
            MEDBOOK_DATABASE_URL=self.postgres.url_for(DATABASE),
            MEDBOOK_REDIS_URL=self.redis.url,
            MEDBOOK_RABBITMQ_URL=self.rabbit.url,
            MEDBOOK_PORT=str(self.ports.http),
            MEDBOOK_HOST="127.0.0.1",
            MEDBOOK_METRICS_PORT=str(self.ports.discount_metrics),
            MEDBOOK_METRICS_HOST="127.0.0.1",
            MEDBOOK_PENDING_TIMEOUT=str(self.pending_timeout),
            MEDBOOK_API_URL=self.api_url,
        )
        env.update(self.extra_env)
        return env

    def start_infrastructure(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for server in (self.postgres, self.redis, self.rabbit):
            log.info("starting %s", type(server).__name__)
            server.start()
        if not self.postgres.database_exists(DATABASE):
            self.postgres.create_database(DATABASE)
        upgrade(
            self.postgres.url_for(DATABASE).replace("postgresql://", "postgresql+psycopg://", 1)
        )

    def start_services(self) -> None:
        env = self.env()
        logs = self.data_dir / "logs"
        python = sys.executable
        self.services = [
            ServiceProcess(
                "booking",
                [python, "-m", "medbook.booking.main"],
                env,
                logs / "booking.log",
                f"{self.api_url}/healthz",
            ),
            ServiceProcess(
                "discount",
                [python, "-m", "medbook.discount.main"],
                env,
                logs / "discount.log",
                f"http://127.0.0.1:{self.ports.discount_metrics}/healthz",
            ),
            ServiceProcess(
                "sweep",
                [python, "-m", "medbook.booking.sweep", "--every", str(self.sweep_every)],
                env,
                logs / "sweep.log",
            ),
        ]
        for service in self.services:
            service.start()
        for service in self.services:
            service.wait_healthy()

    def start(self) -> None:
        try:
            self.start_infrastructure()
            self.start_services()
        except BaseException:
            self.stop()
            raise

    def dead_services(self) -> list[ServiceProcess]:
        return [s for s in self.services if not s.running]

    def stop(self) -> None:
        for service in reversed(self.services):
            code = service.stop()
            log.info("%s stopped (exit %s)", service.name, code)
        for server in (self.rabbit, self.redis, self.postgres):
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                log.error("could not stop %s: %r", type(server).__name__, exc)
