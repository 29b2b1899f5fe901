"""``medbook bench``: the saga's benchmark, against a running system or a fresh local one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import httpx
import port_for
import typer
from rich.console import Console

from medbook.cli import common
from medbook.cli.loadgen import LoadProfile, LoadReport, LoadRun, render

if TYPE_CHECKING:
    from medbook.devstack.stack import DevStack

console = Console(stderr=True)


def run_profile(
    api_url: str,
    profile: LoadProfile,
    *,
    token: str | None = None,
    database_url: str | None = None,
    metrics_targets: dict[str, str] | None = None,
) -> LoadReport:
    return asyncio.run(
        LoadRun(
            api_url,
            profile,
            token=token,
            database_url=database_url,
            metrics_targets=metrics_targets,
        ).run()
    )


@contextlib.contextmanager
def local_system(
    bookings: int, tracing: bool, redis_replicas: int = 0
) -> Iterator[tuple[DevStack, str | None]]:
    """A fresh local system in a temporary folder (durability settings as in production)."""
    from medbook.devstack.stack import DevStack, StackPorts

    with tempfile.TemporaryDirectory(prefix="medbook-bench-") as tmp:
        extra = {
            "MEDBOOK_DAILY_LIMIT": str(max(bookings, 100)),
            "MEDBOOK_LOG_LEVEL": "WARNING",
        }
        sink: subprocess.Popen[bytes] | None = None
        sink_url = None
        if tracing:
            port = port_for.select_random()
            sink = subprocess.Popen(
                [sys.executable, "-m", "medbook.devstack.otlp_sink", "--port", str(port)]
            )
            sink_url = f"http://127.0.0.1:{port}"
            extra |= {"OTEL_EXPORTER_OTLP_ENDPOINT": sink_url, "OTEL_TRACES_SAMPLER": "always_on"}
        ports = StackPorts(*(port_for.select_random() for _ in range(5)))
        stack = DevStack(
            Path(tmp),
            ports,
            sweep_every=30,
            pending_timeout=3600,
            extra_env=extra,
            redis_replicas=redis_replicas,
        )
        try:
            stack.start()
            yield stack, sink_url
        finally:
            stack.stop()
            if sink is not None:
                sink.terminate()
                sink.wait(10)


async def reachable(url: str, token: str | None) -> None:
    from medbook.cli.api import BookingApi

    async with BookingApi(url, token):  # one line (exit status 2) when nothing answers there
        pass


def bench(
    bookings: Annotated[
        int, typer.Option("--bookings", "-n", min=1, help="How many bookings (N).", metavar="N")
    ] = 2000,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Concurrent clients (C).", metavar="C")
    ] = 64,
    url: common.ApiUrl = None,
    local: Annotated[
        bool, typer.Option(help="Start a fresh local system for the run, then stop it.")
    ] = False,
    tracing: Annotated[
        bool, typer.Option(help="--local only: record every span and export it over OTLP/HTTP.")
    ] = False,
    redis_replicas: Annotated[
        int,
        typer.Option(
            min=0,
            metavar="N",
            help="--local only: give Redis N replicas and make each quota write wait for "
            "them (WAIT, as behind Sentinel), to measure what that costs.",
        ),
    ] = 0,
    database_url: common.StatesDatabaseUrl = None,
    worker_metrics_url: common.WorkerMetricsUrl = None,
    token: common.ApiToken = None,
    seed: common.Seed = 42,
    warmup: Annotated[
        int, typer.Option(help="Bookings sent first and not measured.", metavar="N")
    ] = 200,
    settle_timeout: common.SettleTimeout = 120.0,
    json_output: common.JsonOutput = False,
) -> None:
    """Send N bookings at concurrency C and report create and saga throughput, latency
    percentiles (end-to-end from the server's stored timestamps), peak RSS, and every booking
    that did not finish. Exits 1 if any booking is stuck or any request failed.
    """
    logging.basicConfig(level=logging.WARNING)
    if not local:  # a running system: the flag, the variable, the medbook dev running here
        url = common.api_url(url)
        database_url = common.states_database(database_url)
        worker_metrics_url = common.worker_metrics_url(worker_metrics_url)
        common.run(reachable(url, token))
    if tracing and not local:
        console.print(
            "[red]--tracing applies to --local (a running system traces as it is configured)[/red]"
        )
        raise typer.Exit(2)
    if redis_replicas and not local:
        console.print(
            "[red]--redis-replicas applies to --local (a running system has its own Redis)[/red]"
        )
        raise typer.Exit(2)
    profile = LoadProfile(
        bookings=bookings, concurrency=concurrency, seed=seed, settle_timeout=settle_timeout
    )
    with contextlib.ExitStack() as stack:
        sink_url = None
        if local:
            console.print("starting a fresh local system ...")
            system, sink_url = stack.enter_context(
                local_system(bookings + warmup, tracing, redis_replicas)
            )
            url = system.api_url
            database_url = system.postgres.url_for("medbook")
            worker_metrics_url = f"http://127.0.0.1:{system.ports.discount_metrics}/metrics"
        assert url is not None
        targets = {"booking": f"{url.rstrip('/')}/metrics"}
        if worker_metrics_url:
            targets["discount"] = worker_metrics_url
        if warmup:
            console.print(f"warm-up: {warmup} bookings")
            run_profile(
                url,
                LoadProfile(bookings=warmup, concurrency=concurrency, seed=seed + 1),
                token=token,
                database_url=database_url,
            )
        console.print(
            f"measuring: {bookings} bookings at concurrency {concurrency}"
            + (f", tracing {'on' if tracing else 'off'}" if local else "")
        )
        report = run_profile(
            url, profile, token=token, database_url=database_url, metrics_targets=targets
        )
        spans = None
        if sink_url:
            time.sleep(6)  # the batch span processor exports every 5 s
            spans = httpx.get(f"{sink_url}/stats").json()["spans"]
    if json_output:
        data = report.to_dict() | {"tracing": tracing if local else None, "spans_exported": spans}
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        typer.echo(render(report))
        if spans is not None:
            typer.echo(f"spans exported {spans} ({spans / max(report.created, 1):.1f} per booking)")
    raise typer.Exit(0 if report.ok else 1)
