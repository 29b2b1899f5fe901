"""Booking request validation, without a server."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from medbook.booking.validation import check_idempotency_key, parse_booking_request, user_id_for

TODAY = dt.date(2026, 11, 24)
VALID = {
    "userName": "Asha",
    "gender": "Female",
    "dob": "1990-05-17",
    "serviceNames": ["Blood Test"],
}


def test_valid_request_gets_a_stable_user_id_from_the_name() -> None:
    first, problems = parse_booking_request(VALID, TODAY)
    assert problems == []
    assert first is not None
    second, _ = parse_booking_request(dict(VALID), TODAY)
    assert second is not None
    assert first.user_id == second.user_id == user_id_for("Asha")
    assert uuid.UUID(first.user_id).version == 5


def test_given_user_id_is_kept() -> None:
    request, _ = parse_booking_request({**VALID, "userId": "patient-42"}, TODAY)
    assert request is not None
    assert request.user_id == "patient-42"


def test_fingerprint_changes_with_the_body() -> None:
    a, _ = parse_booking_request(VALID, TODAY)
    b, _ = parse_booking_request({**VALID, "serviceNames": ["X-Ray"]}, TODAY)
    assert a is not None
    assert b is not None
    assert a.fingerprint() != b.fingerprint()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"userName": 42}, "userName must be a string"),
        ({"userName": "   "}, "userName should not be empty"),
        ({"userName": None}, "userName should not be empty"),
        ({"userName": "x" * 201}, "userName must be shorter than or equal to 200 characters"),
        ({"gender": "female"}, "gender must be one of the following values: Male, Female, Other"),
        ({"gender": {}}, "gender must be one of the following values: Male, Female, Other"),
        ({"gender": ["Female"]}, "gender must be one of the following values: Male, Female, Other"),
        ({"dob": "1990-02-30"}, "dob 1990-02-30 is not a real calendar date"),
        ({"dob": "17/05/1990"}, "dob must be a valid ISO 8601 date string (YYYY-MM-DD)"),
        ({"dob": 19900517}, "dob must be a valid ISO 8601 date string (YYYY-MM-DD)"),
        ({"dob": "2999-01-01"}, "dob must not be in the future"),
        ({"dob": "1850-01-01"}, "dob must not be before 1900-01-01"),
        ({"serviceNames": []}, "serviceNames must contain at least 1 elements"),
        ({"serviceNames": "Blood Test"}, "serviceNames must be an array"),
        ({"serviceNames": [1]}, "each value in serviceNames must be a non-empty string"),
        (
            {"serviceNames": ["Blood Test", "Blood Test"]},
            "serviceNames must not contain the same service twice",
        ),
        ({"price": 10}, "property price should not exist"),
        ({"userId": ""}, "userId should not be empty"),
    ],
)
def test_each_problem_has_its_message(change: dict, problem: str) -> None:
    request, problems = parse_booking_request({**VALID, **change}, TODAY)
    assert request is None
    assert problem in problems


def test_all_problems_are_reported_at_once() -> None:
    _, problems = parse_booking_request({"foo": 1}, TODAY)
    assert len(problems) == 5  # unknown property, name, gender, dob, services


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "é"])
def test_bad_idempotency_keys(key: str) -> None:
    with pytest.raises(ValueError, match="Idempotency-Key"):
        check_idempotency_key(key)
