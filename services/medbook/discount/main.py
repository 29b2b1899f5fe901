"""``medbook-discount``: run the discount worker with its health and metrics port."""

from __future__ import annotations

import argparse
import asyncio
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from medbook import metrics, probes
from medbook.config import DiscountSettings
from medbook.discount.worker import DiscountWorker
from medbook.runtime import http_server, on_stop_signals, run, settle_garbage_collector
from medbook.telemetry import setup_logging, setup_tracing

log = logging.getLogger("medbook.discount")


def probe_app(worker: DiscountWorker) -> Starlette:
    """``/healthz`` (the process runs), ``/readyz`` (Redis and broker reachable), ``/metrics``."""

    async def readyz(_: Request) -> Response:
        return probes.readiness(await worker.ready())

    return Starlette(
        routes=[
            Route("/healthz", probes.healthz),
            Route("/readyz", readyz),
            Route("/metrics", probes.metrics_endpoint(metrics.DISCOUNT)),
        ]
    )


async def serve(settings: DiscountSettings) -> int:
    worker = DiscountWorker(settings)
    stop = asyncio.Event()

    def on_signal(name: str) -> None:
        log.info("%s received: finishing in-flight messages, then exiting", name)
        worker.stopping.set()
        stop.set()

    on_stop_signals(on_signal)
    probe = http_server(probe_app(worker), settings.metrics_host, settings.metrics_port, grace=2)
    probe_task = asyncio.create_task(probe.serve(), name="probe-http")
    try:
        await worker.start()
    except Exception:
        if not stop.is_set():
            raise
    settle_garbage_collector()  # what starting made (clients, consumers) lives as long
    await stop.wait()
    await worker.stop()
    probe.should_exit = True
    await probe_task
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="medbook-discount",
        description="Discount worker: consumes booking_created and quota_released from "
        "RabbitMQ, decides discounts against the quota in Redis, publishes discount_processed. "
        "Configured by environment variables (see docs/configuration.md).",
    )
    parser.parse_args(argv)
    settings = DiscountSettings()
    setup_logging(settings.telemetry, "medbook-discount")
    setup_tracing("medbook-discount", ("redis",))
    return run(lambda: serve(settings))


if __name__ == "__main__":
    raise SystemExit(main())
