"""``medbook top``: a full-screen live view of a running system, refreshed every second.

Where Grafana is not at hand (a laptop running ``make dev``), this shows what
the dashboards show, from the same sources: each service's own ``/metrics``
(rates and latency percentiles over the last ``--window`` seconds, from the
counters and the saga-duration histogram, as Prometheus' ``rate`` and
``histogram_quantile`` compute them), each service's ``/readyz``, and
PostgreSQL for the backlog (PENDING bookings and unsent outbox events, read
directly rather than from gauges refreshed every few seconds). It fits 80x24
and ends on ``q`` or Ctrl-C, leaving the terminal as it was.

Against ``make dev`` it needs no flag; against a cluster, port-forward the
booking service and the worker's metrics port and give their URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group, RenderableType
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from medbook.cli import common
from medbook.contracts import BOOKING_QUEUE, DISCOUNT_QUEUE, dead_letter_queue

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]

SAGA_QUEUES = (DISCOUNT_QUEUE, BOOKING_QUEUE)
DEAD_LETTER_QUEUES = tuple(dead_letter_queue(q) for q in SAGA_QUEUES)
OUTCOME_ROWS = 6  # the most outcome lines shown (80x24)


def parse(text: str) -> Samples:
    """Every sample of a Prometheus exposition, by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float | None:
    """The sum of a metric's samples whose labels include ``labels`` (None: not exported)."""
    values = [
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    ]
    return sum(values) if values else None


