"""The quota policy model: defaults, parsing (camelCase, as in the CRD), validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from medbook.config import PolicyDefaults
from medbook.discount.policy import QuotaPolicy, check_cron, describe_error


def test_defaults_match_the_reference() -> None:
    policy = QuotaPolicy()
    assert policy.daily_limit == 100
    assert policy.discount_percent == 12
    assert policy.time_zone == "Asia/Kolkata"
    assert policy.blocked_users == ("fail_test_user",)
    assert policy.eligibility.birthday.enabled
    assert [g.value for g in policy.eligibility.birthday.genders] == ["Female"]
    assert policy.eligibility.high_value.threshold == 1000
    assert policy.cleanup.pending_timeout_seconds == 300
    assert policy.cleanup.schedule == "* * * * *"


def test_parses_a_custom_resource_spec() -> None:
    spec = {
        "dailyLimit": 5,
        "discountPercent": 15,
        "timeZone": "Europe/Berlin",
        "eligibility": {
            "birthday": {"genders": ["Female", "Other"]},
            "highValue": {"threshold": 2000},
        },
        "blockedUsers": ["mallory"],
        "cleanup": {"schedule": "*/5 * * * *", "pendingTimeoutSeconds": 600, "suspend": True},
    }
    policy = QuotaPolicy.model_validate(spec)
    assert policy.daily_limit == 5
    assert policy.eligibility.high_value.threshold == 2000
    assert policy.cleanup.suspend
    assert QuotaPolicy.from_json(policy.to_json()) == policy
    assert policy.to_spec()["cleanup"]["pendingTimeoutSeconds"] == 600


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"dailyLimit": -1}, "dailyLimit"),
        ({"discountPercent": 101}, "discountPercent"),
        ({"timeZone": "Mars/Olympus"}, "unknown time zone"),
        ({"cleanup": {"schedule": "every minute"}}, "5 fields"),
        ({"cleanup": {"schedule": "61 * * * *"}}, "outside"),
        ({"cleanup": {"pendingTimeoutSeconds": 5}}, "pendingTimeoutSeconds"),
        ({"eligibility": {"birthday": {"genders": []}}}, "genders"),
        ({"eligibility": {"birthday": {"genders": ["Female", "female"]}}}, "repeat"),
        ({"blockedUsers": [""]}, "blockedUsers"),
        ({"dailyLimt": 5}, "dailyLimt"),
    ],
)
def test_invalid_policies_are_refused_with_a_readable_reason(spec: dict, problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        QuotaPolicy.model_validate(spec)
    assert problem in describe_error(caught.value)


def test_defaults_come_from_the_environment_with_the_reference_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("R2_QUOTA_LIMIT", "7")
    monkeypatch.setenv("BANNED_USER", "eve")
    monkeypatch.setenv("MEDBOOK_DISCOUNT_PERCENT", "20")
    monkeypatch.setenv("MEDBOOK_BIRTHDAY_GENDERS", "Female,Other")
    policy = QuotaPolicy.from_defaults(PolicyDefaults())
    assert policy.daily_limit == 7
    assert policy.blocked_users == ("eve",)
    assert policy.discount_percent == 20
    assert [g.value for g in policy.eligibility.birthday.genders] == ["Female", "Other"]


@pytest.mark.parametrize(
    "expr", ["* * * * *", "*/5 * * * *", "0 0 * * 0", "0-30/10 1,2 1 1-12 7", "@hourly"]
)
def test_valid_cron_schedules(expr: str) -> None:
    check_cron(expr)
