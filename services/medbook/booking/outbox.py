"""The outbox relay: publishes the events committed with the bookings.

A row leaves the outbox only after the broker confirmed its event, so an event
exists if and only if its booking does, whatever crashes in between (a crash
after the confirm and before the delete publishes the event again, and every
consumer is idempotent). Rows are taken with ``FOR UPDATE SKIP LOCKED``, so
several replicas (or several relay tasks) never publish the same row at once.
The relay is woken right after each commit; a periodic poll catches rows that
other processes (the sweep, another replica) committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg
import orjson

from medbook import metrics
from medbook.backoff import Backoff
from medbook.booking.store import BookingStore
from medbook.clock import utcnow
from medbook.contracts import Event
from medbook.failures import DependencyError
from medbook.messaging import Publisher
from medbook.telemetry import extract_context, use_context

log = logging.getLogger(__name__)

_CLAIM_BATCH = """
SELECT id, event, payload, headers, created_at FROM outbox
ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
"""

_DELETE_PUBLISHED = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"


class OutboxRelay:
    def __init__(
        self,
        store: BookingStore,
        publisher: Callable[[], Publisher | None],
        *,
        batch_size: int,
        poll_interval: float,
        concurrency: int = 4,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.concurrency = concurrency
        self.stopping = asyncio.Event()
        self._backoff = Backoff(initial=0.1, maximum=5.0)
        self._backing_off = False
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Until :attr:`stopping` is set: on each wake-up (or poll), start a drain unless
        ``concurrency`` are running already; then let the drains in progress finish.

        Several drains at once (each takes different rows, SKIP LOCKED) let new rows
        go out while another batch still waits for its confirms and its commit.
        """
        drains: set[asyncio.Task[None]] = set()
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()
            if self.stopping.is_set():
                break
            if len(drains) < self.concurrency and not self._backing_off:
                task = asyncio.create_task(self._drain_once())
                drains.add(task)
                task.add_done_callback(drains.discard)
        if drains:
            await asyncio.gather(*drains, return_exceptions=True)

    async def _drain_once(self) -> None:
        try:
            await self.drain()
            self._backoff.reset()
        except Exception as exc:
            self._backing_off = True
            delay = await self._backoff.wait(self.stopping)
            if isinstance(exc, DependencyError):
                log.warning("outbox relay: %s; retried after %.1fs", exc, delay)
            else:
                log.error("outbox relay failed; retried after %.1fs", delay, exc_info=exc)
            self._backing_off = False
            self._wake.set()

    async def drain(self) -> int:
        """Publish until the outbox is empty (or the broker is away); returns rows published."""
        total = 0
        while not self.stopping.is_set():
            published, claimed = await self.publish_batch()
            total += published
            if claimed < self.batch_size:
                break
        return total

    async def publish_batch(self) -> tuple[int, int]:
        publisher = self.publisher()
        if publisher is None:
            return 0, 0
        async with self.store.raw() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM_BATCH, self.batch_size)
            if not rows:
                return 0, 0
            outcomes = await asyncio.gather(
                *(self._publish(publisher, row) for row in rows), return_exceptions=True
            )
            done = [
                row["id"] for row, outcome in zip(rows, outcomes, strict=True) if outcome is None
            ]
            if done:
                await conn.execute(_DELETE_PUBLISHED, done)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        now = utcnow()
        for row, outcome in zip(rows, outcomes, strict=True):
            if outcome is None:
                metrics.OUTBOX_PUBLISH_LATENCY.observe((now - row["created_at"]).total_seconds())
        if failures:
            raise failures[0]
        return len(done), len(rows)

    async def _publish(self, publisher: Publisher, row: asyncpg.Record) -> None:
        event = Event(row["event"])
        stored = row["headers"]
        stored = orjson.loads(stored) if isinstance(stored, str) else dict(stored)
        # The event continues the trace of the request that committed it: when that trace
        # is kept, the publish span (telemetry.publish_span) is a child of the stored
        # context and replaces the traceparent; otherwise the stored one goes as is.
        with use_context(extract_context(stored)):
            await publisher.publish(
                event, row["payload"].encode(), headers=stored, message_id=f"outbox-{row['id']}"
            )
        metrics.MESSAGES_PUBLISHED.labels(event.value).inc()

    async def refresh_backlog(self) -> None:
        """Keep the backlog gauges current (rows waiting, age of the oldest)."""
        backlog = await self.store.outbox_backlog()
        metrics.OUTBOX_BACKLOG.set(backlog.count)
        oldest = backlog.oldest
        metrics.OUTBOX_OLDEST_AGE.set((utcnow() - oldest).total_seconds() if oldest else 0)
