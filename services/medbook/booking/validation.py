"""Validation of the booking request, one readable message per problem.

The messages follow the reference's (class-validator) wording where it had
one. Stricter than the reference where it was wrong: a number is not a name,
an impossible date such as 1990-02-30 is refused, a date of birth in the
future is refused, and a service cannot be listed twice.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any, Final

from medbook.booking.domain import BookingRequest
from medbook.contracts import Gender

MAX_NAME_LENGTH: Final = 200
MAX_USER_ID_LENGTH: Final = 128
MAX_SERVICES: Final = 20
MAX_IDEMPOTENCY_KEY_LENGTH: Final = 255
EARLIEST_DOB: Final = dt.date(1900, 1, 1)
FIELDS: Final = ("userName", "gender", "dob", "serviceNames", "userId")
GENDER_PROBLEM: Final = (
    f"gender must be one of the following values: {', '.join(g.value for g in Gender)}"
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_KEY = re.compile(r"^[\x21-\x7e]+$")

# Namespace of the stable user ids derived from names (UUIDv5).
USER_NAMESPACE: Final = uuid.UUID("6f1c7a52-4b0e-5d8e-9a55-3c2f8d0b7e11")


def user_id_for(name: str) -> str:
    """The stable id of a user known only by name."""
    return str(uuid.uuid5(USER_NAMESPACE, name))


def parse_booking_request(
    body: Any, today: dt.date | None = None
) -> tuple[BookingRequest | None, list[str]]:
    """The request, or None and the list of problems."""
    if not isinstance(body, dict):
        return None, ["request body must be a JSON object"]
    problems = [f"property {key} should not exist" for key in body if key not in FIELDS]

    name = body.get("userName")
    if name is None:
        problems.append("userName should not be empty")
    elif not isinstance(name, str):
        problems.append("userName must be a string")
    elif not name.strip():
        problems.append("userName should not be empty")
    elif len(name.strip()) > MAX_NAME_LENGTH:
        problems.append(f"userName must be shorter than or equal to {MAX_NAME_LENGTH} characters")

    gender = body.get("gender")
    if not isinstance(gender, str) or gender not in {g.value for g in Gender}:
        problems.append(GENDER_PROBLEM)

    dob = _parse_dob(body.get("dob"), today or dt.datetime.now(dt.UTC).date(), problems)

    services = body.get("serviceNames")
    if not isinstance(services, list):
        problems.append("serviceNames must be an array")
    elif not services:
        problems.append("serviceNames must contain at least 1 elements")
    elif len(services) > MAX_SERVICES:
        problems.append(f"serviceNames must contain no more than {MAX_SERVICES} elements")
    elif not all(isinstance(s, str) and s.strip() for s in services):
        problems.append("each value in serviceNames must be a non-empty string")
    elif len({s.strip() for s in services}) != len(services):
        problems.append("serviceNames must not contain the same service twice")

    user_id = body.get("userId")
    if "userId" in body:
        if not isinstance(user_id, str):
            problems.append("userId must be a string")
        elif not user_id.strip():
            problems.append("userId should not be empty")
        elif len(user_id) > MAX_USER_ID_LENGTH:
            problems.append(
                f"userId must be shorter than or equal to {MAX_USER_ID_LENGTH} characters"
            )

    if problems:
        return None, problems
    assert isinstance(name, str)
    assert isinstance(services, list)
    assert dob is not None
    clean_name = name.strip()
    return (
        BookingRequest(
            user_name=clean_name,
            gender=Gender(str(gender)),
            dob=dob,
            service_names=tuple(s.strip() for s in services),
            user_id=user_id.strip() if isinstance(user_id, str) else user_id_for(clean_name),
        ),
        [],
    )


def _parse_dob(value: Any, today: dt.date, problems: list[str]) -> dt.date | None:
    if not isinstance(value, str) or not _DATE.match(value):
        problems.append("dob must be a valid ISO 8601 date string (YYYY-MM-DD)")
        return None
    try:
        dob = dt.date.fromisoformat(value)
    except ValueError:
        problems.append(f"dob {value} is not a real calendar date")
        return None
    if dob > today + dt.timedelta(days=1):
        problems.append("dob must not be in the future")
    elif dob < EARLIEST_DOB:
        problems.append(f"dob must not be before {EARLIEST_DOB.isoformat()}")
    return dob


def check_idempotency_key(key: str | None) -> str | None:
    """The header's value, or raise ValueError with the reason."""
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not _KEY.match(key):
        raise ValueError(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} visible ASCII characters"
        )
    return key
