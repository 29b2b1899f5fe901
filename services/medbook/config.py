"""Settings from the environment, one class per process.

Every setting has a ``MEDBOOK_*`` name; the variable names of the reference
system (``BOOKING_PORT``, ``RABBITMQ_URL``, ``REDIS_HOST``, ``DB_HOST``,
``R2_QUOTA_LIMIT``, ``BANNED_USER``, ...) are accepted as well, so an existing
``.env`` keeps working. docs/configuration.md lists them all with their defaults (a test
keeps the two in step).
"""

from __future__ import annotations

import zoneinfo
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from medbook import broker_address, postgres_dsn, redis_address
from medbook.signing import NO_SIGNING, MessageSigner, parse_keys


def setting(default: Any, *names: str, help: str, **bounds: Any) -> Any:
    """A field read from the first of ``names`` that is set in the environment."""
    return Field(default=default, validation_alias=AliasChoices(*names), description=help, **bounds)


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class PostgresSettings(_Settings):
    url: str | None = setting(
        None, "MEDBOOK_DATABASE_URL", "DATABASE_URL",
        help="Full PostgreSQL URL; when set it wins over the DB_* parts. Several hosts "
        "(host1:5432,host2:5432) find the primary (target_session_attrs=read-write).",
    )  # fmt: skip
    host: str = setting("127.0.0.1", "MEDBOOK_DB_HOST", "DB_HOST", help="PostgreSQL host.")
    port: int = setting(5432, "MEDBOOK_DB_PORT", "DB_PORT", help="PostgreSQL port.", ge=1, le=65535)
    hosts: str | None = setting(
        None, "MEDBOOK_DB_HOSTS",
        help="Several PostgreSQL hosts (host1:5432,host2:5432), a primary and its standbys: "
        "connections go to the one that takes writes. Wins over DB_HOST and DB_PORT.",
    )  # fmt: skip
    user: str = setting("postgres", "MEDBOOK_DB_USER", "DB_USERNAME", help="PostgreSQL user.")
    password: SecretStr = setting(
        SecretStr("postgres"), "MEDBOOK_DB_PASSWORD", "DB_PASSWORD", help="PostgreSQL password."
    )
    name: str = setting("medbook", "MEDBOOK_DB_NAME", "DB_NAME", help="Database name.")
    pool_max: int = setting(20, "MEDBOOK_DB_POOL_MAX", help="Most connections per process.", ge=1)
    connect_timeout: float = setting(
        3.0, "MEDBOOK_DB_CONNECT_TIMEOUT", help="Seconds to wait for a new connection.", gt=0
    )
    statement_timeout: float = setting(
        10.0, "MEDBOOK_DB_STATEMENT_TIMEOUT", help="Seconds a statement may take.", gt=0
    )

    @field_validator("url")
    @classmethod
    def _readable_url(cls, value: str | None) -> str | None:
        if value:
            postgres_dsn.parse(value)  # a clear error now, not at the first connection
        return value

    @field_validator("hosts")
    @classmethod
    def _readable_hosts(cls, value: str | None) -> str | None:
        if value:
            postgres_dsn.parse(f"postgresql://{value.strip()}/db")
        return value.strip() if value else None

    @property
    def dsn(self) -> str:
        """``postgresql://`` URL for asyncpg and ``databases`` (several hosts allowed)."""
        if self.url:
            return postgres_dsn.normalized(self.url)
        user = quote(self.user, safe="")
        password = quote(self.password.get_secret_value(), safe="")
        hosts = self.hosts or f"{self.host}:{self.port}"
        return postgres_dsn.normalized(f"postgresql://{user}:{password}@{hosts}/{self.name}")

    @property
    def sync_url(self) -> str:
        """SQLAlchemy URL with the synchronous psycopg driver, for alembic."""
        return postgres_dsn.sqlalchemy_url(self.dsn)


