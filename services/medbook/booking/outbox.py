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
import time
from collections.abc import Callable

import asyncpg
import orjson

from medbook import metrics
from medbook.booking.store import BookingStore, utcnow
from medbook.contracts import Event
from medbook.messaging import Publisher, is_unavailable
from medbook.telemetry import extract_context, use_context

log = logging.getLogger(__name__)

_CLAIM_BATCH = """
SELECT id, event, payload, headers, created_at FROM outbox
ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
"""


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
        self._delay = 0.1
        self._backing_off = False
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backlog_task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")
        self._backlog_task = asyncio.create_task(self._watch_backlog(), name="outbox-backlog")

    async def stop(self) -> None:
        """Finish the batch in progress, then stop (what is left waits in the table)."""
        self._stopping.set()
        self._wake.set()
        for task in (self._task, self._backlog_task):
            if task is None:
                continue
            if task is self._backlog_task:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        """On each wake-up (or poll), start a drain unless ``concurrency`` are running already.

        Several drains at once (each takes different rows, SKIP LOCKED) let new rows
        go out while another batch still waits for its confirms and its commit.
        """
        drains: set[asyncio.Task[None]] = set()
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()
            if self._stopping.is_set():
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
            self._delay = 0.1
        except Exception as exc:
            if is_unavailable(exc):
                log.warning("outbox relay: %r; retrying in %.1fs", exc, self._delay)
            else:
                log.exception("outbox relay failed; retrying in %.1fs", self._delay)
            self._backing_off = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._delay)
            self._backing_off = False
            self._delay = min(self._delay * 2, 5.0)
            self._wake.set()

    async def drain(self) -> int:
        """Publish until the outbox is empty (or the broker is away); returns rows published."""
        total = 0
        while not self._stopping.is_set():
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
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", done)
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
        # The event continues the trace of the request that committed it: with tracing
        # on, the aio-pika instrumentation's publish span is a child of the stored
        # context and replaces the traceparent; with it off, the stored one goes as is.
        with use_context(extract_context(stored)):
            await publisher.publish(
                event, row["payload"].encode(), headers=stored, message_id=f"outbox-{row['id']}"
            )
        metrics.MESSAGES_PUBLISHED.labels(event.value).inc()

    async def _watch_backlog(self) -> None:
        """Keep the backlog gauges current (rows waiting, age of the oldest)."""
        while True:
            started = time.monotonic()
            try:
                row = await self.store.db.fetch_one(
                    "SELECT count(*) AS waiting, min(created_at) AS oldest FROM outbox"
                )
                if row is not None:
                    metrics.OUTBOX_BACKLOG.set(row["waiting"])
                    oldest = row["oldest"]
                    metrics.OUTBOX_OLDEST_AGE.set(
                        (utcnow() - oldest).total_seconds() if oldest else 0
                    )
            except Exception as exc:
                log.debug("cannot read the outbox backlog: %r", exc)
            await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - started)))
