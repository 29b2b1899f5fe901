"""Reads and clean-ups of the discount worker's Redis state, for the people who run it.

``medbook quota`` (keys, clean), ``medbook load quota`` and the scenarios
inspect the quota through this module rather than through key names of their
own, so the key layout stays known to :mod:`medbook.discount.quota` and
:mod:`medbook.discount.idempotency` (whose :func:`~medbook.discount.idempotency.stored_result`
reads a booking's stored result). Keys are found with ``SCAN``, never
``KEYS`` (which blocks Redis on a large keyspace).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis.asyncio import Redis

from medbook.discount.quota import (
    COUNTER_PREFIX,
    RESERVATION_PREFIX,
    QuotaStore,
    counter_key,
    members_key,
)

_SCAN_COUNT = 1000
_BATCH = 500


@dataclass(frozen=True, slots=True)
class QuotaDay:
    """One quota day found in Redis: its counter, its set of holders, the reservations."""

    day: dt.date
    used: int | None  # the counter, None when it is gone
    reservations: int | None  # holders in the day's set, None when it is gone
    reservation_keys: int  # per-booking reservations pointing to this day
    expires_in: float | None  # seconds until the counter expires, None if it does not
    keys: list[str] = field(default_factory=list)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class QuotaMaintenance:
    """The operator-side operations on the quota's keys."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.store = QuotaStore(redis)

    async def reservations(self, day: dt.date) -> int:
        """How many bookings hold a unit of the day (equal to the counter when all is well)."""
        return int(await self.redis.scard(members_key(day)))

    async def days(self) -> list[QuotaDay]:
        """Every quota day that has keys in Redis, oldest first."""
        keys_by_day: dict[str, list[str]] = {}
        async for key in self._scan(f"{COUNTER_PREFIX}*"):
            day = key[len(COUNTER_PREFIX) :].split(":", 1)[0]
            keys_by_day.setdefault(day, []).append(key)
        pointing: Counter[str] = Counter()
        async for batch in self._reservation_batches():
            for _, day in batch:
                pointing[day] += 1
        found = []
        for text in sorted(set(keys_by_day) | set(pointing)):
            try:
                date = dt.date.fromisoformat(text)
            except ValueError:
                continue  # not one of ours
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(counter_key(date))
                pipe.scard(members_key(date))
                pipe.ttl(counter_key(date))
                used, members, ttl = await pipe.execute()
            found.append(
                QuotaDay(
                    day=date,
                    used=int(used) if used is not None else None,
                    reservations=int(members) if members else None,
                    reservation_keys=pointing[text],
                    expires_in=float(ttl) if ttl is not None and ttl >= 0 else None,
                    keys=sorted(keys_by_day.get(text, [])),
                )
            )
        return found

    async def clean_before(self, day: dt.date) -> tuple[list[dt.date], int]:
        """Delete the keys of every quota day before ``day`` (reservations included).

        Returns the days whose keys were deleted and how many reservations were left
        pointing to a day whose set had already expired (deleted too).
        """
        past = [d.day for d in await self.days() if d.day < day]
        for old in past:
            await self.store.reset(old)
        orphans = 0
        async for batch in self._reservation_batches():
            stale = [key for key, pointed in batch if pointed < day.isoformat()]
            if stale:
                orphans += int(await self.redis.delete(*stale))
        return past, orphans

    async def _scan(self, pattern: str) -> AsyncIterator[str]:
        async for raw in self.redis.scan_iter(match=pattern, count=_SCAN_COUNT):
            yield _text(raw)

    async def _reservation_batches(self) -> AsyncIterator[list[tuple[str, str]]]:
        """(reservation key, the day it points to), in batches read with one MGET each."""
        batch: list[str] = []

        async def read(keys: list[str]) -> list[tuple[str, str]]:
            values = await self.redis.mget(keys)
            return [(k, _text(v)) for k, v in zip(keys, values, strict=True) if v is not None]

        async for key in self._scan(f"{RESERVATION_PREFIX}*"):
            batch.append(key)
            if len(batch) >= _BATCH:
                yield await read(batch)
                batch = []
        if batch:
            yield await read(batch)
