"""Reads and clean-ups of the bookings tables, for the people who run the system.

The ``medbook`` command (the live bookings table, counts and rates, purging,
the load generator's final states, ``medbook top``) goes through this module
instead of writing SQL of its own, so the bookings schema stays known to the
booking package alone. Every method takes an asyncpg connection, the one the
command already holds.

Purging never breaks the saga: by default it deletes only bookings in a final
status none of whose events is still in the outbox (deleting one whose
``quota_released`` has not reached the broker would lose that event);
``include_pending`` also deletes PENDING bookings with their unsent events, in
the same transaction.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

import asyncpg


# The outcome of a booking in a few words (its status and why); ``discounted`` is
# whether its final price is below its base price.
def _reason(discounted: str) -> str:
    return f"""
CASE
    WHEN status = 'CONFIRMED' AND {discounted} THEN 'discount applied'
    WHEN status = 'CONFIRMED' THEN 'base price'
    WHEN status = 'PENDING' THEN 'waiting for the discount step'
    WHEN status = 'CANCELLED' THEN 'cancelled'
    ELSE coalesce(fail_reason, '-')
END
"""


_RECENT = """
SELECT id::text, user_name, status, base_price, final_price, created_at,
       history ->> -1 AS last_entry
FROM bookings ORDER BY created_at DESC LIMIT $1
"""

_BACKLOG = """
SELECT (SELECT count(*) FROM bookings WHERE status = 'PENDING') AS pending,
       (SELECT min(created_at) FROM bookings WHERE status = 'PENDING') AS oldest_pending,
       (SELECT count(*) FROM outbox) AS outbox,
       (SELECT min(created_at) FROM outbox) AS oldest_outbox
"""

# All-time counts come from an index-only scan of bookings_by_outcome (status, fail_reason,
# prices), grouped on the index's own columns; only the recent window reads the table.
_STATS = f"""
WITH by_index AS (
    SELECT status, fail_reason, count(*) AS n,
           count(*) FILTER (WHERE final_price < base_price) AS n_discounted
    FROM bookings GROUP BY status, fail_reason
), all_time AS (
    SELECT status, {_reason("part.discounted")} AS reason, sum(part.n)::bigint AS total
    FROM by_index
    CROSS JOIN LATERAL (VALUES (true, n_discounted), (false, n - n_discounted))
        AS part(discounted, n)
    WHERE part.n > 0
    GROUP BY 1, 2
), recent AS (
    SELECT status, {_reason("final_price < base_price")} AS reason, count(*) AS recent,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY took) FILTER (WHERE took IS NOT NULL)
               AS p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY took) FILTER (WHERE took IS NOT NULL)
               AS p95
    FROM bookings, LATERAL (SELECT extract(epoch FROM completed_at - created_at) AS took) t
    WHERE created_at >= $1 GROUP BY 1, 2
)
SELECT a.status, a.reason, a.total, coalesce(r.recent, 0) AS recent, r.p50, r.p95
FROM all_time a LEFT JOIN recent r USING (status, reason)
ORDER BY a.status, a.total DESC
"""  # noqa: S608 (built from constants)

# Purge candidates: last changed before the cutoff; final ones only when no event of theirs
# is still in the outbox.
_CANDIDATES = """
FROM bookings b
WHERE b.created_at < $1 AND b.updated_at < $1
  AND ((b.status <> 'PENDING'
        AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.booking_id = b.id))
       OR ($2 AND b.status = 'PENDING'))
"""

_PURGE_PREVIEW = f"SELECT b.status, count(*) AS n {_CANDIDATES} GROUP BY b.status"

_PURGE_KEPT = """
SELECT count(*) FILTER (WHERE status = 'PENDING') AS pending,
       count(*) FILTER (WHERE status <> 'PENDING') AS in_flight
FROM bookings b
WHERE b.created_at < $1 AND b.updated_at < $1
  AND (b.status = 'PENDING' OR EXISTS (SELECT 1 FROM outbox o WHERE o.booking_id = b.id))
