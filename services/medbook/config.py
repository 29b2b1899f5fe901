"""Settings from the environment, one class per process.

Every setting has a ``MEDBOOK_*`` name; the variable names of the reference
system (``BOOKING_PORT``, ``RABBITMQ_URL``, ``REDIS_HOST``, ``DB_HOST``,
``R2_QUOTA_LIMIT``, ``BANNED_USER``, ...) are accepted as well, so an existing
``.env`` keeps working. README.md lists them all with their defaults.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class PostgresSettings(_Settings):
    url: str | None = Field(
        default=None,
        validation_alias=_env("MEDBOOK_DATABASE_URL", "DATABASE_URL"),
        description="Full PostgreSQL URL; when set it wins over the DB_* parts.",
    )
    host: str = Field(default="127.0.0.1", validation_alias=_env("MEDBOOK_DB_HOST", "DB_HOST"))
    port: int = Field(default=5432, validation_alias=_env("MEDBOOK_DB_PORT", "DB_PORT"))
    user: str = Field(default="postgres", validation_alias=_env("MEDBOOK_DB_USER", "DB_USERNAME"))
    password: SecretStr = Field(
        default=SecretStr("postgres"), validation_alias=_env("MEDBOOK_DB_PASSWORD", "DB_PASSWORD")
    )
    name: str = Field(default="medbook", validation_alias=_env("MEDBOOK_DB_NAME", "DB_NAME"))
    pool_min: int = Field(default=2, ge=1, validation_alias=_env("MEDBOOK_DB_POOL_MIN"))
    pool_max: int = Field(default=20, ge=1, validation_alias=_env("MEDBOOK_DB_POOL_MAX"))
    connect_timeout: float = Field(
        default=3.0, gt=0, validation_alias=_env("MEDBOOK_DB_CONNECT_TIMEOUT")
    )
    statement_timeout: float = Field(
        default=10.0, gt=0, validation_alias=_env("MEDBOOK_DB_STATEMENT_TIMEOUT")
    )

    @property
    def dsn(self) -> str:
        """``postgresql://`` URL for asyncpg and ``databases``."""
        if self.url:
            return self.url.replace("postgresql+psycopg://", "postgresql://", 1)
        user = quote(self.user, safe="")
        password = quote(self.password.get_secret_value(), safe="")
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{self.name}"

    @property
    def sync_url(self) -> str:
        """SQLAlchemy URL with the synchronous psycopg driver, for alembic."""
        dsn = self.dsn
        for scheme in ("postgresql://", "postgres://"):
            if dsn.startswith(scheme):
                return "postgresql+psycopg://" + dsn[len(scheme) :]
        return dsn


class RabbitSettings(_Settings):
    url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        validation_alias=_env("MEDBOOK_RABBITMQ_URL", "RABBITMQ_URL"),
    )
    prefetch: int = Field(default=128, ge=1, le=65535, validation_alias=_env("MEDBOOK_PREFETCH"))
    max_tries: int = Field(
        default=5,
        ge=1,
        validation_alias=_env("MEDBOOK_MAX_TRIES"),
        description="Failed processing attempts before a message is dead-lettered.",
    )
    delivery_limit: int = Field(
        default=20,
        ge=1,
        validation_alias=_env("MEDBOOK_DELIVERY_LIMIT"),
        description="Broker-side safety net: deliveries (crashes included) before dead-lettering.",
    )


class RedisSettings(_Settings):
    url: SecretStr | None = Field(
        default=None, validation_alias=_env("MEDBOOK_REDIS_URL", "REDIS_URL")
    )
    host: str = Field(
        default="127.0.0.1", validation_alias=_env("MEDBOOK_REDIS_HOST", "REDIS_HOST")
    )
    port: int = Field(default=6379, validation_alias=_env("MEDBOOK_REDIS_PORT", "REDIS_PORT"))
    password: SecretStr | None = Field(
        default=None, validation_alias=_env("MEDBOOK_REDIS_PASSWORD", "REDIS_PASSWORD")
    )
    db: int = Field(default=0, ge=0, validation_alias=_env("MEDBOOK_REDIS_DB", "REDIS_DB"))

    @property
    def dsn(self) -> str:
        if self.url:
            return self.url.get_secret_value()
        auth = f":{quote(self.password.get_secret_value(), safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"


class TelemetrySettings(_Settings):
    log_level: str = Field(default="INFO", validation_alias=_env("MEDBOOK_LOG_LEVEL", "LOG_LEVEL"))
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto",
        validation_alias=_env("MEDBOOK_LOG_FORMAT"),
        description="auto: readable text on a terminal, JSON lines otherwise.",
    )
    log_personal_data: bool = Field(
        default=False,
        validation_alias=_env("MEDBOOK_LOG_PERSONAL_DATA"),
        description="Allow names and dates of birth in logs and span attributes.",
    )


