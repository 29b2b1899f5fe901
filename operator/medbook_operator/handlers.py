"""kopf's handlers, kept thin: each one calls the reconciler.

- create / update (of ``spec``) / resume: reconcile the policy.
- a timer every ``status_interval`` seconds: the same reconciliation, which
  refreshes the status (usage, CronJob) and retries whatever failed.
- delete: hand over to the next policy, or withdraw the published one.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any

import kopf
from redis.exceptions import RedisError

from medbook.failures import DependencyError
from medbook_operator import GROUP, PLURAL, VERSION
from medbook_operator.kube import ApiError
from medbook_operator.reconcile import Reconciler
from medbook_operator.settings import OperatorSettings

FINALIZER = "medbook.io/quota-operator"
ANNOTATIONS_PREFIX = "medbook.io"


def register(
    registry: kopf.OperatorRegistry, reconciler: Reconciler, settings: OperatorSettings
) -> None:
    resource = (GROUP, VERSION, PLURAL)
    operator_settings = settings  # kopf passes its own settings as `settings` below

    @kopf.on.startup(id="configure", registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Only discovery at start: no cluster-wide reads of CRDs or namespaces (no ClusterRole).
        settings.scanning.disabled = True
        # Our own Events mark changes; kopf posts only its warnings and errors.
        settings.posting.level = logging.WARNING
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=ANNOTATIONS_PREFIX
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=ANNOTATIONS_PREFIX, key="last-handled-configuration"
        )
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        if operator_settings.peering:
            settings.peering.name = operator_settings.peering
            settings.peering.mandatory = False  # used when the KopfPeering object exists
        else:
            settings.peering.standalone = True

    @kopf.on.resume(*resource, id="reconcile", registry=registry)
    @kopf.on.create(*resource, id="reconcile", registry=registry)
    @kopf.on.update(*resource, id="reconcile", field="spec", registry=registry)
    async def reconcile(name: str, reason: str, **_: Any) -> None:
        # kopf passes a kopf.Reason (a str enum): its value is the handler's name.
        await reconciler.reconcile(name, reason.value if isinstance(reason, Enum) else reason)

    @kopf.timer(*resource, id="status", interval=settings.status_interval, registry=registry)
    async def refresh(name: str, **_: Any) -> None:
        await reconciler.reconcile(name, "timer")

    @kopf.on.delete(*resource, id="withdraw", registry=registry)
    async def withdraw(name: str, **_: Any) -> None:
        try:
            await reconciler.withdraw(name)
        except (ApiError, DependencyError, RedisError, OSError) as exc:
            raise kopf.TemporaryError(
                f"cannot withdraw the policy yet: {exc}", delay=settings.retry_delay
            ) from exc
