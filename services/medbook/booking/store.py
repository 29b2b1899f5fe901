"""The booking service's PostgreSQL statements: bookings, their outbox events, sweeps.

This module persists what ``booking/domain.py`` decides and decides nothing
itself. A new booking and its ``booking_created`` event are inserted together
or not at all; a transition is stored with its history lines and its outbox
events in one transaction, and only while the booking still has the status the
transition expects (the conditional ``WHERE ... AND status = ...`` is the guard
against a concurrent change). The hot paths (create, apply results) write whole
batches in one statement over the asyncpg connection that ``databases`` wraps,
with prepared statements. Every driver error leaves this module translated
(``booking/database.py``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg
import orjson
from databases import Database

from medbook import contracts
from medbook.booking import failover
from medbook.booking.database import database_errors
from medbook.booking.domain import KEEP, Booking, NewBooking, OutboxEvent, Timeout, Transition
from medbook.contracts import BookingStatus, Event
from medbook.failures import DependencyUnavailable

log = logging.getLogger(__name__)

_INSERT_MANY = """
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::date[], $6::jsonb[],
                         $7::integer[], $8::jsonb[], $9::text[], $10::text[], $11::text[],
                         $12::timestamptz[], $13::text[], $14::jsonb[])
        AS t(id, user_id, user_name, gender, dob, services, base_price, history, trace_id,
             idempotency_key, request_fingerprint, created_at, payload, headers)
), booking AS (
    INSERT INTO bookings (id, user_id, user_name, gender, dob, services, base_price, status,
                          history, trace_id, idempotency_key, request_fingerprint,
                          created_at, updated_at)
    SELECT id, user_id, user_name, gender, dob, services, base_price, 'PENDING', history,
           trace_id, idempotency_key, request_fingerprint, created_at, created_at
    FROM input
    ON CONFLICT DO NOTHING  -- an existing booking id (an earlier try) or Idempotency-Key
    RETURNING id
)
INSERT INTO outbox (event, booking_id, payload, headers, created_at)
SELECT 'booking_created', input.id, input.payload, input.headers, input.created_at
FROM input JOIN booking USING (id)
RETURNING booking_id
"""

_BY_IDEMPOTENCY_KEY = """
SELECT id, request_fingerprint, trace_id, status FROM bookings WHERE idempotency_key = $1
"""

# Results applied to PENDING bookings, a batch at a time (the status is the guard).
_APPLY_PENDING = """
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::integer[], $4::text[], $5::date[],
                         $6::uuid[], $7::jsonb[])
        AS t(id, status, final_price, fail_reason, quota_day, result_id, history)
)
UPDATE bookings AS b
SET status = i.status, final_price = i.final_price, fail_reason = i.fail_reason,
    quota_day = i.quota_day, result_id = i.result_id, history = b.history || i.history,
    updated_at = $8, completed_at = $8
FROM input AS i
WHERE b.id = i.id AND b.status = 'PENDING'
RETURNING b.id, b.created_at
"""

_LOCK = "SELECT status, quota_day, result_id FROM bookings WHERE id = $1 FOR UPDATE"

_INSERT_OUTBOX = """
INSERT INTO outbox (event, booking_id, payload, headers) VALUES ($1, $2, $3, $4::jsonb)
"""

_SWEEP = """
UPDATE bookings
SET status = $1, fail_reason = $2, history = history || $3::jsonb,
    updated_at = $4, completed_at = $4