def _split_names(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class PolicyDefaults(_Settings):
    """The quota policy's defaults, used when no policy was published to the store."""

    daily_limit: int = Field(
        default=100, ge=0, validation_alias=_env("MEDBOOK_DAILY_LIMIT", "R2_QUOTA_LIMIT")
    )
    discount_percent: float = Field(
        default=12, ge=0, le=100, validation_alias=_env("MEDBOOK_DISCOUNT_PERCENT")
    )
    time_zone: str = Field(default="Asia/Kolkata", validation_alias=_env("MEDBOOK_TIME_ZONE"))
    birthday_rule: bool = Field(default=True, validation_alias=_env("MEDBOOK_BIRTHDAY_RULE"))
    birthday_genders: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("Female",), validation_alias=_env("MEDBOOK_BIRTHDAY_GENDERS")
    )
    high_value_rule: bool = Field(default=True, validation_alias=_env("MEDBOOK_HIGH_VALUE_RULE"))
    high_value_threshold: int = Field(
        default=1000, ge=0, validation_alias=_env("MEDBOOK_HIGH_VALUE_THRESHOLD")
    )
    blocked_users: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("fail_test_user",),
        validation_alias=_env("MEDBOOK_BLOCKED_USERS", "BANNED_USER"),
    )
    cleanup_schedule: str = Field(
        default="* * * * *", validation_alias=_env("MEDBOOK_CLEANUP_SCHEDULE")
    )
    pending_timeout_seconds: int = Field(
        default=300, ge=1, validation_alias=_env("MEDBOOK_PENDING_TIMEOUT")
    )

    _split = field_validator("birthday_genders", "blocked_users", mode="before")(_split_names)


class BookingSettings(_Settings):
    """``medbook-booking``: the HTTP API, the outbox relay and the result consumer."""

    host: str = Field(default="0.0.0.0", validation_alias=_env("MEDBOOK_HOST", "BOOKING_HOST"))
    port: int = Field(default=3000, validation_alias=_env("MEDBOOK_PORT", "BOOKING_PORT"))
    api_token: SecretStr | None = Field(
        default=None,
        validation_alias=_env("MEDBOOK_API_TOKEN"),
        description="When set, every endpoint but health and metrics needs 'Bearer <token>'.",
    )
    outbox_batch_size: int = Field(default=256, ge=1, validation_alias=_env("MEDBOOK_OUTBOX_BATCH"))
    outbox_poll_interval: float = Field(
        default=0.5, gt=0, validation_alias=_env("MEDBOOK_OUTBOX_POLL_INTERVAL")
    )
    shutdown_grace: float = Field(
        default=20.0, gt=0, validation_alias=_env("MEDBOOK_SHUTDOWN_GRACE")
    )
    max_pending: int = Field(
        default=64,
        ge=0,
        validation_alias=_env("MEDBOOK_MAX_PENDING"),
        description="Saga backlog (PENDING bookings) over which creates wait; 0: no limit.",
    )
    admission_wait: float = Field(
        default=1.0,
        ge=0,
        validation_alias=_env("MEDBOOK_ADMISSION_WAIT"),
        description="Longest a create waits for the backlog to drain (then it goes on).",
    )
    database: PostgresSettings = Field(default_factory=PostgresSettings)
    rabbit: RabbitSettings = Field(default_factory=RabbitSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)


class DiscountSettings(_Settings):
    """``medbook-discount``: the discount worker."""

    metrics_port: int = Field(default=9464, validation_alias=_env("MEDBOOK_METRICS_PORT"))
    metrics_host: str = Field(default="0.0.0.0", validation_alias=_env("MEDBOOK_METRICS_HOST"))
    policy_refresh_interval: float = Field(
        default=1.0, gt=0, validation_alias=_env("MEDBOOK_POLICY_REFRESH")
    )
    record_ttl_seconds: int = Field(
        default=7 * 24 * 3600,
        ge=3600,
        validation_alias=_env("MEDBOOK_IDEMPOTENCY_TTL"),
        description="How long a booking's idempotency record (and its result) is kept.",
    )
    shutdown_grace: float = Field(
        default=20.0, gt=0, validation_alias=_env("MEDBOOK_SHUTDOWN_GRACE")
    )
    redis: RedisSettings = Field(default_factory=RedisSettings)
    rabbit: RabbitSettings = Field(default_factory=RabbitSettings)
    policy: PolicyDefaults = Field(default_factory=PolicyDefaults)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)


class CleanupSettings(_Settings):
    """``medbook-cleanup``: the timeout sweep."""

    pending_timeout_seconds: int = Field(
        default=300, ge=1, validation_alias=_env("MEDBOOK_PENDING_TIMEOUT")
    )
    database: PostgresSettings = Field(default_factory=PostgresSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
