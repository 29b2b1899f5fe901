"""``medbook-cleanup``: the timeout sweep.

Rejects bookings left PENDING past the timeout ("System timeout: Discount
service did not respond") in one statement. A quota unit the discount worker
reserved for one of them comes back when its result arrives: the result finds
the booking swept and takes the late path (booking/domain.py).
One-shot by default (for a Kubernetes CronJob); ``--every N`` loops (local
dev stack).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging

from opentelemetry import trace

from medbook.booking import domain
from medbook.booking.database import create_database
from medbook.booking.store import BookingStore, SweptBooking
from medbook.clock import utcnow
from medbook.config import CleanupSettings
from medbook.failures import DependencyUnavailable
from medbook.runtime import on_stop_signals, run
from medbook.telemetry import setup_logging, setup_tracing

log = logging.getLogger("medbook.cleanup")
tracer = trace.get_tracer("medbook.cleanup")


async def sweep_once(store: BookingStore, pending_timeout: dt.timedelta) -> list[SweptBooking]:
    with tracer.start_as_current_span("booking.sweep") as span:
        swept = await store.sweep(domain.time_out(pending_timeout, utcnow()))
        span.set_attribute("medbook.swept", len(swept))
    return swept  # the booking service exports the sweep's totals from sweep_runs


async def sweep_main(settings: CleanupSettings, pending_timeout: int, every: float | None) -> int:
    db = settings.database
    store = BookingStore(
        create_database(
            db.dsn,
            max_size=2,
            connect_timeout=db.connect_timeout,
            statement_timeout=db.statement_timeout,
        )
    )
    stop = asyncio.Event()
    on_stop_signals(lambda name: stop.set())
    await store.connect()
    timeout = dt.timedelta(seconds=pending_timeout)
    try:
        while True:
            try:
                swept = await sweep_once(store, timeout)
                log.info(
                    "sweep rejected %d booking(s) pending for over %ds",
                    len(swept),
                    pending_timeout,
                    extra={"rejected": len(swept)},
                )
            except DependencyUnavailable as exc:
                if every is None:
                    log.error("sweep failed: %s", exc)
                    return 1
                log.warning("sweep skipped: %s", exc)
            except Exception as exc:
                log.error("sweep failed: %r", exc, exc_info=exc)
                if every is None:
                    return 1
            if every is None:
                return 0
            try:
                await asyncio.wait_for(stop.wait(), every)
                return 0
            except TimeoutError:
                continue
    finally:
        await store.disconnect()


def main(argv: list[str] | None = None) -> int:
    settings = CleanupSettings()
    parser = argparse.ArgumentParser(
        prog="medbook-cleanup",
        description="Reject bookings stuck PENDING past the timeout and give back any quota unit "
        "they held. Runs once and exits 0 (for a CronJob) unless --every is given.",
    )
    parser.add_argument(
        "--pending-timeout",
        type=int,
        default=settings.pending_timeout_seconds,
        metavar="SECONDS",
        help="reject bookings PENDING for longer than this "
        f"(default: {settings.pending_timeout_seconds}, from MEDBOOK_PENDING_TIMEOUT)",
    )
    parser.add_argument(
        "--every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="sweep again every SECONDS until stopped",
    )
    args = parser.parse_args(argv)
    if args.pending_timeout < 1:
        parser.error("--pending-timeout must be at least 1 second")
    if args.every is not None and args.every <= 0:
        parser.error("--every must be positive")
    setup_logging(settings.telemetry, "medbook-cleanup")
    setup_tracing("medbook-cleanup", ("asyncpg",))
    return run(lambda: sweep_main(settings, args.pending_timeout, args.every))


if __name__ == "__main__":
    raise SystemExit(main())
