"""The operator's settings, from the environment (pydantic-settings).

The Redis names are the discount worker's (``MEDBOOK_REDIS_URL``, ``REDIS_HOST``,
...), so one Secret can feed both. Everything the cleanup CronJob needs to
reach the database comes from here too: the job gets the image and the
ConfigMap/Secret references, never the values themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import quote

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SERVICE_ACCOUNT_NAMESPACE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

DEFAULT_CLEANUP_RESOURCES: Final[dict[str, dict[str, str]]] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"cpu": "500m", "memory": "256Mi"},
}


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def _split(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class RedisConnection(_Settings):
    """Where the quota store and the published policy live (the worker's Redis)."""

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
    timeout: float = Field(default=3.0, gt=0, validation_alias=_env("MEDBOOK_REDIS_TIMEOUT"))
    # Behind Redis Sentinel, as the discount worker (medbook.config.RedisSettings).
    sentinels: str | None = Field(default=None, validation_alias=_env("MEDBOOK_REDIS_SENTINELS"))
    sentinel_master: str = Field(
        default="mymaster", min_length=1, validation_alias=_env("MEDBOOK_REDIS_SENTINEL_MASTER")
    )
    sentinel_password: SecretStr | None = Field(
        default=None, validation_alias=_env("MEDBOOK_REDIS_SENTINEL_PASSWORD")
    )

    @property
    def dsn(self) -> str:
        if self.url:
            return self.url.get_secret_value()
        auth = f":{quote(self.password.get_secret_value(), safe='')}@" if self.password else ""
        if self.sentinels:
            query = ""
            if self.sentinel_password is not None:
                secret = quote(self.sentinel_password.get_secret_value(), safe="")
                query = f"?sentinel_password={secret}"
            master = quote(self.sentinel_master, safe="")
            return f"redis+sentinel://{auth}{self.sentinels.strip()}/{master}/{self.db}{query}"
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"


class CleanupJob(_Settings):
    """How the cleanup CronJob's pods are built (the schedule and timeout come from the policy)."""

    image: str = Field(
        default="medbook-booking:latest",
        validation_alias=_env("MEDBOOK_CLEANUP_IMAGE"),
        description="Image holding `medbook-cleanup` (the booking image).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", validation_alias=_env("MEDBOOK_CLEANUP_IMAGE_PULL_POLICY")
    )
    image_pull_secrets: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), validation_alias=_env("MEDBOOK_CLEANUP_IMAGE_PULL_SECRETS")
    )
    env_configmap: str | None = Field(
        default=None,
        validation_alias=_env("MEDBOOK_CLEANUP_ENV_CONFIGMAP"),
        description="ConfigMap whose keys become the job's environment (DB_HOST, ...).",
    )
    env_secret: str | None = Field(
        default=None,
        validation_alias=_env("MEDBOOK_CLEANUP_ENV_SECRET"),
        description="Secret whose keys become the job's environment (DB_PASSWORD, ...).",
    )
    service_account: str | None = Field(
        default=None, validation_alias=_env("MEDBOOK_CLEANUP_SERVICE_ACCOUNT")
    )
    run_as_user: int = Field(
        default=10001, ge=1, validation_alias=_env("MEDBOOK_CLEANUP_RUN_AS_USER")
    )
    resources: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_CLEANUP_RESOURCES.items()},
        validation_alias=_env("MEDBOOK_CLEANUP_RESOURCES"),
        description="The container's resources as JSON.",
    )
    active_deadline_seconds: int = Field(
        default=300, ge=10, validation_alias=_env("MEDBOOK_CLEANUP_ACTIVE_DEADLINE")
    )
    starting_deadline_seconds: int = Field(
        default=120, ge=10, validation_alias=_env("MEDBOOK_CLEANUP_STARTING_DEADLINE")
    )

    _names = field_validator("image_pull_secrets", mode="before")(_split)

    @field_validator("env_configmap", "env_secret", "service_account", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


class OperatorSettings(_Settings):
    """``medbook-operator``: reconciles the ``QuotaPolicy`` objects of one namespace."""

    namespace: str | None = Field(
        default=None,
        validation_alias=_env("MEDBOOK_OPERATOR_NAMESPACE", "POD_NAMESPACE"),
        description="The namespace to watch; default: the pod's own (service account file).",
    )
    api_server: str | None = Field(
        default=None,
        validation_alias=_env("MEDBOOK_OPERATOR_API_SERVER"),
        description="Talk to this URL without credentials (`kubectl proxy`); "
        "default: the in-cluster service account, else the kubeconfig.",
    )
    status_interval: float = Field(
        default=10.0,
        gt=0,
        validation_alias=_env("MEDBOOK_OPERATOR_STATUS_INTERVAL"),
        description="Seconds between status refreshes (usage, CronJob), which also retry failures.",
    )
    retry_delay: float = Field(
        default=5.0, gt=0, validation_alias=_env("MEDBOOK_OPERATOR_RETRY_DELAY")
    )
    metrics_host: str = Field(
        default="0.0.0.0", validation_alias=_env("MEDBOOK_OPERATOR_METRICS_HOST")
    )
    metrics_port: int = Field(
        default=9465,
        ge=0,
        le=65535,
        validation_alias=_env("MEDBOOK_OPERATOR_METRICS_PORT"),
        description="Prometheus metrics at /metrics on this port; 0 turns them off.",
    )
    liveness_endpoint: str | None = Field(
        default="http://0.0.0.0:8080/healthz",
        validation_alias=_env("MEDBOOK_OPERATOR_LIVENESS"),
        description="kopf's liveness endpoint; empty turns it off.",
    )
    peering: str | None = Field(
        default="medbook-operator",
        validation_alias=_env("MEDBOOK_OPERATOR_PEERING"),
        description="KopfPeering object to use when it exists; empty: always standalone.",
    )
    log_level: str = Field(default="INFO", validation_alias=_env("MEDBOOK_LOG_LEVEL", "LOG_LEVEL"))
    log_format: Literal["json", "text"] = Field(
        default="json", validation_alias=_env("MEDBOOK_LOG_FORMAT")
    )
    redis: RedisConnection = Field(default_factory=RedisConnection)
    cleanup: CleanupJob = Field(default_factory=CleanupJob)

    @field_validator("api_server", "liveness_endpoint", "peering", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    def watched_namespace(self) -> str:
        """The configured namespace, else the pod's own; an error when neither is known."""
        if self.namespace:
            return self.namespace
        try:
            found = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        except OSError:
            found = ""
        if found:
            return found
        raise RuntimeError(
            "cannot tell which namespace to watch: set MEDBOOK_OPERATOR_NAMESPACE "
            "(or POD_NAMESPACE from the downward API)"
        )
