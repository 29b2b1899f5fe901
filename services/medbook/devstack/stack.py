"""The local system: PostgreSQL, Redis and RabbitMQ, migrated, with both services and the sweep.

Everything runs from this machine's binaries on loopback ports that are not
the servers' standard ones, with its data under one folder of the checkout
(``.data`` by default), so a second start reuses the data.

:meth:`DevStack.start` first stops whatever an earlier run of the same folder
left running (a stack that was killed: the servers' pid files and the stack's
tag find it), checks that the ports are free, then starts a watchdog, the
servers, the migrations and the services, waits (up to one deadline, saying
what it waits for) until every service answers its health check, and writes
the stack file that the ``medbook`` commands read
(:mod:`medbook.devstack.discovery`). Every process it starts ends when the
stack's process ends, however that happens (:mod:`medbook.devstack.lifetime`).
While it runs, :meth:`DevStack.supervise` restarts what crashed
(:mod:`medbook.devstack.supervisor`). :meth:`DevStack.stop` stops what
:meth:`DevStack.start` started, services first, and leaves no process behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from medbook.booking.migrations import upgrade
from medbook.devstack import discovery, lifetime
from medbook.devstack.servers import PostgresServer, RabbitMQServer, RedisServer
from medbook.devstack.supervisor import Supervisor, describe_exit

log = logging.getLogger(__name__)

DATABASE = "medbook"
DEFAULT_READY_TIMEOUT = 180.0
STOP_GRACE = 30.0


@dataclass(frozen=True)
class StackPorts:
    postgres: int = 54329
    redis: int = 63799
    amqp: int = 56729
    http: int = 3000
    discount_metrics: int = 9464

    def named(self) -> dict[str, int]:
        return {
            "PostgreSQL": self.postgres,
            "Redis": self.redis,
            "RabbitMQ": self.amqp,
            "the booking API": self.http,
            "the discount worker's metrics": self.discount_metrics,
        }


class StackError(Exception):
    """The stack cannot start as asked (a port taken, a service that never got healthy)."""


@dataclass
class ServiceProcess:
    """One medbook process started by the stack, its output in a log file.

    It runs in a session of its own (a Ctrl-C in the terminal reaches the stack,
    which stops it in order) and gets SIGTERM if the stack's process dies.
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    health_url: str | None = None
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=lifetime.die_with_parent(signal.SIGTERM, new_session=True),
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_status(self) -> str:
        return describe_exit(self.process.poll() if self.process else None)

    def healthy(self) -> bool:
        if self.health_url is None:
            return self.running
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.health_url, timeout=1).status_code == 200
        return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Block until the health check answers (a process started on its own, as in tests)."""
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if not self.running:
                raise StackError(f"{self.name} exited ({self.exit_status()}); see {self.log_path}")
            if time.monotonic() > deadline:
                raise StackError(f"{self.name} not healthy after {timeout:g}s; see {self.log_path}")
            time.sleep(0.1)

    def stop(self, grace: float = STOP_GRACE) -> int | None:
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
            self._log = None
        return self.process.returncode


@dataclass
class ServerUnit:
    """A data server as the supervisor sees it."""

    name: str
    server: PostgresServer | RedisServer | RabbitMQServer

    @property
    def running(self) -> bool:
        return self.server.running

    @property
    def log_path(self) -> Path:
        return self.server.log_path

    def start(self) -> None:
        self.server.start()

    def exit_status(self) -> str:
        return "stopped unexpectedly"


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class DevStack:
    def __init__(
        self,
        data_dir: Path,
        ports: StackPorts | None = None,
        *,
        sweep_every: float = 10.0,
        pending_timeout: int = 300,
        extra_env: dict[str, str] | None = None,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        progress: Callable[[str], None] | None = None,
        redis_replicas: int = 0,
    ) -> None:
        """``redis_replicas``: Redis replicas of the master, and quota writes that wait for
        all of them (the WAIT rule of a Sentinel deployment; to measure its cost)."""
        self.data_dir = data_dir.absolute()
        self.ports = ports or StackPorts()
        self.sweep_every = sweep_every
        self.pending_timeout = pending_timeout
        self.extra_env = dict(extra_env or {})
        self.ready_timeout = ready_timeout
        self.progress = progress or log.info
        start, stop = ready_timeout, STOP_GRACE * 2
        self.postgres = PostgresServer(
            self.data_dir / "postgres", self.ports.postgres, start_timeout=start, stop_timeout=stop
        )
        self.redis = RedisServer(
            self.data_dir / "redis", self.ports.redis, start_timeout=start, stop_timeout=stop
        )
        self.rabbit = RabbitMQServer(
            self.data_dir / "rabbitmq", self.ports.amqp, start_timeout=start, stop_timeout=stop
        )
        self.redis_replicas = [
            RedisServer(
                self.data_dir / f"redis-replica-{i}",
                start_timeout=start,
                stop_timeout=stop,
                extra_args=["--replicaof", "127.0.0.1", str(self.ports.redis)],
            )
            for i in range(redis_replicas)
        ]
        self.servers: dict[str, PostgresServer | RedisServer | RabbitMQServer] = {
            "PostgreSQL": self.postgres,
            "Redis": self.redis,
            **{f"Redis replica {i + 1}": r for i, r in enumerate(self.redis_replicas)},
            "RabbitMQ": self.rabbit,
        }
        for server in self.servers.values():
            server.die_with_parent = True
        self.services: list[ServiceProcess] = []
        self.supervisor = Supervisor()
        self.info = discovery.this_process(self.data_dir)
        self._watchdog: subprocess.Popen[bytes] | None = None

    # -- what it serves ------------------------------------------------------------

    @property
    def tag(self) -> str:
        return str(self.data_dir)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    @property
    def worker_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.discount_metrics}/metrics"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

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
        if self.redis_replicas:
            env["MEDBOOK_REDIS_WAIT_REPLICAS"] = str(len(self.redis_replicas))
        env.update(self.extra_env)
        env[lifetime.TAG_ENV] = self.tag
        return env

    def running_elsewhere(self) -> discovery.StackInfo | None:
        """The ``medbook dev`` already running on this data folder, if there is one."""
        info = discovery.read(self.data_dir)
        if info is not None and info.pid != os.getpid() and info.alive():
            return info
        return None

    # -- starting ------------------------------------------------------------------

    def stop_leftovers(self) -> list[str]:
        """Stop what an earlier run of this data folder left running; say what it was."""
        stopped = []
        for name, server in self.servers.items():
            pid = server.stop_leftover()
            if pid is not None:
                stopped.append(f"{name} (pid {pid})")
        left = lifetime.tagged(self.tag)
        if left:
            pids: dict[str, list[int]] = {}
            for proc in left:
                pids.setdefault(lifetime.name_of(proc), []).append(proc.pid)
            stopped += [
                f"{name} (pid {found[0]})"
                if len(found) == 1
                else f"{name} ({len(found)} processes)"
                for name, found in pids.items()
            ]
            lifetime.stop_processes(left, grace=STOP_GRACE)
        return stopped

    def check_ports(self) -> None:
        ports = self.ports.named()
        if len(set(ports.values())) != len(ports):
            raise StackError(f"the ports must all differ: {ports}")
        taken = [f"{port} ({what})" for what, port in ports.items() if port_in_use(port)]
        if taken:
            raise StackError(
                f"port(s) in use by another process: {', '.join(taken)}; stop it, or give "
                "medbook dev other ports (medbook dev --help)"
            )

    def start_watchdog(self) -> None:
        """A process of its own session that ends the stack's processes if this one dies."""
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "medbook.devstack.lifetime", self.tag, str(STOP_GRACE * 2)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != lifetime.TAG_ENV},
        )

    def start_infrastructure(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The servers' processes inherit the tag (mirakuru passes our environment on).
        os.environ[lifetime.TAG_ENV] = self.tag
        for name, server in self.servers.items():
            started = time.monotonic()
            self.progress(f"starting {name} ...")
            server.start()
            self.progress(f"{name} ready in {time.monotonic() - started:.1f}s")
        self._wait_redis_replicas()
        if not self.postgres.database_exists(DATABASE):
            self.postgres.create_database(DATABASE)
        self.progress("applying the migrations ...")
        upgrade(
            self.postgres.url_for(DATABASE).replace("postgresql://", "postgresql+psycopg://", 1)
        )

    def _wait_redis_replicas(self, timeout: float = 30.0) -> None:
        if not self.redis_replicas:
            return
        import redis

        deadline = time.monotonic() + timeout
        with redis.Redis(host="127.0.0.1", port=self.redis.port) as client:
            while True:
                info = client.info("replication")
                online = sum(
                    1
                    for key, value in info.items()
                    if key.startswith("slave")
                    and isinstance(value, dict)
                    and value.get("state") == "online"
                )
                if online >= len(self.redis_replicas):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{online} of {len(self.redis_replicas)} Redis replicas synced"
                    )
                time.sleep(0.1)

    def start_services(self) -> None:
        env = self.env()
        python = sys.executable
        self.services = [
            ServiceProcess(
                "booking",
                [python, "-m", "medbook.booking.main"],
                env,
                self.logs / "booking.log",
                f"{self.api_url}/healthz",
            ),
            ServiceProcess(
                "discount",
                [python, "-m", "medbook.discount.main"],
                env,
                self.logs / "discount.log",
                f"http://127.0.0.1:{self.ports.discount_metrics}/healthz",
            ),
            ServiceProcess(
                "sweep",
                [python, "-m", "medbook.booking.sweep", "--every", str(self.sweep_every)],
                env,
                self.logs / "sweep.log",
            ),
        ]
        for service in self.services:
            service.start()
        self.wait_healthy()

    def wait_healthy(self) -> None:
        """Wait for every service's health check, up to ``ready_timeout`` in all."""
        started = time.monotonic()
        deadline = started + self.ready_timeout
        waiting = list(self.services)
        said = started
        self.progress(f"waiting for {', '.join(s.name for s in waiting)} to answer ...")
        while waiting:
            for service in list(waiting):
                if not service.running:
                    raise StackError(
                        f"{service.name} exited ({service.exit_status()}) while starting; "
                        f"see {service.log_path}"
                    )
                if service.healthy():
                    waiting.remove(service)
            now = time.monotonic()
            if waiting and now >= deadline:
                names = ", ".join(s.name for s in waiting)
                raise StackError(
                    f"{names} not healthy after {self.ready_timeout:.0f}s (raise the deadline "
                    f"with --ready-timeout); see {', '.join(str(s.log_path) for s in waiting)}"
                )
            if waiting and now - said >= 5:
                said = now
                self.progress(
                    f"still waiting for {', '.join(s.name for s in waiting)} "
                    f"({now - started:.0f}s of {self.ready_timeout:.0f}s)"
                )
            if waiting:
                time.sleep(0.2)
        self.progress(f"services ready in {time.monotonic() - started:.1f}s")

    def start(self) -> None:
        """Start everything (see the module's docstring); on failure, stop what started."""
        self.info = discovery.this_process(self.data_dir)
        try:
            leftovers = self.stop_leftovers()
            if leftovers:
                self.progress(
                    f"stopped what an earlier run of {self.data_dir} left running: "
                    + ", ".join(leftovers)
                )
            self.check_ports()
            discovery.write(self.info)  # a second medbook dev on this folder now sees us
            self.start_watchdog()
            self.start_infrastructure()
            self.start_services()
        except BaseException:
            self.stop()
            raise
        self.supervisor.watch(
            [*self.services, *(ServerUnit(n, s) for n, s in self.servers.items())]
        )
        self.info = dataclasses.replace(
            self.info,
            state="running",
            api_url=self.api_url,
            worker_metrics_url=self.worker_metrics_url,
            database_url=self.postgres.url_for(DATABASE),
            redis_url=self.redis.url,
            amqp_url=self.rabbit.url,
            logs={s.name: str(s.log_path) for s in self.services},
        )
        discovery.write(self.info)

    # -- running -------------------------------------------------------------------

    def supervise(self) -> None:
        """Restart what exited on its own (see :mod:`medbook.devstack.supervisor`)."""
        self.supervisor.check()

    # -- stopping ------------------------------------------------------------------

    def stop(self) -> None:
        for service in reversed(self.services):
            code = service.stop()
            if code:
                log.info("%s stopped (%s)", service.name, describe_exit(code))
            else:
                log.info("%s stopped", service.name)
        for name, server in reversed(self.servers.items()):
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                log.error("could not stop %s: %r", name, exc)
        if self._watchdog is not None:
            self._watchdog.communicate(timeout=STOP_GRACE)  # closes its pipe: it checks, exits
            self._watchdog = None
        discovery.remove(self.info)
        os.environ.pop(lifetime.TAG_ENV, None)