def by_label(samples: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    found: dict[tuple[str, ...], float] = {}
    for (sample, labels), value in samples.items():
        if sample == name:
            values = dict(labels)
            key = tuple(values.get(k, "") for k in keys)
            found[key] = found.get(key, 0.0) + value
    return found


def buckets(samples: Samples, name: str) -> dict[float, float]:
    """A histogram's cumulative buckets, summed over its other labels: upper bound -> count."""
    found: dict[float, float] = {}
    for (sample, labels), value in samples.items():
        if sample == f"{name}_bucket":
            bound = float(dict(labels)["le"])
            found[bound] = found.get(bound, 0.0) + value
    return found


def quantile(q: float, cumulative: Mapping[float, float]) -> float | None:
    """``histogram_quantile``: linear interpolation within the bucket holding the rank."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    rank = q * cumulative[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # the rank is past the last finite bucket
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return None


@dataclass
class Health:
    status: str  # ready, not ready, unreachable
    detail: str = ""


@dataclass
class Backlog:
    pending: float | None
    oldest_pending: float | None  # seconds
    outbox: float | None
    oldest_outbox: float | None
    source: str  # "PostgreSQL" or "metrics"


@dataclass
class Frame:
    """What one refresh saw."""

    at: float
    booking: Samples
    discount: Samples
    booking_health: Health
    discount_health: Health
    backlog: Backlog


@dataclass
class Figures:
    """The numbers a frame shows (what the tests check against the metrics)."""

    sagas_per_second: float | None
    created_per_second: float | None
    errors_per_second: float | None
    latency: dict[str, float | None]  # p50, p95, p99 in seconds, over the window
    outcomes: list[tuple[str, str, float | None, float]]  # status, reason, per second, total
    quota_used: float | None
    quota_limit: float | None
    queues: dict[str, float | None]
    backlog: Backlog
    window: float


def _delta(now: Samples, then: Samples, name: str, **labels: str) -> float | None:
    a, b = total(now, name, **labels), total(then, name, **labels)
    if a is None:
        return None
    return max(a - (b or 0.0), 0.0)  # a restarted service starts again from 0


class Top:
    """Collects frames and works out the figures over a sliding window."""

    def __init__(
        self,
        api_url: str,
        worker_metrics_url: str | None,
        database_url: str | None,
        token: str | None,
        window: float,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.worker_metrics_url = worker_metrics_url
        self.database_url = database_url
        self.window = window
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.AsyncClient(timeout=2.0, headers=headers)
        self.frames: deque[Frame] = deque()
        self._connection: Any = None

    async def close(self) -> None:
        await self.client.aclose()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    async def _metrics(self, url: str | None) -> Samples:
        if url is None:
            return {}
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = await self.client.get(url)
            if response.status_code == 200:
                return parse(response.text)
        return {}

    async def _health(self, url: str | None) -> Health:
        if url is None:
            return Health("unknown", "give --worker-metrics-url")
        try:
            response = await self.client.get(url)
            checks = response.json().get("checks", {})
        except (httpx.HTTPError, ValueError) as exc:
            return Health("unreachable", type(exc).__name__)
        detail = ", ".join(f"{name} {state}" for name, state in checks.items())
        return Health("ready" if response.status_code == 200 else "not ready", detail)

    async def _backlog(self, booking: Samples) -> Backlog:
        if self.database_url is not None:
            with contextlib.suppress(Exception):
                from medbook.booking.maintenance import BookingMaintenance

                if self._connection is None or self._connection.is_closed():
                    import asyncpg

                    self._connection = await asyncpg.connect(self.database_url, timeout=2)
                seen = await BookingMaintenance(self._connection).backlog()
                now = dt.datetime.now(dt.UTC)

                def age(moment: dt.datetime | None) -> float | None:
                    return (now - moment).total_seconds() if moment else None

                return Backlog(
                    seen.pending,
                    age(seen.oldest_pending_at),
                    seen.outbox,
                    age(seen.oldest_outbox_at),
                    "PostgreSQL",
                )
        return Backlog(
            total(booking, "medbook_pending_bookings"),
            total(booking, "medbook_oldest_pending_booking_age_seconds"),
            total(booking, "medbook_outbox_backlog"),
            total(booking, "medbook_outbox_oldest_age_seconds"),
            "metrics" if self.database_url is None else "metrics (PostgreSQL unreachable)",
        )

    def _worker_url(self, path: str) -> str | None:
        if self.worker_metrics_url is None:
            return None
        return self.worker_metrics_url.rsplit("/metrics", 1)[0] + path

    async def refresh(self) -> Frame:
        booking, discount, booking_health, discount_health = await asyncio.gather(
            self._metrics(f"{self.api_url}/metrics"),
            self._metrics(self.worker_metrics_url),
            self._health(f"{self.api_url}/readyz"),
            self._health(self._worker_url("/readyz")),
        )
        frame = Frame(
            time.monotonic(),
            booking,
            discount,
            booking_health,
            discount_health,
            await self._backlog(booking),
        )
        self.frames.append(frame)
        while len(self.frames) > 2 and frame.at - self.frames[1].at >= self.window:
            self.frames.popleft()
        return frame

    def figures(self) -> Figures:
        now = self.frames[-1]
        then = self.frames[0]
        span = now.at - then.at

        def rate(name: str, **labels: str) -> float | None:
            moved = _delta(now.booking, then.booking, name, **labels)
            return moved / span if moved is not None and span > 0 else None

        errors = None
        if span > 0:
            codes = by_label(now.booking, "medbook_http_requests_total", "status")
            before = by_label(then.booking, "medbook_http_requests_total", "status")
            errors = (
                sum(
                    max(v - before.get(k, 0.0), 0.0)
                    for k, v in codes.items()
                    if k[0].startswith("5")
                )
                / span
            )
        moved = (
            {
                bound: max(
                    count - buckets(then.booking, "medbook_saga_duration_seconds").get(bound, 0.0),
                    0.0,
                )
                for bound, count in buckets(now.booking, "medbook_saga_duration_seconds").items()
            }
            if span > 0
            else {}
        )
        outcomes = []
        totals = by_label(now.booking, "medbook_saga_outcomes_total", "status", "reason")
        earlier = by_label(then.booking, "medbook_saga_outcomes_total", "status", "reason")
        for (status, reason), count in sorted(totals.items(), key=lambda kv: -kv[1]):
            per_second = (
                max(count - earlier.get((status, reason), 0.0), 0.0) / span if span > 0 else None
            )
            outcomes.append((status, reason, per_second, count))
        queues = {
            queue: total(now.booking, "medbook_queue_messages", queue=queue)
            for queue in (*SAGA_QUEUES, *DEAD_LETTER_QUEUES)
        }
        return Figures(
            sagas_per_second=rate("medbook_saga_outcomes_total"),
            created_per_second=rate("medbook_bookings_created_total"),
            errors_per_second=errors,
            latency={f"p{round(q * 100)}": quantile(q, moved) for q in (0.5, 0.95, 0.99)},
            outcomes=outcomes,
            quota_used=total(now.discount, "medbook_quota_used"),
            quota_limit=total(now.discount, "medbook_quota_limit"),
            queues=queues,
            backlog=now.backlog,
            window=span,
        )


# -- rendering -------------------------------------------------------------------------------


def number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def seconds(value: float | None) -> str:
    return "-" if value is None else common.human_duration(value)


def bar(used: float, limit: float, width: int) -> Text:
    filled = width if limit <= 0 else min(width, round(width * used / limit))
    colour = "red" if used >= limit else ("yellow" if used >= 0.8 * limit else "green")
    return Text.assemble(("━" * filled, colour), ("━" * (width - filled), "grey37"))


def health_text(name: str, health: Health) -> Text:
    colour = {"ready": "green", "not ready": "yellow"}.get(health.status, "red")
    detail = f" ({health.detail})" if health.detail else ""
    return Text.assemble((f"{name:<9}", "bold"), (health.status, colour), detail)


def render(top: Top, figures: Figures, *, interval: float) -> RenderableType:
    """One screen: at most 24 lines of at most 80 columns."""
    stamp = time.strftime("%H:%M:%S")
    window = f"last {figures.window:.0f}s" if figures.window > 0 else "first refresh"
    header = Text.assemble(
        ("medbook top", "bold"),
        f"  {top.api_url}",
        (f"  {stamp}  every {interval:g}s  q: quit", "dim"),
        overflow="ellipsis",
        no_wrap=True,
    )
    saga = Table.grid(padding=(0, 2))
    for _ in range(4):
        saga.add_column(no_wrap=True)
    latency = figures.latency
    backlog = figures.backlog
    saga.add_row(
        "sagas/s", Text(number(figures.sagas_per_second, 1), style="bold"),
        "created/s", number(figures.created_per_second, 1),
    )  # fmt: skip
    saga.add_row(
        "end-to-end",
        f"p50 {seconds(latency['p50'])}  p95 {seconds(latency['p95'])}  "
        f"p99 {seconds(latency['p99'])}",
        "HTTP 5xx/s",
        number(figures.errors_per_second, 1),
    )
    saga.add_row(
        "PENDING",
        f"{number(backlog.pending)} (oldest {seconds(backlog.oldest_pending)})",
        "outbox",
        f"{number(backlog.outbox)} (oldest {seconds(backlog.oldest_outbox)})",
    )
    quota = Table.grid(padding=(0, 2))
    quota.add_column(no_wrap=True)
    quota.add_column(no_wrap=True)
    quota.add_column(no_wrap=True)
    if figures.quota_used is not None and figures.quota_limit is not None:
        left = max(figures.quota_limit - figures.quota_used, 0)
        quota.add_row(
            "quota today",
            f"{number(figures.quota_used)} of {number(figures.quota_limit)} ({number(left)} left)",
            bar(figures.quota_used, figures.quota_limit, 30),
        )
    else:
        quota.add_row("quota today", "- (give --worker-metrics-url)", "")
    outcomes = Table(
        box=None, pad_edge=False, show_edge=False, header_style="bold", expand=False, padding=(0, 1)
    )
    outcomes.add_column("outcome", no_wrap=True, max_width=54, overflow="ellipsis")
    outcomes.add_column(f"per s ({window})", justify="right", no_wrap=True)
    outcomes.add_column("total", justify="right", no_wrap=True)
    for status, reason, per_second, count in figures.outcomes[:OUTCOME_ROWS]:
        outcomes.add_row(f"{status:<9} {reason}", number(per_second, 1), number(count))
    hidden = len(figures.outcomes) - OUTCOME_ROWS
    if not figures.outcomes:
        outcomes.add_row("(no booking has finished since the service started)", "", "")
    elif hidden > 0:
        outcomes.add_row(f"... and {hidden} more", "", "")
    queues = Text.assemble(
        ("queues     ", "bold"),
        "  ".join(f"{q} {number(figures.queues[q])}" for q in SAGA_QUEUES),
    )
    dead = Text.assemble(
        ("dead       ", "bold"),
        "  ".join(f"{q} {number(figures.queues[q])}" for q in DEAD_LETTER_QUEUES),
    )
    for part in (queues, dead):
        part.no_wrap, part.overflow = True, "ellipsis"
    database = Text.assemble(("backlog  ", "bold"), f"from {backlog.source}")
    parts: list[RenderableType] = [
        header,
        Rule(style="grey37"),
        saga,
        quota,
        Rule(style="grey37"),
        outcomes,
        Rule(style="grey37"),
        queues,
        dead,
        health_text("booking", top.frames[-1].booking_health),
        health_text("discount", top.frames[-1].discount_health),
        database,
    ]
    return Group(*parts)


# -- the keyboard ----------------------------------------------------------------------------


@contextlib.contextmanager
def keys_pressed(stop: asyncio.Event) -> Iterator[None]:
    """On a terminal, ``q`` sets ``stop`` (keys are read one by one, without echo); the
    terminal's settings are restored however the view ends. Ctrl-C still interrupts."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()

    def on_key() -> None:
        if os.read(fd, 32).lower().startswith(b"q"):
            stop.set()

    tty.setcbreak(fd)
    loop.add_reader(fd, on_key)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run_top(top: Top, interval: float, count: int | None) -> None:
    console = common.out()
    stop = asyncio.Event()
    try:
        await top.refresh()
        if not console.is_terminal:  # piped: one frame after another, as `watch` does
            shown = 0
            while True:
                console.print(render(top, top.figures(), interval=interval))
                shown += 1
                if count is not None and shown >= count:
                    return
                await asyncio.sleep(interval)
                await top.refresh()
        from rich.live import Live

        with (
            keys_pressed(stop),
            Live(
                render(top, top.figures(), interval=interval),
                console=console,
                screen=True,
                auto_refresh=False,
            ) as live,
        ):
            shown = 1
            while count is None or shown < count:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
                if stop.is_set():
                    return
                await top.refresh()
                live.update(render(top, top.figures(), interval=interval), refresh=True)
                shown += 1
    finally:
        await top.close()


def top(
    url: common.ApiUrl = None,
    worker_metrics_url: common.WorkerMetricsUrl = None,
    database_url: common.DatabaseUrl = None,
    token: common.ApiToken = None,
    interval: common.Interval = 1.0,
    window: Annotated[
        float,
        typer.Option(
            help="Seconds over which rates and percentiles are computed.", min=1, metavar="SECONDS"
        ),
    ] = 10.0,
    count: common.Refreshes = None,
) -> None:
    """A full-screen live view of the running system: sagas per second, end-to-end latency
    percentiles, outcomes by reason, today's quota against its limit, the PENDING and outbox
    backlogs, queue depths and dead letters, and each service's health. q or Ctrl-C ends it.

    Against `make dev` it needs no flag. Against a cluster, port-forward the booking service
    and the discount worker's port 9464, then give --url and --worker-metrics-url (and
    --database-url for the backlog, else it comes from the booking service's gauges).

    Exit status: 0 ended with q or Ctrl-C (or after --count); 2 the booking API cannot be
    reached.
    """
    api = common.api_url(url)
    worker = common.worker_metrics_url(worker_metrics_url)
    found = common.stack()
    database = database_url
    if database is None and (found is not None or common.database_configured()):
        database = common.database_dsn(None)

    async def main() -> None:
        from medbook.cli.api import BookingApi

        async with BookingApi(api, token):  # fail early, and clearly, when the API is away
            pass
        await run_top(Top(api, worker, database, token, window), interval, count)

    common.run(main(), interrupt_ok=True)
