"""PostgreSQL, a primary and a synchronous standby: lose the primary and lose nothing.

The services are given both hosts (``target_session_attrs=read-write``): after
the standby is promoted, new connections find it by themselves. A commit is
acknowledged only once the standby has it, so a create answered 201 survives
the primary's death; a create whose connection died mid-statement is sent
again by the service on a new connection (its booking ids make that safe), and
a client's Idempotency-Key retry gets the booking its first try made.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import psycopg
import pytest

from tests.failover.conftest import DRILL_LIMIT, HaBackends
from tests.failover.cutting_proxy import CuttingProxy
from tests.failover.drill import Drill
from tests.helpers import Infra, ProcessServices, eligible_body, eventually, running_stack

pytestmark = [pytest.mark.failover, pytest.mark.slow]


async def test_drill_primary_killed_standby_promoted_old_primary_rewound(
    ha_backends: HaBackends, ha_infra: Infra, ha_services: ProcessServices, tmp_path: Path
) -> None:
    pg = ha_backends.postgres

    async def fault(drill: Drill) -> None:
        old = pg.primary
        drill.note(f"SIGKILL the primary {old.data_dir.name}")
        await asyncio.to_thread(pg.kill_primary)
        await asyncio.sleep(1.0)  # about what an HA manager takes to decide
        new = await asyncio.to_thread(pg.promote)
        drill.note(f"pg_ctl promote {new.data_dir.name}")
        await asyncio.sleep(2.0)
        await asyncio.to_thread(pg.rebuild_standby, method="rewind")
        drill.note(f"{old.data_dir.name} rewound (pg_rewind), streaming as the synchronous standby")

    drill = Drill("postgresql: primary killed, standby promoted, old primary rewound",
                  ha_infra, ha_services, limit=DRILL_LIMIT, out_dir=tmp_path)  # fmt: skip
    await drill.run(fault, fault_after=300)
    report = await drill.verify()
    assert not report.problems, report.render()


async def test_read_only_primary_answers_503_then_the_promoted_standby_takes_the_writes(
    ha_backends: HaBackends, ha_infra: Infra, ha_services: ProcessServices
) -> None:
    pg = ha_backends.postgres
    async with httpx.AsyncClient(base_url=ha_services.api_url, timeout=10) as api:

        async def create(key: str) -> httpx.Response:
            return await api.post(
                "/booking", json=eligible_body(), headers={"Idempotency-Key": key}
            )

        warm = await asyncio.gather(*(create(f"warm-{i}") for i in range(20)))
        assert {r.status_code for r in warm} == {201}  # the pool holds connections to the primary
        fenced = pg.primary
        with psycopg.connect(fenced.url, autocommit=True) as conn:  # a primary being demoted
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            conn.execute("SELECT pg_reload_conf()")
        keys = [f"fenced-{uuid.uuid4().hex[:8]}" for _ in range(20)]
        refused = await asyncio.gather(*(create(k) for k in keys))
        assert {r.status_code for r in refused} == {503}, [r.text for r in refused]
        assert all(r.json()["code"] == 503 and r.headers["Retry-After"] for r in refused)
        with psycopg.connect(fenced.url_for(_database(ha_infra))) as conn:
            written = conn.execute(
                "SELECT count(*) FROM bookings WHERE idempotency_key = ANY(%s)", (keys,)
            ).fetchone()
        assert written == (0,)  # nothing half-written

        await asyncio.to_thread(pg.promote)
        accepted = await asyncio.gather(*(create(k) for k in keys))
        assert {r.status_code for r in accepted} == {201}  # same process, new primary
        assert not any(r.headers.get("Idempotent-Replayed") for r in accepted)
        await asyncio.to_thread(pg.rebuild_standby, method="rewind")  # pg_rewind resets its config

        ids = [r.json()["bookingId"] for r in [*warm, *accepted]]

        async def final() -> int:
            rows = [(await api.get(f"/booking/{i}")).json()["status"] for i in ids]
            return sum(s != "PENDING" for s in rows)

        await eventually(final, lambda n: n == len(ids), timeout=60, what="all bookings final")


@pytest.mark.parametrize("lost", ["request", "answer"])
async def test_create_cut_mid_statement_is_sent_again_and_makes_one_booking(
    infra: Infra, lost: str
) -> None:
    """The connection dies with the INSERT in flight: before the server got it, or after it
    committed (the acknowledgement lost). The service sends the statement again on a new
    connection; either way the client gets 201 and there is exactly one booking."""
    server_port = urlsplit(infra.database_url).port
    assert server_port is not None
    proxy = await CuttingProxy(server_port).start()
    proxied = Infra(
        infra.database_url.replace(f":{server_port}/", f":{proxy.port}/"),
        infra.redis_url,
        infra.amqp_url,
    )
    try:
        async with running_stack(proxied) as stack:
            if lost == "request":
                proxy.arm(b"INSERT INTO bookings", "to_server")
            else:  # the statement's CommandComplete: it has committed
                proxy.arm(b"INSERT 0 1", "to_client")
            key, body = f"cut-{uuid.uuid4().hex[:8]}", eligible_body()
            response = await stack.book(body, headers={"Idempotency-Key": key})
            assert proxy.cuts == 1
            assert response.status_code == 201, response.text
            booking_id = response.json()["bookingId"]
            connection = await asyncpg.connect(infra.database_url)
            try:
                rows = await connection.fetch(
                    "SELECT id::text FROM bookings WHERE idempotency_key = $1", key
                )
                events = await connection.fetchval("SELECT count(*) FROM outbox")
                assert [r["id"] for r in rows] == [booking_id]
                assert events <= 1  # one event at most (none once relayed)
            finally:
                await connection.close()
            replay = await stack.book(body, headers={"Idempotency-Key": key})
            assert replay.status_code == 201, replay.text
            assert replay.headers["Idempotent-Replayed"] == "true"
            assert replay.json()["bookingId"] == booking_id
            final = await stack.wait_terminal(booking_id)
            assert final["status"] == "CONFIRMED"
            assert sum("Status: CONFIRMED" in h for h in final["history"]) == 1
    finally:
        await proxy.stop()


def _database(infra: Infra) -> str:
    return urlsplit(infra.database_url).path.lstrip("/")
