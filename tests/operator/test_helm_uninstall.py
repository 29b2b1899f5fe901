"""`helm uninstall medbook-operator` leaves nothing running, nothing stuck, nothing published.

Helm's own install and uninstall run against the emulated API server with the
controllers and the kubelet played by rules (``tests/charts/cluster.py``). What
the operator's pods run is the real code: the operator (kopf, the reconciler)
against the emulator and the tests' real Redis, and the pre-delete hook's
``medbook-operator uninstall``. A pod goes when the kubelet model stops it: the
operator scaled to zero or deleted stops before the API server answers, so the
order Helm deletes things in decides, as on a real cluster where the operator
loses its Role with its Deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import httpx
import kmock
import port_for
import pytest
import yaml
from redis.asyncio import Redis

from medbook.discount.policy_store import PolicyStore
from medbook_operator.handlers import FINALIZER
from medbook_operator.main import parser
from medbook_operator.settings import OperatorSettings, RedisConnection
from medbook_operator.uninstall import uninstall
from tests.charts.helm_actions import HelmError
from tests.charts.programs import READY, SUCCEEDED, Box, Phase, Program, failed, waiting
from tests.charts.rendering import CHARTS_DIR
from tests.charts.rig import Rig, helm_cluster
from tests.helpers import eventually
from tests.operator.conftest import policy, published, running_operator
from tests.operator.test_rbac import VERBS, _allowed

NAMESPACE = "medbook"
CHART = CHARTS_DIR / "medbook-operator"
RELEASE = "medbook-operator"
WIRED = {  # beside a medbook release "medbook", as skaffold deploys it
    "redis": {"host": "medbook-redis", "existingSecret": "medbook-redis"},
    "database": {"configMap": "medbook-config", "existingSecret": "medbook-postgresql"},
    "defaultPolicy": {"enabled": True, "spec": {"dailyLimit": 50}},
}
POLICIES = "medbook.io/v1alpha1/quotapolicies"


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """The process's environment as the container's, while settings are read from it."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_of(box: Box, server: str, redis_url: str) -> OperatorSettings:
    """The settings the container's environment gives, pointed at the emulator and our Redis."""
    with _environment(box.env):
        given = OperatorSettings()
    return given.model_copy(
        update={
            "api_server": server,
            "metrics_port": 0,
            "liveness_endpoint": f"http://127.0.0.1:{port_for.select_random()}/healthz",
            "status_interval": 0.3,
            "retry_delay": 0.3,
            "log_format": "text",
            "redis": RedisConnection(url=redis_url, timeout=1),
        }
    )


class RealOperator(Program):
    """The operator's container: the real operator, until the pod goes."""

    server = ""
    redis_url = ""

    def __init__(self, box: Box) -> None:
        super().__init__(box)
        self.running: contextlib.AbstractAsyncContextManager[Any] | None = None

    async def poll(self) -> Phase:
        if self.running is None:
            self.running = running_operator(settings_of(self.box, self.server, self.redis_url))
            await self.running.__aenter__()
            self.box.cluster.timeline.append(("operator", "started", self.box.pod))
        return READY

    async def stop(self) -> None:
        if self.running is not None:
            await self.running.__aexit__(None, None, None)
            self.box.cluster.timeline.append(("operator", "stopped", self.box.pod))
            self.running = None


class RealUninstall(Program):
    """The pre-delete hook's container: ``medbook-operator uninstall``, for real."""

    server = ""
    redis_url = ""

    def __init__(self, box: Box) -> None:
        super().__init__(box)
        self.task: asyncio.Task[int] | None = None

    async def poll(self) -> Phase:
        if self.task is None:
            args = parser().parse_args(self.box.command[1:])
            settings = settings_of(self.box, self.server, self.redis_url)
            self.task = asyncio.create_task(uninstall(settings, args.deployment, args.timeout))
        if not self.task.done():
            return waiting("medbook-operator uninstall runs")
        code = self.task.result()
        return SUCCEEDED if code == 0 else failed(f"medbook-operator uninstall exited {code}")

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


@contextlib.asynccontextmanager
async def operator_cluster(redis_url: str, hook_redis_url: str | None = None) -> Any:
    """A pretend cluster whose operator pods run the real operator and uninstall hook."""

    def factory(kind: type[Program], redis: str) -> Any:
        def make(box: Box) -> Program:
            program = kind(box)
            program.server = rig.url  # type: ignore[attr-defined]
            program.redis_url = redis  # type: ignore[attr-defined]
            return program

        return make

    programs = {
        ("medbook-operator",): factory(RealOperator, redis_url),
        ("medbook-operator", "uninstall"): factory(RealUninstall, hook_redis_url or redis_url),
    }
    agents = ("kopf/", "medbook-operator/", "medbook-operator-uninstall/")

    def keep(request: kmock.Request) -> bool:
        return str(request.headers.get("User-Agent", "")).startswith(agents)

    async with helm_cluster(NAMESPACE, programs=programs, keep=keep) as rig:
        # What the medbook release would have made: the Secret the operator reads Redis' from.
        await rig.create_secret("medbook-redis", {"REDIS_PASSWORD": "in-the-tests-redis-url"})
        yield rig


