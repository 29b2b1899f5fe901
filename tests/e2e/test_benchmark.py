"""Small runs of the benchmark (`medbook bench`) against real processes: nothing stuck, counts
true; the ceiling really runs the saga's work; open-loop rates; one local run with every
comparison and its JSON fields."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from medbook.cli.ceiling import CeilingConfig, measure
from tests.helpers import Infra, ProcessServices, service_env


async def test_small_benchmark_run_finishes_everything_and_matches_the_database(
    infra: Infra, tmp_path: Path
) -> None:
    services = ProcessServices(infra, tmp_path, extra_env={"MEDBOOK_DAILY_LIMIT": "150"}).start()
    try:
        argv = [
            sys.executable,
            "-m",
            "medbook.cli.main",
            "bench",
            "--url",
            services.api_url,
            "--bookings",
            "400",
            "--concurrency",
            "16",
            "--warmup",
            "0",
            "--json",
            "--database-url",
            infra.database_url,
            "--worker-metrics-url",
            f"http://127.0.0.1:{services.metrics_port}/metrics",
        ]
        run = await asyncio.to_thread(
            subprocess.run,
            argv,
            capture_output=True,
            text=True,
            timeout=300,
            env=service_env(infra),
        )
    finally:
        services.stop()
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["requested"] == report["created"] == 400
    assert report["stuck"] == []
    assert report["http_errors"] == {}
    assert report["saga_rate"] > 0
    assert report["saga_latency_ms"]["p99"] >= report["saga_latency_ms"]["p50"] > 0
    assert set(report["peak_rss_mb"]) == {"booking", "discount", "load generator"}
    assert all(mb > 10 for mb in report["peak_rss_mb"].values())

    connection = await asyncpg.connect(infra.database_url)
    try:
        rows = await connection.fetch("SELECT status, count(*) AS n FROM bookings GROUP BY status")
        discounted = await connection.fetchval(
            "SELECT count(*) FROM bookings WHERE quota_day IS NOT NULL"
        )
    finally:
        await connection.close()
    assert {r["status"]: r["n"] for r in rows} == report["outcomes"]
    assert report["reasons"].get("discount applied", 0) == discounted
    assert discounted <= 150  # the daily limit held


def bench(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> dict[str, Any]:
    """``medbook bench ... --json`` in a process of its own; its report."""
    run = subprocess.run(
        [sys.executable, "-m", "medbook.cli.main", "bench", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


async def test_the_ceiling_runs_the_sagas_own_work_and_leaves_nothing_behind(infra: Infra) -> None:
    import aiormq
    from redis.asyncio import Redis

    config = CeilingConfig(
        database_url=infra.database_url,
        redis_url=infra.redis_url,
        amqp_url=infra.amqp_url,
        bookings=50,
        batch=8,
        window=16,
        timeout=120,
    )
    report = await asyncio.to_thread(measure, config)
    assert report.bookings == 50 and report.rate > 0 and report.seconds > 0
    assert set(report.client_cpu_seconds) == {"booking side", "discount side"}
    connection = await asyncpg.connect(infra.database_url)
    try:
        statuses = await connection.fetch("SELECT status, count(*) AS n FROM bookings GROUP BY 1")
        outbox = await connection.fetchval("SELECT count(*) FROM outbox")
        discounted = await connection.fetchval(
            "SELECT count(*) FROM bookings WHERE quota_day IS NOT NULL"
        )
    finally:
        await connection.close()
    # Every booking went the whole way: created with its event, relayed, decided, applied.
    assert sum(r["n"] for r in statuses) == 50
    assert {r["status"] for r in statuses} <= {"CONFIRMED", "REJECTED"}
    assert outbox == 0
    assert discounted > 0  # the complete script reserved units
    redis = Redis.from_url(infra.redis_url)
    try:
        assert await redis.dbsize() == 0  # its records and reservations went with it
    finally:
        await redis.aclose()
    amqp = await aiormq.connect(infra.amqp_url)
    try:
        channel = await amqp.channel()
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await channel.queue_declare("ceiling.discount_queue", passive=True)
    finally:
        await amqp.close()


async def test_open_loop_rates_report_latency_from_the_intended_send_time(
    infra: Infra, tmp_path: Path
) -> None:
    services = ProcessServices(infra, tmp_path).start()
    try:
        report = await asyncio.to_thread(
            bench,
            "--url", services.api_url, "-n", "120", "-c", "8", "--warmup", "0",
            "--database-url", infra.database_url, "--rate", "40", "--rate", "50%",
            env=service_env(infra),
        )  # fmt: skip
    finally:
        services.stop()
    assert (
        report["stuck"] == [] and report["ceiling"] is None and report["ratio_to_ceiling"] is None
    )
    absolute, relative = report["open_loop"]
    assert absolute["rate"] == 40 and absolute["created"] == 120
    assert relative["fraction_of_max"] == pytest.approx(0.5)
    assert relative["rate"] == pytest.approx(report["saga_rate"] / 2)
    for run in (absolute, relative):
        latency = run["offered_latency_ms"]
        assert latency["p99.9"] >= latency["p99"] >= latency["p50"] > 0
        assert run["send_lag_ms"]["p50"] < 50  # the generator kept to its schedule
        assert run["stuck"] == 0 and run["http_errors"] == {}


@pytest.mark.slow
def test_a_local_run_measures_every_comparison_in_one_run(tmp_path: Path) -> None:
    report = bench(
        "--local", "-n", "80", "-c", "8", "--warmup", "0", "--ceiling", "--sampling", "10%",
        "--rate", "50%", "--data", "3000", "--backlog", "400", "--get-rate", "50",
        "--hostile", "10%",
        timeout=600,
    )  # fmt: skip
    assert report["stuck"] == [] and report["http_errors"] == {}
    ceiling = report["ceiling"]
    assert ceiling["bookings"] == 80 and ceiling["rate"] > 0
    assert report["ratio_to_ceiling"] == pytest.approx(report["saga_rate"] / ceiling["rate"])
    assert report["ratio_to_ceiling"] > 0
    assert {"postgres", "rabbitmq", "redis", "booking side", "discount side", "total"} <= set(
        ceiling["cpu_ms_per_booking"]
    )
    assert {"postgres", "booking", "discount", "load generator", "total"} <= set(
        report["cpu_ms_per_booking"]
    )
    off, sampled = report["tracing_levels"]
    assert (off["sampling"], sampled["sampling"]) == (0.0, 0.1)
    assert sampled["ratio_to_untraced"] > 0 and sampled["stuck"] == 0
    assert 0 < sampled["spans_per_booking"] < 8  # a tenth of ~15 spans a booking, give or take
    assert {"booking", "discount", "postgres"} <= set(sampled["cpu_ms_per_booking_by_process"])
    assert report["open_loop"][0]["fraction_of_max"] == pytest.approx(0.5)
    data = report["data"]
    assert data["rows"] == 3000 and data["loaded"]["stuck"] == 0
    assert data["saga_rate_ratio"] > 0 and data["get_p99_ratio"] > 0
    assert data["loaded"]["get_latency_ms"]["p99"] > 0
    operations = {o["name"]: o for o in data["operations"]}
    assert set(operations) == {"bookings stats", "sweep"}
    for operation in operations.values():  # (the plans chosen for a few rows say little)
        assert operation["seconds"] > 0
        assert any(line.startswith("Execution Time") for line in operation["plan"])
    hostile = report["hostile"]  # 80 good bookings, and 1 request in 10 refused as it must be
    assert hostile["created"] == 80 and hostile["stuck"] == 0 and hostile["http_errors"] == {}
    assert hostile["requests"]["sent"] == 8 and hostile["requests"]["unexpected"] == {}
    assert all(set(statuses) <= {"400", "413", "414", "431"}
               for statuses in hostile["requests"]["answers"].values())  # fmt: skip
    assert hostile["saga_p99_ratio_to_clean"] > 0 and hostile["create_p99_ratio_to_clean"] > 0
    backlog = report["backlog"]
    assert backlog["finished"] and backlog["outbox_drain_rate"] > 0
    assert backlog["drain_ratio_to_steady"] > 0 and backlog["get_errors"] == {}
