"""Many bookings at once, with ``COPY``: the benchmark's year of data and outbox backlog.

Two data sets, both in the shape the booking service itself writes:

- :func:`copy_history`: finished bookings spread over a past period, cloned
  from a few templates (a booking and its result's transition, made by the
  domain code), each with its own id, user, trace id and times, the history
  lines re-stamped to match. Millions of rows load in minutes, where one
  INSERT per booking would take hours.
- :func:`copy_backlog`: PENDING bookings with their ``booking_created`` events
  in the outbox, all committed together, as a broker outage leaves them: the
  relay finds them when it next drains.

Both write through asyncpg's binary ``COPY`` (``copy_records_to_table``), in
chunks, each chunk in the caller's transaction or its own. The column list is
the bookings table's, so this module belongs to the booking package.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import orjson

from medbook import contracts
from medbook.booking.domain import KEEP, NewBooking, Timeout, Transition
from medbook.booking.maintenance import _STATS  # the statement ``bookings stats`` runs
from medbook.booking.store import _SWEEP, _json, outbox_row  # the sweep's own statement
from medbook.booking.validation import user_id_for
from medbook.clock import js_iso

BOOKING_COLUMNS: Final = (
    "id", "user_id", "user_name", "gender", "dob", "services", "base_price", "final_price",
    "status", "fail_reason", "history", "trace_id", "quota_day", "result_id",
    "idempotency_key", "request_fingerprint", "created_at", "updated_at", "completed_at",
)  # fmt: skip
OUTBOX_COLUMNS: Final = ("event", "booking_id", "payload", "headers", "created_at")
CHUNK: Final = 20_000
_USERS: Final = 10_007  # distinct users among the cloned bookings


def _value(value: Any) -> Any:
    return None if value is KEEP else value


@dataclass(frozen=True, slots=True)
class Template:
    """One finished booking to clone: as created, and the result's transition."""

    new: NewBooking
    final: Transition

    def __post_init__(self) -> None:
        if self.final.status is KEEP:
            raise ValueError("a template's transition must set the final status")


@dataclass(frozen=True, slots=True)
class _Shape:
    """A template's values as stored, and the time stamps its history lines carry."""

    gender: str
    dob: dt.date
    services: str
    base_price: int
    final_price: int | None
    status: str
    fail_reason: str | None
    history: str
    created_stamp: str
    final_stamp: str
    holds_unit: bool
    has_result: bool
    took: dt.timedelta

    @classmethod
    def of(cls, template: Template) -> _Shape:
        event, final = template.new.event, template.final
        assert final.status is not KEEP
        return cls(
            gender=event.gender.value,
            dob=event.dob,
            services=orjson.dumps([s.model_dump() for s in event.services]).decode(),
            base_price=event.base_price,
            final_price=_value(final.final_price),
            status=final.status.value,
            fail_reason=_value(final.fail_reason),
            history=orjson.dumps([*template.new.history, *final.history]).decode(),
            created_stamp=js_iso(event.created_at),
            final_stamp=js_iso(final.at),
            holds_unit=_value(final.quota_day) is not None,
            has_result=_value(final.result_id) is not None,
            took=final.at - event.created_at,
        )


def history_rows(
    templates: Sequence[Template],
    count: int,
    *,
    until: dt.datetime,
    period: dt.timedelta,
    seed: int = 7,
) -> Iterator[tuple[Any, ...]]:
    """``count`` finished bookings created within ``period`` before ``until``."""
    if not templates:
        raise ValueError("no template to clone")
    rng = random.Random(seed)
    shapes = [_Shape.of(t) for t in templates]
    names = [f"history-user-{i}" for i in range(_USERS)]
    user_ids = [user_id_for(name) for name in names]
    seconds = period.total_seconds()
    for i in range(count):
        shape = shapes[i % len(shapes)]
        created = until - dt.timedelta(seconds=rng.random() * seconds)
        completed = created + shape.took
        history = shape.history.replace(shape.created_stamp, js_iso(created))
        user = i % _USERS
        yield (
            uuid.UUID(int=rng.getrandbits(128), version=4), user_ids[user], names[user],
            shape.gender, shape.dob, shape.services, shape.base_price, shape.final_price,
            shape.status, shape.fail_reason,
            history.replace(shape.final_stamp, js_iso(completed)),
            f"{rng.getrandbits(128):032x}", completed.date() if shape.holds_unit else None,
            uuid.UUID(int=rng.getrandbits(128), version=4) if shape.has_result else None,
            None, None, created, completed, completed,
        )  # fmt: skip


