"""The medbook-operator chart: one operator at a time, run as the operator expects, with
RBAC covering every API call the operator's code makes.

The calls are derived from the code: the operator's own client
(:class:`medbook_operator.kube.KubeApi`: each method's docstring names its verb and
resource, and its path helper the API group) and kopf's registry of handlers (the
resources it watches). tests/operator/test_rbac.py checks the same Role against a
recorded session of the running operator.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest

from medbook_operator import GROUP, PLURAL
from medbook_operator import uninstall as uninstall_module
from medbook_operator.kube import KubeApi
from medbook_operator.main import QuotaOperator
from medbook_operator.settings import OperatorSettings
from medbook_operator.uninstall import UninstallApi
from tests.charts.rendering import Scenario, container, find, one, pod_template, render, scenarios
from tests.operator.crd_schema import admit

OPERATOR = "medbook-medbook-operator"  # release "medbook": <release>-<chart>
WIRED = {
    "redis": {"host": "medbook-redis", "existingSecret": "medbook-redis"},
    "database": {"configMap": "medbook-config", "existingSecret": "medbook-postgresql"},
}


def _client_calls() -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every KubeApi method, from its docstring and its path."""
    groups = {
        "_policies": GROUP,
        "_cronjobs": "batch",
    }
    calls = set()
    for name, method in inspect.getmembers(KubeApi, inspect.iscoroutinefunction):
        if name.startswith("_") or name in {"request", "close"}:
            continue
        doc = (method.__doc__ or "").strip().splitlines()[0]
        match = re.fullmatch(r"(get|list|watch|create|update|patch|delete) ([a-z/]+)", doc)
        assert match, f"KubeApi.{name} names no call in its docstring: {doc!r}"
        [helper] = [h for h in groups if f"self.{h}(" in inspect.getsource(method)]
        calls.add((groups[helper], match.group(2), match.group(1)))
    return calls


def _kopf_calls(settings: OperatorSettings) -> set[tuple[str, str, str]]:
    """What kopf itself does: watch the handled resources, patch their finalizer and
    progress annotations, post Events, and read/refresh its peering object."""
    operator = QuotaOperator(settings)
    registry = operator.registry
    calls = {("", "events", "create")}
    handlers = [*registry._changing.get_all_handlers(), *registry._spawning.get_all_handlers()]
    assert handlers, "the operator registers handlers"
    for handler in handlers:
        selector = handler.selector
        plural = selector.plural or selector.any_name
        calls |= {(selector.group, plural, verb) for verb in ("list", "watch", "patch")}
    if settings.peering:
        calls |= {("kopf.dev", "kopfpeerings", verb) for verb in ("get", "list", "watch", "patch")}
    return calls


def _allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rule in rules
    )


