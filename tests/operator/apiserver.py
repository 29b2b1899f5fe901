"""kmock's Kubernetes emulator with the API-server behaviour the operator relies on.

kmock keeps objects and serves list/watch/get/create/patch/delete over real
HTTP. This adds what a real API server does and kmock leaves out:
``uid``, ``creationTimestamp``, ``resourceVersion`` (bumped on real changes
only, and checked by JSON-patch ``test`` ops, as kopf uses them: 422 when
the test fails),
``generation`` (bumped on spec changes), ``generateName``, the status
subresource (``/status`` changes only ``status``; the main resource ignores
``status``), a no-op patch that changes nothing, and the QuotaPolicy CRD's
defaulting and validation (422 with the reasons, see ``crd_schema``).
Not emulated: the garbage collector (owned objects stay after their owner).
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
import uuid
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import dicts  # the emulator's own merge-patch, for the same semantics

from tests.operator import crd_schema

POLICIES = kmock.resource("medbook.io/v1alpha1/quotapolicies")
WITH_STATUS = {"quotapolicies", "cronjobs"}


def _with_data(request: kmock.Request, data: Any) -> kmock.Request:
    """The same request (kmock tracks requests by identity) with another body."""
    object.__setattr__(request, "data", data)  # the Request class is frozen
    return request


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    _versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _writes: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)

    def declare(self) -> None:
        """The resources the operator and kopf look up in discovery."""
        info = kmock.ResourceInfo
        self.resources["v1/namespaces"] = info(kind="Namespace", namespaced=False)
        self.resources["v1/events"] = info(kind="Event", namespaced=True)
        self.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = info(
            kind="CustomResourceDefinition", namespaced=False
        )
        self.resources["batch/v1/cronjobs"] = info(
            kind="CronJob", namespaced=True, subresources={"status"}
        )
        self.resources[POLICIES] = info(
            kind="QuotaPolicy",
            namespaced=True,
            singular="quotapolicy",
            shortnames={"qp"},
            subresources={"status"},
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        )

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
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

    def _next_version(self) -> str:
        return str(next(self._versions))

    def _created(self, request: kmock.Request) -> kmock.Request:
        data = copy.deepcopy(request.data)
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        meta.setdefault("namespace", request.namespace)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_version()
        if request.resource.plural in WITH_STATUS:
            data.pop("status", None)
        if request.resource == POLICIES:
            data = self._admit(data)
        return _with_data(request, data)

    def _patched(self, request: kmock.Request) -> kmock.Request | dict[str, Any]:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return request  # the emulator answers 404
        old = copy.deepcopy(self.objects[key].raw)
        try:
            if isinstance(request.data, list):
                new = jsonpatch.apply_patch(copy.deepcopy(old), request.data)
            else:
                new = dict(dicts.merge_patch_dict(copy.deepcopy(old), request.data))
        except jsonpatch.JsonPatchTestFailed as exc:
            # As the API server answers a failed JSON-patch `test` (kopf retries on 422).
            raise kmock.KubernetesError(422, "Invalid", f"the test failed: {exc}") from exc
        if request.resource.plural in WITH_STATUS:
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
