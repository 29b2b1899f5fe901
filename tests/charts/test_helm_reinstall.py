"""Uninstall, then install again in the same namespace: the in-chart servers find their data and
the credentials it was made with, or the install says why it cannot.

Helm's own install and uninstall run against the emulated API server
(``tests/charts/cluster.py``): the StatefulSet controller makes the claims and
never deletes them (unless asked), PostgreSQL and RabbitMQ keep the password
their data was initialised with, and a client with another one waits
("password authentication failed"), as on a real cluster. ``lookup`` sees the
live objects, so the chart's reuse of a kept Secret runs as Helm runs it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.charts.helm_actions import HelmError
from tests.charts.rendering import CHARTS_DIR
from tests.charts.rig import Rig, helm_cluster

NAMESPACE = "medbook"
SERVERS = ("postgresql", "redis", "rabbitmq")
CLAIM_NAMES = {f"data-medbook-{server}-0" for server in SERVERS}
PASSWORD_KEYS = {"postgresql": "DB_PASSWORD", "redis": "REDIS_PASSWORD",
                 "rabbitmq": "RABBITMQ_PASSWORD"}  # fmt: skip


def _explain(rig: Rig, error: BaseException) -> str:
    return f"{error}\nwhat the pods wait for:\n" + "\n".join(rig.cluster.waiting())


async def _install(rig: Rig, values: dict[str, Any] | None = None, chart: Any = "medbook") -> None:
    try:
        await rig.run("install", chart, "medbook", values or {}, wait=True, timeout=15)
    except HelmError as exc:
        pytest.fail(_explain(rig, exc))


def _passwords(rig: Rig) -> dict[str, str]:
    return {s: rig.secret(f"medbook-{s}")[key] for s, key in PASSWORD_KEYS.items()}


def _left(rig: Rig) -> dict[str, set[str]]:
    """Everything of the release still in the namespace, by resource."""
    found = {}
    for resource in ("v1/secrets", "v1/configmaps", "v1/services", "v1/persistentvolumeclaims",
                     "v1/pods", "apps/v1/deployments", "apps/v1/statefulsets", "batch/v1/jobs",
                     "networking.k8s.io/v1/networkpolicies", "v1/serviceaccounts"):  # fmt: skip
        names = {
            name
            for name, obj in rig.objects(resource).items()
            if (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/instance") == "medbook"
        }
        if names:
            found[resource.rsplit("/", 1)[-1]] = names
    return found


async def test_uninstall_leaves_the_data_and_its_credentials_and_nothing_else() -> None:
    async with helm_cluster(NAMESPACE) as rig:
        await _install(rig)
        await rig.run("uninstall", "medbook")
        assert _left(rig) == {
            "secrets": {f"medbook-{server}" for server in SERVERS},
            "persistentvolumeclaims": CLAIM_NAMES,
        }


async def test_a_reinstall_in_the_same_namespace_uses_the_kept_data_and_credentials() -> None:
    async with helm_cluster(NAMESPACE) as rig:
        await _install(rig)
        first = _passwords(rig)
        cookie = rig.secret("medbook-rabbitmq")["erlang-cookie"]
        await rig.run("uninstall", "medbook")
        await _install(rig)  # adopts the kept Secrets: same release, same namespace
        assert _passwords(rig) == first
        assert rig.secret("medbook-rabbitmq")["erlang-cookie"] == cookie
        assert rig.cluster.timeline.count(("ready", "Deployment/medbook-booking",
                                           "medbook-booking:0.1.0")) == 1  # fmt: skip
        assert ("ready", "Deployment/medbook-discount", "medbook-discount:0.1.0") in (
            rig.cluster.timeline
        )


async def test_without_the_kept_secrets_a_reinstall_never_becomes_ready(tmp_path: Path) -> None:
    """The defect as it was: new passwords, data initialised with the old ones."""
    chart = tmp_path / "medbook"
    shutil.copytree(CHARTS_DIR / "medbook", chart)
    helpers = chart / "templates" / "_helpers.tpl"
    text = helpers.read_text()
    assert "helm.sh/resource-policy: keep" in text and "{{- $data := and $bound" in text
    # As it was: Secrets deleted on uninstall, and new passwords generated without a look.
    text = text.replace("helm.sh/resource-policy: keep", "")
    helpers.write_text(text.replace("{{- $data := and $bound", "{{- $data := and false"))
    async with helm_cluster(NAMESPACE) as rig:
        await _install(rig, chart=chart)
        await rig.run("uninstall", "medbook")
        assert "secrets" not in _left(rig)
        with pytest.raises(HelmError, match="not ready"):
            await rig.run("install", chart, "medbook", {}, wait=True, timeout=4)
        waiting = "\n".join(rig.cluster.waiting())
        assert "medbook-postgresql: password authentication failed" in waiting
        assert "medbook-rabbitmq: password authentication failed" in waiting


async def _delete(rig: Rig, resource: str, name: str) -> None:
    [found] = [o for o in rig.server.live(resource, NAMESPACE) if o.raw["metadata"]["name"] == name]
    await rig.server.remove([found])


async def test_kept_data_without_its_secret_is_refused_with_what_to_do() -> None:
    async with helm_cluster(NAMESPACE) as rig:
        await _install(rig)
        first = _passwords(rig)
        await rig.run("uninstall", "medbook")
        await _delete(rig, "v1/secrets", "medbook-postgresql")  # someone tidied up, halfway
        with pytest.raises(HelmError) as refused:
            await rig.run("render", "medbook", "medbook")
        message = re.sub(r"\s+", " ", str(refused.value))
        assert (
            "the PersistentVolumeClaim data-medbook-postgresql-0 holds postgresql data "
            "initialised with a password this release cannot know: the Secret "
            "medbook-postgresql that kept it is gone. Give that password (--set "
            "postgresql.auth.password=...), or delete the old data (kubectl -n medbook "
            "delete pvc data-medbook-postgresql-0)."
        ) in message
        # Given the old password, it installs; Redis takes its password at every start, so
        # a lost Redis Secret just means a new password.
        await _delete(rig, "v1/secrets", "medbook-redis")
        given = {"postgresql": {"auth": {"password": first["postgresql"]}}}
        await _install(rig, given)
        assert _passwords(rig)["postgresql"] == first["postgresql"]
        assert _passwords(rig)["redis"] != first["redis"]


async def test_a_given_password_other_than_the_datas_is_refused() -> None:
    async with helm_cluster(NAMESPACE) as rig:
        await _install(rig)
        with pytest.raises(HelmError, match=re.escape(
            "rabbitmq.auth.password differs from the password in the Secret medbook-rabbitmq, "
            "with which the data in the PersistentVolumeClaim data-medbook-rabbitmq-0 was "
            "initialised"
        )):  # fmt: skip
            await rig.run(
                "upgrade", "medbook", "medbook", {"rabbitmq": {"auth": {"password": "x"}}}
            )
        # The same password again is fine, and so is a new one once the data is gone.
        same = {"rabbitmq": {"auth": {"password": _passwords(rig)["rabbitmq"]}}}
        await rig.run("render", "medbook", "medbook", same)


async def test_deleting_the_claims_on_uninstall_leaves_a_clean_namespace() -> None:
    values = {s: {"persistence": {"deleteClaimsOnUninstall": True}} for s in SERVERS}
    async with helm_cluster(NAMESPACE) as rig:
        await _install(rig, values)
        first = _passwords(rig)
        await rig.run("uninstall", "medbook")
        assert _left(rig) == {}
        await _install(rig, values)  # fresh data, fresh credentials
        assert set(_passwords(rig).values()).isdisjoint(first.values())
        assert set(rig.objects("v1/persistentvolumeclaims")) == CLAIM_NAMES