def _settings_from(manifests: list, monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    box = container(manifests, "Deployment", OPERATOR, "operator")
    for item in box["env"]:
        monkeypatch.setenv(item["name"], item.get("value", "medbook"))
    return OperatorSettings()


def test_the_client_calls_are_derived_from_the_code() -> None:
    assert _client_calls() == {
        (GROUP, PLURAL, "list"),
        (GROUP, f"{PLURAL}/status", "patch"),
        ("batch", "cronjobs", "get"),
        ("batch", "cronjobs", "create"),
        ("batch", "cronjobs", "patch"),
        ("batch", "cronjobs", "delete"),
    }


@pytest.mark.parametrize("values", [{}, {"peering": {"enabled": False}}, WIRED])
def test_the_role_allows_every_call_the_operator_makes(
    values: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests = render("medbook-operator", values)
    settings = _settings_from(manifests, monkeypatch)
    rules = one(manifests, "Role", OPERATOR)["rules"]
    needed = _client_calls() | _kopf_calls(settings)
    missing = sorted(c for c in needed if not _allowed(rules, *c))
    assert not missing, f"the Role lacks {missing}"
    for role in find(manifests, "Role"):  # the operator's and its uninstall hook's
        assert all("*" not in rule["verbs"] + rule["resources"] for rule in role.doc["rules"])
    assert not find(manifests, "ClusterRole")


def test_one_operator_at_a_time_from_the_discount_image() -> None:
    manifests = render("medbook-operator", WIRED)
    deployment = one(manifests, "Deployment", OPERATOR)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = pod_template(deployment)["spec"]
    assert pod["serviceAccountName"] == OPERATOR
    [box] = pod["containers"]
    assert box["command"] == ["medbook-operator"]
    assert box["image"] == "medbook-discount:0.1.0"
    assert box["envFrom"] == [{"secretRef": {"name": "medbook-redis"}}]
    ports = {p["name"]: p["containerPort"] for p in box["ports"]}
    env = {e["name"]: e.get("value") for e in box["env"]}
    assert ports == {"metrics": int(env["MEDBOOK_OPERATOR_METRICS_PORT"]), "liveness": 8080}
    assert env["MEDBOOK_OPERATOR_LIVENESS"] == "http://0.0.0.0:8080/healthz"
    assert box["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert env["MEDBOOK_CLEANUP_IMAGE"] == "medbook-booking:0.1.0"
    assert env["MEDBOOK_CLEANUP_ENV_CONFIGMAP"] == "medbook-config"


def test_the_settings_the_chart_gives_are_the_operators(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings_from(render("medbook-operator", WIRED), monkeypatch)
    assert settings.watched_namespace() == "medbook"
    assert settings.redis.host == "medbook-redis"
    assert settings.cleanup.env_secret == "medbook-postgresql"
    assert settings.metrics_port == 9465


def test_without_metrics_no_metrics_port() -> None:
    manifests = render("medbook-operator", {"operator": {"metricsPort": 0}})
    box = container(manifests, "Deployment", OPERATOR, "operator")
    assert [p["name"] for p in box["ports"]] == ["liveness"]


@pytest.mark.parametrize("scenario", scenarios("medbook-operator"), ids=lambda s: s.id)
def test_the_optional_policy_is_one_the_crd_admits(scenario: Scenario) -> None:
    for values in (scenario.values, {**scenario.values, "defaultPolicy": {"enabled": True}}):
        for manifest in find(render("medbook-operator", values), "QuotaPolicy"):
            defaulted, errors = admit(manifest.doc)
            assert errors == []
            assert defaulted["spec"]["dailyLimit"] >= 0
    assert not find(render("medbook-operator"), "QuotaPolicy")  # off by default


# -- the uninstall hook ----------------------------------------------------------------------

HOOK = "medbook-medbook-operator-uninstall"


def _uninstall_calls() -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every API call `medbook-operator uninstall` makes.

    The calls are the API methods its code calls (``self.api.<method>(``), each named
    by its docstring as in :func:`_client_calls`.
    """
    source = inspect.getsource(uninstall_module)
    used = set(re.findall(r"self\.api\.(\w+)\(", source))
    groups = {"_policies": GROUP, "_cronjobs": "batch", "/apis/apps/": "apps", "/api/v1/": ""}
    calls = set()
    for name in used:
        method = getattr(UninstallApi, name)
        doc = (method.__doc__ or "").strip().splitlines()[0]
        match = re.fullmatch(r"(get|list|watch|create|update|patch|delete) ([a-z/]+)", doc)
        assert match, f"UninstallApi.{name} names no call in its docstring: {doc!r}"
        body = inspect.getsource(method)
        [group] = {g for marker, g in groups.items() if marker in body}
        calls.add((group, match.group(2), match.group(1)))
    return calls


def _hooks(manifests: list) -> dict[str, dict[str, Any]]:
    return {f"{m.kind}/{m.name}": m.doc for m in manifests if "helm.sh/hook" in m.annotations}


def test_uninstall_runs_a_pre_delete_hook_with_rights_of_its_own() -> None:
    manifests = render("medbook-operator", WIRED)
    hooks = _hooks(manifests)
    assert set(hooks) == {f"{kind}/{HOOK}" for kind in
                          ("ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "Job")}  # fmt: skip
    for doc in hooks.values():
        annotations = doc["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-delete"
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    weights = {key: int(doc["metadata"]["annotations"]["helm.sh/hook-weight"])
               for key, doc in hooks.items()}  # fmt: skip
    job = weights.pop(f"Job/{HOOK}")
    assert all(weight < job for weight in weights.values())  # its rights exist before it runs
    rules = hooks[f"Role/{HOOK}"]["rules"]
    needed = _uninstall_calls()
    missing = sorted(c for c in needed if not _allowed(rules, *c))
    assert not missing, f"the hook's Role lacks {missing}"
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}  # fmt: skip
    assert granted == needed, f"more than it needs: {granted - needed}"
    [deployment_rule] = [r for r in rules if r["resources"] == ["deployments"]]
    assert deployment_rule["resourceNames"] == [OPERATOR]  # only its own operator


def test_the_hook_stops_this_operator_with_the_operators_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifests = render("medbook-operator", WIRED)
    pod = pod_template(one(manifests, "Job", HOOK))
    assert pod["spec"]["serviceAccountName"] == HOOK
    [box] = pod["spec"]["containers"]
    assert box["command"][:4] == ["medbook-operator", "uninstall", "--deployment", OPERATOR]
    operator = container(manifests, "Deployment", OPERATOR, "operator")
    assert (box["image"], box["env"], box["envFrom"]) == (
        operator["image"], operator["env"], operator["envFrom"],
    )  # fmt: skip
    # Nothing of the operator's selects the hook's pod, which Redis still lets in.
    labels = pod["metadata"]["labels"]
    selector = one(manifests, "Deployment", OPERATOR)["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= labels.items()
    assert (labels["app.kubernetes.io/part-of"], labels["app.kubernetes.io/component"]) == (
        "medbook", "operator",
    )  # fmt: skip


def test_without_rbac_of_its_own_the_hook_runs_as_the_operator() -> None:
    values = {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}}
    manifests = render("medbook-operator", values)
    assert set(_hooks(manifests)) == {f"NetworkPolicy/{HOOK}", f"Job/{HOOK}"}
    assert pod_template(one(manifests, "Job", HOOK))["spec"]["serviceAccountName"] == "ops"
    assert not _hooks(render("medbook-operator", {"uninstall": {"enabled": False}}))
