"""The operator's pure parts: the CronJob it wants, when it patches, settings, status, election."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from medbook.discount.policy import QuotaPolicy
from medbook_operator import cronjob
from medbook_operator import settings as settings_module
from medbook_operator.settings import CleanupJob, OperatorSettings
from medbook_operator.status import Reason, Verdict, changed, elect, ready_condition

OWNER = {
    "apiVersion": "medbook.io/v1alpha1",
    "kind": "QuotaPolicy",
    "metadata": {"name": "default", "namespace": "clinic", "uid": "u-1", "labels": {"team": "a"}},
}


def _desired(**job: Any) -> dict[str, Any]:
    return cronjob.desired_cronjob(QuotaPolicy(), copy.deepcopy(OWNER), CleanupJob(**job))


def _as_the_api_server_returns_it(obj: dict[str, Any]) -> dict[str, Any]:
    """Stored with defaults added and quantities normalised."""
    stored = cronjob.strip_none(copy.deepcopy(obj))
    stored["metadata"] |= {
        "uid": "c-1",
        "resourceVersion": "7",
        "creationTimestamp": "2025-01-01T00:00:00Z",
    }
    pod = stored["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod |= {"dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler"}
    container = pod["containers"][0]
    container |= {"terminationMessagePath": "/dev/termination-log"}
    container["resources"]["limits"]["cpu"] = "0.5"  # as a user might have written it
    return stored


def test_the_desired_cronjob_is_a_valid_kubernetes_object() -> None:
    body = cronjob.strip_none(_desired())
    assert kubernetes_validate.validate(body, "1.30.0", strict=True)
    pod = body["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert "envFrom" not in pod["containers"][0]  # no ConfigMap/Secret configured
    assert "serviceAccountName" not in pod
    assert body["metadata"]["namespace"] == "clinic"
    assert body["metadata"]["labels"]["team"] == "a"  # kopf.adopt: the owner's labels
    assert body["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "medbook-operator"


def test_an_object_as_the_api_server_stores_it_needs_no_patch() -> None:
    desired = _desired()
    assert cronjob.patch_for(_as_the_api_server_returns_it(desired), desired) is None


def test_a_changed_or_dropped_setting_needs_a_patch() -> None:
    existing = _as_the_api_server_returns_it(_desired(service_account="old"))
    patch = cronjob.patch_for(existing, _desired())
    assert patch is not None
    pod = patch["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] is None  # a merge patch removes it
    other = cronjob.desired_cronjob(
        QuotaPolicy.model_validate({"cleanup": {"schedule": "@hourly"}}), OWNER, CleanupJob()
    )
    assert cronjob.patch_for(_as_the_api_server_returns_it(_desired()), other) is not None


@pytest.mark.parametrize(
    ("existing", "desired", "same"),
    [("500m", "0.5", True), ("1Gi", "1024Mi", True), ("64Mi", "65Mi", False), ("x", "x", True),
     ("abc", "500m", False)],
)  # fmt: skip
def test_quantities_compare_by_amount(existing: str, desired: str, same: bool) -> None:
    assert cronjob.contains({"cpu": existing}, {"cpu": desired}) is same


def test_names_fit_kubernetes_limits_and_stay_stable() -> None:
    assert cronjob.cronjob_name("default") == "default-cleanup"
    long = "a" * 240
    assert len(cronjob.cronjob_name(long)) <= 52
    assert cronjob.cronjob_name(long) == cronjob.cronjob_name(long)
    assert cronjob.cronjob_name(long) != cronjob.cronjob_name(long + "b")
    assert len(cronjob.labels(long)[cronjob.POLICY_LABEL]) <= 63


def test_the_oldest_policy_not_being_deleted_is_in_force() -> None:
    def p(name: str, created: str, deleting: bool = False) -> dict[str, Any]:
        meta = {"name": name, "creationTimestamp": created}
        return {"metadata": meta | ({"deletionTimestamp": "now"} if deleting else {})}

    a, b, c = (
        p("a", "2025-01-02T00:00:00Z"),
        p("b", "2025-01-01T00:00:00Z"),
        p("c", "2025-01-01T00:00:00Z"),
    )
    assert elect([a, b, c]) is b  # oldest; on a tie, the first name
    assert elect([a, p("b", "2025-01-01T00:00:00Z", deleting=True)]) is a
    assert elect([]) is None


def test_the_transition_time_moves_only_when_readiness_flips() -> None:
    ok = ready_condition(Verdict(True, Reason.RECONCILED, "ok"), 1, None)
    old = [{**ok, "lastTransitionTime": "2025-01-01T00:00:00Z"}]
    again = ready_condition(Verdict(True, Reason.RECONCILED, "ok again"), 2, old)
    assert again["lastTransitionTime"] == "2025-01-01T00:00:00Z"
    flipped = ready_condition(Verdict(False, Reason.REDIS_UNAVAILABLE, "down"), 2, old)
    assert flipped["lastTransitionTime"] != "2025-01-01T00:00:00Z"
    assert not changed({"a": {"b": 1}, "c": 2}, {"a": {"b": 1}})
    assert changed({"a": 1}, {"a": None}) and not changed({}, {"a": None})


def test_settings_read_the_workers_redis_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "medbook-redis")
    monkeypatch.setenv("REDIS_PASSWORD", "s3cr t")
    monkeypatch.setenv("MEDBOOK_CLEANUP_IMAGE_PULL_SECRETS", "one, two")
    monkeypatch.setenv("MEDBOOK_CLEANUP_ENV_SECRET", " ")
    monkeypatch.setenv("MEDBOOK_CLEANUP_RESOURCES", '{"requests": {"cpu": "10m"}}')
    monkeypatch.setenv("MEDBOOK_OPERATOR_LIVENESS", "")
    settings = OperatorSettings()
    assert settings.redis.dsn == "redis://:s3cr%20t@medbook-redis:6379/0"
    assert settings.cleanup.image_pull_secrets == ("one", "two")
    assert settings.cleanup.env_secret is None
    assert settings.cleanup.resources == {"requests": {"cpu": "10m"}}
    assert settings.liveness_endpoint is None
    assert settings.metrics_port == 9465
    monkeypatch.setenv("MEDBOOK_REDIS_URL", "redis://elsewhere:1/2")
    assert OperatorSettings().redis.dsn == "redis://elsewhere:1/2"


def test_the_namespace_falls_back_to_the_pods_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(settings_module, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "namespace")
    with pytest.raises(RuntimeError, match="MEDBOOK_OPERATOR_NAMESPACE"):
        OperatorSettings().watched_namespace()
    (tmp_path / "namespace").write_text("clinic\n")
    assert OperatorSettings().watched_namespace() == "clinic"
    monkeypatch.setenv("POD_NAMESPACE", "from-downward-api")
    assert OperatorSettings().watched_namespace() == "from-downward-api"
    monkeypatch.setenv("MEDBOOK_OPERATOR_NAMESPACE", "explicit")
    assert OperatorSettings().watched_namespace() == "explicit"
