"""Private PostgreSQL, Redis and RabbitMQ servers on loopback.

Each class owns one server process whose data lives in ``data_dir``: the first
``start()`` initialises the directory, later ones (from the same object or a new
one) reuse it, so a stop/start or kill/start cycle behaves like a restart of a
real deployment. Servers listen on 127.0.0.1 only, on a free port unless one is
given, and their output goes to ``data_dir/server.log``.

The processes are run through mirakuru executors, which tag every process they
spawn with an environment variable. We add a tag of our own, stable for the
lifetime of a server object, so that ``stop()`` and ``kill()`` can find and
reap everything a server left behind, including daemons that detached from the
process tree (Erlang's epmd).

A server whose ``die_with_parent`` is set gets its stop signal from the kernel
when the process that started it dies (see :mod:`medbook.devstack.lifetime`),
and :meth:`_Server.stop_leftover` stops a server that an earlier process left
running on the same ``data_dir``, found through the server's own pid file.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar, Self

import port_for
import psutil  # type: ignore[import-untyped]  # no stubs in the lock (types-psutil)
import psycopg
from mirakuru import Executor
from mirakuru.exceptions import ExecutorError
from psycopg import sql

from medbook.devstack.lifetime import die_with_parent

__all__ = ["PostgresServer", "RabbitMQServer", "RedisServer"]

LOG = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_TAG_ENV = "MEDBOOK_DEVSTACK_SERVER"
"""Environment variable marking every process a server object started."""


# --------------------------------------------------------------------------- helpers


def _port_accepts(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie: an orphan's zombie is not ours to reap."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait for ``procs`` to exit; return those still alive after ``timeout``."""
    pending = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        pending = [p for p in pending if _alive(p)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.05)


