"""Admission control: keeps the saga's backlog, and so its end-to-end latency, bounded.

Creating a booking costs a fraction of what finishing its saga costs (outbox
relay, broker, discount worker, result), so clients that send bookings as fast
as the API answers outrun the saga and every booking waits longer and longer
in the queues. The booking service therefore watches how many bookings are
PENDING (all replicas, polled from PostgreSQL) and, while that is at or over
``limit``, makes a new request wait up to ``max_wait`` seconds for the backlog
to drain. It never refuses a booking: after ``max_wait`` the request goes on,
so an outage of the discount worker slows the API down but does not stop it,
and the outbox still absorbs a broker outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from medbook import metrics
from medbook.booking.store import BookingStore

log = logging.getLogger(__name__)


class AdmissionControl:
    def __init__(
        self, store: BookingStore, *, limit: int, max_wait: float, poll_interval: float = 0.05
    ) -> None:
        self.store = store
        self.limit = limit
        self.max_wait = max_wait
        self.poll_interval = poll_interval
        self.pending = 0  # last count read, plus the bookings admitted since
        self._below = asyncio.Event()
        self._below.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._watch(), name="admission-control")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def admit(self) -> None:
        """Return when the booking may be created (at once, unless the saga is backlogged)."""
        if not self.enabled:
            return
        if self.pending >= self.limit:
            started = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._below.wait(), self.max_wait)
            metrics.ADMISSION_WAIT.observe(time.monotonic() - started)
        self.pending += 1
        if self.pending >= self.limit:
            self._below.clear()

    async def _watch(self) -> None:
        while True:
            try:
                self.pending = await self.store.count_pending()
                if self.pending < self.limit:
                    self._below.set()
                else:
                    self._below.clear()
            except Exception as exc:  # the database is away: admit freely, requests will 503
                log.debug("admission control cannot count pending bookings: %r", exc)
                self.pending = 0
                self._below.set()
            await asyncio.sleep(self.poll_interval)
