"""The quota policy: one model for the worker, the operator, the CRD and the CLI.

Pure: a validated description of the daily limit, the discount, the time zone
of the quota day, the eligibility rules, the blocked users and the timeout
sweep. Where it is published and how the worker follows it is
:mod:`medbook.discount.policy_store`. Field names are camelCase, as in the
custom resource's spec.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medbook.config import PolicyDefaults
from medbook.contracts import Gender

# Bounds shared with the CRD's openAPIV3Schema (a test checks they agree).
MAX_DAILY_LIMIT: Final = 1_000_000
MAX_PENDING_TIMEOUT_SECONDS: Final = 7 * 24 * 3600
MIN_PENDING_TIMEOUT_SECONDS: Final = 30
MAX_BLOCKED_USERS: Final = 1000
MAX_NAME_LENGTH: Final = 200
MAX_TIME_ZONE_LENGTH: Final = 64
MAX_SCHEDULE_LENGTH: Final = 100

CRON_FIELD_RANGES: Final = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
CRON_MACROS: Final = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)


def check_cron(expression: str) -> None:
    """Validate a five-field cron expression (or a macro) as Kubernetes CronJobs accept it."""
    expr = expression.strip()
    if expr in CRON_MACROS:
        return
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(
            f"schedule {expression!r} must have 5 fields (minute hour day month weekday)"
        )
    for text, (low, high) in zip(fields, CRON_FIELD_RANGES, strict=True):
        for part in text.split(","):
            _check_cron_part(part, low, high, expression)


def _check_cron_part(part: str, low: int, high: int, expression: str) -> None:
    base, _, step = part.partition("/")
    if step and (not step.isdigit() or int(step) == 0):
        raise ValueError(f"schedule {expression!r}: bad step in {part!r}")
    if base in ("*", "?"):
        return
    bounds = base.split("-")
    if len(bounds) > 2 or not all(b.isdigit() for b in bounds):
        raise ValueError(f"schedule {expression!r}: cannot read {part!r}")
    values = [int(b) for b in bounds]
    if any(v < low or v > high for v in values) or values != sorted(values):
        raise ValueError(f"schedule {expression!r}: {part!r} is outside {low}-{high}")


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, validate_default=True
    )


class BirthdayRule(_Model):
    """Eligible on the customer's birthday (born on 29 February: 28 February in other years)."""

    enabled: bool = True
    genders: Annotated[tuple[Gender, ...], Field(min_length=1, max_length=3)] = (Gender.FEMALE,)

    @field_validator("genders", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            by_lower = {g.value.lower(): g.value for g in Gender}
            return tuple(by_lower.get(str(v).lower(), v) for v in value)
        return value

    @field_validator("genders")
    @classmethod
    def _unique(cls, value: tuple[Gender, ...]) -> tuple[Gender, ...]:
        if len(set(value)) != len(value):
            raise ValueError("genders must not repeat")
        return value


class HighValueRule(_Model):
    """Eligible when the base price is strictly over the threshold."""

    enabled: bool = True
    threshold: Annotated[int, Field(ge=0, le=100_000_000)] = 1000


class Eligibility(_Model):
    birthday: BirthdayRule = BirthdayRule()
    high_value: HighValueRule = Field(default=HighValueRule(), alias="highValue")


class Cleanup(_Model):
    """The timeout sweep: a CronJob in a cluster, a loop in the local dev stack."""

    schedule: Annotated[str, Field(max_length=MAX_SCHEDULE_LENGTH)] = "* * * * *"
    pending_timeout_seconds: Annotated[
        int, Field(ge=MIN_PENDING_TIMEOUT_SECONDS, le=MAX_PENDING_TIMEOUT_SECONDS)
    ] = Field(default=300, alias="pendingTimeoutSeconds")
    suspend: bool = False

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        check_cron(value)
        return value


class QuotaPolicy(_Model):
    daily_limit: Annotated[int, Field(ge=0, le=MAX_DAILY_LIMIT)] = Field(
        default=100, alias="dailyLimit"
    )
    discount_percent: Annotated[float, Field(ge=0, le=100)] = Field(
        default=12, alias="discountPercent"
    )
    time_zone: Annotated[str, Field(max_length=MAX_TIME_ZONE_LENGTH)] = Field(
        default="Asia/Kolkata", alias="timeZone"
    )
    eligibility: Eligibility = Eligibility()
    blocked_users: Annotated[
        tuple[Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)], ...],
        Field(max_length=MAX_BLOCKED_USERS),
    ] = Field(default=("fail_test_user",), alias="blockedUsers")
    cleanup: Cleanup = Cleanup()

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)

    def today(self, now: dt.datetime | None = None) -> dt.date:
        """Today's date in the policy's time zone."""
        now = now or dt.datetime.now(dt.UTC)
        return now.astimezone(self.zone).date()

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)

    def to_spec(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> QuotaPolicy:
        return cls.model_validate_json(raw)

    @classmethod
    def from_defaults(cls, defaults: PolicyDefaults | None = None) -> QuotaPolicy:
        d = defaults or PolicyDefaults()
        return cls(
            daily_limit=d.daily_limit,
            discount_percent=d.discount_percent,
            time_zone=d.time_zone,
            eligibility=Eligibility(
                birthday=BirthdayRule.model_validate(
                    {"enabled": d.birthday_rule, "genders": d.birthday_genders}
                ),
                high_value=HighValueRule(
                    enabled=d.high_value_rule, threshold=d.high_value_threshold
                ),
            ),
            blocked_users=d.blocked_users,
            cleanup=Cleanup(pending_timeout_seconds=d.pending_timeout_seconds),
        )


def describe_error(exc: ValidationError) -> str:
    """One readable line per problem, with the camelCase path a user wrote."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "spec"
        lines.append(f"{path}: {err['msg']}")
    return "; ".join(lines)
