"""The load engine behind ``medbook bench`` and ``medbook load``: one implementation.

It sends N bookings with C concurrent users (optionally ramped up), from a
reproducible seeded mix, then waits for every booking to leave PENDING and
measures what happened, server-side where it matters. The users either share
one queue of N requests (``medbook bench``: the fastest go on) or each send
their own ``requests_per_user`` in turn (``medbook load``: N = users x
requests per user). Progress callbacks report each create, each failed
request and the bookings finished so far (counted while the bookings are
still being sent when a progress callback asks for it).

With an ``offered_rate`` the load is open-loop instead (``medbook bench
--rate``): the bookings are offered at that fixed rate whatever the answers,
each at its intended time, so a slow system meets a queue of arrivals as it
would in production, rather than clients that politely wait (coordinated
omission). Latencies are then measured from each booking's intended send time.

What it measures:

- create throughput and latency (client-side: the HTTP round trip);
- saga throughput: bookings reaching a final status per second, and the
  end-to-end latency created -> final, both from the timestamps the booking
  service stored (``createdAt``/``completedAt``), so the load generator's own
  scheduling does not distort them;
- outcomes by status and reason, HTTP errors, and every booking still PENDING
  at the end (stuck) with its id;
- peak RSS of each service (sampled from their ``/metrics``) and of the load
  generator itself, and the load generator's own CPU use;
- open-loop only: the end-to-end latency from the intended send time to the
  stored final status, and how late the generator itself sent;
- with a GET probe: ``GET /booking/{id}`` latency, offered at a fixed rate
  while the bookings are sent (ids of the run's own bookings and of a sample).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
import resource
import statistics
import time
import uuid
import zoneinfo
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from medbook.cli import hostile
from medbook.runtime import settle_garbage_collector

log = logging.getLogger(__name__)

TERMINAL = frozenset({"CONFIRMED", "REJECTED", "CANCELLED"})

# name: weight in the default mix
DEFAULT_MIX: dict[str, float] = {"birthday": 0.4, "high_value": 0.2, "plain": 0.35, "blocked": 0.05}
KINDS = ("birthday", "high_value", "plain", "blocked", "male")


@dataclass(frozen=True)
class LoadProfile:
    bookings: int
    concurrency: int
    ramp_up: float = 0.0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    seed: int = 42
    settle_timeout: float = 120.0
    time_zone: str = "Asia/Kolkata"
    blocked_user: str = "fail_test_user"
    # None: the users share the N requests; else each user sends this many, in turn
    # (``bookings`` must then be ``concurrency * requests_per_user``).
    requests_per_user: int | None = None
    # Seconds a create answered 502/503/504 (or lost in transit) is sent again, with the
    # same Idempotency-Key, as a careful client would; 0: no key, no retry (one try each).
    retry_for: float = 0.0
    # Most creates sent per second, all users together (None: as fast as they go).
    rate: float | None = None
    # Open loop: bookings offered per second whatever the answers (users are then no limit).
    offered_rate: float | None = None
    # This fraction of all requests sent are hostile ones (cli/hostile.py), among the good.
    hostile: float = 0.0

    def __post_init__(self) -> None:
        rpu = self.requests_per_user
        if rpu is not None and self.bookings != self.concurrency * rpu:
            raise ValueError(
                f"{self.bookings} bookings is not {self.concurrency} users x {rpu} requests"
            )
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate must be positive, not {self.rate}")
        if self.offered_rate is not None and not self.offered_rate > 0:
            raise ValueError(f"the offered rate must be positive, not {self.offered_rate}")
        if self.offered_rate is not None and (self.requests_per_user or self.rate):
            raise ValueError("an open-loop run has neither users' turns nor a pace")
        if not 0 <= self.hostile < 1:
            raise ValueError(
                f"the hostile fraction must be at least 0 and below 1, not {self.hostile}"
            )
        if self.hostile and self.offered_rate is not None:
            raise ValueError("hostile requests go with the closed loop, not an offered rate")

    def user_of(self, index: int) -> int:
        """The user who sends request ``index``."""
        if self.requests_per_user:
            return index // self.requests_per_user
        return index % 997


def _parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def booking_bodies(profile: LoadProfile) -> list[tuple[str, dict[str, Any]]]:
    """The run's requests, the same for the same seed and profile."""
    rng = random.Random(profile.seed)
    kinds = [k for k in profile.mix if profile.mix[k] > 0]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(
            f"unknown booking kind(s) in the mix: {', '.join(sorted(unknown))} "
            f"(known: {', '.join(KINDS)})"
        )
    weights = [profile.mix[k] for k in kinds]
    today = dt.datetime.now(zoneinfo.ZoneInfo(profile.time_zone)).date()
    birthday = (
        today.replace(year=1992)
        if (today.month, today.day) == (2, 29)
        else today.replace(year=1990)
    )
    other_day = (today + dt.timedelta(days=100)).replace(year=1985)
    bodies = []
    for i in range(profile.bookings):
        kind = rng.choices(kinds, weights)[0]
        user = f"load-{profile.seed}-{profile.user_of(i)}"
        if kind == "birthday":
            body = {
                "userName": user,
                "gender": "Female",
                "dob": birthday.isoformat(),
                "serviceNames": ["Blood Test", "Vaccination"],
            }
        elif kind == "high_value":
            body = {
                "userName": user,
                "gender": rng.choice(["Male", "Female", "Other"]),
                "dob": other_day.isoformat(),
                "serviceNames": ["MRI Scan"],
            }
        elif kind == "blocked":
            body = {
                "userName": profile.blocked_user,
                "gender": "Male",
                "dob": other_day.isoformat(),
                "serviceNames": ["X-Ray"],
            }
        elif kind == "male":
            body = {
                "userName": user,
                "gender": "Male",
                "dob": birthday.isoformat(),
                "serviceNames": ["General Consultation"],
            }
        else:
            body = {
                "userName": user,
                "gender": rng.choice(["Male", "Female", "Other"]),
                "dob": other_day.isoformat(),
                "serviceNames": ["General Consultation", "Blood Test"],
            }
        bodies.append((kind, body))
    return bodies


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99, p99.9 and max (p99.9 means something from a few thousand values on)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "p99.9": None, "max": None}
    ordered = sorted(values)
    if len(ordered) == 1:
        return dict.fromkeys(("p50", "p95", "p99", "p99.9", "max"), ordered[0])
    q = statistics.quantiles(ordered, n=1000, method="inclusive")
    return {"p50": q[499], "p95": q[949], "p99": q[989], "p99.9": q[998], "max": ordered[-1]}


