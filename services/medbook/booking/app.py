"""The booking service: its parts, their start and stop, and the ASGI application.

The HTTP API only needs PostgreSQL: bookings are accepted (and their events
wait in the outbox) while the broker is away. The broker link is made in the
background and re-made by aio-pika's robust connection; once it is up, the
outbox relay publishes and the result consumer applies results.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import zoneinfo
from collections.abc import AsyncIterator, Iterable

from aio_pika.abc import AbstractRobustConnection
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from medbook import contracts
from medbook.background import Background, every
from medbook.backoff import Backoff
from medbook.booking import errors
from medbook.booking.admission import AdmissionControl
from medbook.booking.api import ROUTES
from medbook.booking.database import create_database
from medbook.booking.http_spans import ServerSpans
from medbook.booking.middleware import BearerAuth, HttpMetrics, UnexpectedErrors
from medbook.booking.monitor import SagaMonitor
from medbook.booking.outbox import OutboxRelay
from medbook.booking.results import ResultHandler, apply_results
from medbook.booking.store import BookingStore
from medbook.booking.usecases import Bookings
from medbook.config import BookingSettings
from medbook.failures import DependencyUnavailable
from medbook.group_commit import GroupCommit
from medbook.messaging import Consumer, Publisher, connect
from medbook.runtime import settle_garbage_collector
from medbook.telemetry import recording, setup_tracing

log = logging.getLogger(__name__)


class BookingService:
    def __init__(self, settings: BookingSettings) -> None:
        # The OpenTelemetry SDK makes the trace ids the API returns; a no-op provider
        # would give invalid (all-zero) ones, so it is installed here if the process has not.
        setup_tracing("medbook-booking", ("asyncpg",))
        self.settings = settings
        self.zone = zoneinfo.ZoneInfo(settings.time_zone)  # where "today" is judged
        db = settings.database
        self.db = create_database(
            db.dsn,
            max_size=db.pool_max,
            connect_timeout=db.connect_timeout,
            statement_timeout=db.statement_timeout,
        )
        self.store = BookingStore(self.db)
        # Concurrent creates (and results) share a statement and a commit: see group_commit.py.
        self.creates = GroupCommit(self.store.create_many, name="create")
        self.results = GroupCommit(functools.partial(apply_results, self.store), name="results")
        self.connection: AbstractRobustConnection | None = None
        self.publisher: Publisher | None = None
        self.consumer: Consumer | None = None
        self.relay = OutboxRelay(
            self.store,
            lambda: self.publisher,
            batch_size=settings.outbox_batch_size,
            poll_interval=settings.outbox_poll_interval,
        )
        self.admission = AdmissionControl(
            self.store,
            limit=settings.max_pending,
            max_wait=settings.admission_wait,
            burst=settings.admission_burst,
        )
        self.bookings = Bookings(self.store, self.creates.submit, self.admission, self.relay.wake)
        self.monitor = SagaMonitor(self.store, lambda: self.connection)
        self.stopping = asyncio.Event()
        self.tasks = Background()

    async def start(self) -> None:
        await self.store.connect()
        try:
            await self.store.ping()
        except DependencyUnavailable as exc:
            log.warning("database not reachable yet (%s); requests get 503 until it is", exc)
        self.tasks.start(self.relay.run(), name="outbox-relay", graceful=True)
        self.tasks.start(
            every(5.0, self.relay.refresh_backlog, name="outbox backlog"), name="outbox-backlog"
        )
        if self.admission.enabled:
            self.tasks.start(
                every(self.admission.poll_interval, self.admission.poll, name="admission count"),
                name="admission-control",
            )
        self.tasks.start(
            every(self.monitor.interval, self.monitor.refresh, name="saga gauges"),
            name="saga-monitor",
        )
        self.tasks.start(self._attach_broker(), name="broker-link")
        log.info("booking service started")

    async def _attach_broker(self) -> None:
        """Connect to the broker (retried until it answers), then publish and consume."""
        rabbit = self.settings.rabbit
        backoff = Backoff(initial=0.5, maximum=5.0)
        self.connection = await connect(
            rabbit.url.get_secret_value(), "medbook-booking", stopping=self.stopping
        )
        while not self.stopping.is_set():
            try:
                publisher = Publisher(self.connection, signer=rabbit.signer())
                await publisher.start()
                self.publisher = publisher
                self.relay.wake()
                self.consumer = Consumer.configured(
                    self.connection,
                    contracts.BOOKING_QUEUE,
                    ResultHandler(self.results.submit, self.relay.wake, self.admission.finished),
                    publisher=publisher,
                    rabbit=rabbit,
                )
                await self.consumer.start()
                return
            except DependencyUnavailable as exc:
                delay = await backoff.wait(self.stopping)
                log.warning("cannot set up the broker link (%s); retried after %.1fs", exc, delay)

    async def stop(self) -> None:
        """Finish in-flight results and the outbox batch in progress, then close everything."""
        self.stopping.set()
        self.relay.stopping.set()
        if self.consumer is not None:
            await self.consumer.stop(self.settings.shutdown_grace)
        # The relay finishes the batch it has claimed; the loops and the link are cancelled.
        await self.tasks.stop(grace=self.settings.shutdown_grace)
        await self.monitor.close()
        if self.publisher is not None:
            await self.publisher.close()
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
        await self.store.disconnect()
        log.info("booking service stopped")

    @property
    def broker_connected(self) -> bool:
        return (
            self.connection is not None
            and self.connection.connected.is_set()
            and self.publisher is not None
        )

    async def readiness(self, checks: Iterable[str]) -> dict[str, bool]:
        result: dict[str, bool] = {}
        for check in checks:
            if check == "database":
                try:
                    await asyncio.wait_for(self.store.ping(), 2)
                    result["database"] = True
                except Exception:
                    result["database"] = False
            elif check == "broker":
                result["broker"] = self.broker_connected
        return result


def create_app(settings: BookingSettings, service: BookingService | None = None) -> Starlette:
    service = service or BookingService(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        settle_garbage_collector()  # what starting made (pools, clients) lives as long
        try:
            yield
        finally:
            await service.stop()

    middleware = [Middleware(HttpMetrics)]
    if recording():  # a server span per request only when spans are recorded
        middleware.insert(0, Middleware(ServerSpans))
    if settings.api_token is not None:
        middleware.append(Middleware(BearerAuth, token=settings.api_token.get_secret_value()))
    middleware.insert(0, Middleware(UnexpectedErrors))  # outermost: nothing escapes to uvicorn
    app = Starlette(
        routes=ROUTES,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            errors.ApiError: errors.api_error,
            HTTPException: errors.http_error,
        },
    )
    app.state.service = service
    return app
