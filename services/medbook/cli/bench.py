"""``medbook bench``: the saga's benchmark, against a running system or a fresh local one.

Against any system (``--url``, or ``--local`` for a fresh one): N bookings at
concurrency C (closed loop), then, for each ``--rate``, N bookings offered at
that fixed rate (open loop, latency from each intended send time), a rate
given in bookings/s or as a percentage of the closed-loop figure just measured.

On a fresh local system, one run also measures what is compared with it, on
the same machine in the same minutes (absolute figures on a shared machine
move by 2x; ratios measured together do not):

- ``--ceiling``: the design's limit (``cli/ceiling.py``): the saga's statements,
  messages and scripts with as little Python as possible; medbook's figure is
  printed as a fraction of it (``ratio_to_ceiling`` in the JSON);
- ``--sampling R`` (repeatable): the closed-loop run again with the services
  tracing at each sampling ratio (``parentbased_traceidratio``), spans exported;
- ``--data N``: N bookings of the past year loaded with COPY, then throughput
  and ``GET /booking/{id}`` latency against the empty-table figures, and how
  long ``medbook bookings stats`` and the sweep take (with their plans);
- ``--backlog N``: N events left in the outbox, as by a broker outage, and how
  fast they drain against the steady saga rate while GETs keep being answered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Any

import aiohttp
import typer
from rich.console import Console

from medbook.cli import common
from medbook.cli.loadgen import GetProbe, LoadProfile, LoadReport, LoadRun, probe_gets, render

if TYPE_CHECKING:
    from medbook.cli.benchsystem import LocalSystem

console = Console(stderr=True)
TRACE_EXPORT_WAIT = 6.0  # the batch span processor exports every 5 s
BACKLOG_TIMEOUT = 3000.0  # under the local system's pending timeout (3600 s)


def run_profile(
    api_url: str,
    profile: LoadProfile,
    *,
    token: str | None = None,
    database_url: str | None = None,
    metrics_targets: dict[str, str] | None = None,
    get_probe: GetProbe | None = None,
) -> LoadReport:
    return asyncio.run(
        LoadRun(
            api_url,
            profile,
            token=token,
            database_url=database_url,
            metrics_targets=metrics_targets,
            get_probe=get_probe,
        ).run()
    )


# -- option values -------------------------------------------------------------------------


def parse_fraction(text: str, option: str = "--sampling") -> float:
    """``off``, ``10%`` or ``0.1`` -> a fraction (0 to 1)."""
    value = text.strip().lower()
    if value in ("off", "none"):
        return 0.0
    try:
        ratio = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: give a ratio (0.1), a percentage (10%) or off", param_hint=option
        ) from None
    if not 0 <= ratio <= 1:
        raise typer.BadParameter(f"{text!r} is not between 0 and 1 (100%)", param_hint=option)
    return ratio


def parse_sampling(text: str) -> float:
    """The sampling ratio of ``--sampling`` (0 to 1)."""
    return parse_fraction(text, "--sampling")


def parse_hostile(text: str) -> float:
    """The hostile share of ``--hostile``: below 1 (some requests must be good)."""
    share = parse_fraction(text, "--hostile")
    if share >= 1:
        raise typer.BadParameter(f"{text!r}: some requests must be good", param_hint="--hostile")
    return share


@dataclass(frozen=True)
class RateSpec:
    """An open-loop rate: bookings/s, or a fraction of the measured closed-loop maximum."""

    value: float
    relative: bool

    @classmethod
    def parse(cls, text: str) -> RateSpec:
        value = text.strip()
        relative = value.endswith("%")
        try:
            number = float(value[:-1] if relative else value)
        except ValueError:
            raise typer.BadParameter(
                f"{text!r}: give bookings/s (300) or a percentage of the closed-loop figure (80%)",
                param_hint="--rate",
            ) from None
        if not number > 0:
            raise typer.BadParameter(f"{text!r} is not a positive rate", param_hint="--rate")
        return cls(number / 100 if relative else number, relative)

    def resolve(self, maximum: float | None) -> float:
        if not self.relative:
            return self.value
        if not maximum:
            raise ValueError("no closed-loop figure to take a percentage of")
        return self.value * maximum

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}/s"


# -- the measurements ----------------------------------------------------------------------


def ratio(part: float | None, whole: float | None) -> float | None:
    return part / whole if part and whole else None


def summary(report: LoadReport) -> dict[str, Any]:
    """The figures of a secondary run, for the JSON."""
    return {
        "saga_rate": report.saga_rate,
        "created": report.created,
        "create_rate": report.create_rate,
        "saga_latency_ms": report.saga_latency_ms,
        "create_latency_ms": report.create_latency_ms,
        "stuck": len(report.stuck),
        "http_errors": report.http_errors,
    }


class Bench:
    """The phases of one ``medbook bench`` run; each adds its figures to :attr:`result`."""

    def __init__(
        self,
        *,
        url: str,
        system: LocalSystem | None,
        profile: LoadProfile,
        warmup: int,
        token: str | None,
        database_url: str | None,
        metrics_targets: dict[str, str],
    ) -> None:
        self.url = url
        self.system = system
        self.profile = profile
        self.warmup = warmup
        self.token = token
        self.database_url = database_url
        self.metrics_targets = metrics_targets
        self.result: dict[str, Any] = {}
        self.lines: list[str] = []  # the summary, in the order measured
        self.ok = True

    def say(self, text: str) -> None:
        console.print(text, markup=False, highlight=False)

    def _check(self, report: LoadReport) -> None:
        self.ok = self.ok and report.ok

    def closed_loop(
        self, *, seed_offset: int = 0, get_probe: GetProbe | None = None
    ) -> tuple[LoadReport, dict[str, float]]:
        """A warm-up, then the measured run; CPU per booking of each process when local."""
        profile = LoadProfile(
            bookings=self.profile.bookings,
            concurrency=self.profile.concurrency,
            seed=self.profile.seed + seed_offset,
            settle_timeout=self.profile.settle_timeout,
        )
        if self.warmup:
            self.say(f"warm-up: {self.warmup} bookings")
            run_profile(
                self.url,
                LoadProfile(
                    bookings=self.warmup, concurrency=profile.concurrency, seed=profile.seed + 1000
                ),
                token=self.token,
                database_url=self.database_url,
            )
        meter = None
        if self.system is not None:
            from medbook.cli.benchsystem import LOAD_GENERATOR, own_cpu_seconds, per_booking_ms

            meter = self.system.cpu_meter()
            meter.start()
            own = own_cpu_seconds()
        report = run_profile(
            self.url,
            profile,
            token=self.token,
            database_url=self.database_url,
            metrics_targets=self.metrics_targets,
            get_probe=get_probe,
        )
        self._check(report)
        cpu: dict[str, float] = {}
        if meter is not None:
            used = meter.since()
            used[LOAD_GENERATOR] = own_cpu_seconds() - own
            cpu = per_booking_ms(used, report.created)
            report.cpu_ms_per_booking = cpu  # every process tree, servers included
        return report, cpu

    def hostile(self, share: float, clean: LoadReport) -> None:
        """The closed loop again with ``share`` of the requests hostile (cli/hostile.py): every
        good booking must succeed, every hostile request get its 4xx, and the good ones'
        latency is compared with the clean run's."""
        self.say(
            f"hostile mix: {self.profile.bookings} good bookings, {share:.0%} of all requests "
            "hostile"
        )
        report = run_profile(
            self.url,
            replace(self.profile, hostile=share, seed=self.profile.seed + 500),
            token=self.token,
            database_url=self.database_url,
        )
        self._check(report)
        assert report.hostile is not None
        saga = ratio(report.saga_latency_ms.get("p99"), clean.saga_latency_ms.get("p99"))
        create = ratio(report.create_latency_ms.get("p99"), clean.create_latency_ms.get("p99"))
        self.result["hostile"] = summary(report) | {
            "share": share,
            "requests": report.hostile,
            "saga_p99_ratio_to_clean": saga,
            "create_p99_ratio_to_clean": create,
        }
        holes = sum(report.hostile["unexpected"].values())
        good = f"{report.created}/{report.requested} good created"
        if report.stuck:
            good += f", {len(report.stuck)} stuck"
        self.lines.append(
            f"hostile {share:.0%}    {good}; saga p99 "
            f"{_ms(report.saga_latency_ms.get('p99'))} ({_ratio(saga, 1.0)} of clean), create "
            f"p99 {_ms(report.create_latency_ms.get('p99'))} ({_ratio(create, 1.0)}); "
            f"{report.hostile['sent']} hostile requests, {holes} not refused as expected"
            + (f": {report.hostile['unexpected']}" if holes else "")
        )

    def open_loop(self, rates: Sequence[RateSpec], maximum: float | None) -> None:
        runs = []
        for index, spec in enumerate(rates):
            rate = spec.resolve(maximum)
            self.say(
                f"open loop: {self.profile.bookings} bookings offered at {rate:.0f}/s ({spec})"
            )
            report = run_profile(
                self.url,
                LoadProfile(
                    bookings=self.profile.bookings,
                    concurrency=self.profile.concurrency,
                    seed=self.profile.seed + 100 + index,
                    settle_timeout=self.profile.settle_timeout,
                    offered_rate=rate,
                ),
                token=self.token,
                database_url=self.database_url,
            )
            self._check(report)
            latency = report.offered_latency_ms or {}
            runs.append(
                summary(report)
                | {
                    "rate": rate,
                    "fraction_of_max": ratio(rate, maximum),
                    "offered_latency_ms": latency,
                    "send_lag_ms": report.send_lag_ms,
                }
            )
            self.lines.append(
                f"open loop      {rate:.0f}/s ("
                + (
                    f"{rate / maximum:.0%} of the closed-loop figure"
                    if maximum and spec.relative
                    else str(spec)
                )
                + f"): end-to-end from the intended send p50 {_ms(latency.get('p50'))}, "
                f"p99 {_ms(latency.get('p99'))}, p99.9 {_ms(latency.get('p99.9'))}; "
                f"the generator sent late by p99 {_ms((report.send_lag_ms or {}).get('p99'))}"
                + (f"; {len(report.stuck)} stuck" if report.stuck else "")
            )
        self.result["open_loop"] = runs

    def ceiling(self, window: int) -> None:
        from medbook.cli import ceiling
        from medbook.cli.benchsystem import per_booking_ms

        assert self.system is not None
        self.say(
            f"ceiling: the saga's own statements, messages and scripts x {self.profile.bookings}"
        )
        with self.system.ceiling_database() as database_url:
            meter = self.system.cpu_meter()
            meter.start()
            measured = ceiling.measure(
                ceiling.CeilingConfig(
                    database_url=database_url,
                    redis_url=self.system.ceiling_redis_url,
                    amqp_url=self.system.amqp_url,
                    bookings=self.profile.bookings,
                    seed=self.profile.seed,
                    window=window,
                )
            )
            measured.servers_cpu_seconds = meter.since()
        cpu = per_booking_ms(
            measured.servers_cpu_seconds | measured.client_cpu_seconds, measured.bookings
        )
        self.result["ceiling"] = measured.to_dict() | {"cpu_ms_per_booking": cpu}
        self.lines.append(
            f"ceiling        {measured.rate:.0f} bookings/s ({measured.bookings} in "
            f"{measured.seconds:.2f} s; batches of {measured.batch}, at most {measured.window} "
            f"in flight; {cpu.get('total', 0):.2f} ms CPU per booking)"
        )

    def tracing(self, levels: Sequence[float], rounds: int) -> None:
        """The closed-loop run again at each sampling ratio (services restarted for each), in
        ``rounds`` interleaved rounds, every other one in reverse (off, 10 %, 100 %, then 100
        %, 10 %, off, ...), so that a drift of the machine or of the database (each run
        leaves its bookings behind) does not favour one level: each round's ratios are
        taken between runs minutes apart, and the median over the rounds is reported.
        Tracing off is measured again in each round, in the same conditions as the levels
        (the first closed-loop run met an empty table)."""
        assert self.system is not None
        order = [0.0, *levels]
        runs: dict[float, list[dict[str, Any]]] = {level: [] for level in order}
        for round_ in range(rounds):
            for level in order if round_ % 2 == 0 else order[::-1]:
                self.say(
                    f"tracing {'off' if level == 0 else format(level, '.0%')} "
                    f"(round {round_ + 1} of {rounds}): restarting the services"
                )
                self.system.start_services(level)
                spans_before = self.system.spans_exported() or 0
                report, cpu = self.closed_loop(seed_offset=round_ * 10 + int(level * 1000) + 7)
                if level > 0:
                    time.sleep(TRACE_EXPORT_WAIT)
                spans = (self.system.spans_exported() or 0) - spans_before
                bookings = report.created + self.warmup
                runs[level].append(
                    {
                        "report": report,
                        "cpu": cpu,
                        "spans_per_booking": spans / bookings if bookings else None,
                    }
                )
        figures: list[dict[str, Any]] = []
        for level in order:
            measured = runs[level]
            offs = runs[0.0]
            rates = [m["report"].saga_rate for m in measured]
            cpus = [m["cpu"].get("total") for m in measured]
            figures.append(
                {
                    "sampling": level,
                    "saga_rate": _median(rates),
                    "saga_rates": rates,
                    "ratio_to_untraced": _median(
                        [
                            ratio(m["report"].saga_rate, o["report"].saga_rate)
                            for m, o in zip(measured, offs, strict=True)
                        ]
                    ),
                    "cpu_ms_per_booking": _median(cpus),
                    "cpu_ratio_to_untraced": _median(
                        [
                            ratio(m["cpu"].get("total"), o["cpu"].get("total"))
                            for m, o in zip(measured, offs, strict=True)
                        ]
                    ),
                    "spans_per_booking": _median([m["spans_per_booking"] for m in measured]),
                    "cpu_ms_per_booking_by_process": {
                        name: _median([m["cpu"].get(name, 0.0) for m in measured])
                        for name in measured[0]["cpu"]
                        if name != "total"
                    },
                    "rounds": rounds,
                }
                | summary(measured[-1]["report"])
                | {"saga_rate": _median(rates)}
            )
        self.result["tracing_levels"] = figures

        def describe(f: dict[str, Any]) -> str:
            name = "off" if f["sampling"] == 0 else format(f["sampling"], ".0%")
            text = f"{name} {f['saga_rate'] or 0:.0f}/s"
            if f["sampling"]:
                text += (
                    f" ({_ratio(f['ratio_to_untraced'], 1.0)} of off; CPU per booking "
                    f"{_ratio(f['cpu_ratio_to_untraced'], 1.0)}; "
                    f"{f['spans_per_booking'] or 0:.1f} spans per booking)"
                )
            return text

        self.lines.append(
            "tracing        "
            + "; ".join(describe(f) for f in figures)
            + (f" (medians of {rounds} interleaved rounds)" if rounds > 1 else "")
        )

    def data(self, rows: int, get_rate: float, sampling: float) -> None:
        """The empty-table figures, then the same with ``rows`` bookings of the past year."""
        from medbook.cli import benchdata

        assert self.system is not None
        assert self.database_url is not None
        self.say(f"a year of data: the empty-table figures first (GETs at {get_rate:g}/s)")
        empty, empty_cpu = self.closed_loop(seed_offset=300, get_probe=GetProbe(get_rate))
        self.say(f"a year of data: loading {rows} bookings (COPY)")
        self.system.stop_services()
        loaded = asyncio.run(benchdata.load_year(self.database_url, rows))
        self.say(f"loaded {loaded.rows} in {loaded.seconds:.1f} s; measuring against them")
        self.system.start_services(sampling)
        full, full_cpu = self.closed_loop(
            seed_offset=400, get_probe=GetProbe(get_rate, loaded.sample)
        )
        timed = asyncio.run(
            benchdata.time_operations(self.database_url, dt.timedelta(seconds=3600))
        )

        def get_p99(report: LoadReport) -> float | None:
            return (report.get_latency_ms or {}).get("p99")

        self.result["data"] = {
            "rows": loaded.rows,
            "load_seconds": loaded.seconds,
            "rows_per_second": loaded.rows / loaded.seconds if loaded.seconds else None,
            "table_bytes": loaded.table_bytes,
            "empty": summary(empty)
            | {"get_latency_ms": empty.get_latency_ms, "cpu_ms_per_booking": empty_cpu},
            "loaded": summary(full)
            | {"get_latency_ms": full.get_latency_ms, "cpu_ms_per_booking": full_cpu},
            "saga_rate_ratio": ratio(full.saga_rate, empty.saga_rate),
            "cpu_ratio": ratio(full_cpu.get("total"), empty_cpu.get("total")),
            "postgres_cpu_ratio": ratio(full_cpu.get("postgres"), empty_cpu.get("postgres")),
            "get_p99_ratio": ratio(get_p99(full), get_p99(empty)),
            "operations": [{"name": t.name, "seconds": t.seconds, "plan": t.plan} for t in timed],
        }
        self.lines.append(
            f"year of data   {loaded.rows} rows ({loaded.table_bytes / 2**20:.0f} MiB) loaded in "
            f"{loaded.seconds:.0f} s; saga {full.saga_rate or 0:.0f}/s vs "
            f"{empty.saga_rate or 0:.0f}/s empty ({_ratio(full.saga_rate, empty.saga_rate)}); "
            f"GET p99 {_ms(get_p99(full))} vs {_ms(get_p99(empty))} empty "
            f"({_ratio(get_p99(full), get_p99(empty))}); CPU per booking "
            f"{_ratio(full_cpu.get('total'), empty_cpu.get('total'))} (PostgreSQL's "
            f"{_ratio(full_cpu.get('postgres'), empty_cpu.get('postgres'))})"
        )
        for t in timed:
            self.lines.append(f"               {t.name}: {t.seconds * 1000:.0f} ms")
            self.result.setdefault("plans", {})[t.name] = t.plan

    def backlog(self, rows: int, get_rate: float, sampling: float, steady: float | None) -> None:
        from medbook.cli import benchdata

        assert self.system is not None
        assert self.database_url is not None
        self.say(f"outbox backlog: stopping the services, leaving {rows} events in the outbox")
        self.system.stop_services()
        load_seconds, ids = asyncio.run(benchdata.load_backlog(self.database_url, rows))
        self.say(f"loaded in {load_seconds:.1f} s; starting the services (the broker is back)")
        # The drain is timed from here: the relay starts publishing as soon as the booking
        # service is up, before start_services returns (a small backlog can be gone by then).
        since = time.monotonic()
        self.system.start_services(sampling)
        drained = asyncio.run(
            drain_backlog(self.url, self.database_url, ids, get_rate, BACKLOG_TIMEOUT, since)
        )
        drained["outbox_bytes_after"] = asyncio.run(
            benchdata.relation_bytes(self.database_url, "outbox")
        )
        drained["outbox_bytes_after_vacuum"] = asyncio.run(
            benchdata.relation_bytes(self.database_url, "outbox", vacuum=True)
        )
        drained["steady_saga_rate"] = steady
        drained["drain_ratio_to_steady"] = ratio(drained["outbox_drain_rate"], steady)
        self.ok = self.ok and drained["finished"]
        self.result["backlog"] = drained | {"rows": rows, "load_seconds": load_seconds}
        get = drained["get_latency_ms"]
        self.lines.append(
            f"outbox backlog {rows} events drained at {drained['outbox_drain_rate'] or 0:.0f}/s "
            f"({_ratio(drained['outbox_drain_rate'], steady)} of the steady saga rate), the "
            f"bookings finished at {drained['saga_rate'] or 0:.0f}/s; GETs meanwhile p50 "
            f"{_ms(get.get('p50'))}, p99 {_ms(get.get('p99'))}, errors "
            f"{sum(drained['get_errors'].values())}; the outbox table "
            f"{drained['outbox_bytes_after'] / 2**20:.1f} MiB after, "
            f"{drained['outbox_bytes_after_vacuum'] / 2**20:.1f} MiB after a VACUUM"
        )


