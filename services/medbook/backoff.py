"""Exponential backoff with jitter, written once for every retry loop of the services."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays that double from ``initial`` up to ``maximum``, each jittered by +-50%.

    :meth:`wait` sleeps the next delay but returns at once when ``stopping`` is
    set, so a service that is asked to stop never sits out a backoff.
    """

    initial: float = 0.2
    maximum: float = 5.0
    factor: float = 2.0
    jitter: bool = True
    _next: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._next = self.initial

    def reset(self) -> None:
        self._next = self.initial

    def delay_for(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (1-based), without jitter."""
        return min(self.initial * self.factor ** max(attempt - 1, 0), self.maximum)

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * self.factor, self.maximum)
        return delay * (0.5 + random.random()) if self.jitter else delay

    async def wait(self, stopping: asyncio.Event | None = None) -> float:
        """Sleep the next delay (or until ``stopping`` is set); return the delay chosen."""
        delay = self.next_delay()
        if stopping is None:
            await asyncio.sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
        return delay
