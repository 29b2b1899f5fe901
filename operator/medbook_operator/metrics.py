"""The operator's Prometheus metrics, in a registry of its own, served on a small port.

Label values are bounded sets: handler names, outcomes (the ``Ready``
reasons) and error kinds, never an object's name.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger(__name__)

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: unread
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

RECONCILIATIONS = Counter(
    "medbook_operator_reconciliations",
    "Reconciliations of QuotaPolicy objects, by handler and outcome (the Ready reason).",
    ["handler", "outcome"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "medbook_operator_errors",
    "Failures met while reconciling, by kind (redis, api, invalid_spec).",
    ["kind"],
    registry=REGISTRY,
)
POLICIES_PUBLISHED = Counter(
    "medbook_operator_policies_published",
    "Times a changed policy was published to the store the discount worker reads.",
    registry=REGISTRY,
)
POLICIES_WITHDRAWN = Counter(
    "medbook_operator_policies_withdrawn",
    "Times the published policy was withdrawn (the worker falls back to its defaults).",
    registry=REGISTRY,
)
CRONJOB_WRITES = Counter(
    "medbook_operator_cronjob_writes",
    "Writes to cleanup CronJobs, by action (create, patch, delete).",
    ["action"],
    registry=REGISTRY,
)
POLICY_READY = Gauge(
    "medbook_operator_policy_ready",
    "1 when the policy in force is published and its CronJob is in place, else 0.",
    registry=REGISTRY,
)
QUOTA_USED = Gauge(
    "medbook_operator_quota_used",
    "Units of today's discount quota in use, as last read from the quota store.",
    registry=REGISTRY,
)
QUOTA_LIMIT = Gauge(
    "medbook_operator_quota_limit",
    "Daily discount limit of the policy in force.",
    registry=REGISTRY,
)


class MetricsServer:
    """``GET /metrics`` on its own port (aiohttp, already a kopf dependency)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(REGISTRY))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
