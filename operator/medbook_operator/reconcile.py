"""Reconciling one QuotaPolicy: validate, publish, own the cleanup CronJob, report.

Every step compares before it writes, so running it again (a timer tick, a
replayed watch event, a restart of the operator) changes nothing when
nothing changed. Failures do not escape as exceptions: they become the
``Ready`` condition (with a reason) and, when that condition changes, a
Kubernetes Event; the status timer runs the same reconciliation again, so a
policy recovers by itself once Redis or the API server is back.

One lock serialises all reconciliations: which policy is in force depends on
all of them, and the operator runs as one replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from medbook.discount.policy import QuotaPolicy, describe_error
from medbook.discount.policy_store import PolicyStore
from medbook.discount.quota import QuotaStore
from medbook.failures import DependencyError
from medbook_operator import cronjob, metrics
from medbook_operator.kube import ApiError, KubeApi
from medbook_operator.settings import OperatorSettings
from medbook_operator.status import (
    Reason,
    Verdict,
    changed,
    elect,
    previous_verdict,
    ready_condition,
)

log = logging.getLogger(__name__)

# (object, type, reason, message): kopf.event in the operator, a list in unit tests.
EventSink = Callable[[Mapping[str, Any], str, str, str], None]

_STORE_ERRORS = (DependencyError, RedisError, OSError)


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def _uid(obj: Mapping[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("uid")


def _find(policies: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((p for p in policies if _name(p) == name), None)


def _owned_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == _uid(owner) for ref in refs)


class Reconciler:
    def __init__(
        self,
        settings: OperatorSettings,
        namespace: str,
        api: KubeApi,
        redis: Redis,
        events: EventSink,
    ) -> None:
        self.settings = settings
        self.namespace = namespace
        self.api = api
        self.redis = redis
        self.store = PolicyStore(redis)
        self.events = events
        self.lock = asyncio.Lock()

    # -- entry points (one per kopf handler kind) ---------------------------------------

    async def reconcile(self, name: str, handler: str) -> Verdict | None:
        """Bring the cluster and the store in line with the QuotaPolicy ``name``.

        ``None`` when there is nothing to do: the object is gone or being deleted
        (the delete handler owns that), or the API server cannot list policies.
        """
        async with self.lock:
            try:
                policies = await self.api.list_policies(self.namespace)
            except ApiError as exc:
                metrics.ERRORS.labels("api").inc()
                log.warning("cannot list QuotaPolicies (will retry): %s", exc)
                return None
            me = _find(policies, name)
            if me is None or (me.get("metadata") or {}).get("deletionTimestamp"):
                return None
            verdict = await self._reconcile(me, policies)
        metrics.RECONCILIATIONS.labels(handler, verdict.reason.value).inc()
        return verdict

    async def withdraw(self, name: str) -> None:
        """The QuotaPolicy ``name`` is being deleted: hand over to the next one, or withdraw.

        Raises :class:`ApiError` or a Redis error when that could not be done,
        so kopf keeps its finalizer and retries.
        """
        async with self.lock:
            policies = await self.api.list_policies(self.namespace)
            me = _find(policies, name)
            if me is None:
                return
            others = [p for p in policies if _name(p) != name]
            alive_me = {**me, "metadata": {**me["metadata"], "deletionTimestamp": None}}
            was_in_force = elect([*others, alive_me]) is alive_me
            successor = elect(others)
            # Its CronJob goes now, not when the garbage collector gets to it (nor never,
            # in a namespace being deleted): a deleted policy's sweep must not run again.
            await self._drop_own_cronjob(me)
            if not was_in_force:
                log.info("QuotaPolicy %s was not in force; nothing to withdraw", name)
            elif successor is not None:
                log.info("QuotaPolicy %s deleted; %s is now in force", name, _name(successor))
                verdict = await self._reconcile(dict(successor), others)
                metrics.RECONCILIATIONS.labels("delete", verdict.reason.value).inc()
            else:
                try:
                    withdrawn = await self.store.withdraw()
                except _STORE_ERRORS:
                    metrics.ERRORS.labels("redis").inc()
                    raise
                if withdrawn:
                    metrics.POLICIES_WITHDRAWN.inc()
                metrics.POLICY_READY.set(0)
                self.events(
                    me,
                    "Normal",
                    "PolicyWithdrawn",
                    "policy withdrawn: the discount worker is back on its default settings",
                )
                log.info("QuotaPolicy %s deleted; the published policy is withdrawn", name)
        metrics.RECONCILIATIONS.labels("delete", "Deleted").inc()

    # -- the steps -----------------------------------------------------------------------

    async def _reconcile(self, me: dict[str, Any], policies: list[dict[str, Any]]) -> Verdict:
        in_force = elect(policies)
        if in_force is None or _uid(in_force) != _uid(me):
            assert in_force is not None  # me is alive, so something is in force
            verdict = Verdict(
                False,
                Reason.CONFLICT,
                f"QuotaPolicy {_name(in_force)!r} is the policy in force in namespace "
                f"{self.namespace!r} (the oldest one wins); this one is ignored until that "
                "one is deleted",
            )
            await self._drop_own_cronjob(me)
            await self._write_status(me, verdict, quota=None, cron=None, conflict=True)
            return verdict

        try:
            policy = QuotaPolicy.model_validate(me.get("spec") or {})
        except ValidationError as exc:
            metrics.ERRORS.labels("invalid_spec").inc()
            verdict = Verdict(
                False,
                Reason.INVALID_SPEC,
                f"spec refused, the last valid policy stays in force: {describe_error(exc)}",
            )
            await self._write_status(me, verdict, quota=None, cron=None)
            return verdict

        problems: list[Verdict] = []
        try:
            await self._publish(policy, me)
        except _STORE_ERRORS as exc:
            metrics.ERRORS.labels("redis").inc()
            problems.append(
                Verdict(False, Reason.REDIS_UNAVAILABLE, f"cannot publish the policy: {exc}")
            )
        cron: dict[str, Any] | None = None
        try:
            cron = await self._ensure_cronjob(policy, me)
        except ApiError as exc:
            metrics.ERRORS.labels("api").inc()
            problems.append(
                Verdict(False, Reason.CRONJOB_FAILED, f"cannot create or patch the CronJob: {exc}")
            )
        quota: dict[str, Any] | None = None
        try:
            day = policy.today()
            used = await QuotaStore(self.redis).used(day)
            quota = {
                "day": day.isoformat(),
                "limit": policy.daily_limit,
                "used": used,
                "remaining": max(0, policy.daily_limit - used),
            }
            metrics.QUOTA_USED.set(used)
            metrics.QUOTA_LIMIT.set(policy.daily_limit)
        except _STORE_ERRORS as exc:
            if not problems or problems[0].reason is not Reason.REDIS_UNAVAILABLE:
                metrics.ERRORS.labels("redis").inc()
                problems.append(
                    Verdict(False, Reason.REDIS_UNAVAILABLE, f"cannot read today's usage: {exc}")
                )

        runs = "suspended" if policy.cleanup.suspend else f"on {policy.cleanup.schedule!r}"
        verdict = (
            problems[0]
            if problems
            else Verdict(
                True,
                Reason.RECONCILED,
                f"policy published: {policy.daily_limit} discounts a day at "
                f"{policy.discount_percent:g}% ({policy.time_zone}); cleanup CronJob "
                f"{cronjob.cronjob_name(_name(me))} {runs}",
            )
        )
        metrics.POLICY_READY.set(1 if verdict.ready else 0)
        await self._write_status(me, verdict, quota=quota, cron=cronjob.summary(cron))
        return verdict

    async def _publish(self, policy: QuotaPolicy, me: Mapping[str, Any]) -> None:
        document = policy.to_json()
        # Recorded with the policy, so tools (medbook scenario quota) change it through its owner.
        owner = f"QuotaPolicy {self.namespace}/{_name(me)}"
        current = await self.store.raw()
        unchanged = current is not None and current.decode() == document
        if unchanged and await self.store.owner() == owner:
            return
        await self.store.publish(policy, owner=owner)
        metrics.POLICIES_PUBLISHED.inc()
        self.events(
            me,
            "Normal",
            "PolicyPublished",
            f"published to the discount worker: daily limit {policy.daily_limit}, "
            f"discount {policy.discount_percent:g}%, time zone {policy.time_zone}",
        )
        log.info("QuotaPolicy %s published (daily limit %d)", _name(me), policy.daily_limit)

    async def _ensure_cronjob(self, policy: QuotaPolicy, me: dict[str, Any]) -> dict[str, Any]:
        desired = cronjob.desired_cronjob(policy, me, self.settings.cleanup)
        name = desired["metadata"]["name"]
        existing = await self.api.get_cronjob(self.namespace, name)
        if existing is None:
            try:
                created = await self.api.create_cronjob(self.namespace, cronjob.strip_none(desired))
            except ApiError as exc:
                if exc.status != 409:  # created meanwhile: patch it below
                    raise
                existing = await self.api.get_cronjob(self.namespace, name)
                if existing is None:
                    raise
            else:
                metrics.CRONJOB_WRITES.labels("create").inc()
                self.events(me, "Normal", "CronJobCreated", f"created CronJob {name}")
                return created
        patch = cronjob.patch_for(existing, desired)
        if patch is None:
            return existing
        patched = await self.api.patch_cronjob(self.namespace, name, patch)
        metrics.CRONJOB_WRITES.labels("patch").inc()
        self.events(me, "Normal", "CronJobUpdated", f"updated CronJob {name}")
        return patched

    async def _drop_own_cronjob(self, me: Mapping[str, Any]) -> None:
        """A policy not in force owns no CronJob (one it made while it was in force goes)."""
        name = cronjob.cronjob_name(_name(me))
        try:
            existing = await self.api.get_cronjob(self.namespace, name)
            if existing is not None and _owned_by(existing, me):
                await self.api.delete_cronjob(self.namespace, name)
                metrics.CRONJOB_WRITES.labels("delete").inc()
                self.events(me, "Normal", "CronJobDeleted", f"deleted CronJob {name}")
        except ApiError as exc:
            metrics.ERRORS.labels("api").inc()
            log.warning("cannot remove CronJob %s of a policy not in force: %s", name, exc)

    async def _write_status(
        self,
        me: Mapping[str, Any],
        verdict: Verdict,
        *,
        quota: dict[str, Any] | None,
        cron: dict[str, Any] | None,
        conflict: bool = False,
    ) -> None:
        current = me.get("status") or {}
        generation = (me.get("metadata") or {}).get("generation")
        wanted: dict[str, Any] = {
            "observedGeneration": generation,
            "conditions": [ready_condition(verdict, generation, current.get("conditions"))],
        }
        if conflict:  # a policy not in force shows no usage and owns no CronJob
            wanted["quota"] = None
            wanted["cronJob"] = None
        else:
            if quota is not None:
                wanted["quota"] = quota
            if cron is not None:
                wanted["cronJob"] = cron
        if previous_verdict(current) != (wanted["conditions"][0]["status"], verdict.reason.value):
            kind = "Normal" if verdict.ready else "Warning"
            self.events(me, kind, verdict.reason.value, verdict.message)
            log_at = logging.INFO if verdict.ready else logging.WARNING
            log.log(log_at, "QuotaPolicy %s: %s: %s", _name(me), verdict.reason, verdict.message)
        if not changed(current, wanted):
            return
        try:
            await self.api.patch_policy_status(self.namespace, _name(me), wanted)
        except ApiError as exc:
            metrics.ERRORS.labels("api").inc()
            log.warning("cannot write the status of QuotaPolicy %s: %s", _name(me), exc)
