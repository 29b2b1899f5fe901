"""One test's Kubernetes: the emulated API server, the cluster played around it, and Helm.

``helm_cluster`` starts them together (the API server serving every built-in
resource); a :class:`Rig` is what a test holds: the server, its URL, the
:class:`~tests.charts.cluster.Cluster` and a :class:`~tests.charts.helm_actions.Helm`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kmock

from tests.charts.cluster import Cluster
from tests.charts.helm_actions import Helm
from tests.operator.apiserver import ApiServer


@dataclass
class Rig:
    """An emulated API server, the cluster played around it, and a Helm client for it."""

    server: ApiServer
    url: str
    cluster: Cluster
    helm: Helm

    @property
    def namespace(self) -> str:
        return self.cluster.namespace

    async def create_secret(self, name: str, data: Mapping[str, str], **meta: Any) -> None:
        """A Secret made by a person (``kubectl create secret generic``)."""
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": self.namespace, **meta},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
        await self.server.add(kmock.resource("v1/secrets"), body)

    def objects(self, resource: str) -> dict[str, dict[str, Any]]:
        """The live objects of a resource in the namespace, by name."""
        return {o["metadata"]["name"]: o for o in self.server.live_raw(resource, self.namespace)}

    def secret(self, name: str) -> dict[str, str]:
        data = self.cluster.inputs.secret_data(name)
        assert data is not None, f"no Secret {name}"
        return data

    async def run(self, action: str, *args: Any, **kwargs: Any) -> Any:
        """A Helm action (install, upgrade, uninstall, test, render), off the event loop."""
        return await asyncio.to_thread(getattr(self.helm, action), *args, **kwargs)


@contextlib.asynccontextmanager
async def helm_cluster(
    namespace: str, *, keep: Callable[[kmock.Request], bool] | None = None, **options: Any
) -> AsyncIterator[Rig]:
    """An emulated API server serving every built-in resource, the cluster, and Helm.

    ``keep`` chooses the requests to keep for the test (``rig.server.kept``).
    """
    async with ApiServer(record=False, keep=keep) as server, kmock.Server(server) as endpoint:
        server.declare_cluster()
        url = str(endpoint.url).rstrip("/")
        async with Cluster(server, namespace, **options) as cluster:
            helm = Helm(url, namespace)
            try:
                yield Rig(server, url, cluster, helm)
            finally:
                helm.close()