async def drain_backlog(
    api_url: str,
    database_url: str,
    ids: list[str],
    get_rate: float,
    give_up_after: float,
    since: float,
) -> dict[str, Any]:
    """Follow the outbox and the PENDING bookings until both are empty, with GETs offered at
    ``get_rate`` meanwhile. The rates are the backlog's size (``ids``, one event each) over
    the time from ``since`` (``time.monotonic()`` when the services were started, so their
    start-up counts against the drain) until each was empty."""
    import asyncpg

    from medbook.booking.maintenance import BookingMaintenance

    conn = await asyncpg.connect(database_url)
    stop = asyncio.Event()
    try:
        bookings = BookingMaintenance(conn)
        async with aiohttp.ClientSession() as session:
            probing = asyncio.create_task(
                probe_gets(session, api_url.rstrip("/"), list, GetProbe(get_rate, ids), stop)
            )
            first = await bookings.backlog()
            outbox_empty = finished = None
            while time.monotonic() - since < give_up_after:
                backlog = await bookings.backlog()
                now = time.monotonic() - since
                if outbox_empty is None and backlog.outbox == 0:
                    outbox_empty = now
                if backlog.pending == 0 and backlog.outbox == 0:
                    finished = now
                    break
                await asyncio.sleep(0.25)
            stop.set()
            probe = await probing
    finally:
        stop.set()
        await conn.close()
    return {
        "outbox_at_start": first.outbox,
        "pending_at_start": first.pending,
        "outbox_seconds": outbox_empty,
        "saga_seconds": finished,
        "outbox_drain_rate": len(ids) / outbox_empty if outbox_empty else None,
        "saga_rate": len(ids) / finished if finished else None,
        "finished": finished is not None,
        "get_latency_ms": probe.latency_ms,
        "get_errors": dict(probe.errors),
    }


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


