"""The chart's RBAC: valid objects, namespaced only, and enough for every call the operator makes.

The operator runs a lifecycle against the emulated API server (create, update,
a conflicting second policy, delete, a restart); every request it and kopf made
must be allowed by the rendered Role. Discovery (``/api``, ``/apis/...``) needs
no Role: every authenticated user may read it (``system:discovery``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from redis.asyncio import Redis

from medbook_operator.settings import CleanupJob, OperatorSettings, RedisConnection
from tests.operator.conftest import NAMESPACE, Kubectl, OperatorFactory, policy
from tests.operator.crd_schema import ROOT

CHART = ROOT / "charts" / "medbook-operator"
RELEASE = "medbook"
VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}
RBAC_KINDS = {"Role", "RoleBinding", "ServiceAccount"}


def _render(
    values: dict[str, Any] | None = None, chart: Path = CHART, kinds: set[str] | None = RBAC_KINDS
) -> list[dict[str, Any]]:
    """The chart's objects of ``kinds`` (RBAC by default: the rest is tested in tests/charts)."""
    rendered = helm.Chart.load(str(chart)).render(values or {}, name=RELEASE, namespace=NAMESPACE)
    docs: list[dict[str, Any]] = []
    for text in rendered.values():
        docs.extend(
            d for d in yaml.safe_load_all(text) if d and (kinds is None or d["kind"] in kinds)
        )
    return docs


def _hook(doc: dict[str, Any]) -> bool:
    """One of the uninstall hook's objects (they exist only while `helm uninstall` runs)."""
    return "helm.sh/hook" in (doc["metadata"].get("annotations") or {})


def _role(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [role] = [d for d in docs if d["kind"] == "Role" and not _hook(d)]
    return role


def test_the_rbac_objects_are_valid_and_namespaced() -> None:
    docs = [d for d in _render() if not _hook(d)]
    assert sorted(d["kind"] for d in docs) == ["Role", "RoleBinding", "ServiceAccount"]
    for doc in docs:
        assert kubernetes_validate.validate(doc, "1.30.0", strict=True)
        assert doc["metadata"]["namespace"] == NAMESPACE
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "medbook-operator"
        assert labels["app.kubernetes.io/instance"] == RELEASE
    [binding] = [d for d in docs if d["kind"] == "RoleBinding"]
    [account] = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert binding["roleRef"]["name"] == _role(docs)["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert all("*" not in rule["verbs"] for rule in _role(docs)["rules"])


def test_rbac_can_be_left_to_someone_else() -> None:
    docs = _render({"rbac": {"create": False}, "serviceAccount": {"create": False}})
    assert docs == []
    docs = _render({"peering": {"enabled": False}})
    assert "kopf.dev" not in {g for r in _role(docs)["rules"] for g in r["apiGroups"]}


def test_names_are_bounded_to_63_characters() -> None:
    docs = _render({"fullnameOverride": "x" * 80})
    assert {len(d["metadata"]["name"]) for d in docs} == {63}


def _allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rule in rules
    )


def _verb(request: Any) -> str:
    if request.method == "GET":
        if request.params.get("watch") == "true":
            return "watch"
        return "get" if request.name else "list"
    return VERBS[str(request.method.value)]


async def test_every_call_of_the_operator_is_allowed_by_the_role(
    kubectl: Kubectl, start_operator: OperatorFactory, redis: Redis
) -> None:
    async with start_operator():
        await kubectl.apply(policy("first", dailyLimit=5))
        await kubectl.wait_ready("first")
        await kubectl.patch("first", {"dailyLimit": 6, "cleanup": {"schedule": "*/2 * * * *"}})
        await kubectl.apply(policy("second", dailyLimit=7))
        await kubectl.wait_ready("second", status="False", reason="Conflict")
        await kubectl.delete("first")
        await kubectl.wait_ready("second", reason="Reconciled")
    async with start_operator():  # a restart: resume handlers and the peering check again
        await kubectl.delete("second")
        await kubectl.wait_event("PolicyWithdrawn")

    rules = _role(_render())["rules"]
    calls = set()
    for request in list(kubectl.server):
        agent = request.headers.get("User-Agent", "")
        if not agent.startswith(("kopf/", "medbook-operator/")) or request.resource is None:
            continue
        if request.resource.plural is None:  # discovery: /api, /apis/<group>/<version>
            continue
        resource = request.resource.plural
        if request.subresource:
            resource = f"{resource}/{request.subresource}"
        calls.add((request.resource.group, resource, _verb(request), request.namespace))
    assert calls, "the operator made calls"
    for group, resource, verb, namespace in sorted(calls):
        assert namespace == NAMESPACE, f"{verb} {resource} outside the operator's namespace"
        assert _allowed(rules, group, resource, verb), f"{verb} {group}/{resource} is not allowed"
    # What the operator does, at least (kmock cannot run a CronJob, so nothing reads it back).
    assert {
        ("medbook.io", "quotapolicies", "list", NAMESPACE),
        ("medbook.io", "quotapolicies", "watch", NAMESPACE),
        ("medbook.io", "quotapolicies", "patch", NAMESPACE),
        ("medbook.io", "quotapolicies/status", "patch", NAMESPACE),
        ("batch", "cronjobs", "get", NAMESPACE),
        ("batch", "cronjobs", "create", NAMESPACE),
        ("batch", "cronjobs", "patch", NAMESPACE),
        ("", "events", "create", NAMESPACE),
    } <= calls


def _settings_names() -> set[str]:
    names: set[str] = set()
    for model in (OperatorSettings, RedisConnection, CleanupJob):
        for field in model.model_fields.values():
            alias = field.validation_alias
            names.update(getattr(alias, "choices", None) or ([alias] if alias else []))
    return {str(n) for n in names}


@pytest.mark.parametrize(
    "values",
    [{}, {"redis": {"host": "medbook-redis"}, "imagePullSecrets": [{"name": "regcred"}],
          "database": {"existingSecret": "db", "configMap": "db-settings"}}],
)  # fmt: skip
def test_the_env_helper_sets_only_settings_the_operator_reads(
    tmp_path: Path, values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    chart = tmp_path / "medbook-operator"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "env.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: env}\ndata:\n  env: |\n"
        '    {{- include "medbook-operator.env" . | nindent 4 }}\n'
    )
    [doc] = _render(values, chart, kinds={"ConfigMap"})
    env = yaml.safe_load(doc["data"]["env"])
    assert {e["name"] for e in env} <= _settings_names()
    for item in env:
        monkeypatch.setenv(item["name"], item.get("value", "from-the-downward-api"))
    settings = OperatorSettings()
    assert settings.watched_namespace() == "from-the-downward-api"
    assert settings.cleanup.resources["limits"]["memory"] == "256Mi"
    assert settings.cleanup.image == "medbook-booking:0.1.0"
    if values:
        assert settings.redis.host == "medbook-redis"
        assert settings.cleanup.image_pull_secrets == ("regcred",)
        assert (settings.cleanup.env_secret, settings.cleanup.env_configmap) == (
            "db", "db-settings",
        )  # fmt: skip
    else:
        assert settings.cleanup.env_secret is None
