"""``medbook dev``: the whole system on this machine, until Ctrl-C; ``medbook dev env``.

The options are checked where they are given, against the bounds the services
themselves enforce (read from the services' settings models, not copied). A
second ``medbook dev`` on a data folder that one is running on says so in one
line; one that finds servers left by an earlier run that was killed stops them
first and says so. While the stack runs, a service that exits is restarted
with backoff, and the data servers are never stopped because of it.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from medbook.cli import common
from medbook.config import BookingSettings, DiscountSettings, PostgresSettings, RedisSettings
from medbook.devstack import discovery
from medbook.discount.policy import Cleanup

console = Console(stderr=True, highlight=False, soft_wrap=True)

# StackPorts' defaults, written out so that `medbook` starts without importing the dev stack
# (alembic, SQLAlchemy: a second of start-up); tests/cli checks that they agree.
POSTGRES_PORT, REDIS_PORT, AMQP_PORT, HTTP_PORT, METRICS_PORT = 54329, 63799, 56729, 3000, 9464
READY_TIMEOUT = 180.0  # DevStack's default (checked by the same test)

app = typer.Typer(
    help="The whole system on this machine (PostgreSQL, Redis, RabbitMQ, both services, the "
    "sweep), until Ctrl-C; `medbook dev env` prints its settings.",
    subcommand_metavar="[env]",
)

DataDir = Annotated[
    Path,
    typer.Option(
        envvar=discovery.DATA_ENV,
        help="Folder for the servers' data, the logs and the stack file.",
        metavar="DIR",
    ),
]


def port(envvar: str, help: str, model: type[BaseModel], field: str) -> Any:
    """A port option, refused outside the bounds the service itself gives that port."""
    bounds = common.field_bounds(model, field)
    return typer.Option(envvar=envvar, help=help, metavar="PORT", **bounds)


@app.callback(invoke_without_command=True)
def dev(
    ctx: typer.Context,
    data_dir: DataDir = Path(discovery.DEFAULT_DATA_DIR),
    postgres_port: Annotated[
        int, port("MEDBOOK_DEV_POSTGRES_PORT", "PostgreSQL's port.", PostgresSettings, "port")
    ] = POSTGRES_PORT,
    redis_port: Annotated[
        int, port("MEDBOOK_DEV_REDIS_PORT", "Redis's port.", RedisSettings, "port")
    ] = REDIS_PORT,
    amqp_port: Annotated[
        int, port("MEDBOOK_DEV_AMQP_PORT", "RabbitMQ's AMQP port.", BookingSettings, "port")
    ] = AMQP_PORT,
    http_port: Annotated[
        int, port("MEDBOOK_DEV_HTTP_PORT", "The booking API's port.", BookingSettings, "port")
    ] = HTTP_PORT,
    metrics_port: Annotated[
        int,
        port(
            "MEDBOOK_DEV_METRICS_PORT",
            "The discount worker's health and metrics port.",
            DiscountSettings,
            "metrics_port",
        ),
    ] = METRICS_PORT,
    sweep_every: Annotated[
        float,
        typer.Option(
            help="Seconds between timeout sweeps (above 0).",
            metavar="SECONDS",
            callback=common.must_be_positive,
        ),
    ] = 10.0,
    pending_timeout: Annotated[
        int,
        typer.Option(
            help="Seconds before the sweep rejects a PENDING booking.",
            metavar="SECONDS",
            **common.field_bounds(Cleanup, "pending_timeout_seconds"),
        ),
    ] = 300,
    ready_timeout: Annotated[
        float,
        typer.Option(
            envvar="MEDBOOK_DEV_READY_TIMEOUT",
            help="Seconds each server, and the services together, may take to become ready "
            "(above 0).",
            metavar="SECONDS",
            callback=common.must_be_positive,
        ),
    ] = READY_TIMEOUT,
) -> None:
    """Start PostgreSQL, Redis and RabbitMQ from this machine's binaries, migrate, and run the
    booking service, the discount worker and the sweep loop until Ctrl-C or SIGTERM, then stop
    them all. The data stays in DATA_DIR: the next start finds the same bookings and quota.

    A service that exits is restarted (after 1 s, then longer while it keeps dying; after five
    quick exits in a row it is left stopped and the rest keeps running). Every `medbook`
    command finds this stack with no flag (DATA_DIR/stack.json); `medbook dev env` prints its
    settings as shell exports.

    Exit status: 0 stopped by Ctrl-C or SIGTERM (or already running); 1 could not start;
    2 bad usage.
    """
    if ctx.invoked_subcommand is not None:
        return
    from medbook.devstack.stack import DevStack, StackPorts

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"
    )
    # One line per step is said here; the libraries' own (each HTTP probe) would bury them.
    for name in ("httpx", "mirakuru", "medbook.devstack.servers", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

    def progress(text: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {escape(text)}")

    stack = DevStack(
        data_dir,
        StackPorts(postgres_port, redis_port, amqp_port, http_port, metrics_port),
        sweep_every=sweep_every,
        pending_timeout=pending_timeout,
        ready_timeout=ready_timeout,
        progress=progress,
    )
    other = stack.running_elsewhere()
    if other is not None:
        console.print(
            f"medbook dev is already running (pid {other.pid}) on {other.data_dir}"
            + (f": the API at {other.api_url}" if other.api_url else " (starting)")
        )
        raise typer.Exit(common.EXIT_OK)

    stopping: list[str] = []
    started = False

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signal.Signals(signum).name)
        if not started:
            raise KeyboardInterrupt  # abandon the start: it stops what it started

    # SIGHUP: the terminal closed. Everything is stopped in order, as on Ctrl-C.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        stack.start()
    except KeyboardInterrupt:
        console.print(f"{stopping[0] if stopping else 'interrupted'}: start abandoned, stopped")
        raise typer.Exit(common.EXIT_INTERRUPTED) from None
    except Exception as exc:
        console.print(f"[red]medbook dev could not start:[/red] {escape(str(exc))}")
        raise typer.Exit(common.EXIT_FAILED) from None
    started = True
    logs = stack.logs
    console.print(
        "[bold green]medbook is running[/bold green]\n"
        f"  booking API      {stack.api_url}  (try {stack.api_url}/booking/services)\n"
        f"  discount worker  {stack.worker_metrics_url}\n"
        f"  PostgreSQL       {stack.postgres.url_for('medbook')}\n"
        f"  Redis            {stack.redis.url}\n"
        f"  RabbitMQ         {stack.rabbit.url}\n"
        f"  data             {stack.data_dir}\n"
        f"  logs             {logs}/booking.log, discount.log, sweep.log\n"
        "Every medbook command finds this stack from here; `medbook dev env` prints its "
        "settings.\n"
        "Press Ctrl-C to stop everything."
    )
    try:
        while not stopping:
            stack.supervise()
            time.sleep(0.5)
    finally:
        console.print(f"{stopping[0] if stopping else 'exit'}: stopping everything")
        stack.stop()
        console.print("stopped")
    raise typer.Exit(common.EXIT_OK)


@app.command("env", short_help="Print the running stack's settings as shell exports.")
def env(ctx: typer.Context) -> None:
    """Print the settings of the medbook dev running here as shell exports, for tools other
    than `medbook` (which finds the stack by itself): eval "$(medbook dev env)".

    Exit status: 0, or 1 when no medbook dev is running on the data folder."""
    given = ctx.parent.params.get("data_dir") if ctx.parent else None
    folder = Path(given).absolute() if given is not None else None
    # --data-dir (or MEDBOOK_DEV_DATA) names the folder; else it is looked for, as the
    # commands look for it: .data here or above.
    if folder is not None and (
        os.environ.get(discovery.DATA_ENV) or folder != Path(discovery.DEFAULT_DATA_DIR).absolute()
    ):
        info = discovery.read(folder)
        found = info if info is not None and info.state == "running" and info.alive() else None
        where = str(folder)
    else:
        found = discovery.find()
        where = "this folder or above it"
    if found is None:
        console.print(f"no medbook dev is running on {where} (start one with `make dev`)")
        raise typer.Exit(common.EXIT_FAILED)
    for name, value in found.exports().items():
        typer.echo(f"export {name}={shlex.quote(value)}")