async def reachable(url: str, token: str | None) -> None:
    from medbook.cli.api import BookingApi

    async with BookingApi(url, token):  # one line (exit status 2) when nothing answers there
        pass


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _ratio(value: float | None, reference: float | None) -> str:
    share = ratio(value, reference)
    return "-" if share is None else f"{share:.2f}x"


# -- the command ---------------------------------------------------------------------------

LOCAL_ONLY = "--ceiling, --sampling, --tracing, --data, --backlog and --redis-replicas need --local"


def bench(
    bookings: Annotated[
        int,
        typer.Option("--bookings", "-n", min=1, help="How many bookings per run (N).", metavar="N"),
    ] = 2000,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Concurrent clients (C).", metavar="C")
    ] = 64,
    url: common.ApiUrl = None,
    local: Annotated[
        bool, typer.Option(help="Start a fresh local system for the run, then stop it.")
    ] = False,
    ceiling: Annotated[
        bool,
        typer.Option(
            help="--local: also measure the design's limit on this machine (the saga's "
            "statements, messages and scripts alone) and medbook's ratio to it."
        ),
    ] = False,
    ceiling_window: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="N",
            help="Bookings the ceiling keeps in flight at most (MEDBOOK_MAX_PENDING).",
        ),
    ] = 32,
    rate: Annotated[
        list[str] | None,
        typer.Option(
            metavar="RATE",
            help="Also offer N bookings at this fixed rate (open loop): bookings/s, or a "
            "percentage of the closed-loop figure (80%). Repeatable.",
        ),
    ] = None,
    sampling: Annotated[
        list[str] | None,
        typer.Option(
            metavar="RATIO",
            help="--local: also run with the services tracing at this sampling ratio "
            "(0.1 or 10%; parentbased_traceidratio), spans exported over OTLP. Repeatable.",
        ),
    ] = None,
    tracing: Annotated[bool, typer.Option(help="--local: the same as --sampling 100%.")] = False,
    hostile: Annotated[
        str | None,
        typer.Option(
            metavar="SHARE",
            help="Also run the closed loop with this share of all requests hostile (10%: NUL "
            "and control characters, invisible names, oversized header, URL and body...), and "
            "compare the good bookings' p99 with the clean run's.",
        ),
    ] = None,
    redis_replicas: Annotated[
        int,
        typer.Option(
            min=0,
            metavar="N",
            help="--local: give Redis N replicas and make each quota write wait for "
            "them (WAIT, as behind Sentinel), to measure what that costs.",
        ),
    ] = 0,
    rounds: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="N",
            help="--sampling: measure off and each ratio this many times, interleaved, and "
            "report the medians (on a shared machine, 3 or more).",
        ),
    ] = 1,
    data: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="ROWS",
            help="--local: load this many bookings of the past year (COPY) and compare "
            "throughput and GET latency with the empty table; time `bookings stats` and the sweep.",
        ),
    ] = None,
    backlog: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="EVENTS",
            help="--local: leave this many events in the outbox (a broker outage) and measure "
            "how fast they drain while the API answers GETs.",
        ),
    ] = None,
    get_rate: Annotated[
        float,
        typer.Option(
            min=1,
            metavar="PER_SECOND",
            help="GET /booking/{id} per second during --data and --backlog.",
        ),
    ] = 100.0,
    database_url: common.StatesDatabaseUrl = None,
    worker_metrics_url: common.WorkerMetricsUrl = None,
    token: common.ApiToken = None,
    seed: common.Seed = 42,
    warmup: Annotated[
        int, typer.Option(help="Bookings sent first before each run and not measured.", metavar="N")
    ] = 200,
    settle_timeout: common.SettleTimeout = 120.0,
    json_output: common.JsonOutput = False,
) -> None:
    """Send N bookings at concurrency C and report create and saga throughput, latency
    percentiles (end-to-end from the server's stored timestamps), peak RSS, and every booking
    that did not finish; then whatever else was asked (--rate, and with --local --ceiling,
    --sampling, --data, --backlog), each figure beside what it is compared with, measured in
    the same run; --hostile mixes in requests the API must refuse. Exits 1 if any booking is
    stuck, any request failed or a hostile request was not refused as expected.
    """
    logging.basicConfig(level=logging.WARNING)
    rates = [RateSpec.parse(r) for r in rate or []]
    levels = [parse_sampling(s) for s in sampling or []]
    if tracing and 1.0 not in levels:
        levels.append(1.0)
    levels = [level for level in levels if level > 0]
    hostile_share = parse_hostile(hostile) if hostile else 0.0
    if not local and (ceiling or levels or data or backlog or redis_replicas):
        console.print(f"[red]{LOCAL_ONLY} (a running system is measured as it is configured)[/red]")
        raise typer.Exit(2)
    profile = LoadProfile(
        bookings=bookings, concurrency=concurrency, seed=seed, settle_timeout=settle_timeout
    )
    runs = 1 + (len(levels) + 1) * rounds + len(rates) + (2 if data else 0) + (1 if hostile else 0)
    if local:
        from medbook.cli.benchsystem import LocalSystem

        daily_limit = runs * (bookings + warmup) + (backlog or 0) + 100
        console.print("starting a fresh local system ...")
        with LocalSystem(daily_limit, redis_replicas=redis_replicas) as system:
            measured = Bench(
                url=system.api_url,
                system=system,
                profile=profile,
                warmup=warmup,
                token=token,
                database_url=system.database_url,
                metrics_targets={
                    "booking": f"{system.api_url}/metrics",
                    "discount": system.worker_metrics_url,
                },
            )
            report = _phases(
                measured, rates, levels, ceiling, ceiling_window, data, backlog, get_rate, rounds,
                hostile_share,
            )  # fmt: skip
    else:  # a running system: the flag, the variable, the medbook dev running here
        url = common.api_url(url)
        database_url = common.states_database(database_url)
        worker_metrics_url = common.worker_metrics_url(worker_metrics_url)
        common.run(reachable(url, token))
        targets = {"booking": f"{url.rstrip('/')}/metrics"}
        if worker_metrics_url:
            targets["discount"] = worker_metrics_url
        measured = Bench(
            url=url,
            system=None,
            profile=profile,
            warmup=warmup,
            token=token,
            database_url=database_url,
            metrics_targets=targets,
        )
        report = _phases(
            measured, rates, [], False, ceiling_window, None, None, get_rate, 1, hostile_share
        )
    _print(measured, report, json_output)
    raise typer.Exit(0 if measured.ok else 1)