def _ms(values: Sequence[float]) -> dict[str, float | None]:
    return {k: (v * 1000 if v is not None else None) for k, v in percentiles(values).items()}


@dataclass
class BookingOutcome:
    booking_id: str
    kind: str
    status: str = "PENDING"
    reason: str | None = None
    base_price: int | None = None
    final_price: int | None = None
    created_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    idempotency_key: str | None = None
    replayed: bool = False  # the 201 that counted was an Idempotency-Key replay
    attempts: int = 1
    intended_at: dt.datetime | None = None  # open loop: when it was meant to be sent


def outcome_reason(outcome: BookingOutcome) -> str:
    if outcome.status == "CONFIRMED":
        if outcome.final_price is not None and outcome.base_price is not None:
            return "discount applied" if outcome.final_price < outcome.base_price else "base price"
        return "confirmed"
    if outcome.status == "CANCELLED":
        return "cancelled"
    return outcome.reason or "rejected"


@dataclass
class LoadReport:
    requested: int
    created: int
    concurrency: int
    http_errors: dict[str, int]
    create_seconds: float
    create_rate: float
    create_latency_ms: dict[str, float | None]
    saga_rate: float | None
    saga_latency_ms: dict[str, float | None]
    outcomes: dict[str, int]
    reasons: dict[str, int]
    stuck: list[str]
    peak_rss_mb: dict[str, float]
    loadgen_cpu_percent: float
    seed: int
    bookings: list[BookingOutcome] = field(default_factory=list, repr=False)
    requests_per_user: int | None = None
    ramp_up: float = 0.0
    # Creates sent again (retry_for > 0), by what the earlier attempt got; and how many
    # 201s were replays of a booking an earlier attempt had created.
    retried: dict[str, int] = field(default_factory=dict)
    replayed: int = 0
    # CPU each sampled service used during the run, in milliseconds per booking created.
    cpu_ms_per_booking: dict[str, float] = field(default_factory=dict)
    offered_rate: float | None = None  # open loop: bookings offered per second
    # Open loop: intended send time -> final status (stored), and how late the sends were.
    offered_latency_ms: dict[str, float | None] | None = None
    send_lag_ms: dict[str, float | None] | None = None
    get_latency_ms: dict[str, float | None] | None = None  # with a GET probe
    get_errors: dict[str, int] | None = None
    # With hostile requests among the good: what each attack got (cli/hostile.py).
    hostile: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("bookings")
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    @property
    def ok(self) -> bool:
        holes = bool(self.hostile and self.hostile["unexpected"])
        return (
            not self.stuck
            and not self.http_errors
            and self.created == self.requested
            and (not holes)
        )


