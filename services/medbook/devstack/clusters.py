"""Multi-node RabbitMQ, PostgreSQL and Redis on loopback, for failover drills.

Built on the single-node servers of :mod:`medbook.devstack.servers`; every node
is a real server process with its own data directory under ``data_dir``:

- :class:`RabbitMQCluster`: three RabbitMQ nodes (distinct node names, AMQP and
  distribution ports, one epmd, one Erlang cookie) joined with ``rabbitmqctl``;
  a quorum queue declared once they are joined has a replica on every node.
- :class:`PostgresReplicaSet`: a primary and a synchronous standby (streaming
  replication, ``synchronous_standby_names``), promotion with ``pg_ctl
  promote`` and the old primary rebuilt as the new standby with ``pg_rewind``
  (or ``pg_basebackup``): what Patroni or CloudNativePG do, done by hand.
- :class:`RedisSentinelGroup`: a Redis master, a replica and three sentinels
  that fail the master over when it stops answering.

Each class knows which node plays which part and has the operations a drill
needs: find the node to hurt, SIGKILL it, bring it back, wait until the whole
set is healthy again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import psycopg
import redis

from medbook.devstack.servers import (
    PostgresServer,
    RabbitMQServer,
    RedisServer,
    _port_accepts,
    _Server,
)

__all__ = [
    "EpmdServer",
    "PostgresReplicaSet",
    "RabbitMQCluster",
    "RedisSentinel",
    "RedisSentinelGroup",
]

LOG = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")

T = TypeVar("T")


def _wait_for(
    probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2
) -> T:
    """Call ``probe`` until it returns something other than None/False; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = probe()
        except Exception as exc:  # a server that is still coming up, say
            last_error, value = exc, None
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"{what} not reached within {timeout:.0f}s{detail}")
        time.sleep(interval)


def _in_parallel(calls: Iterable[Callable[[], object]]) -> None:
    """Run blocking calls (server starts) side by side; re-raise the first failure."""
    calls = list(calls)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()


