"""The probe endpoints every medbook process serves: /healthz, /readyz and /metrics.

``/healthz`` answers as long as the process runs (liveness); ``/readyz`` runs
the process's checks and answers 503 when one fails (readiness), in the same
JSON shape everywhere; ``/metrics`` is the process's Prometheus registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from medbook import metrics

Endpoint = Callable[[Request], Awaitable[Response]]

METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


def readiness(checks: Mapping[str, bool]) -> Response:
    """``{"status": "ok"|"unavailable", "checks": {name: "ok"|"down"}}``, 200 or 503."""
    ok = all(checks.values())
    return JSONResponse(
        {
            "status": "ok" if ok else "unavailable",
            "checks": {name: "ok" if up else "down" for name, up in checks.items()},
        },
        status_code=200 if ok else 503,
    )


def metrics_endpoint(registry: CollectorRegistry) -> Endpoint:
    async def endpoint(_: Request) -> Response:
        return Response(metrics.exposition(registry), media_type=METRICS_MEDIA_TYPE)

    return endpoint
