"""``medbook-booking``: serve the booking API with its outbox relay and result consumer."""

from __future__ import annotations

import argparse
import logging

from medbook.booking.app import create_app
from medbook.config import BookingSettings
from medbook.runtime import http_server, on_stop_signals, run
from medbook.telemetry import setup_logging, setup_tracing

log = logging.getLogger("medbook.booking")


async def serve(settings: BookingSettings) -> int:
    server = http_server(
        create_app(settings), settings.host, settings.port, grace=settings.shutdown_grace
    )

    def on_signal(name: str) -> None:
        log.info("%s received: answering in-flight requests, then exiting", name)
        server.should_exit = True

    on_stop_signals(on_signal)
    await server.serve()
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="medbook-booking",
        description="Booking service: the HTTP API (default port 3000), the outbox relay that "
        "publishes booking events to RabbitMQ, and the consumer that applies discount results. "
        "Configured by environment variables (see docs/configuration.md).",
    )
    parser.add_argument(
        "--migrate", action="store_true", help="apply database migrations before serving"
    )
    args = parser.parse_args(argv)
    settings = BookingSettings()
    setup_logging(settings.telemetry, "medbook-booking")
    setup_tracing("medbook-booking", ("asyncpg",))
    if args.migrate:
        from medbook.booking.migrations import upgrade

        upgrade(settings.database.sync_url)
    return run(lambda: serve(settings))


if __name__ == "__main__":
    raise SystemExit(main())
