"""`medbook top` against real services: its numbers are what their /metrics say, a frame fits
80x24, and on a real terminal (tmux) it fills the screen and ends on q or Ctrl-C with 0."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from medbook.cli.top import Top, by_label, parse, render, total
from tests.helpers import Infra, ProcessServices, booking_body, eligible_body, eventually


async def finish(api: httpx.AsyncClient, bodies: list[dict[str, object]]) -> None:
    ids = [(await api.post("/booking", json=b)).json()["bookingId"] for b in bodies]
    for booking_id in ids:
        await eventually(
            lambda i=booking_id: api.get(f"/booking/{i}"),
            lambda r: r.json()["status"] != "PENDING",
            what="final",
        )


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def screen_until(session: str, wanted: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = tmux("capture-pane", "-t", session, "-p")
        if wanted in text or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


async def test_top_shows_what_the_metrics_say_fits_80x24_and_ends_on_q_or_ctrl_c(
    infra: Infra, tmp_path: Path
) -> None:
    services = ProcessServices(infra, tmp_path).start()
    worker_metrics = f"http://127.0.0.1:{services.metrics_port}/metrics"
    try:
        async with httpx.AsyncClient(base_url=services.api_url, timeout=10) as api:
            await finish(api, [eligible_body() for _ in range(5)] + [booking_body()] * 3)
            top = Top(services.api_url, worker_metrics, infra.database_url, None, window=60)
            await top.refresh()
            await finish(api, [eligible_body() for _ in range(4)] + [booking_body()] * 2)
            await top.refresh()
            figures = top.figures()
            booking = parse((await api.get("/metrics")).text)
            discount = parse((await api.get(worker_metrics)).text)

        # The numbers are the metrics' own.
        outcomes = by_label(booking, "medbook_saga_outcomes_total", "status", "reason")
        assert {(s, r): n for s, r, _, n in figures.outcomes} == outcomes
        assert sum(outcomes.values()) == 14
        assert figures.sagas_per_second is not None
        assert round(figures.sagas_per_second * figures.window) == 6  # between the two frames
        assert round(figures.created_per_second * figures.window) == 6  # type: ignore[operator]
        assert figures.quota_used == total(discount, "medbook_quota_used") == 9
        assert figures.quota_limit == total(discount, "medbook_quota_limit") == 100
        assert figures.latency["p50"] is not None and figures.latency["p99"] is not None
        assert 0 < figures.latency["p50"] <= figures.latency["p99"] < 30
        assert (figures.backlog.pending, figures.backlog.outbox) == (0, 0)
        assert figures.backlog.source == "PostgreSQL"
        assert figures.errors_per_second == 0

        # One frame: 80 columns, at most 24 lines, those numbers on it.
        console = Console(record=True, width=80, height=24, file=io.StringIO(), color_system=None)
        console.print(render(top, figures, interval=1.0))
        frame = console.export_text()
        lines = frame.rstrip("\n").splitlines()
        assert len(lines) <= 24 and max(len(line) for line in lines) <= 80, frame
        assert "9 of 100 (91 left)" in frame
        for (status, reason), count in outcomes.items():
            assert any(status in line and reason in line and f" {count:,.0f}" in line
                       for line in lines), frame  # fmt: skip
        assert "booking  ready (database ok, broker ok)" in frame
        assert "discount ready (redis ok, broker ok)" in frame

        # On a real terminal: the whole screen, refreshed, and q (then Ctrl-C) ends it with 0.
        if shutil.which("tmux") is None:
            pytest.skip("tmux is not installed: the terminal part is not checked")
        command = (
            f"{sys.executable} -m medbook.cli.main top --url {services.api_url} "
            f"--worker-metrics-url {worker_metrics} --database-url {infra.database_url}"
        )
        for key in ("q", "C-c"):
            session = f"medbook-top-{tmp_path.name}-{key}"
            tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                 f"{command}; echo EXIT=$?; sleep 60")  # fmt: skip
            try:
                screen = await asyncio.to_thread(screen_until, session, "discount ready")
                assert "medbook top" in screen and "9 of 100 (91 left)" in screen, screen
                assert len(screen.rstrip("\n").splitlines()) <= 24
                tmux("send-keys", "-t", session, key)
                after = await asyncio.to_thread(screen_until, session, "EXIT=")
                assert "EXIT=0" in after, after
                assert "sagas/s" not in after  # the full-screen view is gone
            finally:
                await asyncio.to_thread(tmux, "kill-session", "-t", session)
    finally:
        services.stop()
