"""The benchmark's data sets, made by medbook's own domain code: a year of bookings, a backlog.

A year of data is cloned (``booking/loader.py``) from templates that run the
benchmark's mix through both services' rules: each template is a booking as
``domain.create`` makes it, decided by the discount worker's ``decision.plan``
and applied by ``domain.apply_result`` (some cancelled while PENDING instead),
so the rows, history lines included, have the sizes and shapes of real ones.
The backlog is PENDING bookings with their ``booking_created`` events, as a
broker outage leaves them in the outbox.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
import uuid
from dataclasses import dataclass

import asyncpg

from medbook.booking import catalog, domain, loader
from medbook.booking.database import create_database
from medbook.booking.domain import Booking, BookingRequest, NewBooking
from medbook.booking.loader import Template
from medbook.booking.maintenance import BookingMaintenance
from medbook.booking.store import BookingStore
from medbook.booking.validation import parse_booking_request
from medbook.cli.loadgen import LoadProfile, booking_bodies
from medbook.clock import utcnow
from medbook.config import PolicyDefaults
from medbook.contracts import BookingStatus
from medbook.discount import decision
from medbook.discount.policy import QuotaPolicy

TEMPLATES = 200
CANCELLED_EVERY = 20  # one template in 20 is a booking cancelled while PENDING


def _requests(count: int, seed: int) -> list[BookingRequest]:
    requests = []
    for _, body in booking_bodies(LoadProfile(bookings=count, concurrency=1, seed=seed)):
        request, problems = parse_booking_request(body, utcnow().date())
        assert request is not None, problems
        requests.append(request)
    return requests


def _new(request: BookingRequest, now: dt.datetime) -> tuple[NewBooking, dict[str, str]]:
    trace_id = secrets.token_hex(16)
    new = domain.create(request, catalog.BY_NAME, now, booking_id=uuid.uuid4(), trace_id=trace_id)
    return new, {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}


def history_templates(now: dt.datetime, *, seed: int = 11) -> list[Template]:
    """Finished bookings of the benchmark's mix, decided by medbook's rules."""
    policy = QuotaPolicy.from_defaults(PolicyDefaults(daily_limit=100))
    templates = []
    for i, request in enumerate(_requests(TEMPLATES, seed)):
        new, _ = _new(request, now)
        pending = Booking(new.event.booking_id, BookingStatus.PENDING)
        finished = now + dt.timedelta(milliseconds=40 + i % 60)
        if i % CANCELLED_EVERY == CANCELLED_EVERY - 1:
            transition = domain.cancel(pending, finished).transition
        else:
            plan = decision.plan(new.event, policy, now)
            result, _ = plan.resolve(granted=i % 10 != 0)  # some find the quota spent
            transition = domain.apply_result(pending, result, finished).transition
        assert transition is not None
        templates.append(Template(new, transition))
    return templates


def backlog_bookings(
    count: int, now: dt.datetime, *, seed: int = 13
) -> list[tuple[NewBooking, dict[str, str]]]:
    """``count`` new bookings of the mix, each with the trace context its event carries."""
    return [_new(request, now) for request in _requests(count, seed)]


# -- loading and timing against PostgreSQL ------------------------------------------------


@dataclass
class Loaded:
    rows: int
    seconds: float
    sample: list[str]  # ids of some of the rows, for the GET probe
    table_bytes: int  # the bookings table with its indexes, after VACUUM ANALYZE


async def load_year(database_url: str, count: int, *, sample: int = 2000) -> Loaded:
    """``count`` finished bookings of the past year (COPY), then VACUUM ANALYZE, as a year
    of autovacuum would have left them."""
    conn = await asyncpg.connect(database_url)
    try:
        now = utcnow()
        started = time.perf_counter()
        rows = await loader.copy_history(conn, history_templates(now), count, until=now)
        await loader.analyze(conn, "bookings", vacuum=True)
        seconds = time.perf_counter() - started
        ids = await loader.sample_ids(conn, count, sample)
        size = await loader.relation_bytes(conn, "bookings")
    finally:
        await conn.close()
    return Loaded(rows, seconds, ids, size)


async def load_backlog(database_url: str, count: int) -> tuple[float, list[str]]:
    """``count`` PENDING bookings with their events in the outbox, committed together (COPY);
    returns the seconds it took and the bookings' ids."""
    bookings = backlog_bookings(count, utcnow())
    conn = await asyncpg.connect(database_url)
    try:
        started = time.perf_counter()
        await loader.copy_backlog(conn, bookings)
        await loader.analyze(conn, "bookings", "outbox")
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    return seconds, [str(new.event.booking_id) for new, _ in bookings]


@dataclass
class TimedQuery:
    name: str
    seconds: float  # the best of a few runs, as the command sees it
    plan: list[str]  # EXPLAIN (ANALYZE, BUFFERS)


async def time_operations(database_url: str, pending_timeout: dt.timedelta) -> list[TimedQuery]:
    """How long ``medbook bookings stats`` (its two queries, as the command runs them) and a
    timeout sweep (as ``medbook-cleanup`` runs it: the UPDATE, its outbox rows, its run log)
    take against the table as it is, the best of three, each with its plan."""
    store = BookingStore(
        create_database(database_url, max_size=2, connect_timeout=5, statement_timeout=60)
    )
    await store.connect()
    conn = await asyncpg.connect(database_url)
    try:
        bookings = BookingMaintenance(conn)
        since = utcnow() - dt.timedelta(minutes=60)  # ``bookings stats``'s default window

        async def stats() -> None:
            await bookings.outcomes(since)
            await bookings.backlog()

        async def sweep() -> None:
            await store.sweep(domain.time_out(pending_timeout, utcnow()))

        timed = []
        for name, operation in (("bookings stats", stats), ("sweep", sweep)):
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                await operation()
                best = min(best, time.perf_counter() - started)
            timed.append(TimedQuery(name, best, []))
        rule = domain.time_out(pending_timeout, utcnow())
        timed[0].plan = await loader.explain_stats(conn, since)
        timed[1].plan = await loader.explain_sweep(conn, rule)
    finally:
        await conn.close()
        await store.disconnect()
    return timed


async def relation_bytes(database_url: str, relation: str, *, vacuum: bool = False) -> int:
    """The size of a table with its indexes (after a plain VACUUM when asked)."""
    conn = await asyncpg.connect(database_url)
    try:
        return await loader.relation_bytes(conn, relation, vacuum=vacuum)
    finally:
        await conn.close()