class MetricsSampler:
    """Samples each service's /metrics: the peak of ``process_resident_memory_bytes``, and
    ``process_cpu_seconds_total`` at the start and the end (CPU used during the run: a
    figure a busy machine distorts less than throughput)."""

    def __init__(self, targets: dict[str, str], interval: float = 0.5) -> None:
        self.targets = targets
        self.interval = interval
        self.peak: dict[str, float] = {}
        self.cpu_first: dict[str, float] = {}
        self.cpu_last: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def _sample_once(self, session: aiohttp.ClientSession) -> None:
        for name, url in self.targets.items():
            with contextlib.suppress(Exception):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    for line in (await response.text()).splitlines():
                        if line.startswith("process_resident_memory_bytes "):
                            value = float(line.split()[1]) / 2**20
                            self.peak[name] = max(self.peak.get(name, 0.0), value)
                        elif line.startswith("process_cpu_seconds_total "):
                            seconds = float(line.split()[1])
                            self.cpu_first.setdefault(name, seconds)
                            self.cpu_last[name] = seconds

    async def _sample(self, session: aiohttp.ClientSession) -> None:
        while True:
            await self._sample_once(session)
            await asyncio.sleep(self.interval)

    def start(self, session: aiohttp.ClientSession) -> None:
        if self.targets:
            self._session = session
            self._task = asyncio.create_task(self._sample(session))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            if self._session is not None:
                await self._sample_once(self._session)  # the last figures, at the end

    def cpu_seconds(self) -> dict[str, float]:
        return {k: self.cpu_last[k] - v for k, v in self.cpu_first.items() if k in self.cpu_last}


@dataclass(frozen=True)
class GetProbe:
    """``GET /booking/{id}`` offered at ``rate`` per second while a run sends its bookings,
    for ids of the run's own bookings and, half of the time, of ``sample`` (older ones)."""

    rate: float
    sample: Sequence[str] = ()


@dataclass
class ProbeResult:
    latencies: list[float] = field(default_factory=list)  # seconds, from the intended time
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def latency_ms(self) -> dict[str, float | None]:
        return _ms(self.latencies)


async def probe_gets(
    session: aiohttp.ClientSession,
    api_url: str,
    ids: Callable[[], Sequence[str]],
    probe: GetProbe,
    stop: asyncio.Event,
    *,
    seed: int = 5,
) -> ProbeResult:
    """GETs at the probe's rate (open loop) until ``stop`` is set; latency from intended time."""
    result = ProbeResult()
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def get(booking_id: str, intended: float) -> None:
        try:
            async with session.get(f"{api_url}/booking/{booking_id}") as response:
                await response.read()
                if response.status != 200:
                    result.errors[f"HTTP {response.status}"] += 1
                    return
        except (aiohttp.ClientError, TimeoutError) as exc:
            result.errors[type(exc).__name__] += 1
            return
        result.latencies.append(loop.time() - intended)

    started = loop.time()
    sent = 0
    while not stop.is_set():
        intended = started + sent / probe.rate
        delay = intended - loop.time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                break
        own = ids()
        pool = probe.sample if probe.sample and (not own or rng.random() < 0.5) else own
        sent += 1
        if not pool:
            continue
        task = asyncio.create_task(get(rng.choice(pool), intended))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return result


