"""The booking service's PostgreSQL statements: bookings, their outbox events, sweeps.

Each state change is one conditional statement (or one transaction with the
outbox rows it causes): a booking and its ``booking_created`` event are
inserted together or not at all, a result is applied only to a ``PENDING``
booking with its history appended in the same statement, and a cancel or a
sweep emits its ``quota_released`` events in the transaction that changes the
booking. The hot paths (create, apply a result) use the asyncpg connection
that ``databases`` wraps, with prepared statements; the rest goes through
``databases``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg
import orjson
from databases import Database

from medbook import contracts
from medbook.contracts import (
    BookingCreated,
    BookingStatus,
    DiscountProcessed,
    Event,
    QuotaReleased,
    ReleaseReason,
    SagaState,
)
from medbook.telemetry import inject_headers


def iso(moment: dt.datetime) -> str:
    """``2026-01-30T10:00:00.123Z``, the reference's (JavaScript) timestamp form."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
    ON CONFLICT (idempotency_key) DO NOTHING
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

_APPLY_RESULTS = """
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

_RECORD_LATE_RESULT = """
UPDATE bookings
SET history = history || $3::jsonb, result_id = $2, updated_at = $4
WHERE id = $1 AND status <> 'PENDING' AND result_id IS DISTINCT FROM $2
RETURNING status, quota_day
"""

_INSERT_OUTBOX = """
INSERT INTO outbox (event, booking_id, payload, headers) VALUES ($1, $2, $3, $4::jsonb)
"""


class Created(StrEnum):
    NEW = "new"
    REPLAYED = "replayed"
    KEY_REUSED = "key_reused"


@dataclass(frozen=True, slots=True)
class CreateRequest:
    event: BookingCreated
    history: Sequence[str]
    headers: Mapping[str, str]
    idempotency_key: str | None
    fingerprint: str


@dataclass(frozen=True, slots=True)
class CreateOutcome:
    created: Created
    booking_id: uuid.UUID
    trace_id: str
    status: BookingStatus


class ResultOutcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"
    UNKNOWN_BOOKING = "unknown_booking"


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    outcome: ResultOutcome
    created_at: dt.datetime | None = None
    current_status: BookingStatus | None = None
    released: bool = False


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"
    NOT_FOUND = "not_found"
    NOT_CANCELLABLE = "not_cancellable"


@dataclass(frozen=True, slots=True)
class SweptBooking:
    booking_id: uuid.UUID
    created_at: dt.datetime


def history_entry(moment: dt.datetime, text: str) -> str:
    return f"[{iso(moment)}] {text}"


def result_history(result: DiscountProcessed, now: dt.datetime) -> list[str]:
    """The result's steps, then its outcome, as the reference's history lines."""
    entries = [
        history_entry(step.at, f"[{step.state.value}] {step.message}") for step in result.steps
    ]
    if result.status is BookingStatus.CONFIRMED:
        entries.append(
            history_entry(
                now, f"Discount Processed. Status: CONFIRMED. Price: {result.final_price}"
            )
        )
    else:
        entries.append(
            # A reason may end a sentence of its own ("... try again tomorrow."): one full stop.
            history_entry(
                now, f"Failed: {(result.reason or '').rstrip('.')}. Status: {result.status.value}"
            )
        )
    return entries


def outbox_row(
    event: Event, booking_id: uuid.UUID, message: contracts._Message, headers: Mapping[str, str]
) -> tuple[str, uuid.UUID, str, str]:
    return (
        event.value,
        booking_id,
        contracts.encode(message).decode(),
        orjson.dumps(dict(headers)).decode(),
    )


async def _reset_connection(connection: asyncpg.Connection) -> None:
    """Replaces asyncpg's per-release reset query (a measured ~30% of a booking's CPU).

    Our statements leave no session state behind (no LISTEN, SET, advisory
    lock or open cursor), so the only thing to undo is an interrupted
    transaction.
    """
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


def create_database(
    dsn: str, *, max_size: int, connect_timeout: float, statement_timeout: float
) -> Database:
    return Database(
        dsn,
        min_size=0,
        max_size=max_size,
        timeout=connect_timeout,
        command_timeout=statement_timeout,
        reset=_reset_connection,
        max_inactive_connection_lifetime=60,
    )


class BookingStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @contextlib.asynccontextmanager
    async def raw(self) -> AsyncIterator[asyncpg.Connection]:
        """The asyncpg connection ``databases`` holds for this task."""
        async with self.db.connection() as connection:
            yield connection.raw_connection

    async def ping(self) -> None:
        await self.db.fetch_val("SELECT 1")

    async def count_pending(self) -> int:
        return int(
            await self.db.fetch_val("SELECT count(*) FROM bookings WHERE status = 'PENDING'")
        )

    # -- create --------------------------------------------------------------------

    async def create_many(self, requests: Sequence[CreateRequest]) -> list[CreateOutcome]:
        """Insert bookings with their ``booking_created`` outbox rows, in one statement.

        A request whose Idempotency-Key is already taken is answered with the
        booking that holds the key (a replay, or a key reused with another body).
        """
        columns: list[list[Any]] = [[] for _ in range(14)]
        for r in requests:
            e = r.event
            values = (
                e.booking_id, e.user_id, e.user_name, e.gender.value, e.dob,
                orjson.dumps([s.model_dump() for s in e.services]).decode(), e.base_price,
                orjson.dumps(list(r.history)).decode(), e.trace_id, r.idempotency_key,
                r.fingerprint if r.idempotency_key else None, e.created_at,
                contracts.encode(e).decode(), orjson.dumps(dict(r.headers)).decode(),
            )  # fmt: skip
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        async with self.raw() as conn:
            inserted = {row["booking_id"] for row in await conn.fetch(_INSERT_MANY, *columns)}
            outcomes = []
            for r in requests:
                if r.event.booking_id in inserted:
                    outcomes.append(
                        CreateOutcome(
                            Created.NEW, r.event.booking_id, r.event.trace_id, BookingStatus.PENDING
                        )
                    )
                else:
                    outcomes.append(await self._existing_for_key(conn, r))
            return outcomes

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

    async def get(self, booking_id: uuid.UUID) -> Mapping[str, Any] | None:
        return await self.db.fetch_one(
            "SELECT id, user_id, user_name, gender, dob, services, base_price, final_price, "
            "status, fail_reason, history, trace_id, created_at, updated_at, completed_at "
            "FROM bookings WHERE id = :id",
            {"id": booking_id},
        )

    # -- results -------------------------------------------------------------------

    async def apply_results(self, results: Sequence[DiscountProcessed]) -> list[ApplyOutcome]:
        """Apply results to PENDING bookings in one statement; the rest are late or repeats."""
        now = utcnow()
        columns: list[list[Any]] = [[] for _ in range(7)]
        for r in results:
            values = (
                r.booking_id, r.status.value, r.final_price, r.reason, r.quota_day, r.result_id,
                orjson.dumps(result_history(r, now)).decode(),
            )  # fmt: skip
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        async with self.raw() as conn:
            rows = await conn.fetch(_APPLY_RESULTS, *columns, now)
            # A booking listed twice in the batch (a duplicate delivery) is applied once;
            # its second result takes the late path and is recognised there as a repeat.
            applied = {row["id"]: row["created_at"] for row in rows}
            outcomes = []
            for r in results:
                created_at = applied.pop(r.booking_id, None)
                if created_at is not None:
                    outcomes.append(ApplyOutcome(ResultOutcome.APPLIED, created_at=created_at))
                else:
                    outcomes.append(await self._late_result(conn, r, now))
            return outcomes

    async def _late_result(
        self, conn: asyncpg.Connection, result: DiscountProcessed, now: dt.datetime
    ) -> ApplyOutcome:
        async with conn.transaction():
            summary = f"{result.status.value}" + (
                f" at {result.final_price}"
                if result.status is BookingStatus.CONFIRMED
                else f": {result.reason}"
            )
            row = await conn.fetchrow(
                _RECORD_LATE_RESULT,
                result.booking_id,
                result.result_id,
                orjson.dumps(
                    [history_entry(now, f"Late discount result ignored ({summary})")]
                ).decode(),
                now,
            )
            if row is None:
                exists = await conn.fetchval(
                    "SELECT 1 FROM bookings WHERE id = $1", result.booking_id
                )
                return ApplyOutcome(
                    ResultOutcome.DUPLICATE if exists else ResultOutcome.UNKNOWN_BOOKING
                )
            release = result.quota_day is not None and row["quota_day"] is None
            if release:
                await self._emit_release(
                    conn, result.booking_id, result.quota_day, ReleaseReason.LATE_RESULT, now
                )
            return ApplyOutcome(
                ResultOutcome.LATE, current_status=BookingStatus(row["status"]), released=release
            )

    async def _emit_release(
        self,
        conn: asyncpg.Connection,
        booking_id: uuid.UUID,
        day: dt.date | None,
        reason: ReleaseReason,
        now: dt.datetime,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        message = QuotaReleased(booking_id=booking_id, day=day, reason=reason)
        await conn.execute(
            _INSERT_OUTBOX,
            *outbox_row(
                Event.QUOTA_RELEASED,
                booking_id,
                message,
                headers if headers is not None else inject_headers(),
            ),
        )
        if reason is ReleaseReason.LATE_RESULT:
            await conn.execute(
                "UPDATE bookings SET history = history || $2::jsonb WHERE id = $1",
                booking_id,
                orjson.dumps(
                    [
                        history_entry(
                            now, f"[{SagaState.COMPENSATING.value}] Quota unit of {day} released"
                        )
                    ]
                ).decode(),
            )

    # -- cancel --------------------------------------------------------------------

    async def cancel(self, booking_id: uuid.UUID) -> tuple[CancelOutcome, BookingStatus | None]:
        """Cancel a PENDING or CONFIRMED booking; its quota unit goes back through the outbox."""
        now = utcnow()
        async with self.raw() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT status, quota_day FROM bookings WHERE id = $1 FOR UPDATE", booking_id
            )
            if row is None:
                return CancelOutcome.NOT_FOUND, None
            previous = BookingStatus(row["status"])
            if previous not in (BookingStatus.PENDING, BookingStatus.CONFIRMED):
                return CancelOutcome.NOT_CANCELLABLE, previous
            day = row["quota_day"]
            note = f"Booking Cancelled (was {previous.value})"
            if day is not None:
                note += f"; quota unit of {day} released"
            await conn.execute(
                """
                UPDATE bookings
                SET status = 'CANCELLED', quota_day = NULL, history = history || $2::jsonb,
                    updated_at = $3, completed_at = COALESCE(completed_at, $3)
                WHERE id = $1
                """,
                booking_id,
                orjson.dumps([history_entry(now, note)]).decode(),
                now,
            )
            # A PENDING booking may hold a unit whose result is still on its way (or
            # lost): the worker releases whatever it holds for this booking, if anything.
            if day is not None or previous is BookingStatus.PENDING:
                await self._emit_release(conn, booking_id, day, ReleaseReason.CANCELLED, now)
            return CancelOutcome.CANCELLED, previous

    # -- sweep ---------------------------------------------------------------------

    async def sweep(
        self, pending_timeout: dt.timedelta, headers: Mapping[str, str]
    ) -> list[SweptBooking]:
        """Reject bookings PENDING for longer than the timeout, in one statement."""
        now = utcnow()
        entry = history_entry(now, f"Failed: {contracts.TIMEOUT_REASON}. Status: REJECTED")
        async with self.raw() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                UPDATE bookings
                SET status = 'REJECTED', fail_reason = $1, history = history || $2::jsonb,
                    updated_at = $3, completed_at = $3
                WHERE status = 'PENDING' AND created_at < $4
                RETURNING id, created_at
                """,
                contracts.TIMEOUT_REASON,
                orjson.dumps([entry]).decode(),
                now,
                now - pending_timeout,
            )
            if rows:
                # The sweep cannot know whether the worker reserved a unit before the
                # result went missing; the worker releases one only if it exists.
                await conn.executemany(
                    _INSERT_OUTBOX,
                    [
                        outbox_row(
                            Event.QUOTA_RELEASED,
                            row["id"],
                            QuotaReleased(booking_id=row["id"], reason=ReleaseReason.SWEPT),
                            headers,
                        )
                        for row in rows
                    ],
                )
            await conn.execute(
                "INSERT INTO sweep_runs (finished_at, rejected, pending_timeout_seconds) "
                "VALUES ($1, $2, $3)",
                now,
                len(rows),
                int(pending_timeout.total_seconds()),
            )
        return [SweptBooking(row["id"], row["created_at"]) for row in rows]


def booking_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A booking as the API answers it (the reference's fields, plus traceId and completedAt)."""
    services = row["services"]
    history = row["history"]
    return {
        "id": str(row["id"]),
        "userId": row["user_id"],
        "userName": row["user_name"],
        "gender": row["gender"],
        "dob": row["dob"].isoformat(),
        "services": orjson.loads(services) if isinstance(services, str | bytes) else services,
        "basePrice": row["base_price"],
        "finalPrice": row["final_price"],
        "status": row["status"],
        "failReason": row["fail_reason"],
        "history": orjson.loads(history) if isinstance(history, str | bytes) else history,
        "traceId": row["trace_id"],
        "createdAt": iso(row["created_at"]),
        "updatedAt": iso(row["updated_at"]),
        "completedAt": iso(row["completed_at"]) if row["completed_at"] else None,
    }
