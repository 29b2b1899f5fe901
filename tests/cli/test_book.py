"""`medbook book`: flags or questions, then the saga's steps live until the final status."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
        "02/01/1980",
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
    assert "1980-13-01 is not a real calendar date" in asked  # as the API says it
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


async def test_book_says_a_date_that_does_not_exist_is_not_a_real_date(medbook: Medbook) -> None:
    result = await medbook("book", "--name", "x", "--gender", "male", "--dob", "1990-02-30")
    assert result.exit_code == 2, explain(result)
    assert "1990-02-30 is not a real calendar date" in result.output


async def test_book_takes_service_names_in_any_case(medbook: Medbook) -> None:
    result = await medbook(
        "book", "--name", "Ravi", "--gender", "MALE", "--dob", "1980-01-02",
        "-s", "mri scan", "-s", "BLOOD TEST", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, explain(result)
    booking = json.loads(result.stdout)
    assert [s["name"] for s in booking["services"]] == ["MRI Scan", "Blood Test"]


async def test_the_spinner_does_not_stay_on_the_screen(medbook: Medbook, tmp_path: Path) -> None:
    """On a terminal the spinner (standard error) and the steps (standard output) share the
    screen: once done, only the steps and the result are left."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    session = f"medbook-book-{tmp_path.name}"
    command = (
        f"{sys.executable} -m medbook.cli.main book --url {medbook.api_url} --name Ravi "
        "--gender male --dob 1980-01-02 -s 'MRI Scan'; echo EXIT=$?; sleep 60"
    )

    def run() -> str:
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", command],
            check=True,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                screen = subprocess.run(
                    ["tmux", "capture-pane", "-t", session, "-p"],
                    capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                if "EXIT=" in screen:
                    return screen
                time.sleep(0.2)
            return screen
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)

    screen = await asyncio.to_thread(run)
    assert "EXIT=0" in screen, screen
    assert "Discount Processed. Status: CONFIRMED. Price: 4400" in screen
    assert "waiting for the saga" not in screen, screen
    assert not any(frame in screen for frame in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"), screen
