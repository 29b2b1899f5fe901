"""Values for highly available backends: what the chart renders is what the services read.

The two example files (ci/ha-external-values.yaml, ci/ha-operators-values.yaml)
are rendered and validated with every other values file (test_render.py);
here the ConfigMap and the pods' environment are fed to the services' own
settings, so a chart that renders but names a variable wrong, or a host list
the services cannot read, fails.
"""

from __future__ import annotations

from typing import Any

import pytest

from medbook.config import PostgresSettings, RedisSettings
from medbook.postgres_dsn import parse
from medbook.redis_address import parse_sentinel_url
from tests.charts.rendering import Scenario, container, find, one, render_scenario

EXTERNAL = Scenario("medbook", "ha-external-values")
OPERATORS = Scenario("medbook", "ha-operators-values")
CONFIG = "medbook-config"


def settings_env(scenario: Scenario) -> dict[str, str]:
    """The ConfigMap's data and a password, as a booking pod's environment."""
    data = dict(one(render_scenario(scenario), "ConfigMap", CONFIG)["data"])
    return {**data, "DB_PASSWORD": "secret", "REDIS_PASSWORD": "secret"}


def with_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_every_postgresql_host_is_tried_for_the_writable_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_env(monkeypatch, settings_env(EXTERNAL))
    address = parse(PostgresSettings().dsn)
    assert [h for h, _ in address.hosts] == [f"pg-{i}.pg.data.svc.cluster.local" for i in range(3)]
    assert address.option("target_session_attrs") == "read-write"
    migrate = container(render_scenario(EXTERNAL), "Job", "medbook-migrations", "migrate")
    env = {e["name"]: e.get("value") for e in migrate["env"]}
    assert env["MEDBOOK_DB_HOSTS"] == ",".join(
        f"pg-{i}.pg.data.svc.cluster.local:5432" for i in range(3)
    )


def test_a_read_write_service_is_one_host(monkeypatch: pytest.MonkeyPatch) -> None:
    env = settings_env(OPERATORS)
    assert "MEDBOOK_DB_HOSTS" not in env
    with_env(monkeypatch, env)
    assert PostgresSettings().dsn.startswith(
        "postgresql://medbook:secret@medbook-pg-rw.data.svc.cluster.local:5432/medbook"
    )


@pytest.mark.parametrize(
    ("scenario", "master", "sentinels"),
    [
        (EXTERNAL, "medbook", 3),
        (OPERATORS, "mymaster", 1),
    ],
)
def test_the_worker_asks_the_sentinels_for_the_master(
    monkeypatch: pytest.MonkeyPatch, scenario: Scenario, master: str, sentinels: int
) -> None:
    with_env(monkeypatch, settings_env(scenario))
    redis = RedisSettings()
    address = parse_sentinel_url(redis.dsn)
    assert (address.master, len(address.sentinels), address.password) == (
        master,
        sentinels,
        "secret",
    )
    assert all(port == 26379 for _, port in address.sentinels)
    assert redis.replicas_to_wait_for == 1  # behind Sentinel, a quota write waits for a replica


@pytest.mark.parametrize("scenario", [EXTERNAL, OPERATORS])
def test_the_discount_pods_may_reach_the_sentinels_and_the_master(scenario: Scenario) -> None:
    manifests = render_scenario(scenario)
    policy = one(manifests, "NetworkPolicy", "medbook-discount")
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert {6379, 26379} <= ports
    worker = container(manifests, "Deployment", "medbook-discount", "discount")
    secret_env = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in worker["env"] if "valueFrom" in e
    }
    assert secret_env["MEDBOOK_REDIS_SENTINEL_PASSWORD"] == {
        "name": "medbook-redis-auth",
        "key": "MEDBOOK_REDIS_SENTINEL_PASSWORD",
        "optional": True,
    }


def test_one_server_renders_as_before() -> None:
    default = render_scenario(Scenario("medbook", "external-values"))
    data: dict[str, Any] = one(default, "ConfigMap", CONFIG)["data"]
    assert "MEDBOOK_DB_HOSTS" not in data and "MEDBOOK_REDIS_SENTINELS" not in data
    policies = find(default, "NetworkPolicy", "medbook-discount")
    ports = {p["port"] for rule in policies[0].doc["spec"]["egress"] for p in rule.get("ports", [])}
    assert 26379 not in ports
