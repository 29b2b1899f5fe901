"""The discount worker's Redis key layout, in one place.

``discount_quota:<YYYY-MM-DD>`` is the day's count of quota units in use (the
reference's key, so ``redis-cli get`` still answers), with
``discount_quota:<YYYY-MM-DD>:bookings`` the set of bookings holding one;
``discount_reservation:<booking id>`` is the day a booking's unit came from;
``discount_processed:<booking id>`` is the booking's idempotency record (its
state and stored result). Everything that reads or writes these keys names
them through the functions below.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Final

COUNTER_PREFIX: Final = "discount_quota:"
RESERVATION_PREFIX: Final = "discount_reservation:"
RECORD_PREFIX: Final = "discount_processed:"


def counter_key(day: dt.date) -> str:
    return f"{COUNTER_PREFIX}{day.isoformat()}"


def members_key(day: dt.date) -> str:
    return f"{COUNTER_PREFIX}{day.isoformat()}:bookings"


def reservation_key(booking_id: uuid.UUID | str) -> str:
    return f"{RESERVATION_PREFIX}{booking_id}"


def record_key(booking_id: uuid.UUID | str) -> str:
    return f"{RECORD_PREFIX}{booking_id}"
