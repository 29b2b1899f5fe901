"""What clients learn before they make a call: the server's version, the API groups and their
resources, and an OpenAPI v3 index.

kmock serves discovery, with the core group named ``/v1`` (client-go wants
``v1``) and a group's versions in no set order (client-go prefers the first:
``autoscaling/v1`` would hide the HPAs created as ``v2``). The OpenAPI v3
documents name, for each resource, only that its PATCH takes
``fieldValidation``: client-go then leaves checking fields to the server and
sends objects as they are (Helm validates hooks that way); the emulator has no
schemas of built-in types (``kubernetes-validate`` checks every rendered object).
"""

from __future__ import annotations

import re
from typing import Any

import kmock

KUBE_VERSION = "1.28.7"


def api_version(resource: kmock.resource) -> str:
    return str(resource.version) if not resource.group else f"{resource.group}/{resource.version}"


_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes' order of API versions: GA, then beta, then alpha; higher numbers first."""
    found = _VERSION.match(version)
    if not found:
        return (3, 0, 0)
    stage = {None: 0, "beta": 1, "alpha": 2}[found.group(2)]
    return (stage, -int(found.group(1)), -int(found.group(3) or 0))


def _prefer_newest(group: dict[str, Any]) -> dict[str, Any]:
    """A group's versions in Kubernetes' order, the first preferred (v2 before v1)."""
    group["versions"].sort(key=lambda v: version_priority(v["version"]))
    group["preferredVersion"] = group["versions"][0]
    return group


class Discovery:
    """Discovery and OpenAPI, mixed into the emulator (before kmock's own classes)."""

    resources: Any  # kmock's, on the emulator this is mixed into
    fallback: Any
    _get_resources: Any

    def serve_openapi(self) -> None:
        self.fallback["get /openapi/v3"] << self._serve_openapi_index
        self.fallback["get", re.compile(r"/openapi/v3/.+")] << self._serve_openapi_document

    async def _serve_server_version(self, request: kmock.Request) -> dict[str, str]:
        major, minor, _ = KUBE_VERSION.split(".")
        return {"major": major, "minor": minor, "gitVersion": f"v{KUBE_VERSION}",
                "platform": "linux/amd64"}  # fmt: skip

    async def _serve_version(self, request: kmock.Request) -> Any:
        found = await super()._serve_version(request)
        found["groupVersion"] = found["groupVersion"].lstrip("/")  # the core group is "v1"
        return found

    async def _serve_apis(self, request: kmock.Request) -> Any:
        found = await super()._serve_apis(request)
        for group in found["groups"]:
            _prefer_newest(group)
        return found

    async def _serve_group(self, request: kmock.Request) -> Any:
        return _prefer_newest(await super()._serve_group(request))

    def _group_versions(self) -> dict[str, list[kmock.resource]]:
        found: dict[str, list[kmock.resource]] = {}
        for resource in self._get_resources():
            if resource.plural is None or resource.version is None:
                continue
            path = "api/v1" if not resource.group else f"apis/{api_version(resource)}"
            found.setdefault(path, []).append(resource)
        return found

    async def _serve_openapi_index(self, request: kmock.Request) -> dict[str, Any]:
        return {
            "paths": {path: {"serverRelativeURL": f"/openapi/v3/{path}"}
                      for path in self._group_versions()}
        }  # fmt: skip

    async def _serve_openapi_document(self, request: kmock.Request) -> dict[str, Any]:
        """Paths only: each resource's PATCH takes ``fieldValidation`` (server-side checks)."""
        group_version = str(request.url.path).removeprefix("/openapi/v3/")
        paths = {}
        for resource in self._group_versions().get(group_version, []):
            info = self.resources.get(resource, None)
            if info is None or info.kind is None:
                continue
            scope = "namespaces/{namespace}/" if info.namespaced else ""
            paths[f"/{group_version}/{scope}{resource.plural}/{{name}}"] = {
                "patch": {
                    "x-kubernetes-group-version-kind": {
                        "group": resource.group, "version": resource.version, "kind": info.kind,
                    },
                    "parameters": [
                        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}
                    ],
                }
            }  # fmt: skip
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": KUBE_VERSION},
                "paths": paths}  # fmt: skip