WHERE status = 'PENDING' AND created_at < $5
RETURNING id, created_at
"""

# Columns a transition may set, by the domain's field name (they are the same).
_COLUMNS = frozenset({"status", "final_price", "fail_reason", "quota_day", "result_id"})

_EVENT_OF: dict[type[OutboxEvent], Event] = {
    contracts.BookingCreated: Event.BOOKING_CREATED,
    contracts.QuotaReleased: Event.QUOTA_RELEASED,
}


class Created(StrEnum):
    NEW = "new"
    REPLAYED = "replayed"
    KEY_REUSED = "key_reused"


@dataclass(frozen=True, slots=True)
class CreateRequest:
    booking: NewBooking
    headers: Mapping[str, str]  # the trace context the event carries
    idempotency_key: str | None
    fingerprint: str


@dataclass(frozen=True, slots=True)
class CreateOutcome:
    created: Created
    booking_id: uuid.UUID
    trace_id: str
    status: BookingStatus


@dataclass(frozen=True, slots=True)
class SweptBooking:
    booking_id: uuid.UUID
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class PendingSummary:
    count: int
    oldest: dt.datetime | None


@dataclass(frozen=True, slots=True)
class SweepTotals:
    runs: int
    rejected: int
    last_run: dt.datetime | None


def outbox_row(
    event: OutboxEvent, booking_id: uuid.UUID, headers: Mapping[str, str]
) -> tuple[str, uuid.UUID, str, str]:
    return (
        _EVENT_OF[type(event)].value,
        booking_id,
        contracts.encode(event).decode(),
        orjson.dumps(dict(headers)).decode(),
    )


def _json(values: Sequence[str]) -> str:
    return orjson.dumps(list(values)).decode()


def create_columns(requests: Sequence[CreateRequest]) -> list[list[Any]]:
    """The arguments of ``_INSERT_MANY`` for these requests: one array per column."""
    columns: list[list[Any]] = [[] for _ in range(14)]
    for r in requests:
        e = r.booking.event
        values = (
            e.booking_id, e.user_id, e.user_name, e.gender.value, e.dob,
            orjson.dumps([s.model_dump() for s in e.services]).decode(), e.base_price,
            _json(r.booking.history), e.trace_id, r.idempotency_key,
            r.fingerprint if r.idempotency_key else None, e.created_at,
            contracts.encode(e).decode(), orjson.dumps(dict(r.headers)).decode(),
        )  # fmt: skip
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


def apply_columns(transitions: Sequence[Transition]) -> list[Any]:
    """The arguments of ``_APPLY_PENDING`` for these results' transitions (the first one's
    time stamps them all)."""
    columns: list[list[Any]] = [[] for _ in range(7)]
    for t in transitions:
        assert t.expect is BookingStatus.PENDING
        assert t.status is not KEEP
        values = (
            t.booking_id, t.status.value, t.final_price, t.fail_reason, t.quota_day,
            t.result_id, _json(t.history),
        )  # fmt: skip
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return [*columns, transitions[0].at]


class Transaction:
    """One transaction's view of the bookings: lock one, store transitions."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def locked(self, booking_id: uuid.UUID) -> Booking | None:
        """The booking, locked until the transaction ends (None: there is none)."""
        row = await self.conn.fetchrow(_LOCK, booking_id)
        if row is None:
            return None
        return Booking(booking_id, BookingStatus(row["status"]), row["quota_day"], row["result_id"])

    async def persist(self, transition: Transition, headers: Mapping[str, str]) -> bool:
        """Store the transition and its events; False when the guard refused it."""
        changes = transition.changes()
        assert set(changes) <= _COLUMNS, changes
        assignments = [f"{column} = ${i}" for i, column in enumerate(changes, start=4)]
        if transition.completes:
            assignments.append("completed_at = COALESCE(completed_at, $3)")
        # Column names come from _COLUMNS; every value is a parameter.
        statement = (
            "UPDATE bookings SET history = history || $2::jsonb, updated_at = $3"  # noqa: S608
            + "".join(f", {a}" for a in assignments)
            + " WHERE id = $1"
        )
        args: list[Any] = [transition.booking_id, _json(transition.history), transition.at]
        args += [v.value if isinstance(v, StrEnum) else v for v in changes.values()]
        if transition.expect is not None:
            statement += f" AND status = ${len(args) + 1}"
            args.append(transition.expect.value)
        if (await self.conn.execute(statement, *args)) == "UPDATE 0":
            return False
        await self.emit(transition.booking_id, transition.events, headers)
        return True

    async def emit(
        self, booking_id: uuid.UUID, events: Sequence[OutboxEvent], headers: Mapping[str, str]
    ) -> None:
        """Put events in the outbox (committed with the transaction, published after)."""
        if events:
            await self.conn.executemany(
                _INSERT_OUTBOX, [outbox_row(e, booking_id, headers) for e in events]
            )


class BookingStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @contextlib.asynccontextmanager
    async def raw(self) -> AsyncIterator[asyncpg.Connection]:
        """The asyncpg connection ``databases`` holds for this task (errors translated).

        A connection whose server turned read-only or vanished (a failover) is
        closed, so the pool's next one goes to the server that takes writes.
        """
        with database_errors():
            async with self.db.connection() as connection:
                raw = connection.raw_connection
                try:
                    yield raw
                except Exception as exc:
                    if failover.read_only_server(exc) or failover.lost_mid_statement(exc):
                        with contextlib.suppress(asyncpg.InterfaceError):  # already gone
                            raw.terminate()
                    raise

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self.raw() as conn, conn.transaction():
            yield Transaction(conn)

    async def connect(self) -> None:
        with database_errors():
            await self.db.connect()

    async def disconnect(self) -> None:
        await self.db.disconnect()

    async def ping(self) -> None:
        async with self.raw() as conn:
            await conn.fetchval("SELECT 1")

    async def count_pending(self) -> int:
        return (await self.pending()).count

    async def pending(self) -> PendingSummary:
        """How many bookings are PENDING, and since when the oldest is."""
        async with self.raw() as conn:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, min(created_at) AS oldest FROM bookings "
                "WHERE status = 'PENDING'"
            )
        assert row is not None
        return PendingSummary(int(row["n"]), row["oldest"])

    async def outbox_backlog(self) -> PendingSummary:
        """How many events wait in the outbox, and since when the oldest does."""
        async with self.raw() as conn:
            row = await conn.fetchrow("SELECT count(*) AS n, min(created_at) AS oldest FROM outbox")
        assert row is not None
        return PendingSummary(int(row["n"]), row["oldest"])

    async def sweep_totals(self) -> SweepTotals:
        async with self.raw() as conn:
            row = await conn.fetchrow(
                "SELECT count(*) AS runs, coalesce(sum(rejected), 0) AS rejected, "
                "max(finished_at) AS last FROM sweep_runs"
            )
        assert row is not None
        return SweepTotals(int(row["runs"]), int(row["rejected"]), row["last"])

    # -- create --------------------------------------------------------------------

    async def create_many(self, requests: Sequence[CreateRequest]) -> list[CreateOutcome]:
        """Insert bookings with their ``booking_created`` outbox rows, in one statement.

        A request whose Idempotency-Key is already taken is answered with the
        booking that holds the key (a replay, or a key reused with another body).
        If the connection is lost during the statement (a failover: did it commit?),
        the same statement goes once more on a new connection: it inserts what is
        missing and finds what the lost try committed (failover.py).
        """
        try:
            return await self._create_many(requests)
        except DependencyUnavailable as exc:
            if not failover.lost_mid_statement(exc.__cause__ or exc):
                raise
            log.warning(
                "connection lost during a create of %d booking(s) (%s); sending it again",
                len(requests),
                exc.detail,
            )
        return await self._create_many(requests)

    async def _create_many(self, requests: Sequence[CreateRequest]) -> list[CreateOutcome]:
        async with self.raw() as conn:
            inserted = await self._insert_batch(conn, create_columns(requests))
            if len(inserted) < len(requests):  # committed by an earlier try of this call?
                inserted |= {
                    row["id"]
                    for row in await conn.fetch(
                        "SELECT id FROM bookings WHERE id = ANY($1::uuid[])",
                        [r.booking.event.booking_id for r in requests],
                    )
                }
            outcomes = []
            for r in requests:
                event = r.booking.event
                if event.booking_id in inserted:
                    outcomes.append(
                        CreateOutcome(
                            Created.NEW, event.booking_id, event.trace_id, BookingStatus.PENDING
                        )
                    )
                else:
                    outcomes.append(await self._existing_for_key(conn, r))
            return outcomes

    async def _insert_batch(
        self, conn: asyncpg.Connection, columns: list[list[Any]]
    ) -> set[uuid.UUID]:
        return {row["booking_id"] for row in await conn.fetch(_INSERT_MANY, *columns)}

    async def _existing_for_key(
        self, conn: asyncpg.Connection, request: CreateRequest
    ) -> CreateOutcome:
        existing = await conn.fetchrow(_BY_IDEMPOTENCY_KEY, request.idempotency_key)
        if existing is None:  # the holder of the key was purged meanwhile: insert again
            return (await self.create_many([request]))[0]
        same = existing["request_fingerprint"] == request.fingerprint
        return CreateOutcome(
            Created.REPLAYED if same else Created.KEY_REUSED,
            existing["id"],
            existing["trace_id"],
            BookingStatus(existing["status"]),
        )

    # -- read ----------------------------------------------------------------------

    async def get(self, booking_id: uuid.UUID) -> dict[str, Any] | None:
        """The whole booking, as a row (the API's view is built from it)."""
        async with self.raw() as conn:
            row = await conn.fetchrow(
                "SELECT id, user_id, user_name, gender, dob, services, base_price, final_price, "
                "status, fail_reason, history, trace_id, created_at, updated_at, completed_at "
                "FROM bookings WHERE id = $1",
                booking_id,
            )
        return None if row is None else dict(row)

    # -- transitions ---------------------------------------------------------------

    async def apply_pending(
        self, transitions: Sequence[Transition]
    ) -> dict[uuid.UUID, dt.datetime]:
        """Store results' transitions of PENDING bookings in one statement.

        Returns the creation time of each booking it changed; a booking that was
        no longer PENDING is left alone (its result takes the one-by-one path).
        A booking listed twice (a duplicate delivery) is changed once.
        """
        if not transitions:
            return {}
        async with self.raw() as conn:
            rows = await conn.fetch(_APPLY_PENDING, *apply_columns(transitions))
        return {row["id"]: row["created_at"] for row in rows}

    async def sweep(self, rule: Timeout) -> list[SweptBooking]:
        """Apply the timeout rule to every booking it covers, in one statement."""
        async with self.transaction() as tx:
            rows = await tx.conn.fetch(
                _SWEEP,
                rule.status.value,
                rule.fail_reason,
                _json(rule.history),
                rule.at,
                rule.cutoff,
            )
            await tx.conn.execute(
                "INSERT INTO sweep_runs (finished_at, rejected, pending_timeout_seconds) "
                "VALUES ($1, $2, $3)",
                rule.at,
                len(rows),
                int((rule.at - rule.cutoff).total_seconds()),
            )
        return [SweptBooking(row["id"], row["created_at"]) for row in rows]
