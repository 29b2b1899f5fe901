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
import logging
import time
from collections import deque

from medbook import metrics
from medbook.booking.store import BookingStore
from medbook.failures import DependencyError

log = logging.getLogger(__name__)


class AdmissionControl:
    def __init__(
        self,
        store: BookingStore,
        *,
        limit: int,
        max_wait: float,
        burst: int = 16,
        poll_interval: float = 0.05,
    ) -> None:
        self.store = store
        self.limit = limit
        self.burst = max(1, min(burst, limit or 1))
        self.max_wait = max_wait
        self.poll_interval = poll_interval
        self.pending = 0  # last count read, plus those admitted and less those finished since
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    async def admit(self) -> None:
        """Return when the booking may be created (at once, unless the saga is backlogged).

        Waiters are let in one at a time, first come first served, as room appears:
        a shrinking backlog never lets a whole crowd through at once.
        """
        if not self.enabled:
            return
        if self.pending < self.limit and not self._waiters:
            self.pending += 1
            return
        started = time.monotonic()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await asyncio.wait_for(turn, self.max_wait)  # counted in by _let_in
        except TimeoutError:
            self.pending += 1  # waited long enough: go on anyway
        metrics.ADMISSION_WAIT.observe(time.monotonic() - started)

    def finished(self) -> None:
        """A booking of this process left PENDING: make room at once, not at the next poll."""
        if self.enabled:
            self.pending = max(0, self.pending - 1)
            self._let_in()

    def _let_in(self) -> None:
        # Waiters go in together once there is room for ``burst`` of them: a trickle of
        # single creates would make every later step (commits, publishes, results) a
        # batch of one, and cost a third more CPU per booking than batches of a dozen.
        if self.limit - self.pending < min(self.burst, len(self._waiters)):
            return
        while self._waiters and self.pending < self.limit:
            turn = self._waiters.popleft()
            if not turn.done():  # not timed out meanwhile
                self.pending += 1
                turn.set_result(None)

    async def poll(self) -> None:
        """Re-read the PENDING count (every ``poll_interval`` s, run by the service)."""
        try:
            self.pending = await self.store.count_pending()
        except DependencyError:  # the database is away: admit freely, requests will 503
            self.pending = 0
            raise
        finally:
            self._let_in()
