"""A pretend cluster for Helm's real actions: the emulated API server, plus the controllers
and the kubelet played by rules.

Real: the API server emulation (``tests/operator/apiserver.py``) over HTTP, and
Helm's own install, upgrade, test and uninstall (``tests/charts/helm_actions.py``),
so the order Helm does things in (CRDs, hooks by weight, ``--wait`` before
``post-install`` hooks, pre-delete hooks, resource policies) is Helm's, not a
model of it. Played here, every ``TICK`` seconds:

- the kubelet: each Deployment, StatefulSet and Job gets its pods (a Deployment
  ``spec.replicas`` of them, 1 when an HPA owns the count); a pod starts once the
  ServiceAccount, Secrets and ConfigMaps it names exist, runs its init containers
  one after the other, then its containers; what a container does is a
  :class:`~tests.charts.programs.Program` chosen by its command;
- the controllers: workload and pod status as kstatus reads it (what Helm's
  ``--wait`` waits for: ``observedGeneration``, ready and updated replicas, a
  Job's ``Complete`` condition, a pod's phase); a changed pod template gets new
  pods (``Recreate``: the old ones go first; otherwise once the new are ready);
- the garbage collector: an object whose owners are all gone goes too, and when a
  Deployment or StatefulSet goes, its pods are stopped before the API server
  answers the delete (a deleted operator does nothing more, as one whose Role
  is gone a moment later could not).

"Answers" (a database, a broker) means: a Service of that name in the
namespace selects a ready pod, or the test declared the host external. The
:attr:`Cluster.timeline` records what became ready and what was migrated, in
order, for tests that check an order.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kmock

from tests.charts.pod_environment import PodInputs
from tests.charts.programs import Box, Phase, Program, ProgramFactory, default_program, waiting
from tests.charts.workload_status import workload_status
from tests.operator.apiserver import ApiServer
from tests.operator.discovery import api_version

TICK = 0.05
WORKLOADS = ("apps/v1/deployments", "apps/v1/statefulsets", "batch/v1/jobs")
PODS = kmock.resource("v1/pods")
CLAIMS = kmock.resource("v1/persistentvolumeclaims")
COLLECTED = ("v1/pods", "batch/v1/jobs", "batch/v1/cronjobs", "apps/v1/replicasets")


def _hash(template: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _owned(obj: Mapping[str, Any], uid: str | None) -> bool:
    return any(o.get("uid") == uid for o in obj["metadata"].get("ownerReferences") or [])


@dataclass
class PodState:
    """What the kubelet knows of one pod it runs."""

    name: str
    owner: str  # "Deployment/name"
    template_hash: str
    programs: dict[str, Program] = field(default_factory=dict)
    phase: Phase = field(default_factory=lambda: waiting("not started"))


class Cluster:
    """Controllers and a kubelet for one namespace of an emulated API server."""

    def __init__(
        self,
        server: ApiServer,
        namespace: str,
        *,
        external: Iterable[str] = (),
        programs: Mapping[tuple[str, ...], ProgramFactory] | None = None,
    ) -> None:
        self.server = server
        self.namespace = namespace
        self.external = set(external)
        self.programs = dict(programs or {})
        self.schema: dict[str, set[str]] = {}  # database host -> images migrated to
        self.volumes: dict[str, dict[str, str]] = {}  # claim (or pod) -> what the data holds
        self.timeline: list[tuple[str, str, str]] = []  # (what, whose, detail)
        self.pods: dict[str, PodState] = {}
        self.inputs = PodInputs(server, namespace)
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        server.on_delete = self._on_delete

    # -- the world the programs see --------------------------------------------------------

    def reachable(self, namespace: str, host: str) -> bool:
        if host in self.external:
            return True
        name = host.split(".")[0]
        if "." in host and not host.removeprefix(f"{name}.").startswith(namespace):
            return False
        for service in self.server.live_raw("v1/services", namespace):
            if service["metadata"]["name"] != name:
                continue
            selector = (service.get("spec") or {}).get("selector") or {}
            return any(
                _matches(selector, (pod["metadata"].get("labels") or {})) and self._pod_ready(pod)
                for pod in self.server.live_raw(PODS, namespace)
            )
        return False

    @staticmethod
    def _pod_ready(pod: Mapping[str, Any]) -> bool:
        conditions = (pod.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def volume_data(self, box: Box) -> dict[str, str]:
        """What a server keeps in its data volume (a claim outlives the pod; emptyDir not)."""
        claims = box.claims
        key = f"{box.namespace}/{claims[0]}" if claims else f"{box.namespace}/pod:{box.pod}"
        return self.volumes.setdefault(key, {})

    def pod_volumes(self, name: str) -> list[dict[str, Any]]:
        for pod in self.server.live_raw(PODS, self.namespace):
            if pod["metadata"]["name"] == name:
                return list(pod["spec"].get("volumes") or [])
        return []

    def server_password(self, namespace: str, host: str) -> str | None:
        """The password the server behind ``host`` (a Service of the namespace) requires."""
        name = host.split(".")[0]
        for service in self.server.live_raw("v1/services", namespace):
            if service["metadata"]["name"] != name:
                continue
            selector = (service.get("spec") or {}).get("selector") or {}
            for pod in self.server.live_raw(PODS, namespace):
                state = self.pods.get(pod["metadata"]["name"])
                if state is None or not _matches(selector, pod["metadata"].get("labels") or {}):
                    continue
                for program in state.programs.values():
                    password = getattr(program, "password", None)
                    if password is not None and not program.box.init:
                        found: str | None = password()
                        return found
        return None

    def migrate(self, namespace: str, host: str, image: str) -> None:
        key = f"{namespace}/{host}"
        if image not in self.schema.setdefault(key, set()):
            self.schema[key].add(image)
            self.timeline.append(("migrated", host, image))

    def migrated(self, namespace: str, host: str, image: str) -> bool:
        return image in self.schema.get(f"{namespace}/{host}", set())

    def waiting(self) -> list[str]:
        """What every pod that is not ready waits for (for a test's failure message)."""
        return [
            f"{state.owner} pod {state.name}: {state.phase.state}: {state.phase.reason}"
            for state in self.pods.values()
            if state.phase.state not in ("ready", "succeeded")
        ]

    # -- running -----------------------------------------------------------------------------

    async def __aenter__(self) -> Cluster:
        self._task = asyncio.create_task(self._run(), name="cluster")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for name in list(self.pods):
            await self._stop_pod(name)
        if self._failure is not None:
            raise self._failure

    async def _run(self) -> None:
        try:
            while True:
                await self.tick()
                await asyncio.sleep(TICK)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # reported when the block ends
            self._failure = exc
            raise

    async def tick(self) -> None:
        await self._collect_garbage()
        for resource in WORKLOADS:
            for workload in self.server.live(resource, self.namespace):
                await self._reconcile(workload)
        for pod in self.server.live(PODS, self.namespace):
            meta = pod.raw["metadata"]
            if not meta.get("ownerReferences"):  # a bare pod: helm test
                await self._run_pod(pod, owner=f"Pod/{meta['name']}", job=True)

    # -- the garbage collector ---------------------------------------------------------------

    async def _collect_garbage(self) -> None:
        uids = {
            obj.raw["metadata"].get("uid")
            for (_, _, _), obj in list(self.server.objects.items())
            if not obj.deleted
        }
        orphans = []
        for resource in COLLECTED:
            for obj in self.server.live(resource, self.namespace):
                owners = obj.raw["metadata"].get("ownerReferences") or []
                if owners and not any(o.get("uid") in uids for o in owners):
                    orphans.append(obj)
        for obj in orphans:
            if obj.raw.get("kind") == "Pod":
                await self._stop_pod(obj.raw["metadata"]["name"])
        await self.server.remove(orphans)

    async def _on_delete(self, resource: kmock.resource, obj: Mapping[str, Any]) -> None:
        """Called by the API server on a delete: a workload's pods stop before it answers."""
        if f"{api_version(resource)}/{resource.plural}" not in WORKLOADS:
            return
        uid = obj["metadata"].get("uid")
        pods = [pod for pod in self.server.live(PODS, self.namespace) if _owned(pod.raw, uid)]
        for pod in pods:
            await self._stop_pod(pod.raw["metadata"]["name"])
        await self.server.remove(pods)
        retention = (obj.get("spec") or {}).get("persistentVolumeClaimRetentionPolicy") or {}
        if obj.get("kind") == "StatefulSet" and retention.get("whenDeleted") == "Delete":
            claims = set(self._claim_names(obj))
            await self.server.remove(
                c for c in self.server.live(CLAIMS, self.namespace)
                if c.raw["metadata"]["name"] in claims
            )  # fmt: skip
            for claim in claims:
                self.volumes.pop(f"{self.namespace}/{claim}", None)

    @staticmethod
    def _claim_names(statefulset: Mapping[str, Any]) -> list[str]:
        name = statefulset["metadata"]["name"]
        replicas = int(statefulset["spec"].get("replicas", 1))
        return [
            f"{template['metadata']['name']}-{name}-{index}"
            for template in statefulset["spec"].get("volumeClaimTemplates") or []
            for index in range(replicas)
        ]

    # -- workloads ---------------------------------------------------------------------------

    async def _remove_pods(self, pods: list[Any]) -> None:
        for pod in pods:
            await self._stop_pod(pod.raw["metadata"]["name"])
        await self.server.remove(pods)

    async def _reconcile(self, view: Any) -> None:
        workload = view.raw
        kind, meta, spec = workload["kind"], workload["metadata"], workload["spec"]
        current = _hash(spec["template"])
        wanted = 1 if kind == "Job" else int(spec.get("replicas", 1))
        owned = [pod for pod in self.server.live(PODS, self.namespace)
                 if _owned(pod.raw, meta["uid"])]  # fmt: skip
        new = [p for p in owned if p.raw["metadata"]["labels"].get("pod-template-hash") == current]
        old = [p for p in owned if p not in new]
        recreate = kind == "StatefulSet" or (spec.get("strategy") or {}).get("type") == "Recreate"
        if old and (recreate or wanted == 0):
            await self._remove_pods(old)
            old = []
        if len(new) > wanted:
            await self._remove_pods(new[wanted:])
            new = new[:wanted]
        if kind == "StatefulSet":
            await self._ensure_claims(workload)
        if kind != "Job" or not new:
            for index in range(len(new), wanted):
                new.append(await self._create_pod(workload, current, index))
        ready = done = 0
        failures = []
        for pod in new:
            phase = await self._run_pod(pod, owner=f"{kind}/{meta['name']}", job=kind == "Job")
            ready += phase.state == "ready"
            done += phase.state == "succeeded"
            if phase.state == "failed":
                failures.append(phase.reason)
        if failures and kind != "Job":
            raise AssertionError(f"{kind}/{meta['name']}: {failures[0]}")
        if old and ready == wanted:  # a rolling update: the new pods are ready
            await self._remove_pods(old)
            old = []
        status = workload_status(workload, current, len(new), len(old), ready, done, failures)
        await self.server.write_status(view, status)

    # -- pods --------------------------------------------------------------------------------

    async def _ensure_claims(self, statefulset: Mapping[str, Any]) -> None:
        """The StatefulSet controller's claims: made once, never deleted by it."""
        existing = {c["metadata"]["name"] for c in self.server.live_raw(CLAIMS, self.namespace)}
        templates = {
            t["metadata"]["name"]: t for t in statefulset["spec"].get("volumeClaimTemplates") or []
        }
        for name in self._claim_names(statefulset):
            if name in existing:
                continue
            template = templates[name.split("-", 1)[0]]
            claim = {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": name,
                    "namespace": self.namespace,
                    "labels": dict(template["metadata"].get("labels") or {}),
                },
                "spec": template["spec"],
            }
            created = await self.server.add(CLAIMS, claim)
            await self.server.write_status(created, {"phase": "Bound"})

    async def _create_pod(self, workload: Any, template_hash: str, index: int) -> Any:
        meta = workload["metadata"]
        template = copy.deepcopy(workload["spec"]["template"])
        suffix = f"{index}" if workload["kind"] == "StatefulSet" else f"{template_hash[:5]}-{index}"
        labels = {**(template.get("metadata") or {}).get("labels", {}),
                  "pod-template-hash": template_hash}  # fmt: skip
        if workload["kind"] == "Job":
            labels["job-name"] = meta["name"]
        spec = template["spec"]
        for claim in workload["spec"].get("volumeClaimTemplates") or []:  # as the controller does
            spec.setdefault("volumes", []).append({
                "name": claim["metadata"]["name"],
                "persistentVolumeClaim": {
                    "claimName": f"{claim['metadata']['name']}-{meta['name']}-{index}"
                },
            })  # fmt: skip
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{meta['name']}-{suffix}",
                "namespace": self.namespace,
                "labels": labels,
                "annotations": (template.get("metadata") or {}).get("annotations") or {},
                "ownerReferences": [{
                    "apiVersion": workload["apiVersion"], "kind": workload["kind"],
                    "name": meta["name"], "uid": meta["uid"], "controller": True,
                }],
            },
            "spec": spec,
        }  # fmt: skip
        return await self.server.add(PODS, pod)

    async def _run_pod(self, view: Any, *, owner: str, job: bool) -> Phase:
        pod = view.raw
        meta = pod["metadata"]
        state = self.pods.get(meta["name"])
        if state is None:
            state = self.pods[meta["name"]] = PodState(
                meta["name"], owner, meta.get("labels", {}).get("pod-template-hash", "")
            )
        if state.phase.state in ("succeeded", "failed") and job:
            return state.phase
        state.phase = await self._advance(pod, state)
        await self.server.write_status(view, self._pod_status(state))
        if state.phase.state in ("ready", "succeeded"):
            image = ",".join(c["image"] for c in pod["spec"]["containers"])
            event = ("ready" if state.phase.state == "ready" else "succeeded", owner, image)
            if event not in self.timeline:
                self.timeline.append(event)
        return state.phase

    async def _advance(self, pod: Any, state: PodState) -> Phase:
        spec = pod["spec"]
        missing = self.inputs.missing_references(spec)
        if missing:
            return waiting(missing)
        for init in spec.get("initContainers") or []:
            phase = await self._poll(pod, state, init, init=True)
            if phase.state != "succeeded":
                return (
                    phase
                    if phase.state == "failed"
                    else waiting(f"init container {init['name']}: {phase.reason}")
                )
        phases = [await self._poll(pod, state, c, init=False) for c in spec["containers"]]
        for phase in phases:
            if phase.state in ("failed", "waiting"):
                return phase
        return Phase("succeeded") if all(p.state == "succeeded" for p in phases) else Phase("ready")

    async def _poll(
        self, pod: Any, state: PodState, spec: Mapping[str, Any], *, init: bool
    ) -> Phase:
        program = state.programs.get(spec["name"])
        if program is None:
            box = Box(self, self.namespace, pod["metadata"]["name"], state.owner,
                      dict(spec), self.inputs.environment(pod, spec), init)  # fmt: skip
            factory = self._factory(box)
            program = state.programs[spec["name"]] = factory(box)
        return await program.poll()

    def _factory(self, box: Box) -> ProgramFactory:
        """The test's program for this command, if any: its words, then options or nothing."""
        for words, factory in self.programs.items():
            rest = box.command[len(words) :]
            if tuple(box.command[: len(words)]) == words and (not rest or rest[0].startswith("-")):
                return factory
        return default_program

    async def _stop_pod(self, name: str) -> None:
        state = self.pods.pop(name, None)
        if state is None:
            return
        for program in state.programs.values():
            await program.stop()
        self.timeline.append(("stopped", state.owner, name))

    @staticmethod
    def _pod_status(state: PodState) -> dict[str, Any]:
        ready = state.phase.state == "ready"
        phase = {"ready": "Running", "succeeded": "Succeeded", "failed": "Failed"}.get(
            state.phase.state, "Pending"
        )
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        }
        if state.phase.reason:
            status["message"] = state.phase.reason
        return status