class RabbitSettings(_Settings):
    url: SecretStr = setting(
        SecretStr("amqp://guest:guest@127.0.0.1:5672/"), "MEDBOOK_RABBITMQ_URL", "RABBITMQ_URL",
        help="AMQP URL of RabbitMQ; a cluster's nodes as comma-separated URLs "
        "(or amqp://user:pass@host1,host2/vhost), tried in turn.",
    )  # fmt: skip

    @field_validator("url")
    @classmethod
    def _readable_urls(cls, value: SecretStr) -> SecretStr:
        broker_address.broker_urls(value.get_secret_value())
        return value

    prefetch: int = setting(
        128, "MEDBOOK_PREFETCH", help="Messages a consumer processes at once.", ge=1, le=65535
    )
    max_tries: int = setting(
        5, "MEDBOOK_MAX_TRIES",
        help="Failed processing attempts before a message is dead-lettered.", ge=1,
    )  # fmt: skip
    outage_budget: float = setting(
        600.0, "MEDBOOK_OUTAGE_BUDGET",
        help="Seconds a message waits in place for a dependency that is down (the database, "
        "Redis, the broker) before it is dead-lettered with the reason. Keep it under "
        "RabbitMQ's consumer_timeout (30 min by default).", gt=0,
    )  # fmt: skip
    message_timeout: float = setting(
        30.0, "MEDBOOK_MESSAGE_TIMEOUT",
        help="Seconds one attempt at processing a message may take; a slower one is a "
        "failed try.", gt=0,
    )  # fmt: skip

    signing_keys: SecretStr | None = setting(
        None, "MEDBOOK_SIGNING_KEYS",
        help="Keys that sign and verify every message, 'kid:secret,kid:secret' (secrets of "
        "32 characters or more); unset: messages are not signed (signing.py).",
    )  # fmt: skip
    signing_key_id: str | None = setting(
        None, "MEDBOOK_SIGNING_KEY_ID",
        help="Which of the keys signs what this process publishes (default: the first).",
    )  # fmt: skip
    signing_required: bool = setting(
        True, "MEDBOOK_SIGNING_REQUIRED",
        help="With keys: dead-letter unsigned messages (false while turning signing on).",
    )  # fmt: skip

    @field_validator("signing_keys")
    @classmethod
    def _keys_parse(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_keys(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _known_signing_key(self) -> RabbitSettings:
        if self.signing_key_id is not None and self.signing_key_id not in self.signer().keys:
            raise ValueError(f"MEDBOOK_SIGNING_KEY_ID {self.signing_key_id!r} is not a given key")
        return self

    def signer(self) -> MessageSigner:
        if self.signing_keys is None:
            return NO_SIGNING
        return MessageSigner(
            parse_keys(self.signing_keys.get_secret_value()),
            self.signing_key_id,
            self.signing_required,
        )


class RedisSettings(_Settings):
    url: SecretStr | None = setting(
        None, "MEDBOOK_REDIS_URL", "REDIS_URL",
        help="Full Redis URL (or redis+sentinel://host:port,host:port/<master>/<db>); "
        "wins over the REDIS_* parts.",
    )  # fmt: skip
    host: str = setting("127.0.0.1", "MEDBOOK_REDIS_HOST", "REDIS_HOST", help="Redis host.")
    port: int = setting(
        6379, "MEDBOOK_REDIS_PORT", "REDIS_PORT", help="Redis port.", ge=1, le=65535
    )
    password: SecretStr | None = setting(
        None, "MEDBOOK_REDIS_PASSWORD", "REDIS_PASSWORD", help="Redis password."
    )
    db: int = setting(0, "MEDBOOK_REDIS_DB", "REDIS_DB", help="Redis database number.", ge=0)
    sentinels: str | None = setting(
        None, "MEDBOOK_REDIS_SENTINELS",
        help="Redis Sentinels (host1:26379,host2:26379) to ask for the master; "
        "wins over REDIS_HOST and REDIS_PORT.",
    )  # fmt: skip
    sentinel_master: str = setting(
        "mymaster", "MEDBOOK_REDIS_SENTINEL_MASTER",
        help="The name the sentinels monitor the master under.", min_length=1,
    )  # fmt: skip
    sentinel_password: SecretStr | None = setting(
        None, "MEDBOOK_REDIS_SENTINEL_PASSWORD",
        help="Password of the sentinels themselves (REDIS_PASSWORD is the master's).",
    )  # fmt: skip
    wait_replicas: int | None = setting(
        None, "MEDBOOK_REDIS_WAIT_REPLICAS",
        help="Replicas that must acknowledge a quota write before it counts (WAIT); "
        "default: 1 with Sentinel, 0 with one server.", ge=0,
    )  # fmt: skip
    wait_timeout: float = setting(
        1.0, "MEDBOOK_REDIS_WAIT_TIMEOUT",
        help="Seconds to wait for those acknowledgements before the write is tried again.",
        gt=0,
    )  # fmt: skip

    @field_validator("url")
    @classmethod
    def _usable_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            redis_address.check_url(value.get_secret_value())
        return value

    @property
    def replicas_to_wait_for(self) -> int:
        """``wait_replicas``, or its default: 1 behind Sentinel, 0 for one server."""
        if self.wait_replicas is not None:
            return self.wait_replicas
        return 1 if redis_address.scheme_of(self.dsn) in redis_address.SENTINEL_SCHEMES else 0

    @field_validator("sentinels")
    @classmethod
    def _readable_sentinels(cls, value: str | None) -> str | None:
        if value:
            redis_address.parse_sentinel_url(f"redis+sentinel://{value.strip()}/m")
        return value.strip() if value else None

    @property
    def dsn(self) -> str:
        if self.url:
            return self.url.get_secret_value()
        auth = f":{quote(self.password.get_secret_value(), safe='')}@" if self.password else ""
        if self.sentinels:
            master = quote(self.sentinel_master, safe="")
            query = ""
            if self.sentinel_password is not None:
                secret = quote(self.sentinel_password.get_secret_value(), safe="")
                query = f"?sentinel_password={secret}"
            return f"redis+sentinel://{auth}{self.sentinels}/{master}/{self.db}{query}"
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"


class TelemetrySettings(_Settings):
    log_level: str = setting("INFO", "MEDBOOK_LOG_LEVEL", "LOG_LEVEL", help="Logging level.")
    log_format: Literal["auto", "json", "text"] = setting(
        "auto",
        "MEDBOOK_LOG_FORMAT",
        help="auto: readable text on a terminal, JSON lines otherwise.",
    )


def _known_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
    return value


def _split_names(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class PolicyDefaults(_Settings):
    """The quota policy's defaults, used when no policy was published to the store."""

    daily_limit: int = setting(
        100, "MEDBOOK_DAILY_LIMIT", "R2_QUOTA_LIMIT", help="Discounts granted per day.", ge=0
    )
    discount_percent: float = setting(
        12, "MEDBOOK_DISCOUNT_PERCENT", help="Percent off an eligible booking.", ge=0, le=100
    )
    time_zone: str = setting(
        "Asia/Kolkata", "MEDBOOK_TIME_ZONE", help="IANA zone of the quota day and birthdays."
    )
    birthday_rule: bool = setting(True, "MEDBOOK_BIRTHDAY_RULE", help="Birthday rule on.")
    birthday_genders: Annotated[tuple[str, ...], NoDecode] = setting(
        ("Female",),
        "MEDBOOK_BIRTHDAY_GENDERS",
        help="Comma list of genders the birthday rule is for.",
    )
    high_value_rule: bool = setting(True, "MEDBOOK_HIGH_VALUE_RULE", help="High-value rule on.")
    high_value_threshold: int = setting(
        1000, "MEDBOOK_HIGH_VALUE_THRESHOLD",
        help="Base price a booking must exceed for the high-value rule.", ge=0,
    )  # fmt: skip
    blocked_users: Annotated[tuple[str, ...], NoDecode] = setting(
        ("fail_test_user",), "MEDBOOK_BLOCKED_USERS", "BANNED_USER",
        help="Comma list of user names (or ids) whose bookings are rejected.",
    )  # fmt: skip
    pending_timeout_seconds: int = setting(
        300, "MEDBOOK_PENDING_TIMEOUT",
        help="Seconds a booking may stay PENDING before the sweep rejects it.", ge=1,
    )  # fmt: skip

    _split = field_validator("birthday_genders", "blocked_users", mode="before")(_split_names)


class _ServiceSettings(_Settings):
    """What every long-running service has."""

    shutdown_grace: float = setting(
        20.0, "MEDBOOK_SHUTDOWN_GRACE",
        help="Seconds to finish in-flight requests and messages on SIGTERM.", gt=0,
    )  # fmt: skip


class BookingSettings(_ServiceSettings):
    """``medbook-booking``: the HTTP API, the outbox relay and the result consumer."""

    host: str = setting(
        "0.0.0.0", "MEDBOOK_HOST", "BOOKING_HOST", help="Address the API listens on."
    )
    port: int = setting(
        3000, "MEDBOOK_PORT", "BOOKING_PORT", help="Port of the API (and /metrics).", ge=1,
        le=65535,
    )  # fmt: skip
    time_zone: str = setting(
        "Asia/Kolkata", "MEDBOOK_TIME_ZONE",
        help="IANA zone of 'today' for the booking service: a date of birth after today "
        "there is refused. The same variable is the quota policy's default zone.",
    )  # fmt: skip
    api_token: SecretStr | None = setting(
        None, "MEDBOOK_API_TOKEN",
        help="When set, every endpoint but health and metrics needs 'Bearer <token>'.",
    )  # fmt: skip
    outbox_batch_size: int = setting(
        256, "MEDBOOK_OUTBOX_BATCH", help="Outbox rows published per batch.", ge=1
    )
    outbox_poll_interval: float = setting(
        0.5, "MEDBOOK_OUTBOX_POLL_INTERVAL",
        help="Seconds between outbox polls (rows committed by other processes).", gt=0,
    )  # fmt: skip
    max_pending: int = setting(
        32, "MEDBOOK_MAX_PENDING",
        help="Saga backlog (PENDING bookings) over which creates wait; 0: no limit.", ge=0,
    )  # fmt: skip
    admission_burst: int = setting(
        16, "MEDBOOK_ADMISSION_BURST",
        help="Waiting creates go in together once there is room for this many.", ge=1,
    )  # fmt: skip
    admission_wait: float = setting(
        1.0, "MEDBOOK_ADMISSION_WAIT",
        help="Longest a create waits for the backlog to drain (then it goes on).", ge=0,
    )  # fmt: skip
    database: PostgresSettings = Field(default_factory=PostgresSettings)
    rabbit: RabbitSettings = Field(default_factory=RabbitSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    _zone = field_validator("time_zone")(_known_zone)


class DiscountSettings(_ServiceSettings):
    """``medbook-discount``: the discount worker."""

    metrics_port: int = setting(
        9464, "MEDBOOK_METRICS_PORT", help="Port of the worker's /healthz, /readyz, /metrics.",
        ge=1, le=65535,
    )  # fmt: skip
    metrics_host: str = setting("0.0.0.0", "MEDBOOK_METRICS_HOST", help="Address of that port.")
    policy_refresh_interval: float = setting(
        1.0,
        "MEDBOOK_POLICY_REFRESH",
        help="Seconds between re-reads of the published policy.",
        gt=0,
    )
    record_ttl_seconds: int = setting(
        7 * 24 * 3600, "MEDBOOK_IDEMPOTENCY_TTL",
        help="Seconds a booking's idempotency record (and its result) is kept.", ge=3600,
    )  # fmt: skip
    redis: RedisSettings = Field(default_factory=RedisSettings)
    rabbit: RabbitSettings = Field(default_factory=RabbitSettings)
    policy: PolicyDefaults = Field(default_factory=PolicyDefaults)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)


class CleanupSettings(_Settings):
    """``medbook-cleanup``: the timeout sweep."""

    pending_timeout_seconds: int = setting(
        300, "MEDBOOK_PENDING_TIMEOUT",
        help="Seconds a booking may stay PENDING before the sweep rejects it.", ge=1,
    )  # fmt: skip
    database: PostgresSettings = Field(default_factory=PostgresSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
