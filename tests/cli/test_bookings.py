"""`medbook bookings`: the live table, counts by status and reason, and a purge that deletes
exactly what it says and never an event still in the outbox."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import asyncpg
import orjson

from medbook.cli.bookings import BookingsView
from tests.cli.conftest import Medbook, explain
from tests.helpers import Infra, Stack, booking_body, eligible_body


async def test_watch_shows_recent_bookings_and_their_status_changes(
    medbook: Medbook, stack: Stack
) -> None:
    booking = await stack.wait_terminal(
        (await stack.book(eligible_body("Asha"))).json()["bookingId"]
    )
    result = await medbook("bookings", "watch", "--count", "1")
    assert result.exit_code == 0, explain(result)
    row = next(line for line in result.stdout.splitlines() if booking["id"][:8] in line)
    assert "Asha" in row and "CONFIRMED" in row and "450 -> 396" in row
    assert "Discount Processed. Status: CONFIRMED. Price: 396" in row
    assert "0 PENDING in all" in result.stdout

    # Between two refreshes, a change of status is listed.
    connection = await asyncpg.connect(medbook.database_url)
    try:
        view = BookingsView(connection, limit=10)
        await view.frame()
        await connection.execute(
            "UPDATE bookings SET status = 'CANCELLED' WHERE id = $1", uuid.UUID(booking["id"])
        )
        await view.frame()
    finally:
        await connection.close()
    assert [(i, a, b) for _, i, a, b in view.changes] == [(booking["id"], "CONFIRMED", "CANCELLED")]


async def test_stats_counts_by_status_and_reason(medbook: Medbook, stack: Stack) -> None:
    bodies = [
        eligible_body(),
        booking_body(gender="Male"),
        booking_body(gender="Other"),
        booking_body(userName="fail_test_user"),
    ]
    for body in bodies:
        await stack.wait_terminal((await stack.book(body)).json()["bookingId"])
    result = await medbook("bookings", "stats", "--since", "10m", "--json")
    assert result.exit_code == 0, explain(result)
    stats = json.loads(result.stdout)
    assert stats["total"] == 4
    assert stats["by_status"] == stats["recent_by_status"] == {"CONFIRMED": 3, "REJECTED": 1}
    groups = {(g["status"], g["reason"]): g["total"] for g in stats["groups"]}
    assert groups == {
        ("CONFIRMED", "discount applied"): 1,
        ("CONFIRMED", "base price"): 2,
        ("REJECTED", "User is blacklisted"): 1,
    }
    assert all(g["seconds_p50"] is not None for g in stats["groups"])
    assert stats["oldest_pending_seconds"] is None

    result = await medbook("bookings", "stats")
    assert result.exit_code == 0, explain(result)
    assert "4 booking(s); the last 60m: 4 created" in result.stdout


async def insert_booking(
    connection: asyncpg.Connection,
    status: str,
    created_ago: dt.timedelta,
    updated_ago: dt.timedelta | None = None,
    outbox_event: str | None = None,
) -> uuid.UUID:
    now = dt.datetime.now(dt.UTC)
    booking_id = uuid.uuid4()
    await connection.execute(
        """
        INSERT INTO bookings (id, user_id, user_name, gender, dob, services, base_price, status,
                              history, trace_id, created_at, updated_at)
        VALUES ($1, 'u', 'Old Booking', 'Female', '1990-01-01', '[]', 300, $2, '[]', $3, $4, $5)
        """,
        booking_id,
        status,
        "ab" * 16,
        now - created_ago,
        now - (updated_ago or created_ago),
    )
    if outbox_event:
        await connection.execute(
            "INSERT INTO outbox (event, booking_id, payload) VALUES ($1, $2, $3)",
            outbox_event,
            booking_id,
            orjson.dumps({"bookingId": str(booking_id)}).decode(),
        )
    return booking_id


async def test_purge_deletes_exactly_the_old_final_bookings_it_names(infra: Infra) -> None:
    medbook = Medbook("http://127.0.0.1:1", infra.redis_url, infra.amqp_url, infra.database_url)
    hours, minutes = dt.timedelta(hours=2), dt.timedelta(minutes=5)
    connection = await asyncpg.connect(infra.database_url)
    try:
        old_confirmed = await insert_booking(connection, "CONFIRMED", hours)
        old_rejected = await insert_booking(connection, "REJECTED", hours)
        in_flight = await insert_booking(
            connection, "CANCELLED", hours, outbox_event="quota_released"
        )
        pending = await insert_booking(connection, "PENDING", hours, outbox_event="booking_created")
        recent = await insert_booking(connection, "CONFIRMED", minutes)
        touched = await insert_booking(connection, "CONFIRMED", hours, updated_ago=minutes)

        async def remaining() -> tuple[set[uuid.UUID], set[uuid.UUID]]:
            bookings = {r["id"] for r in await connection.fetch("SELECT id FROM bookings")}
            events = {
                r["booking_id"] for r in await connection.fetch("SELECT booking_id FROM outbox")
            }
            return bookings, events

        everything = {old_confirmed, old_rejected, in_flight, pending, recent, touched}
        result = await medbook("bookings", "purge", "--older-than", "60m", input="n\n")
        assert result.exit_code == 1, explain(result)
        assert "2 booking(s) last changed before" in result.stderr
        assert "(CONFIRMED 1, REJECTED 1)" in result.stderr
        assert "1 kept: their events are still in the outbox" in result.stderr
        assert "1 PENDING kept (--include-pending)" in result.stderr
        assert await remaining() == (everything, {in_flight, pending})

        result = await medbook("bookings", "purge", "--older-than", "60m", "--yes", "--json")
        assert result.exit_code == 0, explain(result)
        report = json.loads(result.stdout)
        assert report["deleted"] == report["matched"] == {"CONFIRMED": 1, "REJECTED": 1}
        assert (report["events_deleted"], report["kept_in_flight"], report["kept_pending"]) == (
            0,
            1,
            1,
        )
        assert await remaining() == (
            everything - {old_confirmed, old_rejected},
            {in_flight, pending},
        )

        result = await medbook("bookings", "purge", "--older-than", "1h", "--include-pending", "-y")
        assert result.exit_code == 0, explain(result)
        assert "deleted 1 booking(s) (PENDING 1) and 1 outbox event(s)" in result.stdout
        assert "warning: deleting PENDING bookings" in result.stderr
        assert await remaining() == ({in_flight, recent, touched}, {in_flight})
    finally:
        await connection.close()