def _secret(path: Path) -> str:
    """A random token kept in ``path``, so a restart of the set reuses it."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(16)
    path.write_text(value + "\n")
    return value


# --------------------------------------------------------------------------- RabbitMQ


class EpmdServer(_Server):
    """Erlang's port mapper, run by us so that it belongs to no single node.

    A RabbitMQ node starts an epmd of its own when none answers on its epmd
    port, and that daemon would be reaped with the node that happened to start
    it, taking the name service of the other nodes with it.
    """

    @property
    def url(self) -> str:
        return f"epmd://{_HOST}:{self.port}"

    @property
    def pid_file(self) -> Path:
        """epmd writes none: :meth:`start` does, so that a leftover can be found."""
        return self.data_dir / "epmd.pid"

    def start(self) -> EpmdServer:
        super().start()
        if self.pid is not None:
            self.pid_file.write_text(f"{self.pid}\n")
        return self

    def _command(self) -> list[str]:
        binary = shutil.which("epmd")
        if binary is None:
            raise FileNotFoundError("epmd not found on PATH (it comes with erlang-base)")
        return [binary, "-port", str(self.port), "-address", _HOST]

    def _env(self) -> dict[str, str]:
        return {"ERL_EPMD_ADDRESS": _HOST}

    def _ready(self) -> bool:
        return _port_accepts(self.port)


class RabbitMQCluster:
    """``size`` RabbitMQ nodes on one epmd with one cookie, joined into one cluster.

    ``start()`` starts every node side by side, then joins each to the first
    with ``rabbitmqctl stop_app / join_cluster / start_app`` (a node already in
    the cluster, after a restart of the set, is left alone). Node names,
    ports and the cookie are fixed for the life of the object, and the names
    and cookie are kept in ``data_dir``, because a node's data belongs to its
    name.
    """

    def __init__(self, data_dir: Path, size: int = 3, *, start_timeout: float = 120.0) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.data_dir = Path(data_dir).absolute()
        self.start_timeout = start_timeout
        self.epmd = EpmdServer(self.data_dir / "epmd")
        cookie = _secret(self.data_dir / "cookie")
        suffix = cookie[:6]
        self.nodes = [
            RabbitMQServer(
                self.data_dir / f"node{i}",
                nodename=f"medbook-{i}-{suffix}@localhost",
                epmd_port=self.epmd.port,
                cookie=cookie,
                owns_epmd=False,
                start_timeout=start_timeout,
            )
            for i in range(size)
        ]

    # -- addresses

    @property
    def urls(self) -> list[str]:
        """One AMQP URL per node, in node order."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what ``MEDBOOK_RABBITMQ_URL`` takes."""
        return ",".join(self.urls)

    def node_named(self, nodename: str) -> RabbitMQServer:
        for node in self.nodes:
            if node.nodename == nodename:
                return node
        raise KeyError(f"no node {nodename} in this cluster")

    # -- life cycle

    def start(self) -> RabbitMQCluster:
        started = time.monotonic()
        self.epmd.start()
        _in_parallel(node.start for node in self.nodes if not node.running)
        seed = self.nodes[0]
        members = self.running_nodes(seed)
        for node in self.nodes[1:]:
            if node.nodename in members:  # joined before this start
                continue
            self.rabbitmqctl(node, "stop_app")
            self.rabbitmqctl(node, "join_cluster", seed.nodename)
            self.rabbitmqctl(node, "start_app")
        self.wait_members_running()
        LOG.info("RabbitMQ cluster of %d up in %.1fs", len(self.nodes), time.monotonic() - started)
        return self

    def stop(self) -> None:
        """Stop every node (side by side), then epmd."""
        try:
            _in_parallel(node.stop for node in self.nodes)
        finally:
            self.epmd.stop()

    def __enter__(self) -> RabbitMQCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def kill(self, node: RabbitMQServer) -> None:
        """SIGKILL every process of ``node``, as a crash of its machine would."""
        node.kill()

    def restart(self, node: RabbitMQServer, *, timeout: float = 90.0) -> None:
        """Start ``node`` again; return once it runs in the cluster with its queue replicas."""
        node.start()
        self.wait_members_running(timeout=timeout)

    # -- introspection

    def rabbitmqctl(self, node: RabbitMQServer, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n <node> ...`` with the node's cookie and epmd; its stdout."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))} | {
            "HOME": str(node.data_dir / "home"),
            "ERL_EPMD_PORT": str(self.epmd.port),
            "RABBITMQ_NODENAME": node.nodename,
        }
        result = subprocess.run(
            [str(_RABBITMQ_BIN / "rabbitmqctl"), "-n", node.nodename, "-q", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl -n {node.nodename} {' '.join(args)} exited "
                f"{result.returncode}: {result.stderr.strip() or result.stdout.strip()}"
            )
        return result.stdout

    def running_nodes(self, via: RabbitMQServer | None = None) -> set[str]:
        """Names of the nodes that run in the cluster, as ``via`` (a live node) sees it."""
        via = via or self._a_live_node()
        status = json.loads(self.rabbitmqctl(via, "cluster_status", "--formatter", "json"))
        return set(status.get("running_nodes", []))

    def queues(self, via: RabbitMQServer | None = None) -> dict[str, dict[str, Any]]:
        """Every queue with its type, leader, members and online members."""
        via = via or self._a_live_node()
        out = self.rabbitmqctl(
            via, "list_queues", "name", "type", "leader", "members", "online", "messages",
            "--formatter", "json",
        )  # fmt: skip
        return {row["name"]: row for row in json.loads(out or "[]")}

    def queue_leader(self, queue: str) -> RabbitMQServer:
        """The node leading quorum queue ``queue`` right now."""
        info = self.queues().get(queue)
        if info is None:
            raise KeyError(f"no queue {queue!r} in the cluster")
        leader = info.get("leader")
        if not isinstance(leader, str) or not leader:
            raise RuntimeError(f"queue {queue!r} has no leader now: {info}")
        return self.node_named(leader)

    def wait_members_running(self, timeout: float | None = None) -> None:
        """Until every node of the set runs in the cluster."""
        wanted = {node.nodename for node in self.nodes}
        _wait_for(
            lambda: wanted <= self.running_nodes(),
            timeout=timeout if timeout is not None else self.start_timeout,
            what=f"all of {sorted(wanted)} running in the cluster",
            interval=0.5,
        )

    def wait_queues_replicated(self, queues: Sequence[str], timeout: float = 60.0) -> None:
        """Until each quorum queue has a leader and all its replicas online."""

        def replicated() -> bool:
            found = self.queues()
            for name in queues:
                info = found.get(name)
                if info is None or not info.get("leader"):
                    return False
                members, online = info.get("members") or [], info.get("online") or []
                if len(members) != len(self.nodes) or set(online) != set(members):
                    return False
            return True

        _wait_for(replicated, timeout=timeout, what=f"{list(queues)} replicated", interval=0.5)

    def _a_live_node(self) -> RabbitMQServer:
        for node in self.nodes:
            if node.running:
                return node
        raise RuntimeError("no node of the cluster is running")


# --------------------------------------------------------------------------- PostgreSQL

_REPLICATION_SETTINGS = {
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_keep_size": "512MB",  # the old primary can always rewind from the new one's WAL
    "hot_standby": "on",
    "wal_log_hints": "on",  # pg_rewind needs it (or data checksums)
    "synchronous_commit": "on",  # a commit waits until the synchronous standby flushed it
    # A dead peer is noticed in seconds, not the default minute.
    "wal_sender_timeout": "5s",
    "wal_receiver_timeout": "5s",
    "wal_retrieve_retry_interval": "500ms",
}


class PostgresReplicaSet:
    """A PostgreSQL primary and one synchronous standby, on two ports.

    Replication settings are given on the command line of both nodes, and
    ``synchronous_standby_names`` with ``ALTER SYSTEM`` on the primary, so that
    a promotion can change it (a command-line setting would win over it):
    while a standby is attached it is ``'*'`` (a commit is acknowledged only
    once the standby flushed it); a promoted standby that is alone runs with it
    empty until the old primary is back as its standby, which is what Patroni's
    (non-strict) synchronous mode and CloudNativePG do.
    """

    def __init__(self, data_dir: Path, *, names: tuple[str, str] = ("pg-a", "pg-b")) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.nodes = [
            PostgresServer(
                self.data_dir / name,
                # TCP only: a socket file in the data directory would be copied by pg_rewind.
                settings={
                    **_REPLICATION_SETTINGS,
                    "cluster_name": name,
                    "unix_socket_directories": "",
                },
            )
            for name in names
        ]
        self.primary, self.standby = self.nodes

    # -- addresses

    def dsn(self, database: str = "postgres") -> str:
        """Multi-host DSN with ``target_session_attrs=read-write``: finds the primary."""
        hosts = ",".join(f"{_HOST}:{node.port}" for node in self.nodes)
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"

    # -- life cycle

    def start(self) -> PostgresReplicaSet:
        """Start the primary, then make (or reuse) the standby and wait until it is synchronous."""
        started = time.monotonic()
        self.primary.start()
        self._set_synchronous(self.primary, "*")
        if not (self.standby.data_dir / "PG_VERSION").exists():
            self._base_backup(self.standby, source=self.primary)
        self.standby.start()
        self.wait_synchronous()
        LOG.info("PostgreSQL primary + standby up in %.1fs", time.monotonic() - started)
        return self

    def stop(self) -> None:
        # The standby first: a primary waiting for it would otherwise stop slowly.
        for node in (self.standby, self.primary):
            node.stop()

    def __enter__(self) -> PostgresReplicaSet:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- failover

    def kill_primary(self) -> PostgresServer:
        """SIGKILL the primary (the standby stays a standby until :meth:`promote`)."""
        victim = self.primary
        victim.kill()
        return victim

    def promote(self, *, timeout: float = 30.0) -> PostgresServer:
        """``pg_ctl promote`` the standby; it becomes the primary (alone, so not synchronous)."""
        node = self.standby
        self._run(
            node, "pg_ctl", "promote", "-D", str(node.data_dir), "-w", "-t", str(int(timeout))
        )
        _wait_for(lambda: not self._in_recovery(node), timeout=timeout, what=f"{node} promoted")
        self._set_synchronous(node, "")
        self.primary, self.standby = node, self.primary
        return node

    def rebuild_standby(self, *, method: str = "rewind", timeout: float = 60.0) -> PostgresServer:
        """Make the old primary (stopped or killed) the standby of the new one, and synchronous.

        ``rewind`` runs ``pg_rewind`` (which first finishes the crashed node's recovery),
        ``basebackup`` copies the primary anew with ``pg_basebackup``.
        """
        node = self.standby
        if node.running:
            node.stop()
        if method == "rewind":
            # A promoted server writes its new timeline into its control file at its next
            # checkpoint; until then pg_rewind would see one timeline and rewind nothing.
            with psycopg.connect(self.primary.url, autocommit=True, connect_timeout=5) as conn:
                conn.execute("CHECKPOINT")
            self._run(
                node, "pg_rewind",
                f"--target-pgdata={node.data_dir}",
                f"--source-server={self._conninfo(self.primary)}",
                "--write-recovery-conf", "--progress",
            )  # fmt: skip
        elif method == "basebackup":
            log = node.log_path.read_bytes() if node.log_path.exists() else b""
            shutil.rmtree(node.data_dir)
            self._base_backup(node, source=self.primary)
            node.log_path.write_bytes(log)
        else:
            raise ValueError(f"method must be 'rewind' or 'basebackup', not {method!r}")
        node.start()
        self._set_synchronous(self.primary, "*")
        self.wait_synchronous(timeout=timeout)
        return node

    def wait_synchronous(self, timeout: float = 60.0) -> None:
        """Until the primary has a streaming standby in state ``sync``."""

        def synchronous() -> bool:
            with psycopg.connect(self.primary.url, autocommit=True, connect_timeout=3) as conn:
                rows = conn.execute("SELECT state, sync_state FROM pg_stat_replication").fetchall()
            return ("streaming", "sync") in [tuple(r) for r in rows]

        _wait_for(synchronous, timeout=timeout, what="a synchronous standby streaming")

    # -- internals

    @staticmethod
    def _conninfo(node: PostgresServer) -> str:
        return f"host={_HOST} port={node.port} user=postgres dbname=postgres"

    def _base_backup(self, node: PostgresServer, *, source: PostgresServer) -> None:
        node.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._run(
            node, "pg_basebackup",
            "-D", str(node.data_dir), "-d", self._conninfo(source),
            "--write-recovery-conf", "--wal-method=stream", "--checkpoint=fast",
        )  # fmt: skip
        # The copy brought the source's own log file along: this node starts a log of its own.
        (node.data_dir / "server.log").unlink(missing_ok=True)

    @staticmethod
    def _run(node: PostgresServer, binary: str, *args: str) -> None:
        result = subprocess.run(
            node._wrap(binary, *args),
            cwd=node.data_dir.parent,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{binary} for {node.data_dir.name} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        LOG.info("%s for %s: %s", binary, node.data_dir.name, result.stderr.strip()[-500:])

    @staticmethod
    def _in_recovery(node: PostgresServer) -> bool:
        with psycopg.connect(node.url, autocommit=True, connect_timeout=3) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])

    @staticmethod
    def _set_synchronous(node: PostgresServer, names: str) -> None:
        with psycopg.connect(node.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
            # Also in the configuration file, not only on the command line: pg_rewind's
            # crash recovery of a killed node runs a single-user server that reads only
            # the files (it must keep the WAL pg_rewind reads, and log hint bits).
            for key, value in _REPLICATION_SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {key} = '{value}'")
            conn.execute("SELECT pg_reload_conf()")


# --------------------------------------------------------------------------- Redis


class RedisSentinel(RedisServer):
    """A Redis Sentinel watching one master; its config file lives (and is rewritten) in data_dir.

    Sentinel insists on a config file it can write: it records there the
    other sentinels and replicas it discovers and each failover's new master.
    """

    _start_timeout: ClassVar[float] = 15.0

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        master_name: str,
        master_port: int,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        super().__init__(data_dir, port)
        self.master_name = master_name
        self.master_port = master_port
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "sentinel.conf"

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.config_path.exists():  # what it learned (the current master) is kept
            return
        name = self.master_name
        self.config_path.write_text(
            f"port {self.port}\n"
            f'pidfile "{self.pid_file}"\n'
            f"bind {_HOST}\n"
            "protected-mode no\n"
            f'dir "{self.data_dir}"\n'
            f"sentinel monitor {name} {_HOST} {self.master_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 1\n"
        )

    def _command(self) -> list[str]:
        return [self.binary, str(self.config_path), "--sentinel"]


class RedisSentinelGroup:
    """A Redis master, one replica and three sentinels (quorum 2), as Sentinel deployments run.

    Which node is the master changes with each failover: :meth:`master` asks
    the sentinels. A node that comes back after a failover is started as a
    replica of the current master (the sentinels would reconfigure it anyway,
    a moment later, but meanwhile it would take writes as a master).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        master_name: str = "mymaster",
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.master_name = master_name
        first = RedisServer(self.data_dir / "redis-a")
        second = RedisServer(
            self.data_dir / "redis-b", extra_args=["--replicaof", _HOST, str(first.port)]
        )
        self.nodes = [first, second]
        self.sentinels = [
            RedisSentinel(
                self.data_dir / f"sentinel-{i}",
                master_name=master_name,
                master_port=first.port,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
            )
            for i in range(sentinels)
        ]

    # -- addresses

    @property
    def url(self) -> str:
        """``redis+sentinel://h:p,h:p,h:p/<master>/0``: what ``MEDBOOK_REDIS_URL`` takes."""
        hosts = ",".join(f"{_HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def master(self) -> RedisServer:
        """The node the sentinels name as master now."""
        port = self._master_port()
        for node in self.nodes:
            if node.port == port:
                return node
        raise RuntimeError(f"the sentinels name an unknown master on port {port}")

    def replicas(self) -> list[RedisServer]:
        master = self.master()
        return [node for node in self.nodes if node is not master]

    # -- life cycle

    def start(self) -> RedisSentinelGroup:
        started = time.monotonic()
        for node in self.nodes:
            if node.running:
                continue
            if self.sentinels[0].config_path.exists():  # a restart of the set: follow the master
                self._follow_current_master(node)
            node.start()
        _in_parallel(s.start for s in self.sentinels if not s.running)
        self.wait_healthy()
        LOG.info("Redis master + replica + sentinels up in %.1fs", time.monotonic() - started)
        return self

    def stop(self) -> None:
        for server in [*self.sentinels, *self.nodes]:
            server.stop()

    def __enter__(self) -> RedisSentinelGroup:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- failover

    def kill_master(self) -> RedisServer:
        victim = self.master()
        victim.kill()
        return victim

    def wait_failover(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Until the sentinels have promoted another node and it answers as master."""

        def promoted() -> RedisServer | None:
            if self._master_port() == old.port:
                return None
            new = self.master()
            with redis.Redis(host=_HOST, port=new.port, socket_timeout=2) as client:
                role = client.execute_command("ROLE")[0]
            return new if role in (b"master", "master") else None

        return _wait_for(promoted, timeout=timeout, what="a sentinel failover")

    def restart(self, node: RedisServer, timeout: float = 30.0) -> None:
        """Start ``node`` again, as a replica of the current master, and wait until it synced."""
        self._follow_current_master(node)
        node.start()
        self.wait_healthy(timeout=timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until the master has every other node as an online replica and every sentinel
        knows the master, its replicas and the other sentinels."""
        expected_replicas = len(self.nodes) - 1
        others = len(self.sentinels) - 1

        def healthy() -> bool:
            master = self.master()
            with redis.Redis(host=_HOST, port=master.port, socket_timeout=2) as client:
                info = client.info("replication")
            online = [
                v for k, v in info.items()
                if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
            ]  # fmt: skip
            if info.get("role") != "master" or len(online) < expected_replicas:
                return False
            for sentinel in self.sentinels:
                with redis.Redis(host=_HOST, port=sentinel.port, socket_timeout=2) as client:
                    if len(client.sentinel_sentinels(self.master_name)) < others:
                        return False
                    replicas = client.sentinel_slaves(self.master_name)
                    up = [r for r in replicas if not r.get("is_sdown") and not r.get("is_odown")]
                    if len(up) < expected_replicas:
                        return False
            return True

        _wait_for(healthy, timeout=timeout, what="master, replica and sentinels in step")

    # -- internals

    def _master_port(self) -> int:
        errors = []
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            try:
                with redis.Redis(host=_HOST, port=sentinel.port, socket_timeout=2) as client:
                    address = client.sentinel_get_master_addr_by_name(self.master_name)
            except redis.RedisError as exc:
                errors.append(exc)
                continue
            if address:
                return int(address[1])
        raise RuntimeError(f"no sentinel names a master for {self.master_name}: {errors}")

    def _follow_current_master(self, node: RedisServer) -> None:
        with contextlib.suppress(RuntimeError):
            master = self.master()
            node.extra_args = [] if master is node else ["--replicaof", _HOST, str(master.port)]
