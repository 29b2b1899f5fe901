"""What the medbook chart promises: scaling, disruption budgets, probes on the real
endpoints, settings the services read, rolling on a change, migrations first."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from starlette.routing import Route

from medbook.booking.api import ROUTES
from medbook.config import BookingSettings, CleanupSettings, DiscountSettings, PostgresSettings
from medbook.discount.main import probe_app
from tests.charts.rendering import (
    Manifest,
    container,
    containers,
    find,
    one,
    pod_template,
    pods,
    render,
    scenarios,
)

BOOKING, DISCOUNT = "medbook-booking", "medbook-discount"
EXTERNAL = {
    "postgresql": {"enabled": False, "external": {"host": "db.example", "existingSecret": "db"}},
    "redis": {"enabled": False, "external": {"host": "redis.example", "existingSecret": "rd"}},
    "rabbitmq": {"enabled": False, "external": {"existingSecret": "amqp"}},
}
FIXED_PASSWORDS = {
    name: {"auth": {"password": f"{name}-password"}} for name in ("postgresql", "redis", "rabbitmq")
}


def _service(component: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    return one(render("medbook", values), "Deployment", f"medbook-{component}")


# -- scaling and disruption budgets -------------------------------------------------------


@pytest.mark.parametrize("component", ["booking", "discount"])
def test_autoscaling_owns_the_replica_count(component: str) -> None:
    hpa = one(render("medbook"), "HorizontalPodAutoscaler", f"medbook-{component}")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"medbook-{component}",
    }
    assert "replicas" not in _service(component)["spec"]
    off = {component: {"autoscaling": {"enabled": False}, "replicas": 3}}
    assert not find(render("medbook", off), "HorizontalPodAutoscaler", f"medbook-{component}")
    assert _service(component, off)["spec"]["replicas"] == 3


@pytest.mark.parametrize(
    ("replicas", "autoscaling", "expected"),
    [(1, False, False), (2, False, True), (1, True, True), (0, False, False)],
)
@pytest.mark.parametrize("component", ["booking", "discount"])
def test_a_disruption_budget_only_where_it_cannot_block_a_drain(
    component: str, replicas: int, autoscaling: bool, expected: bool
) -> None:
    values = {component: {"replicas": replicas, "autoscaling": {"enabled": autoscaling}}}
    budgets = find(render("medbook", values), "PodDisruptionBudget", f"medbook-{component}")
    assert bool(budgets) is expected
    for budget in budgets:
        spec = budget.doc["spec"]
        assert "minAvailable" not in spec and spec["maxUnavailable"] == 1  # never blocks
        pod_labels = pod_template(_service(component, values))["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= pod_labels.items()


# -- probes, ports, shutdown --------------------------------------------------------------


def _paths(routes: list[Any]) -> set[str]:
    return {route.path for route in routes if isinstance(route, Route)}


def test_probes_ask_the_real_endpoints() -> None:
    booking = container(render("medbook"), "Deployment", BOOKING, "booking")
    assert booking["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
    assert booking["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert booking["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # The database only: a broker outage must not pull the API out of the Service.
    assert booking["readinessProbe"]["httpGet"] == {
        "path": "/readyz?check=database",
        "port": "http",
    }
    assert {"/healthz", "/readyz", "/metrics"} <= _paths(ROUTES)

    discount = container(render("medbook"), "Deployment", DISCOUNT, "discount")
    assert discount["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    assert discount["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert discount["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {"/healthz", "/readyz", "/metrics"} <= _paths(probe_app(None).routes)  # type: ignore[arg-type]


@pytest.mark.parametrize("component", ["booking", "discount"])
def test_the_pod_outlives_the_services_own_drain(component: str) -> None:
    pod = pod_template(_service(component))
    [box] = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in box["env"]}
    grace = float(env["MEDBOOK_SHUTDOWN_GRACE"])
    sleep = 0.0
    if "lifecycle" in box:
        sleep = float(box["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["spec"]["terminationGracePeriodSeconds"] >= sleep + grace + 5


def test_the_booking_service_points_at_the_api_port() -> None:
    service = one(render("medbook"), "Service", BOOKING)
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    pod_labels = pod_template(_service("booking"))["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


# -- settings -------------------------------------------------------------------------------


def _environment(manifests: list[Manifest], box: dict[str, Any]) -> dict[str, str]:
    """The container's environment as Kubernetes would build it (Secrets decoded)."""
    env: dict[str, str] = {}
    for source in box.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(one(manifests, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in box.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        secrets = find(manifests, "Secret", ref["name"])
        if secrets:
            data = secrets[0].doc["data"]
            if ref["key"] in data:
                env[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
                continue
        assert ref.get("optional") or not secrets, f"{ref} is missing"
        env[item["name"]] = f"<{ref['name']}/{ref['key']}>"  # an existing Secret of the user's
    return env


def _settings_names(*models: type) -> set[str]:
    names: set[str] = set()
    pending = list(models)
    while pending:
        model = pending.pop()
        for field in model.model_fields.values():
            alias = field.validation_alias
            names.update(str(c) for c in getattr(alias, "choices", None) or [])
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                pending.append(annotation)
    return names


@pytest.mark.parametrize("scenario", scenarios("medbook"), ids=lambda s: s.id)
def test_every_variable_the_chart_sets_is_a_setting_the_process_reads(scenario) -> None:
    manifests = render("medbook", scenario.values)
    readers = {
        "booking": _settings_names(BookingSettings),
        "wait-for-schema": _settings_names(PostgresSettings),
        "discount": _settings_names(DiscountSettings),
        "migrate": _settings_names(PostgresSettings),
        "book-and-wait": {"MEDBOOK_API_URL", "MEDBOOK_API_TOKEN", "MEDBOOK_TEST_TIMEOUT"},
    }
    shared = _settings_names(BookingSettings, DiscountSettings, CleanupSettings)
    for manifest, pod in pods(manifests):
        for box in containers(pod):
            if box["name"] not in readers:
                continue  # the in-chart servers' own images
            env = _environment(manifests, box)
            unknown = {
                name
                for name in env
                if name not in readers[box["name"]]
                and not name.startswith("OTEL_")
                and not (box.get("envFrom") and name in shared)  # the shared ConfigMap
            }
            assert not unknown, f"{manifest.name}/{box['name']} sets {unknown}"


def test_the_services_start_from_the_rendered_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    manifests = render("medbook", FIXED_PASSWORDS)
    booking_env = _environment(manifests, container(manifests, "Deployment", BOOKING, "booking"))
    for name, value in booking_env.items():
        monkeypatch.setenv(name, value)
    booking = BookingSettings()
    assert booking.port == 3000
    assert booking.database.dsn == (
        "postgresql://medbook:postgresql-password@medbook-postgresql:5432/medbook"
    )
    assert booking.rabbit.url.get_secret_value() == (
        "amqp://medbook:rabbitmq-password@medbook-rabbitmq:5672/"
    )
    assert booking.telemetry.log_format == "json"
    for name in booking_env:
        monkeypatch.delenv(name)
    discount_env = _environment(manifests, container(manifests, "Deployment", DISCOUNT, "discount"))
    for name, value in discount_env.items():
        monkeypatch.setenv(name, value)
    discount = DiscountSettings()
    assert discount.metrics_port == 9464
    assert discount.redis.dsn == "redis://:redis-password@medbook-redis:6379/0"


def test_generated_passwords_are_strong_and_the_url_carries_the_same_one() -> None:
    secret = one(render("medbook"), "Secret", "medbook-rabbitmq")["data"]
    password = base64.b64decode(secret["RABBITMQ_PASSWORD"]).decode()
    url = base64.b64decode(secret["MEDBOOK_RABBITMQ_URL"]).decode()
    assert len(password) == 32 and password.isalnum()
    assert url == f"amqp://medbook:{password}@medbook-rabbitmq:5672/"


def _checksums(values: dict[str, Any]) -> dict[str, dict[str, str]]:
    result = {}
    for component in ("booking", "discount"):
        annotations = pod_template(_service(component, values))["metadata"]["annotations"]
        result[component] = {k: v for k, v in annotations.items() if k.startswith("checksum/")}
    return result


def test_a_settings_change_rolls_the_pods() -> None:
    before = _checksums(FIXED_PASSWORDS)
    assert before == _checksums(FIXED_PASSWORDS)  # stable when nothing changes
    changed = _checksums({**FIXED_PASSWORDS, "config": {"logLevel": "DEBUG"}})
    secret = _checksums({**FIXED_PASSWORDS, "auth": {"apiToken": "t0ken"}})
    for component in ("booking", "discount"):
        assert changed[component]["checksum/config"] != before[component]["checksum/config"]
        assert secret[component]["checksum/secrets"] != before[component]["checksum/secrets"]


def test_external_servers_are_read_from_the_users_secrets() -> None:
    manifests = render("medbook", EXTERNAL)
    assert not find(manifests, "StatefulSet") and not find(manifests, "Secret")
    config = one(manifests, "ConfigMap", "medbook-config")["data"]
    assert (config["DB_HOST"], config["REDIS_HOST"]) == ("db.example", "redis.example")
    booking = container(manifests, "Deployment", BOOKING, "booking")
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in booking["env"]
        if "valueFrom" in e
    }
    assert refs == {
        "DB_PASSWORD": "db",
        "MEDBOOK_DATABASE_URL": "db",
        "MEDBOOK_RABBITMQ_URL": "amqp",
    }
    discount = container(manifests, "Deployment", DISCOUNT, "discount")
    assert {e["name"] for e in discount["env"] if "valueFrom" in e} == {
        "REDIS_PASSWORD",
        "MEDBOOK_REDIS_URL",
        "MEDBOOK_RABBITMQ_URL",
    }


def test_the_api_token_reaches_the_api_and_the_test_pod() -> None:
    manifests = render("medbook", {"auth": {"apiToken": "s3cret"}})
    for kind, name, box in (
        ("Deployment", BOOKING, "booking"),
        ("Pod", "medbook-test", "book-and-wait"),
    ):
        env = _environment(manifests, container(manifests, kind, name, box))
        assert env["MEDBOOK_API_TOKEN"] == "s3cret"


def test_the_signing_keys_reach_both_services_from_the_users_secret() -> None:
    values = {"signing": {"existingSecret": "saga-keys", "keyId": "2026-q1", "required": False}}
    manifests = render("medbook", values)
    for name, box in ((BOOKING, "booking"), (DISCOUNT, "discount")):
        env = {e["name"]: e for e in container(manifests, "Deployment", name, box)["env"]}
        assert env["MEDBOOK_SIGNING_KEYS"]["valueFrom"]["secretKeyRef"] == {
            "name": "saga-keys",
            "key": "MEDBOOK_SIGNING_KEYS",
        }
        assert env["MEDBOOK_SIGNING_KEY_ID"]["value"] == "2026-q1"
        assert env["MEDBOOK_SIGNING_REQUIRED"]["value"] == "false"
    unsigned = render("medbook")
    for name, box in ((BOOKING, "booking"), (DISCOUNT, "discount")):
        env = {e["name"] for e in container(unsigned, "Deployment", name, box)["env"]}
        assert not {n for n in env if n.startswith("MEDBOOK_SIGNING")}


# -- migrations -----------------------------------------------------------------------------


def _hooks(doc: dict[str, Any]) -> set[str]:
    return set(doc["metadata"]["annotations"]["helm.sh/hook"].split(","))


def _migrations(manifests: list[Manifest]) -> dict[str, Any]:
    [job] = [m.doc for m in find(manifests, "Job") if "migrations" in m.name]
    return job


def test_migrations_run_before_the_apps_with_an_external_database() -> None:
    manifests = render("medbook", EXTERNAL)
    job = one(manifests, "Job", "medbook-migrations")
    # Helm runs pre-install/pre-upgrade hooks, and waits for the Job, before the Deployments.
    assert _hooks(job) == {"pre-install", "pre-upgrade"}
    [box] = pod_template(job)["spec"]["containers"]
    assert box["command"][:3] == ["medbook-migrate", "upgrade", "--wait-for-database"]
    assert box["image"] == container(manifests, "Deployment", BOOKING, "booking")["image"]
    # It needs nothing the release itself creates (that comes after pre-install hooks).
    created = {(m.kind, m.name) for m in manifests}
    assert "envFrom" not in box
    for item in box["env"]:
        if "valueFrom" in item:
            assert ("Secret", item["valueFrom"]["secretKeyRef"]["name"]) not in created
    pod = pod_template(job)["spec"]
    assert "serviceAccountName" not in pod
    assert {v["name"] for v in pod["volumes"]} == {"tmp"}


def test_an_install_that_creates_the_database_migrates_with_a_job_of_the_release() -> None:
    # No hook: Helm would run a post-install hook only after --wait saw the booking pods
    # ready, and they wait for the schema (tests/charts/test_helm_wait.py runs Helm).
    job = one(render("medbook"), "Job", "medbook-migrations-init")
    assert "helm.sh/hook" not in job["metadata"]["annotations"]


@pytest.mark.parametrize("values", [{}, EXTERNAL], ids=["in-chart", "external"])
def test_no_booking_pod_serves_before_its_schema_is_migrated(values: dict) -> None:
    manifests = render("medbook", values)
    pod = pod_template(one(manifests, "Deployment", BOOKING))["spec"]
    [wait] = pod["initContainers"]
    assert wait["command"][:2] == ["medbook-migrate", "wait"]
    assert wait["image"] == container(manifests, "Deployment", BOOKING, "booking")["image"]
    # From the image: no script of the chart's (a ConfigMap) on the way.
    assert {v["name"] for v in pod["volumes"]} == {"tmp"}


@pytest.mark.parametrize("values", [{}, EXTERNAL], ids=["in-chart", "external"])
def test_the_migration_job_reaches_the_same_database_as_the_api(values: dict) -> None:
    manifests = render("medbook", {**FIXED_PASSWORDS, **values})
    [migrate] = pod_template(_migrations(manifests))["spec"]["containers"]
    api = container(manifests, "Deployment", BOOKING, "booking")
    keys = ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USERNAME", "DB_PASSWORD")
    job_env, api_env = _environment(manifests, migrate), _environment(manifests, api)
    assert {k: job_env[k] for k in keys} == {k: api_env[k] for k in keys}


def test_the_helm_test_books_through_the_service() -> None:
    manifests = render("medbook")
    pod = one(manifests, "Pod", "medbook-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [box] = pod["spec"]["containers"]
    assert box["command"] == ["python", "/opt/medbook-scripts/smoke_test.py"]
    env = {e["name"]: e.get("value") for e in box["env"]}
    assert env["MEDBOOK_API_URL"] == "http://medbook-booking:80"
    assert pod["spec"]["restartPolicy"] == "Never"
