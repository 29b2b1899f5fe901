"""Helpers shared by the tests: request bodies, waiting, the in-process system."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
import zoneinfo
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aio_pika
import httpx
import port_for
from redis.asyncio import Redis

from medbook.booking.app import BookingService, create_app
from medbook.config import (
    BookingSettings,
    DiscountSettings,
    PolicyDefaults,
    PostgresSettings,
    RabbitSettings,
    RedisSettings,
)
from medbook.contracts import (
    BOOKING_QUEUE,
    DEAD_LETTER_EXCHANGE,
    DISCOUNT_QUEUE,
    EXCHANGE,
    TERMINAL_STATUSES,
    dead_letter_queue,
)
from medbook.discount.worker import DiscountWorker
from medbook.runtime import HttpServer, http_server

T = TypeVar("T")
KOLKATA = zoneinfo.ZoneInfo("Asia/Kolkata")


def today(zone: str = "Asia/Kolkata") -> dt.date:
    return dt.datetime.now(zoneinfo.ZoneInfo(zone)).date()


def birthday_dob(year: int = 1990, zone: str = "Asia/Kolkata") -> str:
    """A date of birth whose birthday is today in ``zone`` (29 Feb handled)."""
    t = today(zone)
    try:
        return t.replace(year=year).isoformat()
    except ValueError:  # today is 29 February: pick a leap year
        return t.replace(year=1992).isoformat()


def not_birthday_dob(zone: str = "Asia/Kolkata") -> str:
    return (today(zone) + dt.timedelta(days=40)).replace(year=1985).isoformat()


def booking_body(**overrides: Any) -> dict[str, Any]:
    """A valid request: a woman, not her birthday, cheap services (no discount)."""
    body: dict[str, Any] = {
        "userName": "Asha Rao",
        "gender": "Female",
        "dob": not_birthday_dob(),
        "serviceNames": ["Blood Test", "Vaccination"],
    }
    body.update(overrides)
    return body


def eligible_body(name: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A woman on her birthday: eligible for the discount (base 450 -> 396 at 12%)."""
    values = {"dob": birthday_dob(), **overrides}
    return booking_body(userName=name or f"Birthday {uuid.uuid4().hex[:8]}", **values)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool] = bool,
    *,
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until ``accept`` holds for its value; fail with the last value."""
    deadline = time.monotonic() + timeout
    value = await probe()
    while not accept(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s; last value: {value!r}")
        await asyncio.sleep(interval)
        value = await probe()
    return value


async def reset_broker(amqp_url: str) -> None:
    """Delete medbook's queues and exchanges, so a test starts from an empty broker."""
    connection = await aio_pika.connect(amqp_url)
    try:
        for queue in (
            DISCOUNT_QUEUE,
            BOOKING_QUEUE,
            dead_letter_queue(DISCOUNT_QUEUE),
            dead_letter_queue(BOOKING_QUEUE),
        ):
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
        for exchange in (EXCHANGE, DEAD_LETTER_EXCHANGE):
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(exchange)
    finally:
        await connection.close()


@dataclass
class Infra:
    """Connection URLs of the session's servers, for one test."""

    database_url: str
    redis_url: str
    amqp_url: str

    def booking_settings(self, **overrides: Any) -> BookingSettings:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port_for.select_random(),
            "database": PostgresSettings(
                url=self.database_url, connect_timeout=2, statement_timeout=5
            ),
            "rabbit": RabbitSettings(url=self.amqp_url, prefetch=64, max_tries=3),
            "outbox_poll_interval": 0.2,
            "shutdown_grace": 5,
        }
        values.update(overrides)
        return BookingSettings(**values)

    def discount_settings(
        self, policy: PolicyDefaults | None = None, **overrides: Any
    ) -> DiscountSettings:
        values: dict[str, Any] = {
            "metrics_port": port_for.select_random(),
            "metrics_host": "127.0.0.1",
            "redis": RedisSettings(url=self.redis_url),
            "rabbit": RabbitSettings(url=self.amqp_url, prefetch=64, max_tries=3),
            "policy": policy or PolicyDefaults(),
            "policy_refresh_interval": 0.2,
            "shutdown_grace": 5,
        }
        values.update(overrides)
        return DiscountSettings(**values)


