"""Validation of the booking request, one readable message per problem.

The messages follow the reference's (class-validator) wording where it had
one. Stricter than the reference where it was wrong: a number is not a name,
an impossible date such as 1990-02-30 is refused, a date of birth after today
(today in the service's time zone, ``MEDBOOK_TIME_ZONE``) is refused, and a
service cannot be listed twice.

Text from the request is untrusted: control characters (C0, C1, DEL: a NUL
would reach PostgreSQL, which refuses it) are refused in every text field; a
name must show at least one visible character and may not carry bidirectional
controls (which make a name display as something else); names are stored in
Unicode NFC, so the same name typed two ways is one user.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
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
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Bidirectional controls: embeddings, overrides, isolates and the invisible marks.
_BIDI = re.compile(r"[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# What shows nothing by itself: format characters (zero-width, joiners, BOM), marks
# that combine with a preceding character, separators, controls, unassigned.
_INVISIBLE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cn", "Co", "Cs", "Mn", "Me", "Mc", "Zs",
                                           "Zl", "Zp"})  # fmt: skip
_KEY = re.compile(r"^[\x21-\x7e]+$")

# Namespace of the stable user ids derived from names (UUIDv5).
USER_NAMESPACE: Final = uuid.UUID("6f1c7a52-4b0e-5d8e-9a55-3c2f8d0b7e11")


def user_id_for(name: str) -> str:
    """The stable id of a user known only by name."""
    return str(uuid.uuid5(USER_NAMESPACE, name))


def parse_booking_request(body: Any, today: dt.date) -> tuple[BookingRequest | None, list[str]]:
    """The request, or None and the list of problems (``today``: in the service's zone)."""
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
    else:
        name = unicodedata.normalize("NFC", name.strip())
        problems += _text_problems("userName", name, display=True)
        if len(name) > MAX_NAME_LENGTH:
            problems.append(
                f"userName must be shorter than or equal to {MAX_NAME_LENGTH} characters"
            )

    gender = body.get("gender")
    if not isinstance(gender, str) or gender not in {g.value for g in Gender}:
        problems.append(GENDER_PROBLEM)

    dob = _parse_dob(body.get("dob"), today, problems)

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
    else:
        for service in services:
            problems += _text_problems("serviceNames", service)

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
        else:
            problems += _text_problems("userId", user_id)

    if problems:
        return None, list(dict.fromkeys(problems))
    assert isinstance(name, str)
    assert isinstance(services, list)
    assert dob is not None
    return (
        BookingRequest(
            user_name=name,
            gender=Gender(str(gender)),
            dob=dob,
            service_names=tuple(s.strip() for s in services),
            user_id=user_id.strip() if isinstance(user_id, str) else user_id_for(name),
        ),
        [],
    )


def _text_problems(field: str, value: str, *, display: bool = False) -> list[str]:
    """What is wrong with an untrusted text (``display``: it is shown to people, a name)."""
    problems = []
    control = _CONTROL.search(value)
    if control:
        problems.append(
            f"{field} must not contain control characters (found U+{ord(control.group()):04X})"
        )
    if display:
        if _BIDI.search(value):
            problems.append(f"{field} must not contain bidirectional control characters")
        if all(unicodedata.category(c) in _INVISIBLE_CATEGORIES for c in value):
            problems.append(f"{field} must contain at least one visible character")
    return problems


def _parse_dob(value: Any, today: dt.date, problems: list[str]) -> dt.date | None:
    if not isinstance(value, str):
        problems.append("dob must be a valid ISO 8601 date string (YYYY-MM-DD)")
        return None
    if any(c.isspace() for c in value):
        problems.append("dob must not contain spaces or line breaks")
        return None
    if any(c.isdigit() and not c.isascii() for c in value):
        problems.append("dob must be written with the digits 0-9")
        return None
    if not _DATE.fullmatch(value):
        problems.append("dob must be a valid ISO 8601 date string (YYYY-MM-DD)")
        return None
    try:
        dob = dt.date.fromisoformat(value)
    except ValueError:
        problems.append(f"dob {value} is not a real calendar date")
        return None
    if dob > today:
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
