"""What a pod is given, as the kubelet gives it: its environment, and what it must find first.

A pod starts only once the ServiceAccount, Secrets and ConfigMaps it names exist
(otherwise ``CreateContainerConfigError`` or ``FailedMount``); its containers'
environment is built from ``env`` (values, Secret and ConfigMap keys, the downward
API) and ``envFrom``, as the kubelet builds it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from tests.operator.apiserver import ApiServer


class PodInputs:
    """The objects of one namespace that pods read."""

    def __init__(self, server: ApiServer, namespace: str) -> None:
        self.server = server
        self.namespace = namespace

    def object(self, resource: str, name: str) -> Any | None:
        for obj in self.server.live_raw(resource, self.namespace):
            if obj["metadata"]["name"] == name:
                return obj
        return None

    def secret_data(self, name: str) -> dict[str, str] | None:
        secret = self.object("v1/secrets", name)
        if secret is None:
            return None
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        return {**data, **(secret.get("stringData") or {})}

    def configmap_data(self, name: str) -> dict[str, str] | None:
        configmap = self.object("v1/configmaps", name)
        return None if configmap is None else dict(configmap.get("data") or {})

    def missing_references(self, spec: Mapping[str, Any]) -> str | None:
        """Why the kubelet cannot start the pod yet (a missing object), or ``None``."""
        account = spec.get("serviceAccountName")
        if account and account != "default" and self.object("v1/serviceaccounts", account) is None:
            return f"serviceaccount {account!r} not found"
        for box in [*(spec.get("initContainers") or []), *spec["containers"]]:
            for source in box.get("envFrom") or []:
                for key, read in (("secretRef", self.secret_data),
                                  ("configMapRef", self.configmap_data)):  # fmt: skip
                    ref = source.get(key)
                    if ref and not ref.get("optional") and read(ref["name"]) is None:
                        return f"CreateContainerConfigError: {key} {ref['name']!r} not found"
            for item in box.get("env") or []:
                for key, read in (("secretKeyRef", self.secret_data),
                                  ("configMapKeyRef", self.configmap_data)):  # fmt: skip
                    ref = (item.get("valueFrom") or {}).get(key)
                    if ref and not ref.get("optional"):
                        data = read(ref["name"])
                        if data is None or ref["key"] not in data:
                            return (
                                f"CreateContainerConfigError: {ref['name']}/{ref['key']} not found"
                            )
        for volume in spec.get("volumes") or []:
            for key, read in (("secret", self.secret_data), ("configMap", self.configmap_data)):
                ref = volume.get(key)
                if ref and not ref.get("optional"):
                    name = ref.get("secretName") or ref.get("name")
                    if read(name) is None:
                        return f"FailedMount: {key} {name!r} not found"
        return None

    def environment(self, pod: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in spec.get("envFrom") or []:
            if "configMapRef" in source:
                env.update(self.configmap_data(source["configMapRef"]["name"]) or {})
            if "secretRef" in source:
                env.update(self.secret_data(source["secretRef"]["name"]) or {})
        for item in spec.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
                continue
            source = item.get("valueFrom") or {}
            if "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                env[item["name"]] = {"metadata.namespace": self.namespace,
                                     "metadata.name": pod["metadata"]["name"]}.get(path, "")  # fmt: skip
            for key, read in (("secretKeyRef", self.secret_data),
                              ("configMapKeyRef", self.configmap_data)):  # fmt: skip
                ref = source.get(key)
                if ref:
                    value = (read(ref["name"]) or {}).get(ref["key"])
                    if value is not None:
                        env[item["name"]] = value
        return env
