"""Helm's own install, upgrade, test and uninstall actions (helm-python-sdk) against a URL.

These are Helm 4's real actions, as ``helm install`` runs them: CRDs from
``crds/`` first, hooks with their weights and delete policies, ``--wait``,
``helm.sh/resource-policy: keep``, the ownership check before a resource is
adopted, ``lookup`` against the live objects. The wrapper only adds what the
emulated API server needs (``tests/operator/apiserver.py``): objects are
created and replaced whole (no server-side apply, ``--force-replace`` on
upgrades, as the emulator has no strategic-merge patch) and no client-side
OpenAPI check (the emulator has no schemas; ``kubernetes-validate`` checks
every rendered object in ``test_render``).

The calls block: run them with ``asyncio.to_thread`` while the emulator serves
in the test's event loop.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
from helm_python import _native  # the options the high-level wrapper does not expose

from tests.charts.rendering import CHARTS_DIR

# Helm's own words for what it waited for: "resource Deployment/ns/name not ready ..."
HelmError = helm.HelmError


@cache
def chart(name: str | Path) -> helm.Chart:
    """A chart of the repository by name, or any chart directory."""
    return helm.Chart.load(str(CHARTS_DIR / name if isinstance(name, str) else name))


class Helm:
    """One Helm client (release storage in memory) for one namespace of one API server."""

    def __init__(self, server: str, namespace: str) -> None:
        self.namespace = namespace
        self.config = helm.Config(
            kube_apiserver=server.rstrip("/"), namespace=namespace, storage_driver="memory"
        )

    def _call(
        self, action: str, chart_name: str | Path, release: str, values: Any, options: dict
    ) -> Any:
        payload = _native.call_string(
            action,
            self.config._raw(),
            self.config._context_arg(None),
            chart(chart_name)._raw(),
            None,
            release,
            json.dumps(values or {}),
            json.dumps(options),
        )
        return json.loads(payload)

    def install(
        self,
        chart_name: str | Path,
        release: str,
        values: dict[str, Any] | None = None,
        *,
        wait: bool = True,
        timeout: int = 20,
    ) -> dict[str, Any]:
        """``helm install [--wait]``; raises :class:`HelmError` with Helm's message."""
        return self._call(
            "helm_install",
            chart_name,
            release,
            values,
            {
                "namespace": self.namespace,
                "timeout_seconds": timeout,
                "wait": "watcher" if wait else "hookOnly",
                "server_side_apply": False,
                "disable_openapi_validation": True,
            },
        )

    def upgrade(
        self,
        chart_name: str | Path,
        release: str,
        values: dict[str, Any] | None = None,
        *,
        wait: bool = True,
        timeout: int = 20,
    ) -> dict[str, Any]:
        """``helm upgrade [--wait]`` (with ``--force-replace``, see the module's docstring)."""
        return self._call(
            "helm_upgrade",
            chart_name,
            release,
            values,
            {
                "timeout_seconds": timeout,
                "wait": "watcher" if wait else "hookOnly",
                "server_side_apply": "false",
                "force_replace": True,
                "disable_openapi_validation": True,
            },
        )

    def uninstall(self, release: str, *, wait: bool = True, timeout: int = 20) -> dict[str, Any]:
        """``helm uninstall [--wait]``: pre-delete hooks, then the release's objects."""
        return self.config.uninstall(
            release, wait="watcher" if wait else "hookOnly", timeout=timeout
        )

    def test(self, release: str, *, timeout: int = 20) -> Any:
        """``helm test``."""
        return self.config.test(release, timeout=timeout)

    def render(
        self, chart_name: str | Path, release: str, values: dict[str, Any] | None = None
    ) -> Any:
        """The chart rendered against the live cluster (``lookup`` sees its objects)."""
        return self.config.render(
            chart(chart_name), values or {}, name=release, namespace=self.namespace
        )

    def close(self) -> None:
        self.config.close()
