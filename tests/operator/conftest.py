"""The operator against an emulated API server (kmock over real HTTP) and a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import kmock
import port_for
import pytest
from redis.asyncio import Redis

from medbook_operator.main import QuotaOperator
from medbook_operator.settings import CleanupJob, OperatorSettings, RedisConnection
from tests.helpers import eventually
from tests.operator.apiserver import ApiServer

NAMESPACE = "medbook"
POLICIES = f"/apis/medbook.io/v1alpha1/namespaces/{NAMESPACE}/quotapolicies"
CRONJOBS = f"/apis/batch/v1/namespaces/{NAMESPACE}/cronjobs"
EVENTS = f"/api/v1/namespaces/{NAMESPACE}/events"
MERGE = {"Content-Type": "application/merge-patch+json"}
CLEANUP_IMAGE = "registry.example/medbook-booking:1.2.3"


def policy(name: str = "default", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "medbook.io/v1alpha1",
        "kind": "QuotaPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


@dataclass
class Kubectl:
    """What a user does with kubectl, over the emulator's HTTP API."""

    server: ApiServer
    http: httpx.AsyncClient

    async def apply(self, obj: dict[str, Any]) -> httpx.Response:
        return await self.http.post(POLICIES, json=obj)

    async def patch(self, name: str, spec: dict[str, Any]) -> httpx.Response:
        return await self.http.patch(f"{POLICIES}/{name}", json={"spec": spec}, headers=MERGE)

    async def delete(self, name: str) -> httpx.Response:
        return await self.http.delete(f"{POLICIES}/{name}")

    async def get(self, name: str) -> dict[str, Any] | None:
        response = await self.http.get(f"{POLICIES}/{name}")
        return response.json() if response.status_code == 200 else None

    async def cronjob(self, name: str) -> dict[str, Any] | None:
        response = await self.http.get(f"{CRONJOBS}/{name}")
        return response.json() if response.status_code == 200 else None

    async def events(self) -> list[dict[str, Any]]:
        return (await self.http.get(EVENTS)).json()["items"]

    async def ready(self, name: str) -> dict[str, Any] | None:
        """The object's Ready condition (None until the operator wrote one)."""
        obj = await self.get(name)
        for condition in ((obj or {}).get("status") or {}).get("conditions") or ():
            if condition["type"] == "Ready":
                return condition
        return None

    async def wait_ready(
        self, name: str, status: str = "True", reason: str | None = None, timeout: float = 10
    ) -> dict[str, Any]:
        await eventually(
            lambda: self.ready(name),
            lambda c: (
                c is not None
                and c["status"] == status
                and (reason is None or c["reason"] == reason)
            ),
            timeout=timeout,
            what=f"QuotaPolicy {name} Ready={status} {reason or ''}",
        )
        obj = await self.get(name)
        assert obj is not None
        return obj

    async def wait_event(self, reason: str, timeout: float = 10) -> dict[str, Any]:
        async def find() -> dict[str, Any] | None:
            return next((e for e in await self.events() if e.get("reason") == reason), None)

        found = await eventually(find, timeout=timeout, what=f"an Event {reason}")
        assert found is not None
        return found

    def writes(self) -> list[kmock.Request]:
        """Every create, patch and delete the API server received, from anyone."""
        return [r for r in list(self.server) if r.method in ("POST", "PATCH", "PUT", "DELETE")]


@pytest.fixture
async def kubectl() -> AsyncIterator[Kubectl]:
    async with ApiServer() as server, kmock.Server(server) as endpoint:
        server.declare()
        async with httpx.AsyncClient(base_url=str(endpoint.url), timeout=5) as http:
            yield Kubectl(server, http)


def operator_settings(kubectl: Kubectl, redis_url: str, **overrides: Any) -> OperatorSettings:
    values: dict[str, Any] = {
        "namespace": NAMESPACE,
        "api_server": str(kubectl.http.base_url).rstrip("/"),
        "status_interval": 0.3,
        "retry_delay": 0.3,
        "metrics_host": "127.0.0.1",
        "metrics_port": port_for.select_random(),
        "liveness_endpoint": f"http://127.0.0.1:{port_for.select_random()}/healthz",
        "log_format": "text",
        "redis": RedisConnection(url=redis_url, timeout=1),
        "cleanup": CleanupJob(
            image=CLEANUP_IMAGE,
            env_configmap="medbook-db",
            env_secret="medbook-db-credentials",
            service_account="medbook-cleanup",
        ),
    }
    values.update(overrides)
    return OperatorSettings(**values)


@contextlib.asynccontextmanager
async def running_operator(settings: OperatorSettings) -> AsyncIterator[QuotaOperator]:
    """The operator in a thread of its own with its own event loop, until the block ends.

    kopf cancels every task of its loop that it did not know at start when it
    stops: with an event loop of its own it cannot touch the booking service
    or the discount worker that a test runs in the main loop.
    """
    operator = QuotaOperator(settings)
    stop, ready = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(operator.run(stop_flag=stop, ready_flag=ready))
        except BaseException as exc:  # reported to the test below
            failure.append(exc)

    thread = threading.Thread(target=run, name="medbook-operator", daemon=True)
    thread.start()
    await eventually(
        lambda: asyncio.sleep(0, ready.is_set() or not thread.is_alive()), what="operator ready"
    )
    try:
        yield operator
        assert thread.is_alive(), f"the operator stopped by itself: {failure!r}"
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 20)
    assert not thread.is_alive(), "the operator did not stop within 20 s"
    if failure:
        raise failure[0]


OperatorFactory = Callable[..., contextlib.AbstractAsyncContextManager[QuotaOperator]]


@pytest.fixture
def start_operator(kubectl: Kubectl, redis_url: str) -> OperatorFactory:
    def start(**overrides: Any) -> contextlib.AbstractAsyncContextManager[QuotaOperator]:
        return running_operator(operator_settings(kubectl, redis_url, **overrides))

    return start


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def published(redis: Redis) -> dict[str, Any] | None:
    """The policy the discount worker reads, as published in Redis."""
    raw = await redis.get("medbook:policy")
    return None if raw is None else json.loads(raw)
