"""The saga end to end on real servers: the reference's scenarios, cancel, the sweep, policies."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

from medbook import contracts, metrics
from medbook.booking.sweep import sweep_once
from medbook.config import PolicyDefaults
from medbook.contracts import Event
from medbook.discount.policy import QuotaPolicy
from medbook.discount.policy_store import PolicyStore
from medbook.discount.quota import counter_key, members_key
from tests.helpers import (
    Infra,
    Stack,
    booking_body,
    eligible_body,
    eventually,
    running_stack,
    today,
)


async def quota_used(stack: Stack) -> int:
    return int(await stack.redis.get(counter_key(today())) or 0)


async def test_positive_female_on_her_birthday_gets_12_percent(stack: Stack) -> None:
    created = (await stack.book(eligible_body(serviceNames=["General Consultation"]))).json()
    booking = await stack.wait_terminal(created["bookingId"])
    assert booking["status"] == "CONFIRMED"
    assert booking["finalPrice"] == 440  # 500 less 12%
    assert booking["failReason"] is None
    states = [line.split("] ", 1)[1] for line in booking["history"]]
    assert states[0] == "Booking Created (Pending)"
    assert any(s.startswith("[VALIDATING_ELIGIBILITY]") for s in states)
    assert any(s.startswith("[CHECKING_QUOTA]") for s in states)
    assert any(s.startswith("[APPLYING_DISCOUNT]") for s in states)
    assert states[-1] == "Discount Processed. Status: CONFIRMED. Price: 440"
    assert all(line.startswith("[20") for line in booking["history"])  # every entry has its time
    assert await quota_used(stack) == 1


async def test_blocked_user_is_rejected_once(stack: Stack) -> None:
    created = (await stack.book(eligible_body(name="fail_test_user"))).json()
    booking = await stack.wait_terminal(created["bookingId"])
    assert booking["status"] == "REJECTED"
    assert booking["failReason"] == "User is blacklisted"
    assert booking["finalPrice"] is None
    assert booking["history"][-1].endswith("Failed: User is blacklisted. Status: REJECTED")
    assert await quota_used(stack) == 0
    assert sum("Status:" in line for line in booking["history"]) == 1  # one result, not two


async def test_not_eligible_pays_the_base_price(stack: Stack) -> None:
    created = (await stack.book(booking_body(gender="Male", serviceNames=["Blood Test"]))).json()
    booking = await stack.wait_terminal(created["bookingId"])
    assert booking["status"] == "CONFIRMED"
    assert booking["finalPrice"] == 300
    assert any("[NO_DISCOUNT]" in line for line in booking["history"])
    assert await quota_used(stack) == 0


async def test_high_value_booking_is_eligible(stack: Stack) -> None:
    created = (await stack.book(booking_body(gender="Male", serviceNames=["MRI Scan"]))).json()
    booking = await stack.wait_terminal(created["bookingId"])
    assert booking["finalPrice"] == 4400
    assert await quota_used(stack) == 1


async def test_quota_exhausted_is_rejected_and_counter_stays_at_the_limit(infra: Infra) -> None:
    settings = infra.discount_settings(policy=PolicyDefaults(daily_limit=2))
    async with running_stack(infra, discount_settings=settings) as stack:
        ids = [(await stack.book(eligible_body())).json()["bookingId"] for _ in range(3)]
        bookings = [await stack.wait_terminal(i) for i in ids]
        assert [b["status"] for b in bookings].count("CONFIRMED") == 2
        rejected = [b for b in bookings if b["status"] == "REJECTED"]
        assert len(rejected) == 1
        assert (
            rejected[0]["failReason"] == "Daily discount quota reached. Please try again tomorrow."
        )
        assert rejected[0]["history"][-1].endswith(
            "] Failed: Daily discount quota reached. Please try again tomorrow. Status: REJECTED"
        )
        assert await quota_used(stack) == 2


async def test_200_concurrent_eligible_bookings_with_a_limit_of_50(infra: Infra) -> None:
    settings = infra.discount_settings(policy=PolicyDefaults(daily_limit=50))
    async with running_stack(infra, discount_settings=settings) as stack:
        responses = await asyncio.gather(*(stack.book(eligible_body()) for _ in range(200)))
        assert {r.status_code for r in responses} == {201}
        ids = [r.json()["bookingId"] for r in responses]
        bookings = await asyncio.gather(*(stack.wait_terminal(i, timeout=30) for i in ids))
        discounted = [b for b in bookings if b["status"] == "CONFIRMED"]
        assert len(discounted) == 50
        assert all(b["finalPrice"] == 396 for b in discounted)
        assert sum(b["status"] == "REJECTED" for b in bookings) == 150
        assert await quota_used(stack) == 50
        assert await stack.redis.scard(members_key(today())) == 50


async def test_booking_created_delivered_three_times_gives_one_reservation_and_one_result(
    stack: Stack,
) -> None:
    assert stack.worker is not None
    created = (await stack.book(eligible_body())).json()
    first = await stack.wait_terminal(created["bookingId"])
    row = await stack.booking.db.fetch_one(
        "SELECT user_id, user_name, gender, dob, base_price, created_at FROM bookings WHERE id = :id",
        {"id": uuid.UUID(created["bookingId"])},
    )
    event = contracts.BookingCreated(
        booking_id=uuid.UUID(created["bookingId"]),
        user_id=row["user_id"],
        user_name=row["user_name"],
        gender=row["gender"],
        dob=row["dob"],
        services=[{"name": "Blood Test", "price": 300}, {"name": "Vaccination", "price": 150}],
        base_price=row["base_price"],
        trace_id=created["traceId"],
        created_at=row["created_at"],
    )
    publisher = stack.worker.publisher
    assert publisher is not None

    def duplicates(queue: str) -> float:
        return (
            metrics.BOOKING.get_sample_value("medbook_duplicate_messages_total", {"queue": queue})
            or 0
        )

    seen_by_worker, seen_by_booking = duplicates("discount_queue"), duplicates("booking_queue")
    for _ in range(2):  # two more deliveries of the same event
        await publisher.publish(Event.BOOKING_CREATED, contracts.encode(event))
    # The worker recognises both and re-sends the stored result; the booking service ignores them.
    await eventually(
        lambda: asyncio.sleep(0, duplicates("discount_queue")),
        lambda n: n == seen_by_worker + 2,
        what="worker saw two duplicates",
    )
    await eventually(
        lambda: asyncio.sleep(0, duplicates("booking_queue")),
        lambda n: n == seen_by_booking + 2,
        what="booking service saw two duplicate results",
    )
    after = await stack.get(created["bookingId"])
    assert after == first  # the duplicate results changed nothing
    assert await quota_used(stack) == 1
    assert await stack.redis.scard(members_key(today())) == 1


async def test_cancel_confirmed_booking_returns_its_quota_unit_once(stack: Stack) -> None:
    created = (await stack.book(eligible_body())).json()
    await stack.wait_terminal(created["bookingId"])
    assert await quota_used(stack) == 1
    response = await stack.api.post(f"/booking/{created['bookingId']}/cancel")
    assert response.status_code == 200
    cancelled = response.json()
    assert cancelled["status"] == "CANCELLED"
    assert "Booking Cancelled (was CONFIRMED)" in cancelled["history"][-1]
    await eventually(lambda: quota_used(stack), lambda n: n == 0, what="unit released")
    again = await stack.api.post(f"/booking/{created['bookingId']}/cancel")
    assert again.status_code == 200  # cancelling twice is harmless
    assert again.json()["history"] == cancelled["history"]
    await asyncio.sleep(0.3)
    assert await quota_used(stack) == 0


async def test_cancel_of_rejected_is_409_and_unknown_404(stack: Stack) -> None:
    created = (await stack.book(booking_body(userName="fail_test_user"))).json()
    await stack.wait_terminal(created["bookingId"])
    response = await stack.api.post(f"/booking/{created['bookingId']}/cancel")
    assert response.status_code == 409
    assert "REJECTED" in response.json()["message"]
    assert (await stack.api.post(f"/booking/{uuid.uuid4()}/cancel")).status_code == 404


async def test_cancel_while_pending_then_late_result_returns_the_unit(infra: Infra) -> None:
    async with running_stack(infra, start_worker=False) as stack:
        created = (await stack.book(eligible_body())).json()
        cancelled = (await stack.api.post(f"/booking/{created['bookingId']}/cancel")).json()
        assert cancelled["status"] == "CANCELLED"
        await stack.start_worker()
        booking = await eventually(
            lambda: stack.get(created["bookingId"]),
            lambda b: any("Late discount result" in h for h in b["history"]),
            what="late result recorded",
        )
        assert booking["status"] == "CANCELLED"
        await eventually(lambda: quota_used(stack), lambda n: n == 0, what="unit released")
        assert await stack.redis.scard(members_key(today())) == 0


async def test_sweep_rejects_stuck_bookings_and_a_late_result_gives_the_unit_back(
    infra: Infra,
) -> None:
    async with running_stack(infra, start_worker=False) as stack:
        created = (await stack.book(eligible_body())).json()
        swept = await sweep_once(stack.booking.store, dt.timedelta(seconds=0))
        assert [str(s.booking_id) for s in swept] == [created["bookingId"]]
        booking = await stack.get(created["bookingId"])
        assert booking["status"] == "REJECTED"
        assert booking["failReason"] == "System timeout: Discount service did not respond"
        assert (
            await sweep_once(stack.booking.store, dt.timedelta(seconds=0)) == []
        )  # one statement, once
        await stack.start_worker()  # the discount result arrives after the sweep
        await eventually(
            lambda: stack.get(created["bookingId"]),
            lambda b: any("Late discount result" in h for h in b["history"]),
            what="late result recorded",
        )
        await eventually(lambda: quota_used(stack), lambda n: n == 0, what="unit released")
        final = await stack.get(created["bookingId"])
        assert final["status"] == "REJECTED"


async def test_published_policy_takes_effect_without_restart(stack: Stack) -> None:
    store = PolicyStore(stack.redis)
    await store.publish(QuotaPolicy(discount_percent=50, daily_limit=1))
    await asyncio.sleep(0.5)  # the worker re-reads every 0.2 s in tests
    first = await stack.wait_terminal((await stack.book(eligible_body())).json()["bookingId"])
    assert first["finalPrice"] == 225
    second = await stack.wait_terminal((await stack.book(eligible_body())).json()["bookingId"])
    assert second["status"] == "REJECTED"  # limit 1 reached
    await store.withdraw()
    await asyncio.sleep(0.5)
    third = await stack.wait_terminal((await stack.book(eligible_body())).json()["bookingId"])
    assert third["finalPrice"] == 396  # back to the defaults: 12%, limit 100
