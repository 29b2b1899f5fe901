"""``medbook dev``: the whole system on this machine, until Ctrl-C."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)

# StackPorts' defaults, written out so that `medbook` starts without importing the dev stack
# (alembic, SQLAlchemy: a second of start-up); tests/cli checks that they agree.
POSTGRES_PORT, REDIS_PORT, AMQP_PORT, HTTP_PORT, METRICS_PORT = 54329, 63799, 56729, 3000, 9464


def dev(
    data_dir: Annotated[
        Path,
        typer.Option(envvar="MEDBOOK_DEV_DATA", help="Folder for the servers' data and the logs."),
    ] = Path(".data"),
    postgres_port: Annotated[int, typer.Option(envvar="MEDBOOK_DEV_POSTGRES_PORT")] = POSTGRES_PORT,
    redis_port: Annotated[int, typer.Option(envvar="MEDBOOK_DEV_REDIS_PORT")] = REDIS_PORT,
    amqp_port: Annotated[int, typer.Option(envvar="MEDBOOK_DEV_AMQP_PORT")] = AMQP_PORT,
    http_port: Annotated[
        int, typer.Option(envvar="MEDBOOK_DEV_HTTP_PORT", help="The booking API.")
    ] = HTTP_PORT,
    metrics_port: Annotated[
        int,
        typer.Option(
            envvar="MEDBOOK_DEV_METRICS_PORT", help="The discount worker's health and metrics."
        ),
    ] = METRICS_PORT,
    sweep_every: Annotated[float, typer.Option(help="Seconds between timeout sweeps.")] = 10.0,
    pending_timeout: Annotated[
        int, typer.Option(help="Seconds before a PENDING booking is swept.")
    ] = 300,
) -> None:
    """Start PostgreSQL, Redis and RabbitMQ from this machine's binaries, migrate, and run the
    booking service, the discount worker and the sweep loop; stop them all on Ctrl-C or SIGTERM.

    The data stays in DATA_DIR, so the next start finds the same bookings and quota.
    """
    from medbook.devstack.stack import DevStack, StackPorts

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stack = DevStack(
        data_dir,
        StackPorts(postgres_port, redis_port, amqp_port, http_port, metrics_port),
        sweep_every=sweep_every,
        pending_timeout=pending_timeout,
    )
    stopping: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stack.start()
    except Exception as exc:
        console.print(f"[red]medbook dev could not start:[/red] {exc}")
        raise typer.Exit(1) from None
    logs = stack.data_dir / "logs"
    console.print(
        "[bold green]medbook is running[/bold green]\n"
        f"  booking API      {stack.api_url}  (try {stack.api_url}/booking/services)\n"
        f"  discount worker  http://127.0.0.1:{metrics_port}/metrics\n"
        f"  PostgreSQL       {stack.postgres.url_for('medbook')}\n"
        f"  Redis            {stack.redis.url}\n"
        f"  RabbitMQ         {stack.rabbit.url}\n"
        f"  data             {stack.data_dir}\n"
        f"  logs             {logs}/booking.log, discount.log, sweep.log\n"
        "Press Ctrl-C to stop everything."
    )
    exit_code = 0
    try:
        while not stopping:
            dead = stack.dead_services()
            if dead:
                names = ", ".join(
                    f"{s.name} (exit {s.process and s.process.returncode})" for s in dead
                )
                console.print(
                    f"[red]{names} stopped unexpectedly; see {logs}. Stopping everything.[/red]"
                )
                exit_code = 1
                break
            time.sleep(0.5)
    finally:
        if stopping:
            console.print(f"{stopping[0]} received: stopping everything")
        stack.stop()
        console.print("stopped")
    raise typer.Exit(exit_code)
