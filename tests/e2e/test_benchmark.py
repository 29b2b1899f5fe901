"""A small run of the benchmark (`medbook bench`) against real processes: nothing stuck, counts true."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg

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
