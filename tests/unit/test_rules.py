"""The discount rules as pure functions: eligibility, blocked users, time zones, rounding."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from medbook.contracts import BookingCreated, Gender, ServiceItem
from medbook.discount.policy import BirthdayRule, Eligibility, HighValueRule, QuotaPolicy
from medbook.discount.rules import Verdict, decide, discounted_price, is_birthday


def booking(
    *, gender: str = "Female", dob: str = "1990-05-17", price: int = 450, name: str = "Asha"
) -> BookingCreated:
    return BookingCreated(
        booking_id=uuid.uuid4(),
        user_id="u-1",
        user_name=name,
        gender=Gender(gender),
        dob=dt.date.fromisoformat(dob),
        services=(ServiceItem(name="X", price=price),),
        base_price=price,
        trace_id="a" * 32,
        created_at=dt.datetime.now(dt.UTC),
    )


POLICY = QuotaPolicy()


@pytest.mark.parametrize(
    ("dob", "today", "expected"),
    [
        ("1990-05-17", "2026-05-17", True),
        ("1990-05-17", "2026-05-18", False),
        ("1992-02-29", "2024-02-29", True),  # leap year: the real day
        ("1992-02-29", "2024-02-28", False),  # leap year: not the day before
        ("1992-02-29", "2026-02-28", True),  # other years: 28 February
        ("1992-02-29", "2026-03-01", False),
        ("1992-02-29", "2100-02-28", True),  # 2100 is not a leap year
        ("1990-02-28", "2026-02-28", True),
    ],
)
def test_birthday_including_29_february(dob: str, today: str, expected: bool) -> None:
    assert is_birthday(dt.date.fromisoformat(dob), dt.date.fromisoformat(today)) is expected


def test_female_on_her_birthday_is_eligible() -> None:
    decision = decide(booking(), POLICY, dt.date(2026, 5, 17))
    assert decision.verdict is Verdict.ELIGIBLE


@pytest.mark.parametrize("gender", ["Male", "Other"])
def test_birthday_rule_only_for_configured_genders(gender: str) -> None:
    assert (
        decide(booking(gender=gender), POLICY, dt.date(2026, 5, 17)).verdict is Verdict.NOT_ELIGIBLE
    )


def test_birthday_genders_are_case_insensitive_in_the_policy() -> None:
    policy = QuotaPolicy(eligibility=Eligibility(birthday=BirthdayRule(genders=["female", "MALE"])))
    assert decide(booking(gender="Male"), policy, dt.date(2026, 5, 17)).verdict is Verdict.ELIGIBLE


def test_high_value_is_strictly_over_the_threshold() -> None:
    today = dt.date(2026, 1, 1)
    assert decide(booking(gender="Male", price=1000), POLICY, today).verdict is Verdict.NOT_ELIGIBLE
    assert decide(booking(gender="Male", price=1001), POLICY, today).verdict is Verdict.ELIGIBLE


def test_each_rule_can_be_switched_off() -> None:
    today = dt.date(2026, 5, 17)
    no_birthday = QuotaPolicy(eligibility=Eligibility(birthday=BirthdayRule(enabled=False)))
    assert decide(booking(), no_birthday, today).verdict is Verdict.NOT_ELIGIBLE
    no_high_value = QuotaPolicy(eligibility=Eligibility(high_value=HighValueRule(enabled=False)))
    assert (
        decide(booking(gender="Male", price=5000), no_high_value, today).verdict
        is Verdict.NOT_ELIGIBLE
    )


def test_blocked_user_wins_over_eligibility() -> None:
    decision = decide(booking(name="fail_test_user", price=5000), POLICY, dt.date(2026, 5, 17))
    assert decision.verdict is Verdict.BLOCKED
    assert decision.why == "User is blacklisted"


def test_today_is_taken_in_the_policy_time_zone() -> None:
    # 19:00 UTC on 16 May is already 00:30 on 17 May in Kolkata (UTC+5:30).
    just_after_midnight_ist = dt.datetime(2026, 5, 16, 19, 0, tzinfo=dt.UTC)
    assert QuotaPolicy().today(just_after_midnight_ist) == dt.date(2026, 5, 17)
    # ...and still 16 May in UTC and in New York.
    assert QuotaPolicy(time_zone="UTC").today(just_after_midnight_ist) == dt.date(2026, 5, 16)
    assert QuotaPolicy(time_zone="America/New_York").today(just_after_midnight_ist) == dt.date(
        2026, 5, 16
    )
    # 18:29 UTC is 23:59 in Kolkata: still the 16th there.
    assert QuotaPolicy().today(dt.datetime(2026, 5, 16, 18, 29, tzinfo=dt.UTC)) == dt.date(
        2026, 5, 16
    )


@pytest.mark.parametrize(
    ("base", "percent", "expected"),
    [
        (450, 15, 383),  # 382.5 rounds half up, not to even
        (450, 12, 396),
        (500, 12, 440),
        (5000, 12, 4400),
        (150, 12, 132),
        (125, 50, 63),  # 62.5 -> 63
        (1, 50, 1),  # 0.5 -> 1
        (999, 0, 999),
        (999, 100, 0),
        (1000, 12.5, 875),
        (333, 33.3, 222),  # 222.111 -> 222
    ],
)
def test_discounted_price_rounds_half_up(base: int, percent: float, expected: int) -> None:
    assert discounted_price(base, percent) == expected