class LoadRun:
    """One run of the engine against a booking API."""

    def __init__(
        self,
        api_url: str,
        profile: LoadProfile,
        *,
        token: str | None = None,
        database_url: str | None = None,
        metrics_targets: dict[str, str] | None = None,
        on_created: Callable[[int], None] | None = None,
        on_failed: Callable[[int], None] | None = None,
        on_settled: Callable[[int], None] | None = None,
        get_probe: GetProbe | None = None,
    ) -> None:
        """``on_settled`` also makes the run count finished bookings while it still sends
        (for a live progress bar): from PostgreSQL when ``database_url`` is given, else by
        asking the API about at most ``concurrency`` of the oldest unfinished ones per round."""
        self.api_url = api_url.rstrip("/")
        self.profile = profile
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.database_url = database_url
        self.sampler = MetricsSampler(metrics_targets or {})
        # Progress: bookings created so far, requests failed so far, bookings finished so far.
        self.on_created = on_created or (lambda n: None)
        self.on_failed = on_failed or (lambda n: None)
        self.on_settled = on_settled or (lambda n: None)
        self.live_settle = on_settled is not None
        self._connection: Any = None  # asyncpg, when final states come from PostgreSQL
        self.get_probe = get_probe
        self._lags: list[float] = []  # open loop: how late each booking was sent
        # A create sent again (``retry_for``), and what its earlier attempt got; set it
        # after construction (the other callbacks all count, this one names a reason).
        self.on_retry: Callable[[str], None] = lambda kind: None
        self._run_id = uuid.uuid4().hex[:12]  # Idempotency-Keys are unique to this run
        self._retried: Counter[str] = Counter()
        self.hostile = hostile.HostileTally() if profile.hostile else None

    async def run(self) -> LoadReport:
        bodies = booking_bodies(self.profile)
        # The generator's own full collections (over earlier runs' results, everything
        # imported) paused it for 100 ms and more: late sends, counted against the system.
        settle_garbage_collector()
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        wall_before = time.monotonic()
        # Open loop: the connections are not what limits the offered load.
        limit = 1024 if self.profile.offered_rate else self.profile.concurrency + 8
        connector = aiohttp.TCPConnector(limit=limit, force_close=False)
        probed: ProbeResult | None = None
        async with aiohttp.ClientSession(connector=connector, headers=self.headers) as session:
            self.sampler.start(session)
            outcomes: list[BookingOutcome] = []
            stop_probe = asyncio.Event()
            probing = None
            if self.get_probe is not None:
                probing = asyncio.create_task(
                    probe_gets(
                        session,
                        self.api_url,
                        lambda: [o.booking_id for o in outcomes],
                        self.get_probe,
                        stop_probe,
                    )
                )
            try:
                send = self._offer_all if self.profile.offered_rate else self._create_all
                creating = asyncio.create_task(send(session, bodies, outcomes))
                try:
                    if self.live_settle:
                        await self._settle(session, outcomes, creating)
                    latencies, errors, create_seconds = await creating
                finally:
                    creating.cancel()
                    stop_probe.set()
                    if probing is not None:
                        probed = await probing
                await self._settle(session, outcomes, None)
            finally:
                stop_probe.set()
                if probing is not None and not probing.done():
                    probing.cancel()
                await self.sampler.stop()
                if self._connection is not None:
                    with contextlib.suppress(Exception):
                        await self._connection.close()
        usage_after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (usage_after.ru_utime - usage_before.ru_utime) + (
            usage_after.ru_stime - usage_before.ru_stime
        )
        wall = time.monotonic() - wall_before
        report = self._report(outcomes, latencies, errors, create_seconds, 100.0 * cpu / wall)
        if self.hostile is not None:
            report.hostile = self.hostile.to_dict()
        if probed is not None:
            report.get_latency_ms = probed.latency_ms
            report.get_errors = dict(probed.errors)
        return report

    async def _offer_all(
        self,
        session: aiohttp.ClientSession,
        bodies: list[tuple[str, dict[str, Any]]],
        outcomes: list[BookingOutcome],
    ) -> tuple[list[float], Counter[str], float]:
        """Open loop: booking i goes at start + i / rate, whether or not the earlier ones
        were answered; its latency counts from that intended time."""
        assert self.profile.offered_rate is not None
        rate = self.profile.offered_rate
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        wall_start = time.time() - loop.time() + start  # the same instant on the wall clock

        async def send(index: int, kind: str, body: dict[str, Any]) -> None:
            intended = start + index / rate
            self._lags.append(loop.time() - intended)
            outcome, error = await self._create(session, index, kind, body)
            if outcome is None:
                errors[error] += 1
                self.on_failed(sum(errors.values()))
                return
            latencies.append(loop.time() - intended)
            outcome.intended_at = dt.datetime.fromtimestamp(wall_start + index / rate, dt.UTC)
            outcomes.append(outcome)
            self.on_created(len(outcomes))

        tasks = []
        for index, (kind, body) in enumerate(bodies):
            delay = start + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(index, kind, body)))
        await asyncio.gather(*tasks)
        return latencies, errors, loop.time() - start

    async def _create_all(
        self,
        session: aiohttp.ClientSession,
        bodies: list[tuple[str, dict[str, Any]]],
        outcomes: list[BookingOutcome],
    ) -> tuple[list[float], Counter[str], float]:
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        users = self.profile.concurrency
        rpu = self.profile.requests_per_user
        # One queue shared by every user, or one queue per user holding its own requests.
        queues: list[asyncio.Queue[tuple[int, str, dict[str, Any]]]] = [
            asyncio.Queue() for _ in range(users if rpu else 1)
        ]
        for index, (kind, body) in enumerate(bodies):
            queues[self.profile.user_of(index) if rpu else 0].put_nowait((index, kind, body))

        def failed(kind: str) -> None:
            errors[kind] += 1
            self.on_failed(sum(errors.values()))

        next_slot = time.monotonic()
        attacks = hostile.catalogue(dt.datetime.now(dt.UTC).date())

        async def paced() -> None:
            """Wait for this request's turn when a rate is set (one slot per 1/rate s)."""
            nonlocal next_slot
            if not self.profile.rate:
                return
            now = time.monotonic()
            slot = max(now, next_slot)
            next_slot = slot + 1.0 / self.profile.rate
            if slot > now:
                await asyncio.sleep(slot - now)

        async def user(index: int) -> None:
            queue = queues[index if rpu else 0]
            if self.profile.ramp_up > 0:
                await asyncio.sleep(self.profile.ramp_up * index / users)
            while True:
                try:
                    request, kind, body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await paced()
                if self.hostile is not None and hostile.hostile_before(
                    request, self.profile.hostile
                ):
                    attack = attacks[self.hostile.sent % len(attacks)]
                    await hostile.send(session, self.api_url, attack, self.hostile)
                started = time.perf_counter()
                outcome, error = await self._create(session, request, kind, body)
                if outcome is None:
                    failed(error)
                    continue
                latencies.append(time.perf_counter() - started)
                outcomes.append(outcome)
                self.on_created(len(outcomes))

        started = time.monotonic()
        await asyncio.gather(*(user(i) for i in range(users)))
        return latencies, errors, time.monotonic() - started

    async def _create(
        self, session: aiohttp.ClientSession, index: int, kind: str, body: dict[str, Any]
    ) -> tuple[BookingOutcome | None, str]:
        """One booking: its outcome, or None and what the last attempt got.

        With ``retry_for``, a 502/503/504 or a lost answer is sent again with the
        same Idempotency-Key (after the Retry-After it names, at most 1 s) until
        it is answered or ``retry_for`` seconds have passed: a create whose commit
        went through but whose answer was lost is then answered as a replay.
        """
        key = f"load-{self._run_id}-{index}" if self.profile.retry_for > 0 else None
        headers = {"Idempotency-Key": key} if key else None
        deadline = time.monotonic() + self.profile.retry_for
        attempts = 0
        while True:
            attempts += 1
            wait = 0.2
            try:
                async with session.post(
                    f"{self.api_url}/booking", json=body, headers=headers
                ) as response:
                    payload = await response.read()
                    status: int | None = response.status
                    replayed = response.headers.get("Idempotent-Replayed") == "true"
                    with contextlib.suppress(ValueError):
                        wait = min(float(response.headers.get("Retry-After", wait)), 1.0)
                error = f"HTTP {status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, replayed, error = None, False, type(exc).__name__
            if status == 201:
                booking_id = json.loads(payload)["bookingId"]
                return BookingOutcome(
                    booking_id, kind, idempotency_key=key, replayed=replayed, attempts=attempts
                ), ""
            retryable = status is None or status in (502, 503, 504)
            if key is None or not retryable or time.monotonic() + wait > deadline:
                return None, error
            self._retried[error] += 1
            self.on_retry(error)
            await asyncio.sleep(wait)

    async def _settle(
        self,
        session: aiohttp.ClientSession,
        outcomes: list[BookingOutcome],
        creating: asyncio.Task[Any] | None,
    ) -> None:
        """Record final states until every booking left PENDING (or the timeout).

        While ``creating`` runs, it only follows the bookings made so far and returns when
        the creation is over; the API is then asked about the oldest few per round only.
        """
        by_id: dict[str, BookingOutcome] = {}
        deadline = time.monotonic() + self.profile.settle_timeout
        fetch = self._fetch_from_database if self.database_url else self._fetch_from_api
        while True:
            sending = creating is not None and not creating.done()
            by_id.update((o.booking_id, o) for o in outcomes[len(by_id) :])
            pending = [i for i, o in by_id.items() if o.status not in TERMINAL]
            if sending and not self.database_url:
                pending = pending[: self.profile.concurrency]
            try:
                rows = await fetch(session, pending) if pending else {}
            except Exception as exc:  # the database is away for a moment (a failover)
                if not isinstance(exc, OSError | TimeoutError) and not _unavailable_database(exc):
                    raise
                log.info("cannot read the bookings' states yet (%r)", exc)
                rows = {}
            for booking_id, row in rows.items():
                outcome = by_id[booking_id]
                outcome.status = row["status"]
                outcome.reason = row.get("failReason")
                outcome.final_price = row.get("finalPrice")
                outcome.base_price = row.get("basePrice")
                outcome.created_at = _parse_time(row.get("createdAt"))
                outcome.completed_at = _parse_time(row.get("completedAt"))
            finished = sum(o.status in TERMINAL for o in by_id.values())
            self.on_settled(finished)
            if creating is not None and not sending:
                return
            if creating is None and (finished == len(by_id) or time.monotonic() > deadline):
                return
            await asyncio.sleep(0.25)

    async def _fetch_from_api(
        self, session: aiohttp.ClientSession, ids: list[str]
    ) -> dict[str, dict[str, Any]]:
        semaphore = asyncio.Semaphore(self.profile.concurrency)
        found: dict[str, dict[str, Any]] = {}

        async def one(booking_id: str) -> None:
            async with semaphore:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.api_url}/booking/{booking_id}") as response:
                        if response.status == 200:
                            found[booking_id] = await response.json()

        await asyncio.gather(*(one(i) for i in ids))
        return found

    async def _fetch_from_database(
        self, _: aiohttp.ClientSession, ids: list[str]
    ) -> dict[str, dict[str, Any]]:
        import asyncpg

        from medbook.booking.maintenance import BookingMaintenance

        assert self.database_url is not None
        if self._connection is None:
            self._connection = await asyncpg.connect(
                self.database_url.replace("postgresql+psycopg://", "postgresql://")
            )
        try:
            states = await BookingMaintenance(self._connection).states(ids)
        except Exception:  # the next round connects again (to the new primary, after a failover)
            connection, self._connection = self._connection, None
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        return {
            booking_id: {
                "status": state.status,
                "failReason": state.fail_reason,
                "finalPrice": state.final_price,
                "basePrice": state.base_price,
                "createdAt": state.created_at.isoformat(),
                "completedAt": state.completed_at.isoformat() if state.completed_at else None,
            }
            for booking_id, state in states.items()
        }

    def _report(
        self,
        outcomes: list[BookingOutcome],
        latencies: list[float],
        errors: Counter[str],
        create_seconds: float,
        cpu_percent: float,
    ) -> LoadReport:
        done = [o for o in outcomes if o.status in TERMINAL and o.created_at and o.completed_at]
        saga_rate = None
        if done:
            first = min(o.created_at for o in done if o.created_at)
            last = max(o.completed_at for o in done if o.completed_at)
            span = (last - first).total_seconds()
            saga_rate = len(done) / span if span > 0 else None
        e2e = [
            (o.completed_at - o.created_at).total_seconds() * 1000
            for o in done
            if o.completed_at and o.created_at
        ]
        offered = [
            (o.completed_at - o.intended_at).total_seconds()
            for o in done
            if o.completed_at and o.intended_at
        ]
        return LoadReport(
            requested=self.profile.bookings,
            created=len(outcomes),
            concurrency=self.profile.concurrency,
            http_errors=dict(errors),
            create_seconds=create_seconds,
            create_rate=len(outcomes) / create_seconds if create_seconds > 0 else 0.0,
            create_latency_ms={
                k: (v * 1000 if v is not None else None) for k, v in percentiles(latencies).items()
            },
            saga_rate=saga_rate,
            saga_latency_ms=percentiles(e2e),
            outcomes=dict(Counter(o.status for o in outcomes)),
            reasons=dict(Counter(outcome_reason(o) for o in outcomes if o.status in TERMINAL)),
            stuck=sorted(o.booking_id for o in outcomes if o.status not in TERMINAL),
            # ru_maxrss is in KiB on Linux: the load generator's own peak, beside the services'.
            peak_rss_mb={
                **self.sampler.peak,
                "load generator": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            },
            loadgen_cpu_percent=cpu_percent,
            seed=self.profile.seed,
            bookings=outcomes,
            requests_per_user=self.profile.requests_per_user,
            ramp_up=self.profile.ramp_up,
            offered_rate=self.profile.offered_rate,
            offered_latency_ms=_ms(offered) if self.profile.offered_rate else None,
            send_lag_ms=_ms(self._lags) if self.profile.offered_rate else None,
            retried=dict(self._retried),
            replayed=sum(o.replayed for o in outcomes),
            cpu_ms_per_booking={
                name: 1000.0 * seconds / len(outcomes)
                for name, seconds in self.sampler.cpu_seconds().items()
                if outcomes
            },
        )


