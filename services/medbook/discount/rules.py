"""The discount rules: pure functions of a booking, the policy and today's date.

Nothing here does I/O, so every rule is tested without a server: blocked users,
the birthday rule (29 February, the policy's time zone) and the high-value
rule, and the half-up rounding of the discounted price.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

from medbook.contracts import BookingCreated
from medbook.discount.policy import QuotaPolicy


class Verdict(StrEnum):
    BLOCKED = "blocked"
    ELIGIBLE = "eligible"
    NOT_ELIGIBLE = "not_eligible"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    why: str


def is_birthday(dob: dt.date, today: dt.date) -> bool:
    """Today is the birthday; someone born on 29 February has it on 28 February in other years."""
    if (dob.month, dob.day) == (today.month, today.day):
        return True
    if (dob.month, dob.day) == (2, 29) and (today.month, today.day) == (2, 28):
        return not _is_leap(today.year)
    return False


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def is_blocked(booking: BookingCreated, policy: QuotaPolicy) -> bool:
    blocked = policy.blocked_users
    return booking.user_name in blocked or booking.user_id in blocked


def decide(booking: BookingCreated, policy: QuotaPolicy, today: dt.date) -> Decision:
    """Blocked, eligible for a discount (and why), or not eligible."""
    if is_blocked(booking, policy):
        return Decision(Verdict.BLOCKED, "User is blacklisted")
    birthday = policy.eligibility.birthday
    genders = {g.value.lower() for g in birthday.genders}
    if (
        birthday.enabled
        and booking.gender.value.lower() in genders
        and is_birthday(booking.dob, today)
    ):
        return Decision(Verdict.ELIGIBLE, "birthday")
    high_value = policy.eligibility.high_value
    if high_value.enabled and booking.base_price > high_value.threshold:
        return Decision(Verdict.ELIGIBLE, f"base price over {high_value.threshold}")
    return Decision(Verdict.NOT_ELIGIBLE, "no eligibility rule matched")


def discounted_price(base_price: int, percent: float) -> int:
    """``base_price`` less ``percent`` per cent, rounded half up to a whole unit.

    Decimal arithmetic on the percent's decimal text: 15% off 450 is 382.5,
    which rounds to 383 (binary floats and banker's rounding give 382).
    """
    factor = (Decimal(100) - Decimal(str(percent))) / Decimal(100)
    return int((Decimal(base_price) * factor).quantize(Decimal(1), rounding=ROUND_HALF_UP))