async def _installed(rig: Rig, redis: Redis, values: dict[str, Any]) -> None:
    await rig.run("install", CHART, RELEASE, values, wait=True, timeout=30)
    await eventually(lambda: published(redis), what="the chart's QuotaPolicy published")
    await eventually(
        lambda: asyncio.sleep(0, rig.objects("batch/v1/cronjobs")), what="its cleanup CronJob"
    )
    async with httpx.AsyncClient(base_url=rig.url) as http:  # a user's policy as well
        created = await http.post(f"/apis/{POLICIES.rsplit('/', 1)[0]}/namespaces/{NAMESPACE}/quotapolicies",
                                  json=policy("mine", dailyLimit=7))  # fmt: skip
        assert created.status_code == 200, created.text

    def both_finalized() -> Any:
        found = rig.objects(POLICIES)
        done = all(FINALIZER in (p["metadata"].get("finalizers") or []) for p in found.values())
        return asyncio.sleep(0, len(found) == 2 and done)

    await eventually(both_finalized, what="both QuotaPolicies carry the operator's finalizer")


async def test_uninstall_releases_the_policies_and_withdraws_the_published_one(
    redis_url: str, redis: Redis
) -> None:
    async with operator_cluster(redis_url) as rig:
        await _installed(rig, redis, WIRED)
        assert await PolicyStore(redis).owner() == f"QuotaPolicy {NAMESPACE}/default"

        await rig.run("uninstall", RELEASE, wait=True, timeout=60)

        # Nothing running: the operator stopped, no CronJob, no pod at all.
        assert any(event[:2] == ("operator", "stopped") for event in rig.cluster.timeline)
        assert rig.objects("batch/v1/cronjobs") == {}
        assert rig.objects("v1/pods") == {}
        assert rig.objects("batch/v1/jobs") == {}  # the hook's Job, gone once it succeeded
        # Nothing stuck: the chart's QuotaPolicy is gone; the user's stays, released.
        [mine] = rig.objects(POLICIES).values()
        assert mine["metadata"]["name"] == "mine"
        assert FINALIZER not in (mine["metadata"].get("finalizers") or [])
        [ready] = mine["status"]["conditions"]
        assert (ready["status"], ready["reason"]) == ("False", "NoOperator")
        assert "quota" not in mine["status"] and "cronJob" not in mine["status"]
        # Nothing published: the worker is back on its own defaults.
        assert await published(redis) is None
        assert await PolicyStore(redis).owner() is None
        # Nothing else of the release (the CRD stays: Helm never deletes crds/).
        for resource in ("v1/serviceaccounts", "rbac.authorization.k8s.io/v1/roles",
                         "rbac.authorization.k8s.io/v1/rolebindings", "apps/v1/deployments",
                         "networking.k8s.io/v1/networkpolicies"):  # fmt: skip
            assert rig.objects(resource) == {}, resource
        crds = rig.server.live_raw("apiextensions.k8s.io/v1/customresourcedefinitions")
        assert [crd["metadata"]["name"] for crd in crds] == ["quotapolicies.medbook.io"]


async def test_the_hooks_calls_are_allowed_by_its_role(redis_url: str, redis: Redis) -> None:
    async with operator_cluster(redis_url) as rig:
        rendered = await rig.run("render", CHART, RELEASE, WIRED)
        await _installed(rig, redis, WIRED)
        await rig.run("uninstall", RELEASE, wait=True, timeout=60)

    [role] = [
        doc
        for doc in yaml.safe_load_all(rendered["medbook-operator/templates/uninstall-hook.yaml"])
        if doc and doc["kind"] == "Role"
    ]
    calls = set()
    for request in rig.server.kept:
        if not str(request.headers.get("User-Agent", "")).startswith("medbook-operator-uninstall/"):
            continue
        assert request.resource is not None and request.resource.plural is not None
        resource = request.resource.plural + (
            f"/{request.subresource}" if request.subresource else ""
        )
        verb = VERBS.get(str(request.method.value), "list" if not request.name else "get")
        calls.add((request.resource.group, resource, verb))
        assert request.namespace == NAMESPACE
        assert _allowed(role["rules"], request.resource.group, resource, verb), (resource, verb)
    assert {("apps", "deployments", "patch"), ("", "pods", "list"),
            ("medbook.io", "quotapolicies", "patch"), ("batch", "cronjobs", "delete")} <= calls  # fmt: skip


async def test_without_the_hook_the_policy_is_stuck_and_still_published(
    redis_url: str, redis: Redis
) -> None:
    """The defect as it was: Helm deletes the operator, then its QuotaPolicy."""
    values = {**WIRED, "uninstall": {"enabled": False}}
    async with operator_cluster(redis_url) as rig:
        await _installed(rig, redis, values)
        await rig.run("uninstall", RELEASE, wait=False)
        stuck = rig.objects(POLICIES)["default"]
        assert stuck["metadata"]["deletionTimestamp"]
        assert FINALIZER in stuck["metadata"]["finalizers"]  # nobody left to remove it
        assert "default-cleanup" in rig.objects("batch/v1/cronjobs")  # still scheduled
        assert (await published(redis) or {})["dailyLimit"] == 50  # still in force


async def test_an_uninstall_that_cannot_withdraw_changes_nothing_and_says_why(
    redis_url: str, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async with operator_cluster(redis_url, hook_redis_url="redis://127.0.0.1:9/0") as rig:
        await _installed(rig, redis, WIRED)
        failed_job = "Job/medbook/medbook-operator-uninstall not ready. status: Failed"
        with pytest.raises(HelmError, match=failed_job):
            await rig.run("uninstall", RELEASE, wait=True, timeout=20)
        assert "uninstall failed: Redis cannot be reached" in caplog.text
        assert "nothing was changed. Fix Redis and uninstall again" in caplog.text
        # Nothing changed: the operator runs, the policies are its own, the policy stays.
        assert not any(event[:2] == ("operator", "stopped") for event in rig.cluster.timeline)
        for found in rig.objects(POLICIES).values():
            assert FINALIZER in found["metadata"]["finalizers"]
        assert (await published(redis) or {})["dailyLimit"] == 50
