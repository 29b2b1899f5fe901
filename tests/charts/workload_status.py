"""The status a workload's controller writes, in the fields kstatus reads (Helm's ``--wait``).

kstatus (sigs.k8s.io/cli-utils) calls a Deployment ready when its
``observedGeneration`` is the object's and its replicas are all updated,
ready and available, with ``Available`` true and ``Progressing`` at
``NewReplicaSetAvailable``; a StatefulSet when its replicas are ready and its
current revision is the update revision; a Job when it has the ``Complete``
condition (``Failed``: failed). Anything short of that is "in progress".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def workload_status(
    workload: Mapping[str, Any],
    current: str,
    new: int,
    old: int,
    ready: int,
    done: int,
    failed: list[str],
) -> dict[str, Any]:
    """``new``/``old``: pods of the current and of a previous template; ``ready``/``done``:
    how many of the new ones are ready or have succeeded; ``failed``: why new ones failed."""
    kind, meta, spec = workload["kind"], workload["metadata"], workload["spec"]
    wanted = int(spec.get("replicas", 1))
    generation = meta.get("generation", 1)
    if kind == "Job":
        status: dict[str, Any] = {"startTime": meta["creationTimestamp"]}
        if done:
            status.update(succeeded=1, completionTime=meta["creationTimestamp"], conditions=[
                {"type": "SuccessCriteriaMet", "status": "True"},
                {"type": "Complete", "status": "True"},
            ])  # fmt: skip
        elif failed:
            status.update(failed=1, conditions=[
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": failed[0]},
            ])  # fmt: skip
        else:
            status["active"] = new
        return status
    complete = ready == wanted and not old
    if kind == "StatefulSet":
        revision = f"{meta['name']}-{current}"
        return {
            "observedGeneration": generation,
            "replicas": new + old,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": new if complete else old,
            "updatedReplicas": new,
            "currentRevision": revision if complete else f"{meta['name']}-previous",
            "updateRevision": revision,
        }
    return {
        "observedGeneration": generation,
        "replicas": new + old,
        "updatedReplicas": new,
        "readyReplicas": ready + old,
        "availableReplicas": ready + old,
        "unavailableReplicas": max(0, wanted - ready - old),
        "conditions": [
            {"type": "Available", "status": "True" if complete or old else "False",
             "reason": "MinimumReplicasAvailable"},
            {"type": "Progressing", "status": "True",
             "reason": "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated"},
        ],
    }  # fmt: skip