"""

_PURGE_BATCH = f"""
SELECT b.id {_CANDIDATES}
ORDER BY b.created_at LIMIT $3 FOR UPDATE OF b SKIP LOCKED
"""

_STATES = """
SELECT id::text, status, fail_reason, base_price, final_price, created_at, completed_at
FROM bookings WHERE id = ANY($1::uuid[])
"""


@dataclass(frozen=True, slots=True)
class RecentBooking:
    booking_id: str
    user_name: str
    status: str
    base_price: int
    final_price: int | None
    created_at: dt.datetime
    last_entry: str | None


@dataclass(frozen=True, slots=True)
class Backlog:
    """What the saga has yet to do: PENDING bookings and events not yet published."""

    pending: int
    oldest_pending_at: dt.datetime | None
    outbox: int
    oldest_outbox_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class OutcomeGroup:
    """Bookings of one status and reason: in all, and created since a moment."""

    status: str
    reason: str
    total: int
    recent: int
    seconds_p50: float | None  # created -> final, of the recent ones that finished
    seconds_p95: float | None


@dataclass(frozen=True, slots=True)
class PurgePreview:
    matched: dict[str, int]  # status -> bookings a purge would delete
    kept_pending: int  # PENDING bookings older than the cutoff (deleted only when asked)
    kept_in_flight: int  # final bookings kept because an event of theirs is in the outbox


@dataclass(frozen=True, slots=True)
class BookingState:
    status: str
    fail_reason: str | None
    base_price: int
    final_price: int | None
    created_at: dt.datetime
    completed_at: dt.datetime | None


class BookingMaintenance:
    """The operator-side operations on the bookings and outbox tables."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def recent(self, limit: int) -> list[RecentBooking]:
        """The most recently created bookings, newest first."""
        rows = await self.connection.fetch(_RECENT, limit)
        return [
            RecentBooking(
                r["id"],
                r["user_name"],
                r["status"],
                r["base_price"],
                r["final_price"],
                r["created_at"],
                r["last_entry"],
            )
            for r in rows
        ]

    async def backlog(self) -> Backlog:
        row = await self.connection.fetchrow(_BACKLOG)
        assert row is not None  # an aggregate always answers one row
        return Backlog(row["pending"], row["oldest_pending"], row["outbox"], row["oldest_outbox"])

    async def outcomes(self, since: dt.datetime) -> list[OutcomeGroup]:
        """Counts by status and reason, largest first within a status."""
        rows = await self.connection.fetch(_STATS, since)
        return [
            OutcomeGroup(r["status"], r["reason"], r["total"], r["recent"], r["p50"], r["p95"])
            for r in rows
        ]

    async def purge_preview(self, cutoff: dt.datetime, include_pending: bool) -> PurgePreview:
        """What :meth:`purge_batch` would delete of the bookings last changed before ``cutoff``."""
        matched = {
            r["status"]: r["n"]
            for r in await self.connection.fetch(_PURGE_PREVIEW, cutoff, include_pending)
        }
        kept = await self.connection.fetchrow(_PURGE_KEPT, cutoff)
        assert kept is not None
        return PurgePreview(matched, 0 if include_pending else kept["pending"], kept["in_flight"])

    async def purge_batch(
        self, cutoff: dt.datetime, include_pending: bool, size: int
    ) -> tuple[Counter[str], int]:
        """Delete up to ``size`` bookings with their outbox rows, in one transaction.

        Returns the deleted bookings by status and how many outbox events went with them;
        an empty count means there is nothing left to delete.
        """
        async with self.connection.transaction():
            rows = await self.connection.fetch(_PURGE_BATCH, cutoff, include_pending, size)
            ids = [r["id"] for r in rows]
            if not ids:
                return Counter(), 0
            events = await self.connection.execute(
                "DELETE FROM outbox WHERE booking_id = ANY($1::uuid[])", ids
            )
            deleted = await self.connection.fetch(
                "DELETE FROM bookings WHERE id = ANY($1::uuid[]) RETURNING status", ids
            )
        return Counter(r["status"] for r in deleted), int(events.split()[-1])

    async def states(self, booking_ids: list[str]) -> dict[str, BookingState]:
        """The current state of each of these bookings (missing ids are left out)."""
        rows = await self.connection.fetch(_STATES, booking_ids)
        return {
            r["id"]: BookingState(
                r["status"],
                r["fail_reason"],
                r["base_price"],
                r["final_price"],
                r["created_at"],
                r["completed_at"],
            )
            for r in rows
        }