def render(report: LoadReport) -> str:
    def ms(values: dict[str, float | None]) -> str:
        return "  ".join(
            f"{k} {v:.1f} ms" if v is not None else f"{k} -" for k, v in values.items()
        )

    if report.offered_rate:
        who = f"offered at {report.offered_rate:.0f}/s (open loop)"
    elif report.requests_per_user:
        who = f"by {report.concurrency} users x {report.requests_per_user} requests"
    else:
        who = f"at concurrency {report.concurrency}"
    if report.ramp_up:
        who += f", ramp-up {report.ramp_up:g}s"
    lines = [
        f"bookings       {report.created}/{report.requested} created {who} (seed {report.seed})",
        f"create         {report.create_rate:.0f}/s over {report.create_seconds:.2f}s; "
        f"latency {ms(report.create_latency_ms)}",
        f"saga           {report.saga_rate:.0f} bookings/s reached a final status"
        if report.saga_rate
        else "saga           no booking reached a final status",
        f"end-to-end     {ms(report.saga_latency_ms)} (server-side, created -> final)",
        *(
            [
                f"offered e2e    {ms(report.offered_latency_ms)} (intended send -> final)",
                f"send lag       {ms(report.send_lag_ms)} (the generator's own lateness)",
            ]
            if report.offered_latency_ms is not None and report.send_lag_ms is not None
            else []
        ),
        *(
            [
                f"GET /booking   {ms(report.get_latency_ms)}; errors "
                + (", ".join(f"{k}: {v}" for k, v in (report.get_errors or {}).items()) or "none")
            ]
            if report.get_latency_ms is not None
            else []
        ),
        "outcomes       " + ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items())),
        "reasons        " + ", ".join(f"{k}: {v}" for k, v in sorted(report.reasons.items())),
        "peak RSS       "
        + (
            ", ".join(f"{k} {v:.0f} MiB" for k, v in sorted(report.peak_rss_mb.items()))
            or "not sampled"
        ),
        "CPU/booking    "
        + (
            ", ".join(f"{k} {v:.2f} ms" for k, v in sorted(report.cpu_ms_per_booking.items()))
            or "not sampled"
        ),
        f"load generator {report.loadgen_cpu_percent:.0f}% of one core",
        "HTTP errors    "
        + (", ".join(f"{k}: {v}" for k, v in report.http_errors.items()) or "none"),
        f"stuck          {len(report.stuck)}"
        + ("" if not report.stuck else ": " + ", ".join(report.stuck)),
    ]
    if report.retried or report.replayed:
        lines.insert(
            -2,
            "retried        "
            + (", ".join(f"{k}: {v}" for k, v in report.retried.items()) or "none")
            + f"; {report.replayed} answered as a replay of an earlier attempt",
        )
    return "\n".join(lines)


def _unavailable_database(exc: BaseException) -> bool:
    """An error meaning the database cannot answer now (a failover, a restart)."""
    import asyncpg

    from medbook.failures import DependencyUnavailable

    return isinstance(
        exc,
        DependencyUnavailable
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.AdminShutdownError
        | asyncpg.InterfaceError
        | asyncpg.exceptions.TargetServerAttributeNotMatched,
    )
