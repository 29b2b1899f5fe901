"""Session-wide real servers (PostgreSQL, Redis, RabbitMQ), started once, and per-test state.

Each test gets a fresh database (copied from a migrated template), an empty
Redis and a broker without medbook's queues. Servers listen on free loopback
ports, never the standard ones.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from medbook.booking.migrations import upgrade
from medbook.devstack.servers import PostgresServer, RabbitMQServer, RedisServer
from medbook.telemetry import setup_tracing
from tests.helpers import Infra, Stack, reset_broker, running_stack

TEMPLATE_DB = "medbook_template"
SPANS = InMemorySpanExporter()


@pytest.fixture(scope="session", autouse=True)
def _clean_environment() -> Iterator[None]:
    """Settings come from the environment: keep the developer's own out of the tests."""
    saved = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("MEDBOOK_", "DB_", "REDIS_", "RABBITMQ_", "BOOKING_", "OTEL_"))
        or k in ("R2_QUOTA_LIMIT", "BANNED_USER", "DATABASE_URL")
    }
    for key in saved:
        del os.environ[key]
    # In this process spans are recorded (and the libraries instrumented) into memory;
    # the services the tests run as subprocesses run with tracing off.
    os.environ["OTEL_TRACES_SAMPLER"] = "always_on"
    provider = setup_tracing("medbook-tests", ("asyncpg", "redis"))
    provider.add_span_processor(SimpleSpanProcessor(SPANS))
    yield
    del os.environ["OTEL_TRACES_SAMPLER"]
    os.environ.update(saved)


# A test that waits longer than this is stuck: its longest legitimate run here is ~40 s.
HANG_LIMIT = float(os.environ.get("MEDBOOK_TEST_HANG_LIMIT", "300"))


@pytest.fixture(autouse=True)
async def _hang_watchdog(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """An async test still waiting after HANG_LIMIT seconds is cancelled, once the stack of
    every task of the loop is printed: a hang fails its own test, showing where it waited,
    instead of holding the whole run until CI's limit."""
    if not inspect.iscoroutinefunction(request.function):
        yield
        return
    loop = asyncio.get_running_loop()
    name = request.function.__name__

    def fire() -> None:
        print(f"\n{request.node.nodeid} still waiting after {HANG_LIMIT:g}s:", file=sys.stderr)
        for task in asyncio.all_tasks(loop):
            task.print_stack(file=sys.stderr)
        for task in asyncio.all_tasks(loop):
            if getattr(task.get_coro(), "__name__", None) == name:
                task.cancel(f"stuck for {HANG_LIMIT:g}s")

    handle = loop.call_later(HANG_LIMIT, fire)
    try:
        yield
    finally:
        handle.cancel()


@pytest.fixture(autouse=True)
def _forget_spans() -> None:
    SPANS.clear()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """The spans recorded during this test."""
    return SPANS


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def postgres_server(servers_dir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(servers_dir / "postgres")
    server.start()
    server.create_database(TEMPLATE_DB)
    upgrade(server.url_for(TEMPLATE_DB).replace("postgresql://", "postgresql+psycopg://", 1))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(servers_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(servers_dir / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rabbit_server(servers_dir: Path) -> Iterator[RabbitMQServer]:
    server = RabbitMQServer(servers_dir / "rabbitmq")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    if not postgres_server.running:  # a drill may have stopped it
        postgres_server.start()
    postgres_server.create_database(name, template=TEMPLATE_DB)
    yield postgres_server.url_for(name)
    if postgres_server.running:
        postgres_server.drop_database(name)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    import redis

    if not redis_server.running:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
async def amqp_url(rabbit_server: RabbitMQServer) -> str:
    if not rabbit_server.running:
        rabbit_server.start()
    await reset_broker(rabbit_server.url)
    return rabbit_server.url


@pytest.fixture
def infra(database_url: str, redis_url: str, amqp_url: str) -> Infra:
    return Infra(database_url, redis_url, amqp_url)


@pytest.fixture
async def stack(infra: Infra) -> AsyncIterator[Stack]:
    async with running_stack(infra) as running:
        yield running
