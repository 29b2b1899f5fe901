"""Fault drills: each breaks one of the saga's promises on purpose, on real servers.

The services run as real processes (so they can be killed and signalled) and
the timeout sweep is off: a booking can only finish through the saga itself.
After every drill: every booking is final, none has two results, and the quota
counter equals the bookings holding a discount (no unit leaked or spent twice).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from medbook.devstack.servers import PostgresServer, RabbitMQServer, RedisServer
from medbook.discount.quota import counter_key, members_key
from tests.helpers import Infra, ProcessServices, eligible_body, eventually, today

pytestmark = pytest.mark.slow


class Drill:
    """The system under test, and what the drill checks afterwards."""

    def __init__(self, infra: Infra, services: ProcessServices) -> None:
        self.infra = infra
        self.services = services
        self.api = httpx.AsyncClient(base_url=services.api_url, timeout=15)
        self.redis = Redis.from_url(infra.redis_url)
        self.ids: list[str] = []

    async def close(self) -> None:
        await self.api.aclose()
        await self.redis.aclose()

    async def book_many(
        self, count: int, concurrency: int = 16, **body: Any
    ) -> list[httpx.Response]:
        semaphore = asyncio.Semaphore(concurrency)

        async def one() -> httpx.Response:
            async with semaphore:
                return await self.api.post("/booking", json=eligible_body(**body))

        responses = await asyncio.gather(*(one() for _ in range(count)))
        self.ids += [r.json()["bookingId"] for r in responses if r.status_code == 201]
        return responses

    async def rows(self) -> list[asyncpg.Record]:
        connection = await asyncpg.connect(self.infra.database_url)
        try:
            return await connection.fetch(
                "SELECT id::text, status, quota_day, history, result_id FROM bookings WHERE id = ANY($1::uuid[])",
                self.ids,
            )
        finally:
            await connection.close()

    async def terminal_count(self) -> int:
        try:
            return sum(r["status"] != "PENDING" for r in await self.rows())
        except (OSError, asyncpg.PostgresError):
            return -1

    async def wait_all_final(self, timeout: float = 60) -> list[asyncpg.Record]:
        await eventually(
            self.terminal_count,
            lambda n: n == len(self.ids),
            timeout=timeout,
            interval=0.25,
            what=f"all {len(self.ids)} bookings final",
        )
        return await self.rows()

    async def assert_saga_intact(self, *, cancellations: bool = False) -> list[asyncpg.Record]:
        rows = await self.wait_all_final()
        assert len(rows) == len(self.ids)
        for row in rows:
            history = json.loads(row["history"])
            outcomes = [h for h in history if "Status: CONFIRMED" in h or "Status: REJECTED" in h]
            late = [h for h in history if "Late discount result" in h]
            if not cancellations:
                assert len(outcomes) == 1, (
                    f"booking {row['id']} has {len(outcomes)} results: {history}"
                )
                assert not late, f"booking {row['id']} saw a second result: {history}"
            assert len(outcomes) + len(late) <= 1 or cancellations
            assert row["result_id"] is not None or row["status"] == "CANCELLED"
        discounted = sum(r["quota_day"] is not None for r in rows)
        await eventually(
            lambda: self.quota(),
            lambda q: q == (discounted, discounted),
            timeout=20,
            what=f"quota counter and reservations == {discounted} discounted bookings",
        )
        return rows

    async def quota(self) -> tuple[int, int]:
        counter = int(await self.redis.get(counter_key(today())) or 0)
        members = int(await self.redis.scard(members_key(today())))
        return counter, members


@pytest.fixture
async def drill(infra: Infra, tmp_path: Path) -> AsyncIterator[Drill]:
    # Admission control off: the drills pile up backlogs on purpose (see test_admission.py).
    env = {"MEDBOOK_DAILY_LIMIT": "120", "MEDBOOK_MAX_PENDING": "0"}
    services = ProcessServices(infra, tmp_path, extra_env=env).start()
    running = Drill(infra, services)
    try:
        yield running
    finally:
        await running.close()
        services.stop()


def kill(process: Any) -> None:
    process.process.send_signal(signal.SIGKILL)
    process.process.wait(10)


async def test_worker_killed_mid_batch_then_restarted(drill: Drill) -> None:
    drill.services.discount.stop()  # let a batch pile up, then kill the worker inside it
    await drill.book_many(300)
    drill.services.start_discount()
    await eventually(
        drill.terminal_count, lambda n: n >= 30, interval=0.01, what="some bookings final"
    )
    kill(drill.services.discount)
    assert 0 < await drill.terminal_count() < 300, "the kill must land in the middle of the batch"
    drill.services.start_discount()
    rows = await drill.assert_saga_intact()
    statuses = [r["status"] for r in rows]
    assert statuses.count("CONFIRMED") == 120  # the daily limit, exactly
    assert statuses.count("REJECTED") == 180


async def test_broker_down_creation_still_answers_then_everything_finishes(
    drill: Drill, rabbit_server: RabbitMQServer
) -> None:
    rabbit_server.stop()
    try:
        started = time.monotonic()
        responses = await drill.book_many(50)
        assert {r.status_code for r in responses} == {201}
        assert time.monotonic() - started < 10
        ready = await drill.api.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"] == "down"
        connection = await asyncpg.connect(drill.infra.database_url)
        assert (
            await connection.fetchval("SELECT count(*) FROM outbox") == 50
        )  # the events wait here
        await connection.close()
    finally:
        rabbit_server.start()
    await drill.assert_saga_intact()


async def test_broker_restarted_mid_flight_loses_and_doubles_nothing(
    drill: Drill, rabbit_server: RabbitMQServer
) -> None:
    creating = asyncio.create_task(drill.book_many(300, concurrency=8))
    await eventually(drill.terminal_count, lambda n: n >= 20, interval=0.01, what="saga under way")
    await asyncio.to_thread(rabbit_server.stop)
    await asyncio.to_thread(rabbit_server.start)
    responses = await creating
    assert {r.status_code for r in responses} == {201}
    await drill.assert_saga_intact()


async def test_redis_down_under_load_no_discount_without_its_quota_check(
    drill: Drill, redis_server: RedisServer
) -> None:
    creating = asyncio.create_task(drill.book_many(200, concurrency=8))
    await eventually(drill.terminal_count, lambda n: n >= 20, interval=0.01, what="saga under way")
    await asyncio.to_thread(redis_server.stop)
    try:
        await asyncio.sleep(2)
        responses = await creating
        assert {r.status_code for r in responses} == {201}  # the API does not need Redis
        frozen = await drill.terminal_count()
        await asyncio.sleep(1)
        assert await drill.terminal_count() == frozen  # no booking finishes without its quota check
    finally:
        await asyncio.to_thread(redis_server.start)
    rows = await drill.assert_saga_intact()
    holders = {m.decode() for m in await drill.redis.smembers(members_key(today()))}
    discounted = {r["id"] for r in rows if r["quota_day"] is not None}
    assert discounted == holders  # every discount has its reservation, and no reservation is spare


async def test_postgres_down_503_fast_nothing_half_written_results_wait(
    drill: Drill, postgres_server: PostgresServer
) -> None:
    drill.services.discount.stop()
    await drill.book_many(40)
    postgres_server.stop()
    try:
        started = time.monotonic()
        response = await drill.api.post("/booking", json=eligible_body())
        assert response.status_code == 503
        assert time.monotonic() - started < 2
        assert response.json()["code"] == 503
        drill.services.start_discount()  # results are produced while the database is away
        await asyncio.sleep(3)
    finally:
        postgres_server.start()
    await drill.assert_saga_intact()
    connection = await asyncpg.connect(drill.infra.database_url)
    try:
        assert (
            await connection.fetchval("SELECT count(*) FROM bookings") == 40
        )  # nothing half-written
        assert await connection.fetchval("SELECT count(*) FROM outbox") == 0  # the relay resumed
    finally:
        await connection.close()


async def test_sigterm_to_the_booking_service_answers_in_flight_requests(drill: Drill) -> None:
    async def client(results: list[int | str]) -> None:
        for _ in range(40):
            try:
                response = await drill.api.post("/booking", json=eligible_body())
            except httpx.TransportError as exc:  # the listener is closed: not accepted, fine
                results.append(type(exc).__name__)
                return
            results.append(response.status_code)
            if response.status_code == 201:
                drill.ids.append(response.json()["bookingId"])

    results: list[int | str] = []
    clients = [asyncio.create_task(client(results)) for _ in range(8)]
    await eventually(
        lambda: asyncio.sleep(0, len(drill.ids)), lambda n: n >= 40, what="load running"
    )
    booking = drill.services.booking
    started = time.monotonic()
    booking.process.send_signal(signal.SIGTERM)
    await asyncio.gather(*clients)
    code = await asyncio.to_thread(booking.process.wait, 15)
    assert code == 0
    assert time.monotonic() - started < 15  # within the grace period
    answered = [r for r in results if isinstance(r, int)]
    assert set(answered) == {201}, f"every accepted request was answered with 201: {results}"
    drill.services.start_booking()
    await drill.assert_saga_intact()


async def test_sigterm_to_the_worker_under_load_finishes_or_returns_messages(drill: Drill) -> None:
    drill.services.discount.stop()
    await drill.book_many(600)
    drill.services.start_discount()
    await eventually(
        drill.terminal_count, lambda n: n >= 20, interval=0.01, what="some bookings final"
    )
    worker = drill.services.discount
    started = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.process.wait, 15) == 0
    assert time.monotonic() - started < 15  # within the grace period
    log = [
        json.loads(line)
        for line in worker.log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    draining = [line["message"] for line in log if line["message"].startswith("waiting for")]
    assert draining, "the worker was stopped with messages in flight"  # e.g. "waiting for 128 ..."
    assert await drill.terminal_count() < 600  # the rest waited in the queue
    drill.services.start_discount()
    await drill.assert_saga_intact()


async def test_cancel_racing_the_result_one_wins_history_shows_both(drill: Drill) -> None:
    await drill.book_many(60)
    cancels = await asyncio.gather(*(drill.api.post(f"/booking/{i}/cancel") for i in drill.ids))
    assert {c.status_code for c in cancels} == {200}
    rows = await drill.assert_saga_intact(cancellations=True)
    for row in rows:
        history = json.loads(row["history"])
        assert row["status"] == "CANCELLED"
        assert any("Booking Cancelled" in h for h in history)
        # the result was either applied before the cancel or recorded after it: both show
        assert any(
            "Status: CONFIRMED" in h or "Status: REJECTED" in h or "Late discount result" in h
            for h in history
        ), history
    assert await drill.quota() == (0, 0)  # every unit came back exactly once
