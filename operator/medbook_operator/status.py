"""What the operator writes under ``status``, and which policy of a namespace is the policy.

Pure functions: the reconciler reads the cluster and Redis, these decide.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

READY = "Ready"


class Reason(StrEnum):
    """``Ready`` condition reasons (CamelCase, as Kubernetes spells them)."""

    RECONCILED = "Reconciled"
    CONFLICT = "Conflict"
    INVALID_SPEC = "InvalidSpec"
    REDIS_UNAVAILABLE = "RedisUnavailable"
    CRONJOB_FAILED = "CronJobFailed"
    NO_OPERATOR = "NoOperator"  # written by `medbook-operator uninstall`


@dataclass(frozen=True)
class Verdict:
    """The outcome of one reconciliation of one policy."""

    ready: bool
    reason: Reason
    message: str


def now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _created(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))


def elect(policies: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The policy in force: the oldest one not being deleted (ties: by name).

    Deterministic from the cluster's state alone, so every reconciliation,
    before or after a restart, picks the same one.
    """
    alive = [p for p in policies if not (p.get("metadata") or {}).get("deletionTimestamp")]
    return min(alive, key=_created) if alive else None


def ready_condition(
    verdict: Verdict, generation: int | None, previous: Iterable[Mapping[str, Any]] | None
) -> dict[str, Any]:
    """The ``Ready`` condition; its transition time moves only when its status flips."""
    status = "True" if verdict.ready else "False"
    old = next((c for c in previous or () if c.get("type") == READY), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    return {
        "type": READY,
        "status": status,
        "reason": verdict.reason.value,
        "message": verdict.message,
        "observedGeneration": generation,
        "lastTransitionTime": since or now(),
    }


def changed(current: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    """Whether writing ``wanted`` (a merge patch of ``status``) would change ``current``."""
    current = current or {}
    for key, value in wanted.items():
        old = current.get(key)
        if value is None:
            if old is not None:
                return True
        elif isinstance(value, Mapping) and isinstance(old, Mapping):
            if changed(old, value):
                return True
        elif old != value:
            return True
    return False


def previous_verdict(status: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(status, reason) of the ``Ready`` condition already written, if any."""
    for condition in (status or {}).get("conditions") or ():
        if condition.get("type") == READY:
            return str(condition.get("status")), str(condition.get("reason"))
    return None
