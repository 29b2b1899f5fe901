"""The booking's state machine, without a server: every transition, the odd ones included."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from medbook import contracts
from medbook.booking import catalog, domain
from medbook.booking.domain import (
    KEEP,
    Booking,
    BookingRefused,
    BookingRequest,
    CancelVerdict,
    ResultVerdict,
)
from medbook.contracts import (
    BookingStatus,
    DiscountProcessed,
    Gender,
    QuotaReleased,
    ReleaseReason,
    SagaState,
    SagaStep,
)

NOW = dt.datetime(2026, 5, 16, 10, 0, 0, 123000, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(minutes=10)
DAY = dt.date(2026, 5, 16)


def request(*services: str, gender: Gender = Gender.FEMALE) -> BookingRequest:
    return BookingRequest(
        user_name="Asha",
        gender=gender,
        dob=dt.date(1990, 5, 16),
        service_names=services or ("Blood Test",),
        user_id="u-1",
    )


def result(
    booking_id: uuid.UUID,
    status: BookingStatus = BookingStatus.CONFIRMED,
    *,
    price: int | None = 440,
    reason: str | None = None,
    quota_day: dt.date | None = DAY,
    result_id: uuid.UUID | None = None,
) -> DiscountProcessed:
    return DiscountProcessed(
        booking_id=booking_id,
        result_id=result_id or uuid.uuid4(),
        is_allowed=status is BookingStatus.CONFIRMED,
        status=status,
        final_price=price,
        reason=reason,
        quota_day=quota_day,
        steps=(
            SagaStep(state=SagaState.VALIDATING_ELIGIBILITY, message="Validating", at=NOW),
            SagaStep(state=SagaState.APPLYING_DISCOUNT, message="Applying 12%", at=NOW),
        ),
        trace_id="a" * 32,
        processed_at=NOW,
    )


def releases(transition: domain.Transition | None) -> list[QuotaReleased]:
    assert transition is not None
    return [e for e in transition.events if isinstance(e, QuotaReleased)]


# -- create ------------------------------------------------------------------------------


def test_create_prices_the_services_and_emits_booking_created() -> None:
    booking_id = uuid.uuid4()
    new = domain.create(
        request("General Consultation", "Mammogram"),
        catalog.BY_NAME,
        NOW,
        booking_id=booking_id,
        trace_id="b" * 32,
    )
    assert new.event.booking_id == booking_id
    assert [(s.name, s.price) for s in new.event.services] == [
        ("General Consultation", 500),
        ("Mammogram", 2000),
    ]
    assert new.event.base_price == 2500
    assert new.event.created_at == NOW
    assert new.event.trace_id == "b" * 32
    assert new.history == ("[2026-05-16T10:00:00.123Z] Booking Created (Pending)",)


def test_create_refuses_a_service_not_offered_to_the_gender() -> None:
    with pytest.raises(BookingRefused, match="'Mammogram' is not available for gender 'Male'"):
        domain.create(
            request("Mammogram", gender=Gender.MALE),
            catalog.BY_NAME,
            NOW,
            booking_id=uuid.uuid4(),
            trace_id="c" * 32,
        )


def test_create_refuses_an_unknown_service() -> None:
    with pytest.raises(BookingRefused, match="'Massage' does not exist"):
        domain.price(request("Massage"), catalog.BY_NAME)


def test_the_fingerprint_is_the_request_meaning() -> None:
    assert request("X-Ray").fingerprint() == request("X-Ray").fingerprint()
    assert request("X-Ray").fingerprint() != request("MRI Scan").fingerprint()


# -- results -----------------------------------------------------------------------------


def test_a_result_confirms_a_pending_booking_with_its_steps_in_the_history() -> None:
    booking = Booking(uuid.uuid4(), BookingStatus.PENDING)
    r = result(booking.id)
    decision = domain.apply_result(booking, r, LATER)
    t = decision.transition
    assert decision.verdict is ResultVerdict.APPLIED
    assert t is not None
    assert t.expect is BookingStatus.PENDING  # the store's guard
    assert t.changes() == {
        "status": BookingStatus.CONFIRMED,
        "final_price": 440,
        "fail_reason": None,
        "quota_day": DAY,
        "result_id": r.result_id,
    }
    assert t.completes
    assert t.history == (
        "[2026-05-16T10:00:00.123Z] [VALIDATING_ELIGIBILITY] Validating",
        "[2026-05-16T10:00:00.123Z] [APPLYING_DISCOUNT] Applying 12%",
        "[2026-05-16T10:10:00.123Z] Discount Processed. Status: CONFIRMED. Price: 440",
    )
    assert t.events == ()
    assert not decision.releases


def test_a_rejection_ends_with_one_full_stop() -> None:
    booking = Booking(uuid.uuid4(), BookingStatus.PENDING)
    r = result(
        booking.id,
        BookingStatus.REJECTED,
        price=None,
        quota_day=None,
        reason=contracts.QUOTA_EXHAUSTED_REASON,
    )
    t = domain.apply_result(booking, r, LATER).transition
    assert t is not None
    assert t.history[-1].endswith("Please try again tomorrow. Status: REJECTED")
    blocked = result(booking.id, BookingStatus.REJECTED, price=None, quota_day=None,
                     reason=contracts.BLOCKED_USER_REASON)  # fmt: skip
    t = domain.apply_result(booking, blocked, LATER).transition
    assert t is not None
    assert t.history[-1].endswith("Failed: User is blacklisted. Status: REJECTED")


def test_the_same_result_again_is_a_duplicate_and_changes_nothing() -> None:
    r = result(uuid.uuid4())
    confirmed = Booking(r.booking_id, BookingStatus.CONFIRMED, DAY, r.result_id)
    decision = domain.apply_result(confirmed, r, LATER)
    assert decision.verdict is ResultVerdict.DUPLICATE
    assert decision.transition is None


def test_a_late_result_after_the_sweep_is_recorded_and_gives_its_unit_back() -> None:
    swept = Booking(uuid.uuid4(), BookingStatus.REJECTED)  # no unit, no result
    r = result(swept.id)
    decision = domain.apply_result(swept, r, LATER)
    t = decision.transition
    assert decision.verdict is ResultVerdict.LATE
    assert t is not None
    assert t.expect is BookingStatus.REJECTED
    assert t.changes() == {"result_id": r.result_id}  # the status and price stay
    assert [(e.day, e.reason, e.result_id) for e in releases(t)] == [
        (DAY, ReleaseReason.LATE_RESULT, r.result_id)
    ]
    assert decision.releases
    assert "Late discount result ignored (CONFIRMED at 440)" in t.history[0]
    assert "[COMPENSATING] Quota unit of 2026-05-16 released" in t.history[1]


def test_a_late_result_that_reserved_nothing_releases_nothing() -> None:
    cancelled = Booking(uuid.uuid4(), BookingStatus.CANCELLED)
    r = result(cancelled.id, price=450, quota_day=None)
    decision = domain.apply_result(cancelled, r, LATER)
    assert decision.verdict is ResultVerdict.LATE
    assert not decision.releases


def test_a_result_racing_a_cancel_the_cancel_won() -> None:
    """The cancel committed first: the result finds CANCELLED without a unit and releases it."""
    booking = Booking(uuid.uuid4(), BookingStatus.PENDING)
    cancel = domain.cancel(booking, NOW)
    assert cancel.transition is not None
    after_cancel = Booking(booking.id, BookingStatus.CANCELLED)
    decision = domain.apply_result(after_cancel, result(booking.id), LATER)
    assert decision.verdict is ResultVerdict.LATE
    assert decision.releases


def test_a_result_for_no_booking_gives_back_the_unit_it_reserved() -> None:
    r = result(uuid.uuid4())
    decision = domain.apply_result(None, r, LATER)
    assert decision.verdict is ResultVerdict.UNKNOWN_BOOKING
    assert decision.transition is None
    assert [(e.booking_id, e.day, e.reason, e.result_id) for e in decision.events] == [
        (r.booking_id, DAY, ReleaseReason.ORPHAN_RESULT, r.result_id)
    ]
    assert decision.releases


def test_a_result_for_no_booking_without_a_unit_emits_nothing() -> None:
    decision = domain.apply_result(None, result(uuid.uuid4(), quota_day=None), LATER)
    assert decision.verdict is ResultVerdict.UNKNOWN_BOOKING
    assert decision.events == ()


@pytest.mark.parametrize("status", [BookingStatus.CONFIRMED, BookingStatus.REJECTED,
                                    BookingStatus.CANCELLED])  # fmt: skip
def test_another_result_for_a_booking_that_has_one_changes_nothing(status: BookingStatus) -> None:
    """A forged (or buggy) second result: no history line, no new result id, no release."""
    held = uuid.uuid4()
    booking = Booking(uuid.uuid4(), status, None, held)
    decision = domain.apply_result(booking, result(booking.id), LATER)
    assert decision.verdict is ResultVerdict.CONFLICTING
    assert decision.transition is None
    assert not decision.releases


# -- cancel ------------------------------------------------------------------------------


def test_cancel_a_confirmed_booking_gives_its_unit_back() -> None:
    booking = Booking(uuid.uuid4(), BookingStatus.CONFIRMED, DAY, uuid.uuid4())
    decision = domain.cancel(booking, LATER)
    t = decision.transition
    assert decision.verdict is CancelVerdict.CANCELLED
    assert decision.previous is BookingStatus.CONFIRMED
    assert t is not None
    assert t.expect is BookingStatus.CONFIRMED
    assert t.changes() == {"status": BookingStatus.CANCELLED, "quota_day": None}
    assert not t.completes  # it left PENDING when it was confirmed
    assert [(e.day, e.reason, e.result_id) for e in releases(t)] == [
        (DAY, ReleaseReason.CANCELLED, booking.result_id)
    ]
    assert t.history == (
        "[2026-05-16T10:10:00.123Z] Booking Cancelled (was CONFIRMED); "
        "quota unit of 2026-05-16 released",
    )


def test_cancel_a_confirmed_booking_without_a_unit_emits_nothing() -> None:
    booking = Booking(uuid.uuid4(), BookingStatus.CONFIRMED, None, uuid.uuid4())
    t = domain.cancel(booking, LATER).transition
    assert t is not None
    assert t.events == ()


def test_cancel_a_pending_booking_leaves_the_release_to_its_result() -> None:
    """Nothing can vouch for a release yet: the result, when it comes, gives the unit back."""
    booking = Booking(uuid.uuid4(), BookingStatus.PENDING)
    decision = domain.cancel(booking, LATER)
    t = decision.transition
    assert t is not None
    assert t.completes
    assert t.events == ()


def test_cancel_again_is_answered_like_the_first_and_changes_nothing() -> None:
    decision = domain.cancel(Booking(uuid.uuid4(), BookingStatus.CANCELLED), LATER)
    assert decision.verdict is CancelVerdict.ALREADY_CANCELLED
    assert decision.transition is None


def test_a_rejected_booking_cannot_be_cancelled() -> None:
    decision = domain.cancel(Booking(uuid.uuid4(), BookingStatus.REJECTED), LATER)
    assert decision.verdict is CancelVerdict.NOT_CANCELLABLE
    assert decision.previous is BookingStatus.REJECTED
    assert decision.transition is None


# -- the sweep ---------------------------------------------------------------------------


def test_the_timeout_rejects_with_the_reference_reason_and_emits_nothing() -> None:
    rule = domain.time_out(dt.timedelta(minutes=5), LATER)
    assert rule.cutoff == LATER - dt.timedelta(minutes=5)
    assert rule.status is BookingStatus.REJECTED
    assert rule.fail_reason == contracts.TIMEOUT_REASON
    assert rule.history == (
        "[2026-05-16T10:10:00.123Z] Failed: System timeout: Discount service did not respond. "
        "Status: REJECTED",
    )
    assert not hasattr(rule, "events")  # a late result gives back a unit, not the sweep


def test_a_transition_lists_only_what_it_changes() -> None:
    t = domain.Transition(uuid.uuid4(), NOW, result_id=None)
    assert t.changes() == {"result_id": None}
    assert t.status is KEEP
