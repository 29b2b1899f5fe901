"""One failover drill: a booking load with a fault in the middle, then the saga's promises checked.

The load is ``medbook load``'s engine (``medbook.cli.loadgen``): N bookings,
about 70% eligible for a discount (birthdays and high-value bookings), against
a daily limit the load exhausts. Each create carries an Idempotency-Key and a
503 (or a lost answer) is sent again, as a careful client does. When a given
number of bookings have been created, the drill's fault runs (a coroutine:
SIGKILL a node, promote a standby, bring the node back ...), while the load
goes on; then the load waits, for a bounded time, for every booking to be
final.

Afterwards :meth:`Drill.verify` checks what issue 14 promises, against the
database, Redis and the broker themselves:

- every booking answered 201 exists and is final (the sweep is off here, so
  none may be PENDING), and no booking exists that was not answered 201;
- an Idempotency-Key names one booking, the one its 201 named;
- no booking has two results, none changed after it was final;
- discounted bookings = the day's counter = its reservations = the limit (or
  the eligible count, if fewer), and the reservations are those bookings;
- no message was dead-lettered;
- the services were not restarted (same processes) and are ready again.

Its :class:`DrillReport` says what the fault was, how long the saga (and
creation) stalled, how many 5xx were answered meanwhile, and every count.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import asyncpg
import httpx

from medbook.cli.loadgen import BookingOutcome, LoadProfile, LoadReport, LoadRun
from medbook.contracts import (
    BOOKING_QUEUE,
    DISCOUNT_QUEUE,
    QUOTA_EXHAUSTED_REASON,
    dead_letter_queue,
)
from medbook.discount.quota import counter_key, members_key
from medbook.redis_sentinel import redis_from_url
from tests.helpers import Infra, ProcessServices, today

# 45% birthdays and 25% high-value bookings are eligible: 70%.
DRILL_MIX = {"birthday": 0.45, "high_value": 0.25, "plain": 0.30}
ELIGIBLE_KINDS = frozenset({"birthday", "high_value"})

REPORTS: list[DrillReport] = []
"""Every drill's report in this session, printed in the terminal summary."""


@dataclass
class DrillReport:
    name: str
    fault: list[str]
    bookings: int
    eligible: int
    limit: int
    saga_stall_s: float
    create_stall_s: float
    http_5xx_while_stalled: int
    http_5xx_total: int
    retried: dict[str, int]
    replayed: int
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def render(self) -> str:
        lines = [
            f"{self.name}: {'OK' if not self.problems else 'FAILED'} in {self.duration_s:.1f}s",
            "  fault        " + "; ".join(self.fault),
            f"  load         {self.bookings} bookings, {self.eligible} eligible, "
            f"daily limit {self.limit}",
            f"  stall        saga {self.saga_stall_s:.2f}s, creation {self.create_stall_s:.2f}s; "
            f"5xx while stalled {self.http_5xx_while_stalled} (total {self.http_5xx_total})",
            "  retried      "
            + (", ".join(f"{k}: {v}" for k, v in sorted(self.retried.items())) or "none")
            + f"; {self.replayed} answered as an Idempotency-Key replay",
            "  counts       " + ", ".join(f"{k} {v}" for k, v in self.counts.items()),
        ]
        lines += [f"  PROBLEM      {p}" for p in self.problems]
        return "\n".join(lines)


