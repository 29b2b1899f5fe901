"""Highly available backends for the failover drills, started once for the session.

A 3-node RabbitMQ cluster, a PostgreSQL primary with a synchronous standby and
a Redis master with a replica and three sentinels, all real servers on
loopback ports (``medbook.devstack.clusters``). Each drill gets a fresh
database (copied, on the primary, from a migrated template), an empty Redis
and a broker without medbook's queues; a drill that left a node down (a
failed one) gets it back before the next drill starts.

Every drill's report is printed at the end of the run (and kept as JSON in
the drill's temporary folder).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from medbook import postgres_dsn
from medbook.booking.migrations import upgrade
from medbook.devstack.clusters import PostgresReplicaSet, RabbitMQCluster, RedisSentinelGroup
from tests.failover.drill import REPORTS
from tests.helpers import Infra, ProcessServices, reset_broker

TEMPLATE_DB = "medbook_template"


@dataclass
class HaBackends:
    rabbit: RabbitMQCluster
    postgres: PostgresReplicaSet
    redis: RedisSentinelGroup

    def heal(self) -> None:
        """Bring back whatever an earlier (failed) drill left down."""
        for node in self.rabbit.nodes:
            if not node.running:
                node.start()
        self.rabbit.wait_members_running()
        pg = self.postgres
        if not pg.primary.running:
            pg.promote()
        if not pg.standby.running:
            pg.rebuild_standby()
        pg.wait_synchronous()
        for server in [*self.redis.sentinels]:
            if not server.running:
                server.start()
        for node in self.redis.nodes:
            if not node.running:
                self.redis.restart(node)
        self.redis.wait_healthy()


@pytest.fixture(scope="session")
def ha_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaBackends]:
    from medbook.devstack.clusters import _in_parallel

    root = tmp_path_factory.mktemp("ha")
    backends = HaBackends(
        RabbitMQCluster(root / "rabbitmq"),
        PostgresReplicaSet(root / "postgres"),
        RedisSentinelGroup(root / "redis"),
    )
    try:
        _in_parallel([backends.rabbit.start, backends.postgres.start, backends.redis.start])
        with psycopg.connect(backends.postgres.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
        # alembic through SQLAlchemy, with the multi-host URL the services are given
        upgrade(postgres_dsn.sqlalchemy_url(backends.postgres.dsn(TEMPLATE_DB)))
        yield backends
    finally:
        with contextlib.suppress(Exception):
            backends.redis.stop()
        with contextlib.suppress(Exception):
            backends.postgres.stop()
        backends.rabbit.stop()


@pytest.fixture
async def ha_infra(ha_backends: HaBackends) -> Infra:
    """Fresh state on healthy HA backends; the URLs are the HA forms the services take."""
    await asyncio.to_thread(ha_backends.heal)
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ha_backends.postgres.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE_DB)
            )
        )
    master = ha_backends.redis.master()
    with redis.Redis(host="127.0.0.1", port=master.port) as client:
        client.flushall()
    await reset_broker(ha_backends.rabbit.urls[0])
    return Infra(ha_backends.postgres.dsn(name), ha_backends.redis.url, ha_backends.rabbit.url)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORTS:
        return
    terminalreporter.section("failover drills")
    for report in REPORTS:
        terminalreporter.write_line(report.render())
        terminalreporter.write_line("")


# The drills' services: admission control off (a stalled saga piles up a backlog on
# purpose), connections given up quickly, the daily limit the drill's load exhausts.
DRILL_LIMIT = 400


@pytest.fixture
async def ha_services(ha_infra: Infra, tmp_path: Path) -> AsyncIterator[ProcessServices]:
    env = {
        "MEDBOOK_DAILY_LIMIT": str(DRILL_LIMIT),
        "MEDBOOK_MAX_PENDING": "0",
        "MEDBOOK_DB_CONNECT_TIMEOUT": "2",
    }
    services = ProcessServices(ha_infra, tmp_path, extra_env=env)
    await asyncio.to_thread(services.start)
    try:
        yield services
    finally:
        await asyncio.to_thread(services.stop)
