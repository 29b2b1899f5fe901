"""The secure defaults, asserted on every pod spec of every rendered scenario."""

from __future__ import annotations

from typing import Any

import pytest

from tests.charts.rendering import Manifest, Scenario, containers, pods, render_scenario, scenarios

SCENARIOS = scenarios()
# Pods that call the Kubernetes API, and so get a ServiceAccount token: the operator only.
NEEDS_API = {"operator"}


def _component(pod: dict[str, Any]) -> str:
    return pod["metadata"]["labels"]["app.kubernetes.io/component"]


def _all_pods(scenario: Scenario) -> list[tuple[Manifest, dict[str, Any]]]:
    found = list(pods(render_scenario(scenario)))
    assert found, "every scenario runs pods"
    return found


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_every_pod_runs_unprivileged_on_a_read_only_root(scenario: Scenario) -> None:
    for manifest, pod in _all_pods(scenario):
        where = f"{manifest.kind}/{manifest.name}"
        spec = pod["spec"]
        pod_context = spec.get("securityContext") or {}
        assert pod_context.get("runAsNonRoot") is True, where
        assert pod_context.get("runAsUser", 0) > 0, where
        assert pod_context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), f"{where}: {key}"
        assert not any("hostPath" in v for v in spec.get("volumes") or []), where
        for box in containers(pod):
            context = box.get("securityContext") or {}
            at = f"{where} container {box['name']}"
            assert context.get("allowPrivilegeEscalation") is False, at
            assert context.get("readOnlyRootFilesystem") is True, at
            assert context.get("capabilities") == {"drop": ["ALL"]}, at
            assert context.get("privileged") is not True, at
            assert context.get("runAsNonRoot", pod_context["runAsNonRoot"]) is True, at
            assert context.get("runAsUser", pod_context["runAsUser"]) > 0, at
            resources = box.get("resources") or {}
            assert resources.get("requests") and resources.get("limits"), f"{at}: resources"
            assert {"cpu", "memory"} <= set(resources["limits"]), f"{at}: limits"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_no_service_account_token_where_none_is_needed(scenario: Scenario) -> None:
    for manifest, pod in _all_pods(scenario):
        mounted = pod["spec"].get("automountServiceAccountToken")
        if _component(pod) in NEEDS_API:
            assert mounted is True, f"{manifest.name} calls the API"
        else:
            assert mounted is False, f"{manifest.kind}/{manifest.name} mounts a token"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_no_service_links_in_the_environment(scenario: Scenario) -> None:
    """Service links would put MEDBOOK_REDIS_PORT=tcp://... (a setting's name) in the env."""
    for manifest, pod in _all_pods(scenario):
        assert pod["spec"].get("enableServiceLinks") is False, f"{manifest.kind}/{manifest.name}"


@pytest.mark.parametrize("scenario", scenarios("medbook"), ids=lambda s: s.id)
def test_medbook_pods_run_as_the_images_user_with_a_writable_tmp(scenario: Scenario) -> None:
    for manifest, pod in _all_pods(scenario):
        if _component(pod) in {"postgresql", "redis", "rabbitmq"}:
            continue  # the official images' own users
        assert pod["spec"]["securityContext"]["runAsUser"] == 10001, manifest.name
        for box in containers(pod):
            mounts = {m["mountPath"]: m["name"] for m in box.get("volumeMounts") or []}
            assert mounts.get("/tmp") == "tmp", f"{manifest.name}/{box['name']}"