def _chunks(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def copy_history(
    conn: asyncpg.Connection,
    templates: Sequence[Template],
    count: int,
    *,
    until: dt.datetime,
    period: dt.timedelta = dt.timedelta(days=365),
    seed: int = 7,
    chunk: int = CHUNK,
) -> int:
    """Write ``count`` finished bookings cloned from ``templates``; returns the rows written.

    Each chunk is committed on its own (the data set is a benchmark's, not one unit of work).
    """
    written = 0
    rows = history_rows(templates, count, until=until, period=period, seed=seed)
    for records in _chunks(rows, chunk):
        await conn.copy_records_to_table("bookings", records=records, columns=BOOKING_COLUMNS)
        written += len(records)
    return written


def pending_row(new: NewBooking) -> tuple[Any, ...]:
    """A PENDING booking's row, as ``create`` stores it."""
    e = new.event
    return (
        e.booking_id, e.user_id, e.user_name, e.gender.value, e.dob,
        orjson.dumps([s.model_dump() for s in e.services]).decode(), e.base_price, None,
        contracts.BookingStatus.PENDING.value, None, orjson.dumps(list(new.history)).decode(),
        e.trace_id, None, None, None, None, e.created_at, e.created_at, None,
    )  # fmt: skip


async def copy_backlog(
    conn: asyncpg.Connection,
    bookings: Sequence[tuple[NewBooking, Mapping[str, str]]],
    *,
    chunk: int = CHUNK,
) -> int:
    """Write PENDING bookings and their ``booking_created`` events (each with the trace
    context its event carries) in one transaction."""
    async with conn.transaction():
        for start in range(0, len(bookings), chunk):
            part = bookings[start : start + chunk]
            await conn.copy_records_to_table(
                "bookings", records=[pending_row(new) for new, _ in part], columns=BOOKING_COLUMNS
            )
            await conn.copy_records_to_table(
                "outbox",
                records=[
                    (*outbox_row(new.event, new.event.booking_id, headers), new.event.created_at)
                    for new, headers in part
                ],
                columns=OUTBOX_COLUMNS,
            )
    return len(bookings)


async def sample_ids(conn: asyncpg.Connection, rows: int, sample: int) -> list[str]:
    """About ``sample`` booking ids drawn from a few percent of the table's pages (ids are
    random, so any page is a random draw): GETs that are not all of the newest rows."""
    percent = min(100.0, 300.0 * sample / max(rows, 1))
    found = await conn.fetch(
        f"SELECT id::text FROM bookings TABLESAMPLE SYSTEM ({percent:f}) LIMIT $1",  # noqa: S608
        sample,
    )
    return [row["id"] for row in found]


_RELATIONS: Final = frozenset({"bookings", "outbox"})


def _relation(name: str) -> str:
    if name not in _RELATIONS:
        raise ValueError(f"not one of medbook's tables: {name!r}")
    return name


async def analyze(conn: asyncpg.Connection, *relations: str, vacuum: bool = False) -> None:
    """``ANALYZE`` (``VACUUM (ANALYZE)`` when asked) each table, as autovacuum would have."""
    for relation in map(_relation, relations):
        await conn.execute(f"VACUUM (ANALYZE) {relation}" if vacuum else f"ANALYZE {relation}")


async def relation_bytes(conn: asyncpg.Connection, relation: str, *, vacuum: bool = False) -> int:
    """The size of a table with its indexes, in bytes (after a plain VACUUM when asked)."""
    relation = _relation(relation)
    if vacuum:
        await conn.execute(f"VACUUM {relation}")
    return int(await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", relation))


async def _explain(conn: asyncpg.Connection, statement: str, *args: Any) -> list[str]:
    """The plan, executed (ANALYZE) in a transaction that is rolled back."""
    plan: list[str] = []
    transaction = conn.transaction()
    await transaction.start()
    try:
        for row in await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", *args):
            plan.append(row[0])
    finally:
        await transaction.rollback()
    return plan


async def explain_stats(conn: asyncpg.Connection, since: dt.datetime) -> list[str]:
    """The plan of ``bookings stats``'s outcome query, run and rolled back."""
    return await _explain(conn, _STATS, since)


async def explain_sweep(conn: asyncpg.Connection, rule: Timeout) -> list[str]:
    """The plan of the timeout sweep's UPDATE, run and rolled back (nothing is swept)."""
    return await _explain(
        conn, _SWEEP, rule.status.value, rule.fail_reason, _json(rule.history), rule.at,
        rule.cutoff,
    )  # fmt: skip
