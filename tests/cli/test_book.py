"""`medbook book`: flags or questions, then the saga's steps live until the final status."""

from __future__ import annotations

import json

from tests.cli.conftest import Medbook, explain
from tests.helpers import Stack, birthday_dob, not_birthday_dob


async def test_book_with_flags_follows_the_saga_to_the_discount(
    medbook: Medbook, stack: Stack
) -> None:
    result = await medbook(
        "book", "--name", "Asha Rao", "--gender", "female", "--dob", birthday_dob(),
        "-s", "Blood Test", "-s", "Vaccination",
    )  # fmt: skip
    assert result.exit_code == 0, explain(result)
    out = result.stdout
    for step in ("Booking Created (Pending)", "[VALIDATING_ELIGIBILITY]", "[CHECKING_QUOTA]"):
        assert step in out
    assert "CONFIRMED  price 450 -> 396 (discount applied)" in out
    booking_id = out.split("booking ", 1)[1].split()[0]
    assert (await stack.get(booking_id))["finalPrice"] == 396


async def test_book_asks_for_what_is_missing_and_shows_the_catalog_for_the_gender(
    medbook: Medbook,
) -> None:
    answers = [
        "Ravi Kumar",
        "robot",
        "male",
        "1980-13-01",
        "1980-01-02",
        "9, x",
        "1, prostate exam",
    ]
    result = await medbook("book", "--json", input="\n".join(answers) + "\n")
    assert result.exit_code == 0, explain(result)
    asked = result.stderr
    assert "choose one of Male, Female, Other" in asked
    assert "write the date as YYYY-MM-DD" in asked
    assert "Services offered to Male" in asked
    assert "Prostate Exam" in asked and "Mammogram" not in asked  # the Male catalog only
    assert "'9' is neither a number from the list nor a service's name" in asked
    booking = json.loads(result.stdout)
    assert booking["userName"] == "Ravi Kumar"
    assert [s["name"] for s in booking["services"]] == ["General Consultation", "Prostate Exam"]
    assert booking["status"] == "CONFIRMED"
    assert booking["finalPrice"] == 1760  # 2000 is over the high-value threshold: 12% off


async def test_book_refused_by_the_api_exits_2_with_the_reason(medbook: Medbook) -> None:
    result = await medbook(
        "book", "--name", "Ravi", "--gender", "male", "--dob", not_birthday_dob(), "-s", "Mammogram"
    )
    assert result.exit_code == 2, explain(result)
    assert "Service 'Mammogram' is not available for gender 'Male'" in result.stderr
    assert "Traceback" not in result.output


async def test_book_still_pending_after_the_timeout_exits_1(medbook: Medbook, stack: Stack) -> None:
    await stack.stop_worker()
    result = await medbook(
        "book", "--name", "Asha", "--gender", "female", "--dob", not_birthday_dob(),
        "-s", "Blood Test", "--timeout", "0.5",
    )  # fmt: skip
    assert result.exit_code == 1, explain(result)
    assert "PENDING" in result.stdout and "still PENDING after 0.5s" in result.stderr