def _kill_procs(procs: Iterable[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def _find_processes(match: Callable[[Mapping[str, str]], bool]) -> list[psutil.Process]:
    """Processes whose environment satisfies ``match`` (environment is inherited by forks)."""
    found = []
    for proc in psutil.process_iter(["environ"]):
        env = proc.info.get("environ")
        if env and proc.pid != os.getpid() and match(env):
            found.append(proc)
    return found


class _ServerExecutor(Executor):
    """A mirakuru executor with a readiness callable and a scrubbed environment.

    ``pre_start_check`` reports the port as taken when something already
    accepts connections on it: mirakuru then raises ``AlreadyRunning`` instead
    of us mistaking a stranger on that port for our freshly started server.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        port: int,
        ready: Callable[[], bool],
        env: Mapping[str, str],
        scrub_env: tuple[str, ...] = (),
        death_signal: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(list(command), envvars=dict(env), **kwargs)
        self._port = port
        self._ready = ready
        self._own_env = dict(env)
        self._scrub_env = scrub_env
        self._death_signal = death_signal

    @property
    def _popen_kwargs(self) -> dict[str, Any]:
        kwargs = super()._popen_kwargs
        if self._death_signal is not None:  # its own session (as mirakuru's), and a signal
            kwargs["preexec_fn"] = die_with_parent(self._death_signal, new_session=True)
        return kwargs

    @property
    def envvars(self) -> dict[str, str]:
        env = super().envvars
        if self._scrub_env:
            for key in [k for k in env if k.startswith(self._scrub_env)]:
                if key not in self._own_env:
                    del env[key]
        return env

    def pre_start_check(self) -> bool:
        return _port_accepts(self._port)

    def after_start_check(self) -> bool:
        return self._ready()


class _Server(abc.ABC):
    """Common life cycle; subclasses provide the command and the readiness probe."""

    _start_timeout: ClassVar[float] = 30.0
    _stop_signal: ClassVar[int] = signal.SIGTERM
    _scrub_env: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        start_timeout: float | None = None,
        stop_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port if port is not None else port_for.select_random()
        self.start_timeout = start_timeout if start_timeout is not None else self._start_timeout
        self.stop_timeout = stop_timeout
        self._tag = uuid.uuid4().hex
        self._executor: _ServerExecutor | None = None
        self._log: IO[bytes] | None = None
        self.die_with_parent = False
        """Stop (with the stop signal) when the thread that called start() ends."""

    # -- to be provided by subclasses

    def _prepare(self) -> None:
        """Create or check the on-disk state before the server process starts."""
        return

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The server's command line."""

    def _env(self) -> dict[str, str]:
        return {}

    @abc.abstractmethod
    def _ready(self) -> bool:
        """Does the server accept clients yet?"""

    def _after_exit(self) -> None:
        """Hook run once the main process is gone, before leftovers are reaped."""
        return

    def _is_ours(self, env: Mapping[str, str]) -> bool:
        return env.get(_TAG_ENV) == self._tag

    @property
    @abc.abstractmethod
    def pid_file(self) -> Path:
        """Where the running server writes its main process's pid (first line)."""

    # -- public API

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """How a client connects."""

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def running(self) -> bool:
        return self._executor is not None and self._executor.running()

    @property
    def pid(self) -> int | None:
        """PID of the main server process, None when not running."""
        executor = self._executor
        if executor is None or executor.process is None or not executor.running():
            return None
        return executor.process.pid

    def start(self) -> Self:
        """Start the server and block until it accepts clients; no-op if already running."""
        if self.running:
            return self
        if self._executor is not None:
            # The process died on its own: reap what is left of it first.
            self._reap(grace=0)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._prepare()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        env = {**self._env(), _TAG_ENV: self._tag}
        self._executor = _ServerExecutor(
            self._command(),
            port=self.port,
            ready=self._ready,
            env=env,
            scrub_env=self._scrub_env,
            death_signal=self._stop_signal if self.die_with_parent else None,
            cwd=str(self.data_dir),
            timeout=self.start_timeout,
            sleep=0.1,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        started = time.monotonic()
        try:
            self._executor.start()
        except ExecutorError as exc:
            self._reap(grace=0)
            exc.add_note(f"{type(self).__name__} log {self.log_path}:\n{_log_tail(self.log_path)}")
            raise
        except BaseException:
            self._reap(grace=0)
            raise
        LOG.info(
            "%s ready at %s in %.2fs", type(self).__name__, self.url, time.monotonic() - started
        )
        return self

    def stop(self) -> None:
        """Stop gracefully and block until no process of this server is left.

        Only the main process is signalled (mirakuru's own ``stop`` signals the
        whole process group, which would also hit helpers like Erlang's
        erl_child_setup before the VM has shut down). After ``stop_timeout``
        the server is killed.
        """
        executor = self._executor
        if executor is None:
            return
        proc = executor.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(self._stop_signal)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                LOG.warning("%s did not stop within %ss, killing it", self, self.stop_timeout)
                executor.kill()
        self._after_exit()
        self._reap(grace=5.0)

    def stop_leftover(self) -> int | None:
        """Stop a server that an earlier process left running on this ``data_dir``.

        Its pid file names it; the process must still be the one that wrote the
        file (started before the file was last written), so a recycled pid is
        left alone. Returns the pid it stopped, None when nothing was running.
        """
        if self.running:
            return None
        try:
            pid = int(self.pid_file.read_text().split()[0])
            written = self.pid_file.stat().st_mtime
            proc = psutil.Process(pid)
            if not _alive(proc) or proc.create_time() > written + 1:
                return None
        except (OSError, ValueError, IndexError, psutil.Error):
            return None
        LOG.info("%s: stopping pid %d, left running by an earlier process", self, pid)
        with contextlib.suppress(psutil.Error):
            proc.send_signal(self._stop_signal)
        if _wait_gone([proc], self.stop_timeout):
            _kill_procs([proc])
            _wait_gone([proc], 10.0)
        self._after_leftover()
        return pid

    def _after_leftover(self) -> None:
        """Hook run once a leftover main process is gone (helpers it left behind)."""
        return

    def kill(self) -> None:
        """SIGKILL every process of the server, as a crash would (for crash drills)."""
        if self._executor is not None:
            self._executor.kill()
        self._reap(grace=0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} data_dir={str(self.data_dir)!r}>"

    # -- internals

    def _reap(self, grace: float) -> None:
        """Make sure no process of this server remains, then forget the executor.

        Processes that are exiting on their own get ``grace`` seconds, the rest
        are SIGKILLed; returns only once all of them are gone.
        """
        leftovers = _wait_gone(_find_processes(self._is_ours), grace)
        if leftovers:
            LOG.debug("%s: killing leftovers %s", self, [p.pid for p in leftovers])
        if self._executor is not None:
            self._executor.kill()  # SIGKILL to the group and mirakuru's tagged processes
            self._executor = None
        _kill_procs(leftovers)
        remaining = _wait_gone(_find_processes(self._is_ours), 10.0)
        if remaining:
            raise RuntimeError(f"{self}: processes survived SIGKILL: {[p.pid for p in remaining]}")
        if self._log is not None:
            self._log.close()
            self._log = None


# --------------------------------------------------------------------------- PostgreSQL


def _postgres_bindir() -> Path:
    """Directory holding ``postgres`` and ``initdb``.

    ``pg_config`` may belong to a libpq-dev newer than the installed server, so
    its answer is only taken when the server binaries are really there.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))

    def version(path: Path) -> tuple[int, ...]:
        parts = path.parent.name.split(".")
        return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else (-1,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for bindir in candidates:
        if (bindir / "postgres").is_file() and (bindir / "initdb").is_file():
            return bindir
    raise FileNotFoundError("no PostgreSQL server binaries (postgres, initdb) found")


class PostgresServer(_Server):
    """A private PostgreSQL cluster in ``data_dir`` (which is PGDATA itself).

    PostgreSQL refuses to run as root, so as root ``initdb`` and ``postgres``
    run in a user namespace where our uid is mapped to 1000: the server sees
    itself as an ordinary user owning its data directory, while the files stay
    owned by root outside. Authentication is ``trust`` for user ``postgres``.
    """

    # SIGINT is the "fast" shutdown: clients (e.g. idle pool connections) are
    # disconnected, then a checkpoint is written. SIGTERM would wait for them.
    _stop_signal: ClassVar[int] = signal.SIGINT

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        start_timeout: float | None = None,
        stop_timeout: float = 60.0,
        bindir: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(data_dir, port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.bindir = bindir if bindir is not None else _postgres_bindir()
        self.settings = dict(settings or {})  # more ``-c`` server settings (replication, ...)

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@{_HOST}:{self.port}/{database}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "postmaster.pid"

    def create_database(self, name: str, template: str | None = None) -> None:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        self._execute(query)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, disconnecting its clients."""
        self._execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def database_exists(self, name: str) -> bool:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return row is not None

    def _execute(self, query: sql.Composed) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(query)

    def _wrap(self, binary: str, *args: str) -> list[str]:
        command = [str(self.bindir / binary), *args]
        if os.geteuid() == 0:
            return ["unshare", "--user", "--map-user=1000", "--map-group=1000", *command]
        return command

    def _prepare(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        base = ["-D", str(self.data_dir), "--auth=trust", "-U", "postgres", "--encoding=UTF8"]
        outputs = []
        for locale in ("--locale=C.UTF-8", "--no-locale"):
            result = subprocess.run(
                self._wrap("initdb", *base, locale),
                cwd=self.data_dir.parent,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
            outputs.append(result.stdout + result.stderr)
            if result.returncode == 0:
                break
        else:
            raise RuntimeError(
                f"initdb failed for {self.data_dir}:\n"
                + b"\n".join(outputs).decode(errors="replace")
            )
        # Only now: initdb insists on an empty directory.
        with self.log_path.open("ab") as log:
            log.write(b"\n".join(outputs))

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": _HOST,
            "unix_socket_directories": str(self.data_dir),
            "max_connections": "300",
            "shared_buffers": "256MB",
            **self.settings,
        }
        args = ["-D", str(self.data_dir), "-p", str(self.port)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        return self._wrap("postgres", *args)

    def _ready(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True


# --------------------------------------------------------------------------- Redis


class RedisServer(_Server):
    """A private Redis with an append-only file in ``data_dir`` and RDB snapshots off.

    ``appendfsync='everysec'`` keeps acknowledged writes across a kill of the
    process (they are in the OS page cache); ``'always'`` also survives a
    machine crash, at a large cost in write latency.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        appendfsync: str = "everysec",
        start_timeout: float | None = None,
        stop_timeout: float = 60.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        super().__init__(data_dir, port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)  # more server options (``--replicaof``, ...)
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server not found on PATH")
        self.binary = binary

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    def _command(self) -> list[str]:
        # No config file: /etc/redis/redis.conf is not read.
        return [
            self.binary,
            "--pidfile", str(self.pid_file),
            "--port", str(self.port),
            "--bind", _HOST,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--protected-mode", "no",
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip

    def _ready(self) -> bool:
        """PING answers ``-LOADING`` while the AOF is replayed, ``+PONG`` once ready."""
        try:
            with socket.create_connection((_HOST, self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


# --------------------------------------------------------------------------- RabbitMQ

_RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


class RabbitMQServer(_Server):
    """A private RabbitMQ node, isolated from any system-wide one.

    Everything the node writes (mnesia, logs, Erlang cookie in ``HOME``) stays
    under ``data_dir``; /etc/rabbitmq is ignored by pointing every config file
    setting at files that do not exist; epmd runs on its own port, loopback only.

    The node name is kept in ``data_dir/nodename`` because the mnesia database
    (and so every durable queue and message) belongs to a node name.
    """

    _start_timeout: ClassVar[float] = 60.0
    # Inherited RABBITMQ_*/ERL_* variables (a developer's RABBITMQ_NODENAME,
    # ERL_FLAGS, ...) would leak into the node; all that it needs is set by us.
    _scrub_env: ClassVar[tuple[str, ...]] = ("RABBITMQ_", "ERL_")

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        dist_port: int | None = None,
        epmd_port: int | None = None,
        start_timeout: float | None = None,
        stop_timeout: float = 60.0,
        nodename: str | None = None,
        cookie: str | None = None,
        owns_epmd: bool = True,
    ) -> None:
        """``nodename``, ``cookie`` and ``owns_epmd=False`` are for cluster nodes (clusters.py):
        a node name of our choosing, the cluster's shared Erlang cookie, and an epmd that
        someone else runs (so it is not killed when this node stops)."""
        super().__init__(data_dir, port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        taken = {self.port}
        if dist_port is None:
            dist_port = port_for.select_random(exclude_ports=taken)
        taken.add(dist_port)
        if epmd_port is None:
            epmd_port = port_for.select_random(exclude_ports=taken)
        self.dist_port = dist_port
        self.epmd_port = epmd_port
        self.cookie = cookie
        self.owns_epmd = owns_epmd
        self._nodename: str | None = nodename

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{_HOST}:{self.port}/"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "rabbitmq.pid"

    @property
    def nodename(self) -> str:
        """``name@localhost``, created on first use (unless given) and then read from data_dir."""
        path = self.data_dir / "nodename"
        if self._nodename is None and path.exists():
            self._nodename = path.read_text().strip()
        if self._nodename is None:
            self._nodename = f"medbook-{secrets.token_hex(6)}@localhost"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(self._nodename + "\n")
        return self._nodename

    def _prepare(self) -> None:
        for sub in ("home", "mnesia", "log"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        if self.cookie is not None:  # Erlang refuses a cookie file others can read
            cookie = self.data_dir / "home" / ".erlang.cookie"
            cookie.unlink(missing_ok=True)
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)
        plugins = self.data_dir / "enabled_plugins"
        if not plugins.exists():
            plugins.write_text("[].\n")

    def _env(self) -> dict[str, str]:
        data = self.data_dir
        return {
            "HOME": str(data / "home"),  # the Erlang cookie goes to $HOME/.erlang.cookie
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": _HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": _HOST,
            "RABBITMQ_MNESIA_BASE": str(data / "mnesia"),
            "RABBITMQ_LOG_BASE": str(data / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(data / "enabled_plugins"),
            # These three do not exist: no config from /etc/rabbitmq.
            "RABBITMQ_CONFIG_FILE": str(data / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(data / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(data / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}"
            # No busy-waiting schedulers: on a shared box spinning steals CPU from the rest.
            " +sbwt none +sbwtdcpu none +sbwtdio none",
            "ERL_CRASH_DUMP": str(data / "log" / "erl_crash.dump"),
        }

    def _command(self) -> list[str]:
        return [str(_RABBITMQ_SERVER)]

    def _ready(self) -> bool:
        """Really speak AMQP: the listener answers the header with Connection.Start."""
        try:
            with socket.create_connection((_HOST, self.port), timeout=2) as sock:
                sock.settimeout(5)
                sock.sendall(_AMQP_HEADER)
                return sock.recv(1) == b"\x01"  # frame type 1: method frame
        except OSError:
            return False

    def _after_exit(self) -> None:
        # epmd is started by the VM as a daemon and outlives the node.
        epmd = shutil.which("epmd")
        if epmd is None or not self.owns_epmd:
            return
        try:
            subprocess.run(
                [epmd, "-port", str(self.epmd_port), "-kill"],
                env={**os.environ, "ERL_EPMD_ADDRESS": _HOST},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=10,
                check=False,
            )
        except subprocess.TimeoutExpired:
            LOG.warning("%s: epmd -kill timed out", self)

    def _after_leftover(self) -> None:
        # The node's epmd (on a port of that earlier run) and helpers carry its node name.
        helpers = _find_processes(self._is_ours)
        _kill_procs(helpers)
        _wait_gone(helpers, 10.0)

    def _is_ours(self, env: Mapping[str, str]) -> bool:
        # Matching the node name also catches processes of this node started by
        # an earlier server object (e.g. from a test process that crashed).
        return super()._is_ours(env) or env.get("RABBITMQ_NODENAME") == self.nodename
