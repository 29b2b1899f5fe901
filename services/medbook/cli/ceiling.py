"""The design's limit on this machine (``medbook bench --ceiling``).

What one booking costs the servers is fixed by the design: its share of one
batched INSERT of bookings with their outbox rows, of one relay transaction
(claim rows ``FOR UPDATE SKIP LOCKED``, delete the published ones, commit) and
of one batched conditional UPDATE applying results; two persistent, mandatory
publishes with confirms on the saga's quorum queues, their two deliveries and
acks; and the two Redis scripts of the discount worker's idempotency record
(the second reserves the quota unit). The ceiling runs exactly that work, with
as little Python in between as the client libraries allow, so medbook's own
figure divided by it says how much of the design's reach medbook's code keeps.

- The statement and script texts are imported from their owner modules
  (``booking/store.py``, ``booking/outbox.py``, ``discount/idempotency.py``),
  never copied; their arguments are made before the clock starts, by the same
  domain and store code that medbook runs, from the benchmark's own mix.
- Two processes, as medbook has two services. The booking side inserts
  batches of ``batch`` bookings while at most ``window`` are unfinished (what
  admission control allows), relays the outbox with up to ``relay_drains``
  concurrent transactions of up to ``relay_batch`` rows (every row of a batch
  published before the confirms are awaited), and applies the results of each
  batch of deliveries in one statement, then acks them with one multiple ack.
  The discount side runs the one script per booking (decide unless decided) of
  each batch of deliveries in one Redis pipeline, publishes the results with
  confirms, and acks the batch with one multiple ack.
- The clients are the thinnest of the libraries medbook uses: asyncpg,
  aiormq (aio-pika's own transport) and redis-py with hiredis, on uvloop.
- It works in a database, a Redis database and an exchange and queues of its
  own, so it never touches medbook's data; the caller makes and drops the
  database (the queues are declared and deleted here).

The figure is N bookings over the time from the first INSERT to the commit
of the last result. HTTP is not part of it: parsing and answering requests
is medbook's own work, like everything else between the statements.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import multiprocessing
import queue as queue_module
import resource
import secrets
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any, Final, cast

import aiormq
import asyncpg
import orjson
from aiormq.abc import DeliveredMessage
from redis.asyncio import Redis

from medbook.amqp_transport import CoalescingTransportFactory
from medbook.booking import catalog, domain
from medbook.booking.domain import Booking
from medbook.booking.outbox import _CLAIM_BATCH, _DELETE_PUBLISHED  # the relay's own statements
from medbook.booking.store import (  # the store's own statements and their arguments
    _APPLY_PENDING,
    _INSERT_MANY,
    CreateRequest,
    apply_columns,
    create_columns,
)
from medbook.booking.validation import parse_booking_request
from medbook.cli.loadgen import LoadProfile, booking_bodies
from medbook.clock import utcnow
from medbook.config import DiscountSettings, PolicyDefaults
from medbook.contracts import (
    BOOKING_QUEUE,
    CONTRACT_VERSION,
    CONTRACT_VERSION_HEADER,
    DISCOUNT_QUEUE,
    EXCHANGE,
    BookingStatus,
    Event,
)
from medbook.discount import decision
from medbook.discount.idempotency import (  # the worker's own script and its arguments
    _COMPLETE,
    complete_arguments,
)
from medbook.discount.policy import QuotaPolicy
from medbook.messaging import event_properties, queue_arguments

CEILING_EXCHANGE: Final = f"{EXCHANGE}.ceiling"
CEILING_DISCOUNT_QUEUE: Final = f"ceiling.{DISCOUNT_QUEUE}"
CEILING_BOOKING_QUEUE: Final = f"ceiling.{BOOKING_QUEUE}"
_ROUTES: Final = {
    Event.BOOKING_CREATED.value: CEILING_DISCOUNT_QUEUE,
    Event.DISCOUNT_PROCESSED.value: CEILING_BOOKING_QUEUE,
}


class CeilingError(RuntimeError):
    """The ceiling could not be measured (a side failed or did not finish in time)."""


@dataclass(frozen=True)
class CeilingConfig:
    database_url: str  # a migrated database of the ceiling's own
    redis_url: str  # a Redis database of its own (it is flushed afterwards)
    amqp_url: str
    bookings: int
    seed: int = 42
    batch: int = 16  # creates per INSERT: admission control's burst (MEDBOOK_ADMISSION_BURST)
    window: int = 32  # unfinished bookings at most: MEDBOOK_MAX_PENDING
    relay_batch: int = 256  # MEDBOOK_OUTBOX_BATCH
    relay_drains: int = 4  # concurrent relay transactions, as the relay runs them
    prefetch: int = 128  # MEDBOOK_PREFETCH
    timeout: float = 300.0


@dataclass
class CeilingReport:
    bookings: int
    seconds: float
    rate: float  # bookings per second
    client_cpu_seconds: dict[str, float]  # of each side's process, over the measured time
    batch: int
    window: int
    servers_cpu_seconds: dict[str, float] = field(default_factory=dict)  # filled by the caller

    def to_dict(self) -> dict[str, Any]:
        return {
            "bookings": self.bookings,
            "seconds": self.seconds,
            "rate": self.rate,
            "client_cpu_seconds": self.client_cpu_seconds,
            "servers_cpu_seconds": self.servers_cpu_seconds,
            "batch": self.batch,
            "window": self.window,
        }


# -- the work, made before the clock starts ------------------------------------------------


@dataclass(frozen=True)
class BookingSideWork:
    inserts: list[list[list[Any]]]  # the INSERT's arguments, batch by batch
    sizes: list[int]
    results: dict[str, tuple[Any, ...]]  # booking id -> its row of the results' UPDATE
    at: dt.datetime


@dataclass(frozen=True)
class DiscountSideWork:
    # booking id -> (keys, args) of its script
    calls: dict[str, tuple[list[str], list[Any]]]


def prepare(config: CeilingConfig) -> tuple[BookingSideWork, DiscountSideWork]:
    """Every statement's and script's arguments, from the benchmark's mix, by medbook's code."""
    now = utcnow()
    limit = max(config.bookings, 1)  # every eligible booking gets its unit, as in the bench
    policy = QuotaPolicy.from_defaults(PolicyDefaults(daily_limit=limit))
    ttl = DiscountSettings().record_ttl_seconds
    requests: list[CreateRequest] = []
    results: dict[str, tuple[Any, ...]] = {}
    calls: dict[str, tuple[list[str], list[Any]]] = {}
    profile = LoadProfile(bookings=config.bookings, concurrency=1, seed=config.seed)
    for _, body in booking_bodies(profile):
        request, problems = parse_booking_request(body, utcnow().date())
        assert request is not None, problems
        booking_id = uuid.uuid4()
        trace_id = secrets.token_hex(16)
        new = domain.create(request, catalog.BY_NAME, now, booking_id=booking_id, trace_id=trace_id)
        headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-00"}
        requests.append(CreateRequest(new, headers, None, request.fingerprint()))
        plan = decision.plan(new.event, policy, now)
        result, _ = plan.resolve(True)
        transition = domain.apply_result(
            Booking(booking_id, BookingStatus.PENDING), result, now
        ).transition
        assert transition is not None
        row = apply_columns([transition])
        results[str(booking_id)] = tuple(column[0] for column in row[:7])
        stamp = now.isoformat()
        calls[str(booking_id)] = complete_arguments(booking_id, plan, stamp, ttl)
    chunks = [requests[i : i + config.batch] for i in range(0, len(requests), config.batch)]
    return (
        BookingSideWork(
            [create_columns(c) for c in chunks], [len(c) for c in chunks], results, now
        ),
        DiscountSideWork(calls),
    )


# -- the two sides -------------------------------------------------------------------------


def _properties(event: str, headers: dict[str, Any]) -> aiormq.spec.Basic.Properties:
    """What medbook's publisher sets on every message (the publisher's own properties)."""
    return event_properties(
        event, {CONTRACT_VERSION_HEADER: CONTRACT_VERSION, **headers}, message_id=uuid.uuid4().hex
    )


def _trace_headers(message: DeliveredMessage) -> dict[str, Any]:
    headers = message.header.properties.headers or {}
    return {"traceparent": headers["traceparent"]} if "traceparent" in headers else {}


class _Deliveries:
    """Deliveries of one consumer channel, taken a batch at a time (in delivery-tag order)."""

    def __init__(self) -> None:
        self.waiting: list[DeliveredMessage] = []
        self.arrived = asyncio.Event()

    async def on_message(self, message: DeliveredMessage) -> None:
        self.waiting.append(message)
        self.arrived.set()

    async def next_batch(self) -> list[DeliveredMessage]:
        while not self.waiting:
            self.arrived.clear()
            await self.arrived.wait()
        batch, self.waiting = self.waiting, []
        return batch


def _tag(message: DeliveredMessage) -> int:
    tag = message.delivery_tag
    assert tag is not None  # a consumer's delivery always has one
    return tag


def _booking_id(message: DeliveredMessage) -> str:
    return str(orjson.loads(message.body)["bookingId"])


async def _booking_side(
    config: CeilingConfig, work: BookingSideWork, start: Callable[[], Awaitable[None]]
) -> dict[str, float]:
    create_conn = await asyncpg.connect(config.database_url)
    result_conn = await asyncpg.connect(config.database_url)
    relay_pool = [await asyncpg.connect(config.database_url) for _ in range(config.relay_drains)]
    relay_conns: asyncio.Queue[asyncpg.Connection] = asyncio.Queue()
    for conn in relay_pool:
        relay_conns.put_nowait(conn)
    amqp = await aiormq.connect(config.amqp_url, transport_factory=CoalescingTransportFactory())
    publisher = cast(aiormq.Channel, await amqp.channel(publisher_confirms=True))
    consumer = await amqp.channel(publisher_confirms=False)
    await consumer.basic_qos(prefetch_count=config.prefetch)
    deliveries = _Deliveries()
    await consumer.basic_consume(CEILING_BOOKING_QUEUE, deliveries.on_message)

    in_flight = 0
    room = asyncio.Event()
    wakes = 0
    drains: set[asyncio.Task[None]] = set()

    async def relay_batch() -> int:
        conn = await relay_conns.get()
        try:
            async with conn.transaction():
                rows = await conn.fetch(_CLAIM_BATCH, config.relay_batch)
                if rows:
                    await asyncio.gather(
                        *(
                            publisher.basic_publish(
                                row["payload"].encode(),
                                exchange=CEILING_EXCHANGE,
                                routing_key=row["event"],
                                properties=_properties(row["event"], orjson.loads(row["headers"])),
                                mandatory=True,
                                wait=False,
                            )
                            for row in rows
                        )
                    )
                    await conn.execute(_DELETE_PUBLISHED, [row["id"] for row in rows])
            return len(rows)
        finally:
            relay_conns.put_nowait(conn)

    async def drain() -> None:
        while True:
            seen = wakes
            claimed = await relay_batch()
            # Rows committed after this batch's claim began are another wake-up's.
            if claimed < config.relay_batch and wakes == seen:
                return

    def wake_relay() -> None:
        nonlocal wakes
        wakes += 1
        if len(drains) < config.relay_drains:
            task = asyncio.create_task(drain())
            drains.add(task)
            task.add_done_callback(drains.discard)

    async def create() -> None:
        nonlocal in_flight
        for columns, size in zip(work.inserts, work.sizes, strict=True):
            while in_flight + size > max(config.window, size):
                room.clear()
                await room.wait()
            in_flight += size
            await create_conn.fetch(_INSERT_MANY, *columns)
            wake_relay()

    async def apply() -> None:
        nonlocal in_flight
        done = 0
        while done < config.bookings:
            batch = await deliveries.next_batch()
            rows = [work.results[_booking_id(m)] for m in batch]
            columns = [list(column) for column in zip(*rows, strict=True)]
            await result_conn.fetch(_APPLY_PENDING, *columns, work.at)
            await consumer.basic_ack(_tag(batch[-1]), multiple=True)
            done += len(batch)
            in_flight -= len(batch)
            room.set()

    await start()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    creating = asyncio.create_task(create())
    await apply()
    seconds = time.perf_counter() - started
    cpu = _cpu_since(usage)
    await creating
    if drains:
        await asyncio.gather(*drains)
    await amqp.close()
    for conn in (create_conn, result_conn, *relay_pool):
        await conn.close()
    return {"seconds": seconds, "cpu": cpu}


async def _discount_side(
    config: CeilingConfig, work: DiscountSideWork, start: Callable[[], Awaitable[None]]
) -> dict[str, float]:
    redis = Redis.from_url(config.redis_url)
    complete_sha = await redis.script_load(_COMPLETE)
    amqp = await aiormq.connect(config.amqp_url, transport_factory=CoalescingTransportFactory())
    publisher = cast(aiormq.Channel, await amqp.channel(publisher_confirms=True))
    consumer = await amqp.channel(publisher_confirms=False)
    await consumer.basic_qos(prefetch_count=config.prefetch)
    deliveries = _Deliveries()
    await consumer.basic_consume(CEILING_DISCOUNT_QUEUE, deliveries.on_message)

    await start()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    processed = 0
    while processed < config.bookings:
        batch = await deliveries.next_batch()
        calls = [work.calls[_booking_id(m)] for m in batch]
        completes = redis.pipeline(transaction=False)
        for keys, args in calls:
            completes.evalsha(complete_sha, len(keys), *keys, *args)
        stored = await completes.execute()
        event = Event.DISCOUNT_PROCESSED.value
        await asyncio.gather(
            *(
                publisher.basic_publish(
                    bytes(result[0]),
                    exchange=CEILING_EXCHANGE,
                    routing_key=event,
                    properties=_properties(event, _trace_headers(message)),
                    mandatory=True,
                    wait=False,
                )
                for result, message in zip(stored, batch, strict=True)
            )
        )
        await consumer.basic_ack(_tag(batch[-1]), multiple=True)
        processed += len(batch)
    cpu = _cpu_since(usage)
    await amqp.close()
    await redis.aclose()
    return {"cpu": cpu}


def _cpu_since(before: resource.struct_rusage) -> float:
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _side_main(
    name: str,
    config: CeilingConfig,
    work: BookingSideWork | DiscountSideWork,
    ready: ProcessEvent,
    go: ProcessEvent,
    results: multiprocessing.Queue[tuple[str, str, Any]],
) -> None:
    """A side's process: connect, say ready, wait for the start, run, report."""
    import uvloop

    async def start() -> None:
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, go.wait)

    async def main() -> dict[str, float]:
        if isinstance(work, BookingSideWork):
            return await _booking_side(config, work, start)
        return await _discount_side(config, work, start)

    try:
        results.put((name, "ok", uvloop.run(main())))
    except BaseException:
        ready.set()  # do not leave the parent waiting
        results.put((name, "error", traceback.format_exc()))


