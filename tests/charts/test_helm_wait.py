"""`helm install --wait`, `helm upgrade --wait` and skaffold's deploy end, and no booking pod
serves before its schema is migrated.

Helm's own actions run against the emulated API server, with the controllers and
the kubelet played by rules (``tests/charts/cluster.py``): Helm decides the order
(hooks, ``--wait`` before ``post-install`` hooks), the rules say what each pod
waits for (``tests/charts/programs.py``). A release that cannot become ready ends
in Helm's own timeout; the failure message says what every pod waits for.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.helm_actions import HelmError
from tests.charts.rendering import CHARTS_DIR, ROOT
from tests.charts.rig import Rig, helm_cluster

NAMESPACE = "medbook"
EXTERNAL = {
    "postgresql": {"enabled": False, "external": {"host": "db.example", "existingSecret": "db"}},
    "redis": {"enabled": False, "external": {"host": "redis.example", "existingSecret": "rd"}},
    "rabbitmq": {"enabled": False, "external": {"existingSecret": "amqp"}},
}
EXTERNAL_HOSTS = {"db.example", "redis.example", "rabbit.example"}
BOOKING = "Deployment/medbook-booking"


async def _external_secrets(rig: Rig) -> None:
    """What a person creates before installing against external servers."""
    await rig.create_secret("db", {"DB_PASSWORD": "db-password"})
    await rig.create_secret("rd", {"REDIS_PASSWORD": "redis-password"})
    await rig.create_secret(
        "amqp", {"MEDBOOK_RABBITMQ_URL": "amqp://medbook:secret@rabbit.example:5672/medbook"}
    )


def _explain(rig: Rig, error: BaseException) -> str:
    return f"{error}\nwhat the pods wait for:\n" + "\n".join(rig.cluster.waiting())


async def _install(rig: Rig, values: dict[str, Any], chart: str | Path = "medbook") -> None:
    try:
        await rig.run("install", chart, "medbook", values, wait=True, timeout=15)
    except HelmError as exc:
        pytest.fail(_explain(rig, exc))


def _index(timeline: list[tuple[str, str, str]], event: tuple[str, str, str]) -> int:
    assert event in timeline, f"{event} never happened: {timeline}"
    return timeline.index(event)


def _migrated_before_serving(rig: Rig, database: str, image: str) -> None:
    """The schema reached the image's revision before a booking pod of it was ready."""
    timeline = rig.cluster.timeline
    assert _index(timeline, ("migrated", database, image)) < _index(
        timeline, ("ready", BOOKING, image)
    ), timeline


async def test_install_with_wait_ends_with_the_in_chart_servers() -> None:
    async with helm_cluster(NAMESPACE) as rig:
        await _install(rig, {})
        _migrated_before_serving(rig, "medbook-postgresql", "medbook-booking:0.1.0")
        # The release created the database, so the migrations are a Job of the release.
        [job] = rig.objects("batch/v1/jobs").values()
        assert job["metadata"]["name"] == "medbook-migrations-init"
        assert "helm.sh/hook" not in job["metadata"]["annotations"]


async def test_install_with_wait_ends_with_external_servers() -> None:
    async with helm_cluster(NAMESPACE, external=EXTERNAL_HOSTS) as rig:
        await _external_secrets(rig)
        await _install(rig, EXTERNAL)
        _migrated_before_serving(rig, "db.example", "medbook-booking:0.1.0")
        assert rig.objects("batch/v1/jobs") == {}  # the pre-install hook, deleted on success
        assert not rig.objects("apps/v1/statefulsets")


@pytest.mark.parametrize(
    ("values", "database"),
    [({}, "medbook-postgresql"), (EXTERNAL, "db.example")],
    ids=["in-chart", "external"],
)
async def test_upgrade_with_wait_migrates_before_the_new_pods_serve(
    values: dict[str, Any], database: str
) -> None:
    async with helm_cluster(NAMESPACE, external=EXTERNAL_HOSTS) as rig:
        await _external_secrets(rig)
        await _install(rig, values)
        upgraded = {**values, "image": {"tag": "0.2.0"}}
        try:
            await rig.run("upgrade", "medbook", "medbook", upgraded, wait=True, timeout=15)
        except HelmError as exc:
            pytest.fail(_explain(rig, exc))
        _migrated_before_serving(rig, database, "medbook-booking:0.2.0")
        # The install's Job is gone with the revision that had it; the upgrade's hook ran.
        assert rig.objects("batch/v1/jobs") == {}


def _skaffold_releases() -> list[dict[str, Any]]:
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    releases = config["deploy"]["helm"]["releases"]
    dev = next(p for p in config["profiles"] if p["name"] == "dev")
    for patch in dev["patches"]:  # `skaffold dev` and `skaffold run -p dev`
        index = int(patch["path"].split("/")[4])
        releases[index]["valuesFiles"] = patch["value"]
    return releases


def _release_values(release: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in release.get("valuesFiles") or []:
        values.update(yaml.safe_load((ROOT / name).read_text()) or {})
    for dotted, template in (release.get("setValueTemplates") or {}).items():
        *parents, leaf = dotted.split(".")
        node = values
        for key in parents:
            node = node.setdefault(key, {})
        # What skaffold puts in: the image built for this commit (repository, tag@digest).
        node[leaf] = "medbook-image" if leaf == "repository" else "abc1234@sha256:" + "0" * 64
        if "booking" in template:
            node[leaf] = node[leaf].replace("medbook-image", "medbook-booking")
        elif "discount" in template:
            node[leaf] = node[leaf].replace("medbook-image", "medbook-discount")
    return values


async def test_skaffold_deploys_both_releases_with_wait() -> None:
    releases = _skaffold_releases()
    assert [r["name"] for r in releases] == ["medbook", "medbook-operator"]
    async with helm_cluster(NAMESPACE) as rig:
        for release in releases:
            assert release["wait"] is True and release["namespace"] == NAMESPACE
            chart = ROOT / release["chartPath"]
            try:
                await rig.run(
                    "install", chart, release["name"], _release_values(release), wait=True
                )
            except HelmError as exc:
                pytest.fail(f"{release['name']}: {_explain(rig, exc)}")
        assert "default" in rig.objects("medbook.io/v1alpha1/quotapolicies")


async def test_a_post_install_migration_deadlocks_install_with_wait(tmp_path: Path) -> None:
    """The check above fails on the chart as it was: migrations after readiness never run."""
    chart = tmp_path / "medbook"
    shutil.copytree(CHARTS_DIR / "medbook", chart)
    job = chart / "templates" / "migrations-job.yaml"
    text = job.read_text()
    assert "helm.sh/hook: pre-install,pre-upgrade" in text
    job.write_text(
        text.replace("{{- if $exists }}", "{{- if true }}").replace(
            "helm.sh/hook: pre-install,pre-upgrade", "helm.sh/hook: post-install,pre-upgrade"
        )
    )
    async with helm_cluster(NAMESPACE) as rig:
        with pytest.raises(HelmError, match="medbook-booking not ready"):
            await rig.run("install", chart, "medbook", {}, wait=True, timeout=4)
        assert any(
            "wait-for-schema" in line and "not at the revision" in line
            for line in rig.cluster.waiting()
        ), rig.cluster.waiting()
        assert rig.objects("batch/v1/jobs") == {}  # Helm never got to the hook
