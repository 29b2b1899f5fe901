"""The discount decision without a server: what each booking gets and what it must reserve."""

from __future__ import annotations

import datetime as dt

from medbook import contracts
from medbook.contracts import BookingStatus, SagaState
from medbook.discount.decision import Outcome, QuotaUnit, plan
from medbook.discount.policy import QuotaPolicy
from tests.unit.test_rules import booking

# 10:00 UTC on 17 May 2026 is 15:30 the same day in Asia/Kolkata.
NOW = dt.datetime(2026, 5, 17, 10, 0, tzinfo=dt.UTC)
DAY = dt.date(2026, 5, 17)


def states(result: contracts.DiscountProcessed) -> list[SagaState]:
    return [step.state for step in result.steps]


def test_a_blocked_user_is_rejected_without_touching_the_quota() -> None:
    p = plan(booking(name="fail_test_user", dob="1990-05-17"), QuotaPolicy(), NOW)
    assert p.unit is None
    assert p.outcome is Outcome.BLOCKED
    assert p.result.status is BookingStatus.REJECTED
    assert p.result.reason == contracts.BLOCKED_USER_REASON
    assert states(p.result) == [SagaState.VALIDATING_ELIGIBILITY]
    assert p.resolve(granted=False) == (p.result, Outcome.BLOCKED)


def test_not_eligible_is_confirmed_at_the_base_price() -> None:
    p = plan(booking(dob="1990-01-01", price=450), QuotaPolicy(), NOW)
    assert p.unit is None
    assert p.outcome is Outcome.NO_DISCOUNT
    assert (p.result.status, p.result.final_price, p.result.quota_day) == (
        BookingStatus.CONFIRMED,
        450,
        None,
    )
    assert states(p.result) == [SagaState.VALIDATING_ELIGIBILITY, SagaState.NO_DISCOUNT]


def test_eligible_needs_a_unit_of_today_in_the_policy_time_zone() -> None:
    p = plan(booking(dob="1990-05-17", price=450), QuotaPolicy(daily_limit=7), NOW)
    assert p.unit == QuotaUnit(DAY, 7)
    granted, outcome = p.resolve(granted=True)
    assert outcome is Outcome.DISCOUNTED
    assert (granted.status, granted.final_price, granted.quota_day) == (
        BookingStatus.CONFIRMED,
        396,
        DAY,
    )
    assert states(granted) == [
        SagaState.VALIDATING_ELIGIBILITY,
        SagaState.CHECKING_QUOTA,
        SagaState.APPLYING_DISCOUNT,
    ]
    denied, outcome = p.resolve(granted=False)
    assert outcome is Outcome.QUOTA_EXHAUSTED
    assert (denied.status, denied.final_price, denied.quota_day) == (
        BookingStatus.REJECTED,
        None,
        None,
    )
    assert denied.reason == contracts.QUOTA_EXHAUSTED_REASON
    assert states(denied) == [SagaState.VALIDATING_ELIGIBILITY, SagaState.CHECKING_QUOTA]
    assert granted.result_id != denied.result_id


def test_the_quota_day_follows_the_policy_zone_across_midnight() -> None:
    late_evening_utc = dt.datetime(2026, 5, 16, 20, 0, tzinfo=dt.UTC)  # 01:30 on the 17th IST
    p = plan(booking(dob="1990-05-17"), QuotaPolicy(), late_evening_utc)
    assert p.unit is not None
    assert p.unit.day == DAY
    utc = plan(booking(dob="1990-05-17"), QuotaPolicy(time_zone="UTC"), late_evening_utc)
    assert utc.unit is None  # still the 16th in UTC: not the birthday


def test_each_result_carries_the_booking_and_its_trace() -> None:
    b = booking(dob="1990-05-17")
    p = plan(b, QuotaPolicy(), NOW)
    for result in (p.result, p.if_denied):
        assert result is not None
        assert result.booking_id == b.booking_id
        assert result.trace_id == b.trace_id
        assert result.processed_at == NOW