@dataclass
class Stack:
    """The booking service (behind real HTTP) and the discount worker, in this process."""

    infra: Infra
    booking: BookingService
    worker: DiscountWorker | None
    api: httpx.AsyncClient
    redis: Redis
    server: HttpServer
    _server_task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def book(self, body: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        return await self.api.post(
            "/booking", json=body if body is not None else booking_body(), **kwargs
        )

    async def get(self, booking_id: str) -> dict[str, Any]:
        response = await self.api.get(f"/booking/{booking_id}")
        assert response.status_code == 200, response.text
        return response.json()

    async def wait_terminal(self, booking_id: str, timeout: float = 15.0) -> dict[str, Any]:
        return await eventually(
            lambda: self.get(booking_id),
            lambda b: b["status"] in TERMINAL_STATUSES,
            timeout=timeout,
            what=f"booking {booking_id} terminal",
        )

    async def start_worker(self, settings: DiscountSettings | None = None) -> DiscountWorker:
        self.worker = DiscountWorker(settings or self.infra.discount_settings())
        await self.worker.start()
        return self.worker

    async def stop_worker(self) -> None:
        if self.worker is not None:
            await self.worker.stop()
            self.worker = None


@contextlib.asynccontextmanager
async def running_stack(
    infra: Infra,
    *,
    booking_settings: BookingSettings | None = None,
    discount_settings: DiscountSettings | None = None,
    start_worker: bool = True,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[Stack]:
    settings = booking_settings or infra.booking_settings()
    service = BookingService(settings)
    server = http_server(create_app(settings, service), settings.host, settings.port, grace=5)
    server_task = asyncio.create_task(server.serve())
    await eventually(
        lambda: asyncio.sleep(0, server.started), what="HTTP server started", timeout=20
    )
    redis = Redis.from_url(infra.redis_url)
    api = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{settings.port}", timeout=10, headers=headers
    )
    stack = Stack(infra, service, None, api, redis, server, server_task)
    try:
        if start_worker:
            await stack.start_worker(discount_settings)
        await eventually(lambda: asyncio.sleep(0, service.broker_connected), what="broker link")
        yield stack
    finally:
        await stack.stop_worker()
        await api.aclose()
        server.should_exit = True
        await server_task
        await redis.aclose()


def service_env(infra: Infra, **extra: str) -> dict[str, str]:
    """The environment of medbook processes run against this test's servers."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDBOOK_", "OTEL_"))}
    env.update(
        MEDBOOK_DATABASE_URL=infra.database_url,
        MEDBOOK_REDIS_URL=infra.redis_url,
        MEDBOOK_RABBITMQ_URL=infra.amqp_url,
        MEDBOOK_HOST="127.0.0.1",
        MEDBOOK_METRICS_HOST="127.0.0.1",
        MEDBOOK_LOG_FORMAT="json",
        MEDBOOK_POLICY_REFRESH="0.2",
        MEDBOOK_OUTBOX_POLL_INTERVAL="0.2",
        MEDBOOK_SHUTDOWN_GRACE="10",
    )
    env.update(extra)
    return env


@dataclass
class ProcessServices:
    """medbook-booking and medbook-discount as real processes (for signals and crashes)."""

    infra: Infra
    logs: Any  # Path
    http_port: int = field(default_factory=port_for.select_random)
    metrics_port: int = field(default_factory=port_for.select_random)
    extra_env: dict[str, str] = field(default_factory=dict)
    booking: Any = None
    discount: Any = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _process(self, name: str) -> Any:
        import sys

        from medbook.devstack.stack import ServiceProcess

        env = service_env(
            self.infra,
            MEDBOOK_PORT=str(self.http_port),
            MEDBOOK_METRICS_PORT=str(self.metrics_port),
            **self.extra_env,
        )
        module = {"booking": "medbook.booking.main", "discount": "medbook.discount.main"}[name]
        health = (
            f"{self.api_url}/healthz"
            if name == "booking"
            else f"http://127.0.0.1:{self.metrics_port}/healthz"
        )
        return ServiceProcess(
            name, [sys.executable, "-m", module], env, self.logs / f"{name}.log", health
        )

    def start_booking(self) -> None:
        self.booking = self._process("booking")
        self.booking.start()
        self.booking.wait_healthy()

    def start_discount(self) -> None:
        self.discount = self._process("discount")
        self.discount.start()
        self.discount.wait_healthy()

    def start(self) -> ProcessServices:
        self.start_booking()
        self.start_discount()
        return self

    def stop(self) -> None:
        for process in (self.discount, self.booking):
            if process is not None:
                process.stop(grace=15)
