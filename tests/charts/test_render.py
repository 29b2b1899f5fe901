"""Every chart renders, for its defaults and each documented combination of values, into
objects the Kubernetes API of the lowest and the highest supported version accepts."""

from __future__ import annotations

import helm_python as helm
import kubernetes_validate
import pytest
from helm_python.errors import HelmError

from tests.charts.rendering import (
    CHARTS,
    CHARTS_DIR,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    Scenario,
    chart,
    find,
    notes,
    render,
    render_scenario,
    scenarios,
)
from tests.operator.crd_schema import admit

SCENARIOS = scenarios()
# Custom resources of other projects' CRDs (kubernetes-validate has no schema for them):
# the Prometheus operator's, for the monitoring templates.
FOREIGN_CRD_GROUPS = ("monitoring.coreos.com/",)
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/component",
    "helm.sh/chart",
)


def test_every_documented_combination_is_rendered() -> None:
    names = {s.id for s in SCENARIOS}
    assert {
        "medbook:default",
        "medbook:dev-values",
        "medbook:external-values",
        "medbook:hpa-off-values",
        "medbook:hardened-values",
        "medbook:minimal-values",
        "medbook-operator:default",
        "medbook-operator:wired-values",
        "medbook-operator:minimal-values",
    } <= names


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_every_object_is_valid_for_kubernetes(scenario: Scenario, version: str) -> None:
    manifests = render_scenario(scenario)
    assert manifests
    for manifest in manifests:
        if manifest.doc["apiVersion"].startswith("medbook.io/"):
            # Custom resources: the CRD's own schema, defaults and CEL rules.
            _, errors = admit(manifest.doc)
            assert errors == [], f"{manifest.kind}/{manifest.name}: {errors}"
            continue
        if manifest.doc["apiVersion"].startswith(FOREIGN_CRD_GROUPS):
            continue
        try:
            kubernetes_validate.validate(manifest.doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{manifest.kind}/{manifest.name} ({manifest.template}): {exc.message}")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_objects_carry_the_standard_labels_and_the_release_namespace(scenario: Scenario) -> None:
    for manifest in render_scenario(scenario):
        labels = manifest.doc["metadata"].get("labels") or {}
        missing = [label for label in STANDARD_LABELS if label not in labels]
        assert not missing, f"{manifest.kind}/{manifest.name} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/part-of"] == "medbook"
        assert manifest.doc["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("name", CHARTS)
@pytest.mark.parametrize(
    "values",
    [
        {"fullnameOverride": "f" * 80},
        {"nameOverride": "n" * 70},
    ],
    ids=["long-fullname", "long-name"],
)
def test_names_fit_63_characters_and_stay_distinct(name: str, values: dict) -> None:
    release = "r" * 53  # Helm's longest release name
    extra = {"defaultPolicy": {"enabled": True}} if name == "medbook-operator" else {}
    manifests = render(name, {**values, **extra}, release=release)
    seen: set[tuple[str, str]] = set()
    for manifest in manifests:
        assert len(manifest.name) <= 63, f"{manifest.kind} {manifest.name}"
        if manifest.kind == "StatefulSet":  # its pods' controller-revision-hash adds 11
            assert len(manifest.name) <= 52, manifest.name
        for value in (manifest.doc["metadata"].get("labels") or {}).values():
            assert len(value) <= 63, value
        assert (manifest.kind, manifest.name) not in seen, f"two {manifest.kind}s {manifest.name}"
        seen.add((manifest.kind, manifest.name))


@pytest.mark.parametrize("name", CHARTS)
def test_the_schema_refuses_unknown_keys_but_not_global(name: str) -> None:
    assert render(name, {"global": {"imageRegistry": "x", "anything": [1]}})
    with pytest.raises(HelmError, match="additional properties 'bogus' not allowed"):
        chart(name).render({"bogus": 1}, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize(
    ("server", "missing"),
    [
        ({"postgresql": {"enabled": False}}, "/postgresql/external/host"),
        (
            {"postgresql": {"enabled": False, "external": {"host": "db"}}},
            "/postgresql/external/existingSecret",
        ),
        ({"redis": {"enabled": False}}, "/redis/external/host"),
        ({"rabbitmq": {"enabled": False}}, "/rabbitmq/external/existingSecret"),
    ],
)
def test_external_servers_need_their_settings(server: dict, missing: str) -> None:
    with pytest.raises(HelmError, match=missing):
        chart("medbook").render(server, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_helm_lint_strict_is_clean(scenario: Scenario, version: str) -> None:
    report = helm.lint(
        str(CHARTS_DIR / scenario.chart),
        scenario.values,
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{version}",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], problems


def test_the_crd_is_shipped_in_crds_and_not_rendered() -> None:
    crds = chart("medbook-operator").crds
    assert len(crds) == 1
    assert not find(render("medbook-operator"), "CustomResourceDefinition")


def test_notes_tell_how_to_reach_test_and_wire_the_operator() -> None:
    text = notes("medbook")
    assert "port-forward svc/medbook-booking 3000:80" in text
    assert "helm test medbook" in text
    assert "for development only" in text
    assert "--set redis.host=medbook-redis --set redis.existingSecret=medbook-redis" in text
    external = notes(
        "medbook",
        {
            "postgresql": {"enabled": False, "external": {"host": "h", "existingSecret": "s"}},
            "redis": {"enabled": False, "external": {"host": "h"}},
            "rabbitmq": {"enabled": False, "external": {"existingSecret": "s"}},
        },
    )
    assert "for development only" not in external
