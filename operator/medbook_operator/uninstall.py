"""``medbook-operator uninstall``: leave the namespace as if the operator had never run.

The chart runs it as a pre-delete hook, before Helm deletes the operator's
Deployment and Role. Deleting those first would leave every QuotaPolicy with
the operator's finalizer and nobody to remove it (stuck ``Terminating``, and a
namespace that never goes), its cleanup CronJob running, and the policy still
published for the discount worker. In order:

1. Redis must answer (nothing has changed yet if it does not);
2. the operator is scaled to zero and its pods are waited for, so that nothing
   re-publishes or re-creates behind this command;
3. every QuotaPolicy of the namespace is released: its cleanup CronJobs are
   deleted, its ``Ready`` condition says the operator is gone, and the
   operator's finalizer is removed (a policy already being deleted goes now);
4. the published policy is withdrawn, if a QuotaPolicy of this namespace
   published it (the discount worker goes back to its own defaults).

QuotaPolicies created with ``kubectl`` stay, inert; installing the operator
again puts the oldest back in force. Running it twice changes nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from medbook.discount.policy_store import PolicyStore
from medbook.failures import DependencyError
from medbook_operator import cronjob
from medbook_operator.handlers import FINALIZER
from medbook_operator.kube import JSON_PATCH, MERGE_PATCH, ApiError, KubeApi
from medbook_operator.settings import OperatorSettings
from medbook_operator.status import Reason, Verdict, ready_condition

log = logging.getLogger("medbook.operator.uninstall")

OWNER_PREFIX = "QuotaPolicy "  # how the reconciler names itself as the policy's owner


class UninstallFailed(Exception):
    """Something kept the namespace from being released; the message says what."""


class UninstallApi(KubeApi):
    """The calls the uninstall hook makes, beyond the operator's (its Role in the chart)."""

    agent = "medbook-operator-uninstall"

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """get deployments"""
        try:
            return await self.request(
                "GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        """patch deployments"""
        await self.request(
            "PATCH",
            f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
            body={"spec": {"replicas": replicas}},
            content_type=MERGE_PATCH,
        )

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """list pods"""
        found = await self.request(
            "GET", f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": selector}
        )
        return list(found.get("items") or [])

    async def list_cronjobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """list cronjobs"""
        found = await self.request(
            "GET", self._cronjobs(namespace), params={"labelSelector": selector}
        )
        return list(found.get("items") or [])

    async def patch_policy(self, namespace: str, name: str, patch: list[dict[str, Any]]) -> None:
        """patch quotapolicies"""
        await self.request(
            "PATCH", f"{self._policies(namespace)}/{name}", body=patch, content_type=JSON_PATCH
        )

    async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        """create events"""
        await self.request("POST", f"/api/v1/namespaces/{namespace}/events", body=body)


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


class Uninstall:
    def __init__(
        self, settings: OperatorSettings, api: UninstallApi, redis: Redis, deployment: str
    ) -> None:
        self.settings = settings
        self.namespace = settings.watched_namespace()
        self.api = api
        self.store = PolicyStore(redis)
        self.deployment = deployment

    async def run(self, pods_within: float) -> None:
        """Release the namespace; ``pods_within`` seconds for the operator's pods to stop."""
        deadline = time.monotonic() + pods_within
        try:
            owner = await self.store.owner()  # Redis answers, before anything changes
        except DependencyError as exc:
            raise UninstallFailed(
                f"Redis cannot be reached ({exc.detail}), so the published policy could not "
                "be withdrawn; nothing was changed. Fix Redis and uninstall again, or "
                "uninstall with --no-hooks and release the namespace by hand "
                "(docs/operator.md, Uninstalling)"
            ) from exc
        await self._stop_operator(deadline)
        for policy in await self.api.list_policies(self.namespace):
            await self._release(policy)
        owner = await self.store.owner()  # the operator may have published meanwhile
        if owner and owner.startswith(f"{OWNER_PREFIX}{self.namespace}/"):
            await self.store.withdraw()
            log.info("the policy published by %s is withdrawn", owner)
        elif owner:
            log.info("the published policy belongs to %s: left as it is", owner)
        else:
            log.info("no policy of this namespace is published")

    async def _stop_operator(self, deadline: float) -> None:
        deployment = await self.api.get_deployment(self.namespace, self.deployment)
        if deployment is None:
            log.info("no Deployment %s: the operator is not running here", self.deployment)
            return
        selector = _selector(deployment["spec"]["selector"].get("matchLabels") or {})
        if (deployment["spec"].get("replicas") or 0) != 0:
            await self.api.scale_deployment(self.namespace, self.deployment, 0)
            log.info("Deployment %s scaled to 0; waiting for its pods to stop", self.deployment)
        while pods := await self.api.list_pods(self.namespace, selector):
            if time.monotonic() > deadline:
                names = ", ".join(p["metadata"]["name"] for p in pods)
                raise UninstallFailed(f"the operator's pods are still running: {names}")
            await asyncio.sleep(1.0)
        log.info("the operator is stopped")

    async def _release(self, policy: dict[str, Any]) -> None:
        meta = policy["metadata"]
        name = meta["name"]
        owned = f"{cronjob.POLICY_LABEL}={cronjob.labels(name)[cronjob.POLICY_LABEL]}"
        for job in await self.api.list_cronjobs(self.namespace, owned):
            refs = job["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == meta.get("uid") for ref in refs):
                await self.api.delete_cronjob(self.namespace, job["metadata"]["name"])
                log.info("QuotaPolicy %s: CronJob %s deleted", name, job["metadata"]["name"])
        verdict = Verdict(
            False,
            Reason.NO_OPERATOR,
            "medbook-operator was uninstalled: this policy is not in force (install the "
            "operator again to apply it)",
        )
        status = policy.get("status") or {}
        generation = meta.get("generation")
        condition = ready_condition(verdict, generation, status.get("conditions"))
        try:
            await self.api.patch_policy_status(
                self.namespace, name, {"conditions": [condition], "quota": None, "cronJob": None}
            )
        except ApiError as exc:  # the status is a courtesy; the finalizer is what matters
            log.warning("QuotaPolicy %s: cannot write its status: %s", name, exc)
        await self._event(policy, verdict)
        finalizers = meta.get("finalizers") or []
        if FINALIZER in finalizers:
            index = finalizers.index(FINALIZER)
            await self.api.patch_policy(
                self.namespace,
                name,
                [
                    {"op": "test", "path": f"/metadata/finalizers/{index}", "value": FINALIZER},
                    {"op": "remove", "path": f"/metadata/finalizers/{index}"},
                ],
            )
        log.info("QuotaPolicy %s released (no finalizer, no CronJob)", name)

    async def _event(self, policy: Mapping[str, Any], verdict: Verdict) -> None:
        meta = policy["metadata"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": policy.get("apiVersion"),
                "kind": policy.get("kind"),
                "name": meta["name"],
                "namespace": self.namespace,
                "uid": meta.get("uid"),
            },
            "type": "Normal",
            "reason": verdict.reason.value,
            "message": verdict.message,
            "source": {"component": "medbook-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.api.create_event(self.namespace, body)
        except ApiError as exc:
            log.warning("cannot post an Event on QuotaPolicy %s: %s", meta["name"], exc)


async def uninstall(settings: OperatorSettings, deployment: str, pods_within: float) -> int:
    """Release the namespace (see the module's docstring); 0 when done, 1 with a reason."""
    from medbook_operator.main import make_login  # the operator's own credentials logic

    namespace = settings.watched_namespace()
    api = UninstallApi(make_login(settings, namespace))
    redis = Redis.from_url(
        settings.redis.dsn,
        socket_connect_timeout=settings.redis.timeout,
        socket_timeout=settings.redis.timeout,
    )
    try:
        await Uninstall(settings, api, redis, deployment).run(pods_within)
    except (UninstallFailed, ApiError, DependencyError) as exc:
        log.error("uninstall failed: %s", exc)
        return 1
    finally:
        await api.close()
        await redis.aclose()
    log.info("namespace %s released: the operator can be deleted", namespace)
    return 0
