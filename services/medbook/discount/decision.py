"""The discount decision, pure: what a booking gets, and what must be reserved for it.

:func:`plan` applies the rules (``rules.py``) to a booking under a policy at a
given time and returns a :class:`Plan`: either a result that needs nothing
(a blocked user, a booking not eligible), or a quota unit to reserve with the
result for each outcome of the reservation (granted: the discounted price;
denied: the quota is exhausted). The worker stores the result that applies in
the same atomic step as the reservation (``idempotency.py``), then publishes
it. Nothing here does I/O, reads a clock or counts metrics.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from enum import StrEnum

from medbook import contracts
from medbook.contracts import BookingCreated, BookingStatus, DiscountProcessed, SagaState, SagaStep
from medbook.discount import rules
from medbook.discount.policy import QuotaPolicy


class Outcome(StrEnum):
    """Why a booking got the result it got (the decisions metric's label)."""

    BLOCKED = "blocked"
    NO_DISCOUNT = "no_discount"
    DISCOUNTED = "discounted"
    QUOTA_EXHAUSTED = "quota_exhausted"


@dataclass(frozen=True, slots=True)
class QuotaUnit:
    """One unit of the daily quota to reserve for the booking."""

    day: dt.date
    limit: int


@dataclass(frozen=True, slots=True)
class Plan:
    """The result, and the unit it depends on if any.

    Without ``unit``, ``result`` is final. With it, ``result`` is the result if
    the unit is granted and ``if_denied`` the one if the quota is exhausted.
    """

    result: DiscountProcessed
    outcome: Outcome
    unit: QuotaUnit | None = None
    if_denied: DiscountProcessed | None = None

    def resolve(self, granted: bool) -> tuple[DiscountProcessed, Outcome]:
        """The result and outcome once the reservation (if any) is known."""
        if self.unit is None or granted:
            return self.result, self.outcome
        assert self.if_denied is not None
        return self.if_denied, Outcome.QUOTA_EXHAUSTED


def plan(booking: BookingCreated, policy: QuotaPolicy, now: dt.datetime) -> Plan:
    today = policy.today(now)
    steps = [
        SagaStep(
            state=SagaState.VALIDATING_ELIGIBILITY, message="Validating eligibility rules", at=now
        )
    ]
    verdict = rules.decide(booking, policy, today)
    if verdict.verdict is rules.Verdict.BLOCKED:
        return Plan(
            _result(booking, now, BookingStatus.REJECTED, steps, reason=verdict.why),
            Outcome.BLOCKED,
        )
    if verdict.verdict is rules.Verdict.NOT_ELIGIBLE:
        steps.append(
            SagaStep(
                state=SagaState.NO_DISCOUNT,
                at=now,
                message=f"Not eligible for a discount; price {booking.base_price}",
            )
        )
        return Plan(
            _result(booking, now, BookingStatus.CONFIRMED, steps, price=booking.base_price),
            Outcome.NO_DISCOUNT,
        )
    steps.append(
        SagaStep(
            state=SagaState.CHECKING_QUOTA,
            at=now,
            message=f"Eligible ({verdict.why}); checking the daily quota for {today}",
        )
    )
    price = rules.discounted_price(booking.base_price, policy.discount_percent)
    applying = SagaStep(
        state=SagaState.APPLYING_DISCOUNT,
        at=now,
        message=f"Applying {policy.discount_percent:g}% discount: {booking.base_price} -> {price}",
    )
    return Plan(
        _result(
            booking, now, BookingStatus.CONFIRMED, [*steps, applying], price=price, quota_day=today
        ),
        Outcome.DISCOUNTED,
        unit=QuotaUnit(today, policy.daily_limit),
        if_denied=_result(
            booking, now, BookingStatus.REJECTED, steps, reason=contracts.QUOTA_EXHAUSTED_REASON
        ),
    )


def _result(
    booking: BookingCreated,
    now: dt.datetime,
    status: BookingStatus,
    steps: list[SagaStep],
    *,
    price: int | None = None,
    reason: str | None = None,
    quota_day: dt.date | None = None,
) -> DiscountProcessed:
    return DiscountProcessed(
        booking_id=booking.booking_id,
        result_id=uuid.uuid4(),
        is_allowed=status is BookingStatus.CONFIRMED,
        status=status,
        final_price=price,
        reason=reason,
        quota_day=quota_day,
        steps=tuple(steps),
        trace_id=booking.trace_id,
        processed_at=now,
    )
