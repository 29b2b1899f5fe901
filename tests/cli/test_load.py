"""`medbook load`: users x requests per user on the benchmark's engine, counts that match the
database; `medbook load quota`: never more discounts than the limit."""

from __future__ import annotations

import json
from collections import Counter

import asyncpg

from medbook.cli.loadgen import LoadProfile, booking_bodies
from medbook.discount.policy_store import PolicyStore
from tests.cli.conftest import Medbook, explain
from tests.helpers import Stack


async def statuses(database_url: str) -> dict[str, int]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT status, count(*) AS n FROM bookings GROUP BY status")
        users = await connection.fetchval("SELECT count(DISTINCT user_name) FROM bookings")
    finally:
        await connection.close()
    return {r["status"]: r["n"] for r in rows} | {"users": users}


async def test_load_sends_users_x_requests_and_reports_true_counts(
    medbook: Medbook, stack: Stack
) -> None:
    result = await medbook(
        "load", "--users", "4", "--requests-per-user", "15", "--ramp-up", "0.2",
        "--seed", "7", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, explain(result)
    report = json.loads(result.stdout)
    assert report["requested"] == report["created"] == 60
    assert report["concurrency"] == 4 and report["requests_per_user"] == 15
    assert report["stuck"] == [] and report["http_errors"] == {}
    assert report["create_rate"] > 0 and report["saga_rate"] > 0
    assert report["saga_latency_ms"]["p99"] >= report["saga_latency_ms"]["p50"] > 0

    in_db = await statuses(medbook.database_url)
    assert {k: v for k, v in in_db.items() if k != "users"} == report["outcomes"]
    # The seeded mix: the same seed sends the same requests.
    kinds = Counter(
        kind
        for kind, _ in booking_bodies(
            LoadProfile(bookings=60, concurrency=4, requests_per_user=15, seed=7)
        )
    )
    assert report["reasons"].get("User is blacklisted", 0) == kinds["blocked"]
    assert report["reasons"].get("discount applied", 0) == kinds["birthday"] + kinds["high_value"]
    assert in_db["users"] == 4 + (1 if kinds["blocked"] else 0)  # one name per user


async def test_load_prints_a_summary_and_fails_on_stuck_bookings(
    medbook: Medbook, stack: Stack
) -> None:
    result = await medbook("load", "-u", "2", "-r", "3")
    assert result.exit_code == 0, explain(result)
    assert "6/6 created by 2 users x 3 requests (seed 42)" in result.stdout
    assert "stuck          0" in result.stdout

    await stack.stop_worker()
    result = await medbook("load", "-u", "2", "-r", "2", "--settle-timeout", "0.5")
    assert result.exit_code == 1, explain(result)
    assert "stuck          4: " in result.stdout


async def test_load_quota_discounts_no_more_than_the_limit(medbook: Medbook, stack: Stack) -> None:
    result = await medbook("load", "quota", "--limit", "5", "--json")
    assert result.exit_code == 0, explain(result)
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert data["quota"] | {"day": None} == {
        "day": None,
        "limit": 5,
        "used_before": 0,
        "used_after": 5,
        "reservations": 5,
        "discounted": 5,
        "refused": 20,
    }
    assert data["report"]["created"] == 25  # the limit + 20
    assert all(c["ok"] for c in data["checks"])
    in_db = await statuses(medbook.database_url)
    assert in_db["CONFIRMED"] == 5 and in_db["REJECTED"] == 20
    assert await PolicyStore(stack.redis).load() is None  # the temporary limit is gone


async def test_load_quota_says_what_it_verified(medbook: Medbook, stack: Stack) -> None:
    result = await medbook("load", "quota", "--limit", "2", "--extra", "3")
    assert result.exit_code == 0, explain(result)
    out = result.stdout
    assert "PASS load quota: 5 eligible bookings, 2 left" in out
    assert "ok   no more than the limit discounted: expected at most 2" in out


async def test_finished_bookings_are_counted_while_the_rest_are_still_being_sent(
    stack: Stack,
) -> None:
    from medbook.cli.loadgen import LoadRun

    seen: list[tuple[int, int]] = []  # (created so far, finished so far) at each count
    created = 0

    def on_created(n: int) -> None:
        nonlocal created
        created = n

    profile = LoadProfile(bookings=40, concurrency=2, requests_per_user=20, ramp_up=1.0)
    for database_url in (stack.infra.database_url, None):  # counted from PostgreSQL, the API
        seen.clear()
        run = LoadRun(
            str(stack.api.base_url),
            profile,
            database_url=database_url,
            on_created=on_created,
            on_settled=lambda n: seen.append((created, n)),
        )
        report = await run.run()
        assert report.created == 40 and report.stuck == []
        during = [finished for sent, finished in seen if sent < 40]
        assert during and max(during) > 0, seen  # the bar moved before the last request
        assert seen[-1] == (40, 40)
