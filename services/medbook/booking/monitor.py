"""The saga's state as gauges: PENDING bookings, the oldest one's age, queue depths, sweeps.

Read every few seconds from PostgreSQL and the broker by the booking service.
These are global values (every replica exports the same figures): aggregate
them with ``max``, not ``sum``. The sweep runs as a CronJob whose process is
gone before any scrape, so its results are read back from the ``sweep_runs``
table it writes and exported here as counters.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from medbook import contracts, metrics
from medbook.booking.store import BookingStore
from medbook.clock import utcnow
from medbook.messaging import amqp_errors

log = logging.getLogger(__name__)

QUEUES = (
    contracts.DISCOUNT_QUEUE,
    contracts.BOOKING_QUEUE,
    contracts.dead_letter_queue(contracts.DISCOUNT_QUEUE),
    contracts.dead_letter_queue(contracts.BOOKING_QUEUE),
)


class SweepCollector(Collector):
    """Exports the sweep's totals as last read from ``sweep_runs``."""

    def __init__(self) -> None:
        self.runs = 0
        self.rejected = 0
        self.last_run: float | None = None
        self.known = False

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        if not self.known:
            return
        yield CounterMetricFamily(
            "medbook_sweep_runs",
            "Timeout sweeps completed (read from sweep_runs).",
            value=self.runs,
        )
        yield CounterMetricFamily(
            "medbook_sweep_rejected_bookings",
            "Bookings the timeout sweep rejected (read from sweep_runs).",
            value=self.rejected,
        )
        if self.last_run is not None:
            yield GaugeMetricFamily(
                "medbook_sweep_last_run_timestamp_seconds",
                "When the timeout sweep last completed (Unix time).",
                value=self.last_run,
            )


SWEEPS = SweepCollector()
metrics.BOOKING.register(SWEEPS)


class SagaMonitor:
    def __init__(
        self,
        store: BookingStore,
        connection: Callable[[], AbstractRobustConnection | None],
        interval: float = 5.0,
    ) -> None:
        self.store = store
        self.connection = connection
        self.interval = interval  # the service runs refresh() this often
        self._channel: AbstractChannel | None = None

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._channel.close()

    async def refresh(self) -> None:
        pending = await self.store.pending()
        metrics.PENDING_BOOKINGS.set(pending.count)
        oldest = pending.oldest
        metrics.OLDEST_PENDING_AGE.set((utcnow() - oldest).total_seconds() if oldest else 0)
        sweeps = await self.store.sweep_totals()
        SWEEPS.runs, SWEEPS.rejected = sweeps.runs, sweeps.rejected
        SWEEPS.last_run = sweeps.last_run.timestamp() if sweeps.last_run else None
        SWEEPS.known = True
        connection = self.connection()
        if connection is None or not connection.connected.is_set():
            return
        with amqp_errors():
            # A channel of its own: a passive declare of a missing queue closes its channel.
            if self._channel is None or self._channel.is_closed:
                self._channel = await connection.channel()
            for queue in QUEUES:
                declared = await self._channel.declare_queue(queue, passive=True)
                metrics.QUEUE_MESSAGES.labels(queue).set(
                    declared.declaration_result.message_count or 0
                )
