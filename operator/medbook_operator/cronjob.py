"""The cleanup CronJob a policy owns: its name, its desired shape, and whether one needs a patch.

The job runs ``medbook-cleanup --pending-timeout <spec.cleanup.pendingTimeoutSeconds>``
from the booking image, on the policy's schedule and in its time zone, with the
database settings from the ConfigMap/Secret the operator was told about. The
pod runs as a non-root user on a read-only root filesystem, without
capabilities or a service account token.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import kopf

from medbook.discount.policy import QuotaPolicy
from medbook_operator import MANAGER
from medbook_operator.settings import CleanupJob

MAX_NAME: Final = 52  # a CronJob's name; its Jobs append 11 characters to it
MAX_LABEL: Final = 63
POLICY_LABEL: Final = "medbook.io/quota-policy"
SUCCESSFUL_JOBS_KEPT: Final = 1
FAILED_JOBS_KEPT: Final = 3
BACKOFF_LIMIT: Final = 1


def _bounded(text: str, limit: int) -> str:
    """``text`` if it fits, else a prefix and a short hash (stable, still unique)."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[: limit - 9].rstrip('-.')}-{digest}"


def cronjob_name(policy_name: str) -> str:
    """The stable name of the CronJob owned by the policy called ``policy_name``."""
    return _bounded(f"{policy_name}-cleanup", MAX_NAME)


def labels(policy_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "medbook-cleanup",
        "app.kubernetes.io/component": "cleanup",
        "app.kubernetes.io/part-of": "medbook",
        "app.kubernetes.io/managed-by": MANAGER,
        POLICY_LABEL: _bounded(policy_name, MAX_LABEL),
    }


def command(policy: QuotaPolicy) -> list[str]:
    return ["medbook-cleanup", "--pending-timeout", str(policy.cleanup.pending_timeout_seconds)]


def desired_cronjob(
    policy: QuotaPolicy, owner: Mapping[str, Any], job: CleanupJob
) -> dict[str, Any]:
    """The CronJob for ``policy``, owned by ``owner`` (the QuotaPolicy object).

    Optional fields that are not wanted are ``None``: a merge patch removes
    them; :func:`strip_none` drops them before a create.
    """
    owner_name = owner["metadata"]["name"]
    job_labels = labels(owner_name)
    env_from = [
        *([{"configMapRef": {"name": job.env_configmap}}] if job.env_configmap else []),
        *([{"secretRef": {"name": job.env_secret}}] if job.env_secret else []),
    ]
    container: dict[str, Any] = {
        "name": "cleanup",
        "image": job.image,
        "imagePullPolicy": job.image_pull_policy,
        "command": command(policy),
        "envFrom": env_from or None,
        "resources": job.resources,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108  # the pod's own
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        # No Service's host and port injected as env vars: they could shadow the
        # job's own settings (a Service named "medbook-redis" gives MEDBOOK_REDIS_PORT).
        "enableServiceLinks": False,
        "serviceAccountName": job.service_account,
        "imagePullSecrets": [{"name": n} for n in job.image_pull_secrets] or None,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": job.run_as_user,
            "runAsGroup": job.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}],
    }
    body: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": cronjob_name(owner_name), "labels": dict(job_labels)},
        "spec": {
            "schedule": policy.cleanup.schedule,
            "timeZone": policy.time_zone,
            "suspend": policy.cleanup.suspend,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": job.starting_deadline_seconds,
            "successfulJobsHistoryLimit": SUCCESSFUL_JOBS_KEPT,
            "failedJobsHistoryLimit": FAILED_JOBS_KEPT,
            "jobTemplate": {
                "metadata": {"labels": dict(job_labels)},
                "spec": {
                    "backoffLimit": BACKOFF_LIMIT,
                    "activeDeadlineSeconds": job.active_deadline_seconds,
                    "template": {"metadata": {"labels": dict(job_labels)}, "spec": pod_spec},
                },
            },
        },
    }
    kopf.adopt(body, owner=owner)  # type: ignore[arg-type]  # owner reference, namespace
    return body


def strip_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_none(v) for v in value]
    return value


_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIXES: Final[dict[str, Decimal | int]] = {
    "": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip


def _quantity(text: str) -> Decimal | None:
    match = _QUANTITY.match(text.strip())
    if not match or match.group(2) not in _SUFFIXES:
        return None
    try:
        return Decimal(match.group(1)) * Decimal(_SUFFIXES[match.group(2)])
    except InvalidOperation:
        return None


def _same(existing: Any, desired: Any) -> bool:
    if isinstance(existing, str) and isinstance(desired, str) and existing != desired:
        a, b = _quantity(existing), _quantity(desired)  # "0.5" and "500m" are one CPU amount
        return a is not None and a == b
    return bool(existing == desired)


def contains(existing: Any, desired: Any) -> bool:
    """Whether ``existing`` already holds everything ``desired`` asks for.

    The API server adds defaults (``dnsPolicy``, ``terminationMessagePath``,
    ...) and normalises quantities, so a plain equality would patch forever.
    A ``None`` in ``desired`` means "absent".
    """
    if isinstance(desired, Mapping):
        if not isinstance(existing, Mapping):
            return False
        return all(
            existing.get(key) is None if value is None else contains(existing.get(key), value)
            for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(existing, list)
            and len(existing) == len(desired)
            and all(contains(e, d) for e, d in zip(existing, desired, strict=True))
        )
    return _same(existing, desired)


def patch_for(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch that brings ``existing`` to ``desired``, or ``None`` when none is needed."""
    wanted = {
        "metadata": {
            "labels": desired["metadata"]["labels"],
            "ownerReferences": desired["metadata"]["ownerReferences"],
        },
        "spec": desired["spec"],
    }
    return None if contains(existing, wanted) else wanted


def summary(cronjob: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the QuotaPolicy's status tells about its CronJob."""
    if cronjob is None:
        return None
    status = cronjob.get("status") or {}
    return {
        "name": cronjob["metadata"]["name"],
        "schedule": (cronjob.get("spec") or {}).get("schedule"),
        "suspended": bool((cronjob.get("spec") or {}).get("suspend")),
        "lastScheduleTime": status.get("lastScheduleTime"),
        "lastSuccessfulTime": status.get("lastSuccessfulTime"),
    }
