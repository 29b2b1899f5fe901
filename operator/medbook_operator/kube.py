"""A small async client for the few Kubernetes API calls the operator makes.

kopf has no API client of its own. This one is httpx with the credentials of
kopf's login (:class:`kopf.ConnectionInfo`): the same server, CA, client
certificate or token. On a 401 it logs in again once (a rotated service
account token) and repeats the request.

Every call here is listed in the chart's Role (``charts/medbook-operator/
templates/rbac.yaml``); a test checks that the calls seen during the operator
tests are all allowed by it.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable
from typing import Any, Final

import httpx
import kopf

from medbook_operator import GROUP, MANAGER, PLURAL, VERSION

log = logging.getLogger(__name__)

MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"


class ApiError(Exception):
    """The API server refused a request (or could not be reached: status 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def _version() -> str:
    try:
        return importlib.metadata.version("medbook")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


def _client(info: kopf.ConnectionInfo, timeout: float, agent: str) -> httpx.AsyncClient:
    verify: Any = True
    if info.server.startswith("https:"):
        verify = info.as_ssl_context()
    return httpx.AsyncClient(
        base_url=info.server,
        headers={
            **info.as_http_headers(),
            "Accept": "application/json",
            "User-Agent": f"{agent}/{_version()}",
        },
        verify=verify,
        timeout=timeout,
        trust_env=info.trust_env,
    )


class KubeApi:
    """CronJobs and QuotaPolicy status in one namespace, and the QuotaPolicy list."""

    agent: str = MANAGER  # the User-Agent's product: who makes the calls (audit logs, tests)

    def __init__(self, login: Callable[[], kopf.ConnectionInfo], timeout: float = 10.0) -> None:
        self._login = login
        self._timeout = timeout
        self._http: httpx.AsyncClient | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _renew(self) -> httpx.AsyncClient:
        await self.close()
        self._http = _client(self._login(), self._timeout, self.agent)
        return self._http

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        http = self._http or await self._renew()
        headers = {"Content-Type": content_type} if body is not None else {}
        for attempt in (1, 2):
            try:
                response = await http.request(
                    method, path, json=body, headers=headers, params=params
                )
            except httpx.HTTPError as exc:
                raise ApiError(0, "Unreachable", f"{method} {path}: {exc!r}") from exc
            if response.status_code == 401 and attempt == 1:
                log.info("the API server refused our credentials; logging in again")
                http = await self._renew()
                continue
            break
        if response.is_success:
            return response.json() if response.content else {}
        try:
            status = response.json()
            reason, message = status.get("reason", ""), status.get("message", "")
        except ValueError:
            reason, message = response.reason_phrase, response.text[:200]
        raise ApiError(response.status_code, reason, f"{method} {path}: {message}")

    # -- paths -----------------------------------------------------------------------------

    @staticmethod
    def _policies(namespace: str) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"

    @staticmethod
    def _cronjobs(namespace: str) -> str:
        return f"/apis/batch/v1/namespaces/{namespace}/cronjobs"

    # -- QuotaPolicies ---------------------------------------------------------------------

    async def list_policies(self, namespace: str) -> list[dict[str, Any]]:
        """list quotapolicies"""
        items = (await self.request("GET", self._policies(namespace))).get("items") or []
        return [
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "QuotaPolicy", **item} for item in items
        ]

    async def patch_policy_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """patch quotapolicies/status"""
        return await self.request(
            "PATCH",
            f"{self._policies(namespace)}/{name}/status",
            body={"status": status},
            content_type=MERGE_PATCH,
        )

    # -- CronJobs --------------------------------------------------------------------------

    async def get_cronjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        """get cronjobs"""
        try:
            return await self.request("GET", f"{self._cronjobs(namespace)}/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create_cronjob(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """create cronjobs"""
        return await self.request("POST", self._cronjobs(namespace), body=body)

    async def patch_cronjob(
        self, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """patch cronjobs"""
        return await self.request(
            "PATCH", f"{self._cronjobs(namespace)}/{name}", body=patch, content_type=MERGE_PATCH
        )

    async def delete_cronjob(self, namespace: str, name: str) -> None:
        """delete cronjobs"""
        try:
            await self.request(
                "DELETE",
                f"{self._cronjobs(namespace)}/{name}",
                params={"propagationPolicy": "Background"},
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
