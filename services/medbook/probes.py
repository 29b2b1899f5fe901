"""The probe endpoints every medbook process serves: /healthz, /readyz and /metrics.

``/healthz`` answers as long as the process runs (liveness); ``/readyz`` runs
the process's checks and answers 503 when one fails (readiness), in the same
JSON shape everywhere; ``/metrics`` is the process's Prometheus registry, in
the format the scraper asks for: OpenMetrics when its ``Accept`` header names
``application/openmetrics-text`` (as Prometheus's does), which is the format
that carries exemplars (the trace of a histogram's recent observation), else
Prometheus's text format.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Endpoint = Callable[[Request], Awaitable[Response]]


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
    async def endpoint(request: Request) -> Response:
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(registry), headers={"Content-Type": content_type})

    return endpoint
