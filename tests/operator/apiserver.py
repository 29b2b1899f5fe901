"""kmock's Kubernetes emulator with the API-server behaviour the operator and Helm rely on.

kmock keeps objects and serves list/watch/get/create/patch/delete over real
HTTP. This adds what a real API server does and kmock leaves out:

- object metadata: ``uid``, ``creationTimestamp``, ``resourceVersion`` (bumped
  on real changes only, and checked by JSON-patch ``test`` ops, as kopf uses
  them: 422 when the test fails), ``generation`` (bumped on spec changes),
  ``generateName``; a no-op patch changes nothing; ``PUT`` replaces an object;
- the status subresource of every resource that has one (``/status`` changes
  only ``status``; the main resource ignores ``status``);
- CustomResourceDefinitions: a posted CRD is checked as kube-apiserver checks
  it (``crd_checks``: 422 with the server's reasons), then served (its resource
  appears in discovery) and marked ``Established``;
- the QuotaPolicy CRD's defaulting and validation (422 with the reasons,
  ``crd_schema``);
- what client-go needs to list and watch (Helm's wait, kstatus): typed lists
  (``kind: ...List``, a ``resourceVersion``), watch streams as JSON, the
  initial-events bookmark of a watch-list, label and field selectors; the server
  version, core discovery as ``v1``, and an OpenAPI v3 index that tells clients
  the server validates fields itself (so Helm sends objects without a local
  schema check).

Not emulated: controllers (the garbage collector, Deployments, Jobs, kubelet:
``tests/charts/cluster.py`` plays those where a test needs them), admission
webhooks, RBAC (``test_rbac`` checks the calls against the Role instead),
strategic-merge patches (Helm is run with ``--force-replace``, which replaces
objects) and the field ownership of server-side apply (an apply creates the
object, or merges what it names: enough for the hooks Helm applies).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import importlib.resources
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import dicts  # the emulator's own merge-patch, for the same semantics

from tests.operator import crd_checks, crd_schema
from tests.operator.discovery import Discovery, api_version
from tests.operator.selectors import matching

POLICIES = kmock.resource("medbook.io/v1alpha1/quotapolicies")
CRDS = kmock.resource("apiextensions.k8s.io/v1/customresourcedefinitions")
WITH_STATUS = {"quotapolicies", "cronjobs"}  # when the resource is declared without subresources
_RECENT = 64  # requests kept when not recording (those still being matched, at most)


def _with_data(request: kmock.Request, data: Any) -> kmock.Request:
    """The same request (kmock tracks requests by identity) with another body."""
    object.__setattr__(request, "data", data)  # the Request class is frozen
    return request


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _applies(request: kmock.Request) -> bool:
    content_type = str(request.headers.get("Content-Type", ""))
    return request.method == "PATCH" and content_type.startswith("application/apply-patch")


DeleteHook = Callable[[kmock.resource, Mapping[str, Any]], Awaitable[None]]


@attrs.define(kw_only=True)
class ApiServer(Discovery, kmock.KubernetesEmulator):
    _version: int = attrs.field(default=0, init=False)
    _writes: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    # Told of every object deleted, before the delete is answered (a pretend cluster's hook).
    on_delete: DeleteHook | None = attrs.field(default=None, init=False)
    # Keep every request (tests read them back); off, only the last few: kmock matches each
    # request against the ones before it, which gets slow over thousands of Helm's.
    record: bool = attrs.field(default=True)
    # Not recording, the requests this says yes to are kept in `kept` all the same.
    keep: Callable[[kmock.Request], bool] | None = attrs.field(default=None)
    kept: list[kmock.Request] = attrs.field(factory=list, init=False)
    _index: dict[tuple[Any, ...], list[tuple[str | None, Any]]] = attrs.field(
        factory=dict, init=False
    )
    _index_version: tuple[int, int] = attrs.field(default=(-1, -1), init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.serve_openapi()

    # -- what is served --------------------------------------------------------------------

    def declare(self) -> None:
        """The resources the operator and kopf look up in discovery, and the chart's CRD."""
        info = kmock.ResourceInfo
        self.resources["v1/namespaces"] = info(kind="Namespace", namespaced=False)
        self.resources["v1/events"] = info(kind="Event", namespaced=True)
        self.resources[CRDS] = info(
            kind="CustomResourceDefinition", namespaced=False, subresources={"status"}
        )
        self.resources["batch/v1/cronjobs"] = info(
            kind="CronJob", namespaced=True, subresources={"status"}
        )
        self.serve_crd(crd_schema.crd())

    def declare_cluster(self) -> None:
        """Every built-in resource of a cluster (what Helm may create), without the CRD."""
        bundled = importlib.resources.files("kmock._internal") / "resources.json.gz"
        self.resources.load_path(Path(str(bundled)))  # kmock's list, from a K3s cluster
        info = kmock.ResourceInfo
        self.resources[CRDS] = info(
            kind="CustomResourceDefinition", namespaced=False, subresources={"status"}
        )

    def serve_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve the custom resources a CRD defines (discovery, list, watch, ...)."""
        spec, names = crd["spec"], crd["spec"]["names"]
        for version in spec["versions"]:
            if not version.get("served"):
                continue
            self.resources[f"{spec['group']}/{version['name']}/{names['plural']}"] = (
                kmock.ResourceInfo(
                    kind=names["kind"],
                    namespaced=spec["scope"] == "Namespaced",
                    singular=names.get("singular"),
                    shortnames=set(names.get("shortNames") or ()),
                    categories=set(names.get("categories") or ()),
                    subresources=set(version.get("subresources") or ()),
                    verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                )
            )

    def _has_status(self, resource: kmock.resource) -> bool:
        if resource in self.resources:
            return "status" in self.resources[resource].subresources
        return resource.plural in WITH_STATUS

    # -- list and watch ----------------------------------------------------------------------

    async def _serve_list(self, request: kmock.Request) -> Any:
        found = await super()._serve_list(request)
        assert request.resource is not None
        info = self.resources.get(request.resource, None)
        kind = info.kind if info is not None and info.kind else "Object"
        selected = matching(request)
        return {
            "apiVersion": api_version(request.resource),
            "kind": f"{kind}List",
            "metadata": {"resourceVersion": str(self._version)},
            "items": [item for item in found["items"] if selected(item)],
        }

    async def _watch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """A watch stream as client-go reads it: JSON lines, then the initial-events bookmark."""
        assert request.resource is not None and request._raw_request is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        selected = matching(request)
        bus = self._buses[request.resource]
        async with self._lock:  # kmock writes under this lock: nothing slips in between
            initial = [
                {"type": "ADDED", "object": obj.raw}
                for (resource, namespace, _), obj in self.objects.items()
                if resource == request.resource
                and not obj.deleted
                and (request.namespace is None or namespace == request.namespace)
                and selected(obj.raw)
            ]
            marker = await bus.mark()
        if request.params.get("sendInitialEvents") == "true":
            kind = self.resources[request.resource].kind
            initial.append({
                "type": "BOOKMARK",
                "object": {
                    "kind": kind, "apiVersion": api_version(request.resource),
                    "metadata": {"resourceVersion": str(self._version),
                                 "annotations": {"k8s.io/initial-events-end": "true"}},
                },
            })  # fmt: skip
        try:
            for event in initial:
                await response.write(json.dumps(event).encode() + b"\n")
            async for event in bus.stream(since=marker):
                obj = event.get("object") or {}
                namespace = (obj.get("metadata") or {}).get("namespace")
                if request.namespace is not None and namespace != request.namespace:
                    continue
                if selected(obj):
                    await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the server stops
        finally:
            await bus.unmark(marker)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    # -- writes ------------------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if not self.record:
            del self._requests[:-_RECENT]
            if self.keep is not None and self.keep(request):
                self.kept.append(request)
        if request.resource is not None and request.action == kmock.action.WATCH:
            return await self._watch(request)
        if request.resource is not None and request.action == kmock.action.DELETE:
            return await self._deleted(request)
        if request.resource is not None and request.method == "PUT" and request.name:
            object.__setattr__(request, "action", kmock.action.UPDATE)  # a replace is an update
        if request.resource is not None and request.name and _applies(request):
            request = self._applied(request)
        if request.resource is None or request.action not in (
            kmock.action.CREATE,
            kmock.action.UPDATE,
        ):
            return await super()._handle(request)
        async with self._writes:
            if request.action == kmock.action.CREATE:
                return await super()._handle(self._created(request))
            prepared = self._patched(request)
            if isinstance(prepared, dict):  # nothing changes: answer without an event
                return aiohttp.web.json_response(prepared)
            return await super()._handle(prepared)

    async def _deleted(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        assert request.resource is not None
        key = (request.resource, request.namespace, request.name)
        before = (
            self.objects[key].raw if key in self.objects and not self.objects[key].deleted else None
        )
        response = await super()._handle(request)
        gone = key in self.objects and self.objects[key].deleted
        if before is not None and gone and self.on_delete is not None:
            await self.on_delete(request.resource, before)
        return response

    def _applied(self, request: kmock.Request) -> kmock.Request:
        """A server-side apply: a create when the object is new, else its fields merged.

        The field managers' ownership is not kept: an apply replaces what it names.
        """
        applied = request.data if isinstance(request.data, dict) else yaml.safe_load(request.text)
        key = (request.resource, request.namespace, request.name)
        exists = key in self.objects and not self.objects[key].deleted
        action = kmock.action.UPDATE if exists else kmock.action.CREATE
        object.__setattr__(request, "action", action)
        return _with_data(request, applied)

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _created(self, request: kmock.Request) -> kmock.Request:
        assert request.resource is not None
        data = copy.deepcopy(request.data)
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if request.namespace or meta.get("namespace"):
            meta.setdefault("namespace", request.namespace)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_version()
        if self._has_status(request.resource):
            data.pop("status", None)
        if request.resource == CRDS:
            data = self._install_crd(data)
        if request.resource == POLICIES:
            data = self._admit(data)
        return _with_data(request, data)

    def _install_crd(self, crd: dict[str, Any]) -> dict[str, Any]:
        problems = crd_checks.check(crd)
        if problems:
            error = crd_checks.Refused(crd["metadata"]["name"], problems)
            raise kmock.KubernetesError(422, "Invalid", str(error))
        self.serve_crd(crd)
        crd["status"] = {
            "conditions": [
                {"type": kind, "status": "True", "reason": reason, "lastTransitionTime": _now()}
                for kind, reason in (("NamesAccepted", "NoConflicts"),
                                     ("Established", "InitialNamesAccepted"))
            ],
            "acceptedNames": crd["spec"]["names"],
            "storedVersions": [v["name"] for v in crd["spec"]["versions"] if v.get("storage")],
        }  # fmt: skip
        return crd

    def _patched(self, request: kmock.Request) -> kmock.Request | dict[str, Any]:
        assert request.resource is not None
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return request  # the emulator answers 404
        old = copy.deepcopy(self.objects[key].raw)
        try:
            if request.method == "PUT":
                new = self._replaced(old, copy.deepcopy(request.data))
            elif isinstance(request.data, list):
                new = jsonpatch.apply_patch(copy.deepcopy(old), request.data)
            else:
                new = dict(dicts.merge_patch_dict(copy.deepcopy(old), request.data))
        except jsonpatch.JsonPatchTestFailed as exc:
            # As the API server answers a failed JSON-patch `test` (kopf retries on 422).
            raise kmock.KubernetesError(422, "Invalid", f"the test failed: {exc}") from exc
        if self._has_status(request.resource):
            if request.subresource == "status":
                new = {**old, "status": new.get("status")}
            else:
                new["status"] = old.get("status")
            new = {k: v for k, v in new.items() if v is not None}
        if request.resource == POLICIES and request.subresource is None:
            new = self._admit(new)
        if new == old:
            return old
        meta = new.setdefault("metadata", {})
        if new.get("spec") != old.get("spec"):
            meta["generation"] = int(meta.get("generation") or 0) + 1
        meta["resourceVersion"] = self._next_version()
        return _with_data(request, [{"op": "replace", "path": "", "value": new}])

    @staticmethod
    def _replaced(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """A PUT: the new object, with the metadata only the server sets kept."""
        meta = new.setdefault("metadata", {})
        for key in ("uid", "creationTimestamp", "generation", "namespace", "deletionTimestamp"):
            if key in old.get("metadata", {}):
                meta[key] = old["metadata"][key]
        return new

    @staticmethod
    def _admit(obj: dict[str, Any]) -> dict[str, Any]:
        defaulted, problems = crd_schema.admit(obj)
        if problems:
            name = (obj.get("metadata") or {}).get("name")
            raise kmock.KubernetesError(
                422,
                "Invalid",
                f'QuotaPolicy.medbook.io "{name}" is invalid: ' + "; ".join(problems),
            )
        return defaulted

    # -- for the controllers a test plays ------------------------------------------------------

    def live(self, resource: str | kmock.resource, namespace: str | None = None) -> list[Any]:
        """The objects of ``resource`` that exist (not deleted), optionally in ``namespace``."""
        wanted = kmock.resource(resource) if isinstance(resource, str) else resource
        if self._index_version != (self._version, len(self.objects)):
            index: dict[tuple[Any, ...], list[tuple[str | None, Any]]] = {}
            for (res, ns, _), obj in list(self.objects.items()):
                key = (res.group, res.version, res.plural)
                index.setdefault(key, []).append((ns, obj))
            self._index, self._index_version = index, (self._version, len(self.objects))
        return [
            obj
            for ns, obj in self._index.get((wanted.group, wanted.version, wanted.plural), [])
            if not obj.deleted and (namespace is None or ns == namespace)
        ]

    def live_raw(
        self, resource: str | kmock.resource, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """The same objects as plain JSON dicts."""
        return [obj.raw for obj in self.live(resource, namespace)]

    async def add(self, resource: kmock.resource, obj: dict[str, Any]) -> Any:
        """Create an object as a controller would (a workload's pod), with its watch event."""
        async with self._writes, self._lock:
            meta = obj["metadata"]
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1,
                        resourceVersion=self._next_version())  # fmt: skip
            key = (resource, meta.get("namespace"), meta["name"])
            if key in self.objects:
                self.objects[key].create(obj)
            else:
                self.objects[key] = obj
            await self._buses[resource].put({"type": "ADDED", "object": self.objects[key].raw})
            return self.objects[key]

    async def write_status(self, obj: Any, status: Mapping[str, Any]) -> None:
        """Set an object's status as its controller would, with the watch event it causes."""
        async with self._writes, self._lock:
            if obj.deleted or obj.raw.get("status") == status:
                return
            new = copy.deepcopy(obj.raw)
            new["status"] = copy.deepcopy(dict(status))
            new["metadata"]["resourceVersion"] = self._next_version()
            obj.patch([{"op": "replace", "path": "", "value": new}])
            resource = next(r for (r, _, _), o in self.objects.items() if o is obj)
            await self._buses[resource].put({"type": "MODIFIED", "object": obj.raw})

    async def remove(self, objs: Iterable[Any]) -> None:
        """Objects a controller deletes (a Job's pods, a Deployment's pods), with their events."""
        async with self._writes, self._lock:
            for obj in objs:
                if obj.deleted:
                    continue
                resource = next(r for (r, _, _), o in self.objects.items() if o is obj)
                raw = obj.raw
                obj.delete()
                await self._buses[resource].put({"type": "DELETED", "object": raw})