def _phases(
    measured: Bench,
    rates: Sequence[RateSpec],
    levels: Sequence[float],
    ceiling: bool,
    ceiling_window: int,
    data: int | None,
    backlog: int | None,
    get_rate: float,
    rounds: int,
    hostile: float = 0.0,
) -> LoadReport:
    """Everything asked for, in an order that keeps each comparison's runs together."""
    system = measured.system
    if system is not None:
        if ceiling:  # before the services start: the ceiling has the machine to itself
            measured.ceiling(ceiling_window)
        system.start_services(0.0)
    measured.say(
        f"measuring: {measured.profile.bookings} bookings at concurrency "
        f"{measured.profile.concurrency}" + (", tracing off" if system else "")
    )
    report, cpu = measured.closed_loop()
    if ceiling:
        share = ratio(report.saga_rate, measured.result["ceiling"]["rate"])
        measured.result["ratio_to_ceiling"] = share
        measured.lines.append(
            f"medbook        {report.saga_rate or 0:.0f} bookings/s = "
            + ("-" if share is None else f"{share:.2f}")
            + " of the ceiling"
            + (f" ({cpu['total']:.2f} ms CPU per booking)" if cpu else "")
        )
    if hostile:  # right after the clean run it is compared with
        measured.hostile(hostile, report)
    if rates:
        measured.open_loop(rates, report.saga_rate)
    if levels:
        measured.tracing(levels, rounds)
    if data or backlog:
        assert system is not None
        if system.sampling != 0.0:
            system.start_services(0.0)
        if data:
            measured.data(data, get_rate, 0.0)
        if backlog:
            measured.backlog(backlog, get_rate, 0.0, report.saga_rate)
    return report


def _print(measured: Bench, report: LoadReport, json_output: bool) -> None:
    system = measured.system
    if json_output:
        data = report.to_dict() | {"tracing": False if system else None}
        data |= {"ceiling": None, "ratio_to_ceiling": None} | measured.result
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    typer.echo(render(report))
    for line in measured.lines:
        typer.echo(line)
    for name, plan in measured.result.get("plans", {}).items():
        typer.echo(f"\nEXPLAIN (ANALYZE, BUFFERS) of {name}:")
        typer.echo("\n".join(f"  {line}" for line in plan))