# -- topology and the run ------------------------------------------------------------------


async def _declare(amqp_url: str) -> None:
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.exchange_declare(CEILING_EXCHANGE, exchange_type="direct", durable=True)
        for routing_key, queue in _ROUTES.items():
            await channel.queue_declare(queue, durable=True, arguments=queue_arguments(queue))
            await channel.queue_bind(queue, CEILING_EXCHANGE, routing_key=routing_key)
    finally:
        await connection.close()


async def _clean_up(config: CeilingConfig) -> None:
    connection = await aiormq.connect(config.amqp_url)
    try:
        channel = await connection.channel()
        for queue in _ROUTES.values():
            await channel.queue_delete(queue)
        await channel.exchange_delete(CEILING_EXCHANGE)
    finally:
        await connection.close()
    redis = Redis.from_url(config.redis_url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()


def measure(config: CeilingConfig) -> CeilingReport:
    """Run the saga's statements, messages and scripts for ``config.bookings`` bookings."""
    if config.bookings < 1:
        raise ValueError("the ceiling needs at least one booking")
    booking_work, discount_work = prepare(config)
    asyncio.run(_declare(config.amqp_url))
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[tuple[str, str, Any]] = context.Queue()
    go = context.Event()
    sides = {}
    try:
        for name, work in (("discount side", discount_work), ("booking side", booking_work)):
            ready = context.Event()
            process = context.Process(
                target=_side_main,
                args=(name, config, work, ready, go, results),
                name=f"medbook-ceiling {name}",
                daemon=True,
            )
            process.start()
            sides[name] = (process, ready)
        for name, (_, ready) in sides.items():
            if not ready.wait(60):
                raise CeilingError(f"the ceiling's {name} did not connect within 60 s")
        go.set()
        reports: dict[str, dict[str, float]] = {}
        deadline = time.monotonic() + config.timeout
        while len(reports) < len(sides):
            try:
                name, status, value = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue_module.Empty:
                raise CeilingError(
                    f"the ceiling did not finish {config.bookings} bookings "
                    f"within {config.timeout:g} s"
                ) from None
            if status != "ok":
                raise CeilingError(f"the ceiling's {name} failed:\n{value}")
            reports[name] = value
    finally:
        for process, _ in sides.values():
            if process.is_alive():
                process.terminate()
            process.join(10)
        asyncio.run(_clean_up(config))
    seconds = reports["booking side"]["seconds"]
    return CeilingReport(
        bookings=config.bookings,
        seconds=seconds,
        rate=config.bookings / seconds,
        client_cpu_seconds={name: report["cpu"] for name, report in reports.items()},
        batch=config.batch,
        window=config.window,
    )