class Drill:
    """The services (real processes) on HA backends, a load, a fault, and the checks."""

    def __init__(
        self,
        name: str,
        infra: Infra,
        services: ProcessServices,
        *,
        limit: int,
        bookings: int = 1000,
        concurrency: int = 24,
        rate: float = 80.0,
        settle_timeout: float = 120.0,
        out_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.infra = infra
        self.services = services
        self.limit = limit
        self.profile = LoadProfile(
            bookings=bookings,
            concurrency=concurrency,
            mix=dict(DRILL_MIX),
            seed=14,
            settle_timeout=settle_timeout,
            retry_for=60.0,
            rate=rate,  # paced, so that the load goes on through the fault and its repair
        )
        self.out_dir = out_dir
        self.timeline: list[tuple[float, str]] = []
        self.retries: list[tuple[float, str]] = []
        self.fault_started: float | None = None  # time.time()
        self.report: LoadReport | None = None
        self._started = time.monotonic()
        self._pids = {
            "booking": services.booking.process.pid,
            "discount": services.discount.process.pid,
        }

    # -- the run -------------------------------------------------------------------------

    def note(self, what: str) -> None:
        """Record a step of the fault (shown in the report with its time)."""
        started = self.fault_started or time.time()
        self.timeline.append((time.time() - started, what))

    async def run(
        self, fault: Callable[[Drill], Awaitable[None]], *, fault_after: int
    ) -> LoadReport:
        """The load, with ``fault`` started once ``fault_after`` bookings were created."""
        reached = asyncio.Event()

        def created(count: int) -> None:
            if count >= fault_after:
                reached.set()

        def retried(kind: str) -> None:
            self.retries.append((time.time(), kind))

        load = LoadRun(
            self.services.api_url,
            self.profile,
            database_url=self.infra.database_url,
            on_created=created,
        )
        load.on_retry = retried

        async def faulting() -> None:
            await reached.wait()
            self.fault_started = time.time()
            await fault(self)

        self._started = time.monotonic()
        fault_task = asyncio.create_task(faulting())
        try:
            self.report = await load.run()
        finally:
            if not reached.is_set():
                fault_task.cancel()
            await asyncio.gather(fault_task, return_exceptions=not reached.is_set())
        if self.report.stuck:  # the fault may have ended after the load's own wait: wait on
            await self._wait_final(self.report.bookings, timeout=self.profile.settle_timeout)
        return self.report

    async def finished(self) -> int:
        """Bookings final so far (-1 while the database cannot be read)."""
        try:
            rows = await self._rows()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return -1
        return sum(r["status"] != "PENDING" for r in rows.values())

    async def wait_progress(self, more: int, timeout: float = 60.0) -> None:
        """Until ``more`` bookings have become final since the call (the saga moves)."""
        start = await self.finished()
        deadline = time.monotonic() + timeout
        while await self.finished() < start + more:
            if time.monotonic() > deadline:
                raise AssertionError(f"the saga did not move by {more} bookings in {timeout}s")
            await asyncio.sleep(0.2)

    async def _wait_final(self, outcomes: list[BookingOutcome], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = await self._rows()
            if rows and all(r["status"] != "PENDING" for r in rows.values()):
                return
            await asyncio.sleep(0.5)

    # -- the checks ------------------------------------------------------------------------

    async def verify(self) -> DrillReport:
        """Check every promise; the report lists each broken one (and the test asserts none)."""
        assert self.report is not None, "run() first"
        assert self.fault_started is not None, "the fault never ran: the load ended too early"
        load = self.report
        problems: list[str] = []
        rows = await self._rows()
        answered = {o.booking_id: o for o in load.bookings}

        lost = set(answered) - set(rows)
        unanswered = set(rows) - set(answered)
        if lost:
            problems.append(f"{len(lost)} bookings answered 201 are missing: {sorted(lost)[:5]}")
        if unanswered:
            problems.append(f"{len(unanswered)} bookings exist that no 201 named")
        by_key = {r["idempotency_key"]: r["id"] for r in rows.values() if r["idempotency_key"]}
        wrong_key = [o for o in load.bookings if by_key.get(o.idempotency_key) != o.booking_id]
        if wrong_key:
            problems.append(
                f"{len(wrong_key)} Idempotency-Keys name another booking than their 201"
            )

        pending = [i for i, r in rows.items() if r["status"] == "PENDING"]
        if pending:
            problems.append(f"{len(pending)} bookings still PENDING: {pending[:5]}")
        two_results, changed = [], []
        for booking_id, row in rows.items():
            history = json.loads(row["history"])
            outcomes = [h for h in history if "Status: CONFIRMED" in h or "Status: REJECTED" in h]
            if len(outcomes) > 1 or any("Late discount result" in h for h in history):
                two_results.append(booking_id)
            if row["status"] != "PENDING" and row["updated_at"] != row["completed_at"]:
                changed.append(booking_id)
            seen = answered.get(booking_id)
            if (
                seen is not None
                and seen.status != "PENDING"
                and ((seen.status, seen.final_price) != (row["status"], row["final_price"]))
            ):
                changed.append(booking_id)
        if two_results:
            problems.append(f"{len(two_results)} bookings have two results: {two_results[:5]}")
        if changed:
            problems.append(f"{len(changed)} bookings changed after they were final: {changed[:5]}")

        eligible = sum(o.kind in ELIGIBLE_KINDS for o in load.bookings)
        discounted = {i for i, r in rows.items() if r["quota_day"] is not None}
        exhausted = sum(r["fail_reason"] == QUOTA_EXHAUSTED_REASON for r in rows.values())
        counter, holders = await self._quota()
        expected = min(self.limit, eligible)
        if not len(discounted) == counter == len(holders) == expected:
            problems.append(
                f"discounted {len(discounted)}, counter {counter}, reservations {len(holders)}: "
                f"all should be {expected}"
            )
        if holders != discounted:
            problems.append(
                f"reservations and discounted bookings differ: {len(holders - discounted)} "
                f"reservations without a discount, {len(discounted - holders)} discounts "
                "without a reservation"
            )
        if exhausted != eligible - len(discounted):
            problems.append(
                f"{exhausted} rejected for the quota, expected {eligible - len(discounted)}"
            )
        if load.http_errors:
            problems.append(f"creates that failed for good: {load.http_errors}")
        dead = await self._dead_letters()
        if any(dead.values()):
            problems.append(f"messages were dead-lettered: {dead}")
        problems += await self._services_recovered()

        saga_stall, create_stall = self._stalls(load.bookings)
        window_end = self.fault_started + max(saga_stall, create_stall) + 1.0
        fivexx = [t for t, kind in self.retries if kind.startswith("HTTP 5")]
        report = DrillReport(
            name=self.name,
            fault=[f"+{at:.1f}s {what}" for at, what in self.timeline],
            bookings=len(rows),
            eligible=eligible,
            limit=self.limit,
            saga_stall_s=saga_stall,
            create_stall_s=create_stall,
            http_5xx_while_stalled=sum(self.fault_started <= t <= window_end for t in fivexx),
            http_5xx_total=len(fivexx)
            + sum(v for k, v in load.http_errors.items() if k.startswith("HTTP 5")),
            retried=dict(load.retried),
            replayed=load.replayed,
            counts={
                "created (201)": len(answered),
                "final": len(rows) - len(pending),
                "pending": len(pending),
                "confirmed": sum(r["status"] == "CONFIRMED" for r in rows.values()),
                "rejected": sum(r["status"] == "REJECTED" for r in rows.values()),
                "discounted": len(discounted),
                "quota counter": counter,
                "reservations": len(holders),
                "rejected for quota": exhausted,
                "two results": len(two_results),
                "changed after final": len(changed),
                "dead-lettered": sum(dead.values()),
                "failed creates": sum(load.http_errors.values()),
                **{f"failed: {kind}": n for kind, n in load.http_errors.items()},
            },
            problems=problems,
            duration_s=time.monotonic() - self._started,
        )
        REPORTS.append(report)
        print(report.render())
        if self.out_dir is not None:
            (self.out_dir / "drill-report.json").write_text(json.dumps(asdict(report), indent=2))
        return report

    def _stalls(self, outcomes: list[BookingOutcome]) -> tuple[float, float]:
        """Longest time after the fault started in which no booking finished (was created)."""
        assert self.fault_started is not None
        start = dt.datetime.fromtimestamp(self.fault_started, dt.UTC)

        def longest_gap(moments: list[dt.datetime]) -> float:
            later = sorted(m for m in moments if m >= start)
            if not later:
                return 0.0
            points = [start, *later]
            return max((b - a).total_seconds() for a, b in itertools.pairwise(points))

        finished = [o.completed_at for o in outcomes if o.completed_at]
        created = [o.created_at for o in outcomes if o.created_at]
        return longest_gap(finished), longest_gap(created)

    async def _rows(self) -> dict[str, asyncpg.Record]:
        connection = await asyncpg.connect(self.infra.database_url, timeout=10)
        try:
            rows = await connection.fetch(
                "SELECT id::text, status, quota_day, history, result_id, final_price, "
                "fail_reason, idempotency_key, updated_at, completed_at FROM bookings"
            )
        finally:
            await connection.close()
        return {r["id"]: r for r in rows}

    async def _quota(self) -> tuple[int, set[str]]:
        client = redis_from_url(self.infra.redis_url, socket_timeout=5)
        try:
            counter = int(await client.get(counter_key(today())) or 0)
            members = {m.decode() for m in await client.smembers(members_key(today()))}
        finally:
            await client.aclose()
        return counter, members

    async def _dead_letters(self) -> dict[str, int]:
        from medbook.broker_connection import broker_urls, connect_any

        connection = await connect_any(broker_urls(self.infra.amqp_url), name="drill-check")
        try:
            channel = await connection.channel()
            counts = {}
            for queue in (DISCOUNT_QUEUE, BOOKING_QUEUE):
                declared = await channel.declare_queue(dead_letter_queue(queue), passive=True)
                counts[dead_letter_queue(queue)] = declared.declaration_result.message_count or 0
        finally:
            await connection.close()
        return counts

    async def _services_recovered(self) -> list[str]:
        problems = []
        for name, pid in self._pids.items():
            process = getattr(self.services, name).process
            if process.poll() is not None or process.pid != pid:
                problems.append(f"the {name} service is not the process it was (restarted or dead)")
        async with httpx.AsyncClient(timeout=5) as client:
            for url in (
                f"{self.services.api_url}/readyz",
                f"http://127.0.0.1:{self.services.metrics_port}/readyz",
            ):
                response = await _ready(client, url)
                if response != 200:
                    problems.append(f"{url} answers {response} after the drill")
        return problems


async def _ready(client: httpx.AsyncClient, url: str, timeout: float = 15.0) -> int | str:
    deadline = time.monotonic() + timeout
    last: int | str = "no answer"
    while time.monotonic() < deadline:
        try:
            last = (await client.get(url)).status_code
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        if last == 200:
            return last
        await asyncio.sleep(0.25)
    return last
