"""`medbook quota`: today's usage, a reset the worker honours, past days' keys found with SCAN."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

from medbook.discount.policy import QuotaPolicy
from medbook.discount.policy_store import PolicyStore
from medbook.discount.quota import counter_key, members_key, reservation_key
from tests.cli.conftest import Medbook, explain
from tests.helpers import Stack, eligible_body, eventually, today


async def book_eligible(stack: Stack, n: int) -> list[dict]:
    ids = [(await stack.book(eligible_body())).json()["bookingId"] for _ in range(n)]
    return [await stack.wait_terminal(i) for i in ids]


async def test_get_shows_todays_usage_and_the_reserved_bookings(
    medbook: Medbook, stack: Stack
) -> None:
    bookings = await book_eligible(stack, 2)
    result = await medbook("quota", "get", "--json", "--ids")
    assert result.exit_code == 0, explain(result)
    usage = json.loads(result.stdout)
    assert usage["day"] == today().isoformat() and usage["time_zone"] == "Asia/Kolkata"
    assert (usage["used"], usage["limit"], usage["remaining"]) == (2, 100, 98)
    assert sorted(usage["bookings"]) == sorted(b["id"] for b in bookings)
    assert usage["policy"] == "defaults from the environment (no policy published)"

    await PolicyStore(stack.redis).publish(QuotaPolicy(daily_limit=7), owner="QuotaPolicy a/b")
    result = await medbook("quota", "get")
    assert result.exit_code == 0, explain(result)
    assert "used        2 of 7 (5 left)" in result.stdout
    assert "published by QuotaPolicy a/b" in result.stdout


async def test_reset_asks_first_and_the_worker_then_grants_discounts_again(
    medbook: Medbook, stack: Stack
) -> None:
    await PolicyStore(stack.redis).publish(QuotaPolicy(daily_limit=2))
    worker = stack.worker
    assert worker is not None
    await eventually(
        lambda: asyncio.sleep(0, worker.policy.current.daily_limit),
        lambda limit: limit == 2,
        what="the worker reads the new limit",
    )
    await book_eligible(stack, 2)
    refused = (await book_eligible(stack, 1))[0]
    assert refused["status"] == "REJECTED"  # the limit holds

    result = await medbook("quota", "reset", input="n\n")
    assert result.exit_code == 1, explain(result)
    assert "drop 2 reservation(s)" in result.stderr and "nothing changed" in result.stderr
    assert int(await stack.redis.get(counter_key(today()))) == 2

    result = await medbook("quota", "reset", input="y\n")
    assert result.exit_code == 0, explain(result)
    assert f"quota of {today()} reset: 2 reservation(s) dropped" in result.stdout
    assert await stack.redis.get(counter_key(today())) is None
    granted = (await book_eligible(stack, 1))[0]
    assert granted["status"] == "CONFIRMED" and granted["finalPrice"] == 396


async def test_keys_and_clean_handle_past_days_with_scan_never_keys(
    medbook: Medbook, stack: Stack
) -> None:
    await book_eligible(stack, 1)
    past = today() - dt.timedelta(days=3)
    older = today() - dt.timedelta(days=9)
    r = stack.redis
    await r.set(counter_key(past), 2)
    await r.sadd(members_key(past), "p1", "p2")
    await r.set(reservation_key("p1"), past.isoformat())
    await r.set(reservation_key("p2"), past.isoformat())
    await r.set(reservation_key("orphan"), older.isoformat())  # its day's keys are gone
    await r.config_resetstat()

    result = await medbook("quota", "keys", "--json")
    assert result.exit_code == 0, explain(result)
    days = {d["day"]: d for d in json.loads(result.stdout)["days"]}
    assert days[past.isoformat()] | {"keys": None, "expires_in": None} == {
        "day": past.isoformat(), "used": 2, "reservations": 2, "reservation_keys": 2,
        "expires_in": None, "when": "past", "keys": None,
    }  # fmt: skip
    assert days[older.isoformat()]["reservation_keys"] == 1
    assert days[today().isoformat()]["when"] == "today"

    result = await medbook("quota", "clean", "--dry-run")
    assert result.exit_code == 0 and "would delete the keys of 2 past day(s)" in result.stdout
    assert await r.exists(counter_key(past))

    result = await medbook("quota", "clean", "--yes")
    assert result.exit_code == 0, explain(result)
    assert "deleted the quota keys of 2 past day(s)" in result.stdout
    assert not await r.exists(
        counter_key(past), members_key(past), reservation_key("p1"), reservation_key("p2")
    )
    assert not await r.exists(reservation_key("orphan"))
    assert int(await r.get(counter_key(today()))) == 1  # today's are kept
    assert "cmdstat_keys" not in await r.info("commandstats")
    assert "cmdstat_scan" in await r.info("commandstats")


async def test_watch_shows_used_against_the_limit(medbook: Medbook, stack: Stack) -> None:
    await book_eligible(stack, 3)
    result = await medbook("quota", "watch", "--count", "2", "--interval", "0.1")
    assert result.exit_code == 0, explain(result)
    assert result.stdout.count("used        3 of 100 (97 left)") == 2
    assert "(+0/min)" in result.stdout  # the second refresh compares with the first
