"""``medbook scenario``: the reference's scenarios against a running system, pass or fail.

Each scenario sends real requests to the booking API, waits for the saga to
finish, and compares what it sees (status, price, reason, history, the quota
in Redis, the results on the broker) with what a correct system does. Every
check prints what was expected and what was seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.markup import escape

from medbook import contracts
from medbook.cli import common
from medbook.cli.api import BookingApi, result_lines
from medbook.cli.common import PolicyView, Unreachable, UsageProblem
from medbook.cli.policyctl import daily_limit
from medbook.contracts import (
    BLOCKED_USER_REASON,
    QUOTA_EXHAUSTED_REASON,
    TERMINAL_STATUSES,
    BookingCreated,
    Event,
    ServiceItem,
)
from medbook.discount.idempotency import stored_result
from medbook.discount.maintenance import QuotaMaintenance
from medbook.discount.policy import QuotaPolicy
from medbook.discount.quota import QuotaStore
from medbook.discount.rules import discounted_price

# Services offered to every gender, cheapest first, with their prices.
CHEAP = (("Vaccination", 150), ("Blood Test", 300), ("General Consultation", 500))
EXPENSIVE = ("MRI Scan", "X-Ray", "Dental Cleaning", "General Consultation", "Blood Test")


class Name(StrEnum):
    POSITIVE = "positive"
    BLOCKED = "blocked"
    QUOTA = "quota"
    NO_DISCOUNT = "no-discount"
    EDGE = "edge"
    ALL = "all"


ORDER = (Name.POSITIVE, Name.BLOCKED, Name.NO_DISCOUNT, Name.QUOTA, Name.EDGE)


@dataclass
class Check:
    name: str
    expected: str
    seen: str
    ok: bool


@dataclass
class Outcome:
    scenario: str
    title: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def check(self, name: str, expected: object, seen: object, ok: bool) -> bool:
        def text(value: object) -> str:
            return "null" if value is None else str(value)

        self.checks.append(Check(name, text(expected), text(seen), bool(ok)))
        return bool(ok)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def short(booking: dict[str, Any] | None) -> str:
    """What a booking came to, in a few words."""
    if booking is None:
        return "no booking"
    status = booking["status"]
    if status == "CONFIRMED":
        return f"CONFIRMED at {booking['finalPrice']} (base {booking['basePrice']})"
    if status in ("REJECTED", "CANCELLED"):
        return f"{status}: {booking.get('failReason') or '-'}"
    return f"{status} (no result yet)"


def discounted_booking(booking: dict[str, Any]) -> bool:
    return (
        booking["status"] == "CONFIRMED"
        and booking["finalPrice"] is not None
        and booking["finalPrice"] < booking["basePrice"]
    )


def history_states(booking: dict[str, Any]) -> list[str]:
    states = []
    for line in booking.get("history", []):
        text = line.split("] ", 1)[1] if "] " in line else line
        if text.startswith("[") and "]" in text:
            states.append(text[1 : text.index("]")])
    return states


@dataclass
class Saga:
    """What the scenarios work with: the API, the quota store, the broker, the policy."""

    api: BookingApi
    view: PolicyView
    timeout: float
    worker_refresh: float
    redis: Any | None = None
    amqp_url: str | None = None
    say: Callable[[str], None] = lambda _: None

    @property
    def policy(self) -> QuotaPolicy:
        return self.view.policy

    def today(self) -> dt.date:
        return self.policy.today()

    def birthday_dob(self) -> str:
        today = self.today()
        year = 1992 if (today.month, today.day) == (2, 29) else 1990
        return today.replace(year=year).isoformat()

    def other_dob(self) -> str:
        return (self.today() + dt.timedelta(days=100)).replace(year=1985).isoformat()

    def eligible_body(self, name: str | None = None) -> tuple[dict[str, Any], str] | None:
        """A booking the policy discounts (and why), or None when no rule can be met."""
        name = name or f"Scenario {uuid.uuid4().hex[:8]}"
        birthday = self.policy.eligibility.birthday
        if birthday.enabled:
            gender = birthday.genders[0].value
            services = ["Blood Test", "Vaccination"]  # 450: under the default threshold
            who = "a woman" if gender == "Female" else f"a customer ({gender})"
            body = {
                "userName": name,
                "gender": gender,
                "dob": self.birthday_dob(),
                "serviceNames": services,
            }
            return body, f"{who} on her birthday" if gender == "Female" else f"{who} on a birthday"
        high_value = self.policy.eligibility.high_value
        if high_value.enabled:
            services, total = [], 0
            prices = {"MRI Scan": 5000, "X-Ray": 1200, "Dental Cleaning": 800}
            prices |= {"General Consultation": 500, "Blood Test": 300}
            for service in EXPENSIVE:
                if total > high_value.threshold:
                    break
                services.append(service)
                total += prices[service]
            if total > high_value.threshold:
                body = {
                    "userName": name,
                    "gender": "Male",
                    "dob": self.other_dob(),
                    "serviceNames": services,
                }
                return body, f"a booking over {high_value.threshold}"
        return None

    def plain_body(self, name: str | None = None) -> dict[str, Any] | None:
        """A booking no rule discounts (not a birthday, under the high-value threshold)."""
        high_value = self.policy.eligibility.high_value
        for service, price in reversed(CHEAP):
            if not high_value.enabled or price <= high_value.threshold:
                return {
                    "userName": name or f"Scenario {uuid.uuid4().hex[:8]}",
                    "gender": "Male",
                    "dob": self.other_dob(),
                    "serviceNames": [service],
                }
        return None

    async def used(self) -> int:
        assert self.redis is not None
        return await QuotaStore(self.redis).used(self.today())

    async def holders(self) -> set[str]:
        assert self.redis is not None
        return await QuotaStore(self.redis).holders(self.today())

    async def book(
        self, body: dict[str, Any], outcome: Outcome, key: str | None = None
    ) -> str | None:
        created = await self.api.create(body, key)
        if created.booking_id is None:
            outcome.check(
                "accepted", "201 Created", f"{created.status_code}: {created.problem}", False
            )
        return created.booking_id

    async def finish(self, booking_id: str) -> dict[str, Any]:
        return await self.api.wait(booking_id, self.timeout)

    def final(self, outcome: Outcome, booking: dict[str, Any]) -> bool:
        return outcome.check(
            "final status",
            f"a final status within {self.timeout:g}s",
            booking["status"],
            booking["status"] in TERMINAL_STATUSES,
        )


# -- the scenarios ---------------------------------------------------------------------


async def positive(saga: Saga) -> Outcome:
    eligible = saga.eligible_body()
    if eligible is None:
        return Outcome("positive", "an eligible booking", skipped="no eligibility rule is enabled")
    body, who = eligible
    outcome = Outcome("positive", f"{who} gets the {saga.policy.discount_percent:g}% discount")
    if saga.redis is not None:
        used, limit = await saga.used(), saga.policy.daily_limit
        if not outcome.check(
            "quota has room", f"used < limit {limit}", f"used {used} of {limit}", used < limit
        ):
            outcome.notes.append("today's quota is full: `medbook quota reset`, or raise the limit")
            return outcome
    booking_id = await saga.book(body, outcome)
    if booking_id is None:
        return outcome
    booking = await saga.finish(booking_id)
    base = booking["basePrice"]
    price = discounted_price(base, saga.policy.discount_percent)
    outcome.check("status", "CONFIRMED", short(booking), booking["status"] == "CONFIRMED")
    outcome.check(
        "final price",
        f"{price} ({base} less {saga.policy.discount_percent:g}%)",
        booking["finalPrice"],
        booking["finalPrice"] == price,
    )
    states = history_states(booking)
    wanted = ["VALIDATING_ELIGIBILITY", "CHECKING_QUOTA", "APPLYING_DISCOUNT"]
    outcome.check(
        "saga steps", " -> ".join(wanted), " -> ".join(states) or "none", states == wanted
    )
    outcome.check(
        "one outcome", "1 outcome in the history", result_lines(booking), result_lines(booking) == 1
    )
    if saga.redis is not None:
        held = booking_id in await saga.holders()
        outcome.check(
            "quota unit", f"held for {saga.today()}", "held" if held else "not held", held
        )
    outcome.notes.append(f"booking {booking_id}")
    return outcome


async def blocked(saga: Saga) -> Outcome:
    names = saga.policy.blocked_users
    if not names:
        return Outcome("blocked", "a blocked user", skipped="the policy blocks nobody")
    eligible = saga.eligible_body(name=names[0]) or (saga.plain_body(name=names[0]), "")
    body = eligible[0]
    assert body is not None
    outcome = Outcome("blocked", f"the blocked user {names[0]!r} is rejected, once, with no quota")
    used_before = await saga.used() if saga.redis is not None else None
    booking_id = await saga.book(body, outcome)
    if booking_id is None:
        return outcome
    booking = await saga.finish(booking_id)
    outcome.check(
        "status",
        f"REJECTED: {BLOCKED_USER_REASON}",
        short(booking),
        booking["status"] == "REJECTED" and booking["failReason"] == BLOCKED_USER_REASON,
    )
    outcome.check(
        "no price", "finalPrice null", booking["finalPrice"], booking["finalPrice"] is None
    )
    outcome.check(
        "one outcome",
        "1 outcome in the history (the reference emitted two)",
        result_lines(booking),
        result_lines(booking) == 1,
    )
    if saga.redis is not None:
        held = booking_id in await saga.holders()
        outcome.check("no quota unit", "none held", "held" if held else "none held", not held)
        outcome.notes.append(f"quota used before {used_before}, after {await saga.used()}")
    outcome.notes.append(f"booking {booking_id}")
    return outcome


async def no_discount(saga: Saga) -> Outcome:
    body = saga.plain_body()
    if body is None:
        return Outcome("no-discount", "a plain booking", skipped="every service is high-value")
    outcome = Outcome("no-discount", "a booking no rule discounts pays the base price")
    booking_id = await saga.book(body, outcome)
    if booking_id is None:
        return outcome
    booking = await saga.finish(booking_id)
    base = booking["basePrice"]
    outcome.check("status", "CONFIRMED", short(booking), booking["status"] == "CONFIRMED")
    outcome.check(
        "final price",
        f"{base} (the base price)",
        booking["finalPrice"],
        booking["finalPrice"] == base,
    )
    states = history_states(booking)
    wanted = ["VALIDATING_ELIGIBILITY", "NO_DISCOUNT"]
    outcome.check(
        "saga steps", " -> ".join(wanted), " -> ".join(states) or "none", states == wanted
    )
    if saga.redis is not None:
        held = booking_id in await saga.holders()
        outcome.check("no quota unit", "none held", "held" if held else "none held", not held)
    outcome.notes.append(f"booking {booking_id}")
    return outcome


async def quota(saga: Saga) -> Outcome:
    eligible = saga.eligible_body()
    if eligible is None:
        return Outcome("quota", "the daily quota", skipped="no eligibility rule is enabled")
    used = await saga.used()
    limit = used + 2
    outcome = Outcome(
        "quota", "with 2 units left, 3 eligible bookings at once: 2 discounts and 1 rejection"
    )
    outcome.notes.append(f"quota day {saga.today()}: used {used}; limit set to {limit} for the run")
    body = eligible[0]
    async with daily_limit(saga.redis, limit, worker_refresh=saga.worker_refresh, say=saga.say):
        ids = await asyncio.gather(
            *(
                saga.book({**body, "userName": f"Quota {i} {uuid.uuid4().hex[:6]}"}, outcome)
                for i in range(3)
            )
        )
        if any(i is None for i in ids):
            return outcome
        bookings = await asyncio.gather(*(saga.finish(i) for i in ids if i))
        discounted = [b for b in bookings if discounted_booking(b)]
        refused = [
            b
            for b in bookings
            if b["status"] == "REJECTED" and b["failReason"] == QUOTA_EXHAUSTED_REASON
        ]
        outcome.check(
            "outcomes",
            f"2 discounted, 1 REJECTED: {QUOTA_EXHAUSTED_REASON}",
            "; ".join(short(b) for b in bookings),
            len(discounted) == 2 and len(refused) == 1,
        )
        now_used = await saga.used()
        outcome.check("counter", f"{limit} (never over the limit)", now_used, now_used == limit)
        for booking in discounted:
            await saga.api.cancel(booking["id"])
        back = await wait_for(saga.used, lambda n: n <= used, saga.timeout)
        outcome.check(
            "units come back",
            f"cancelling the 2 discounted bookings releases their units: used {used}",
            f"used {back}",
            back == used,
        )
    return outcome


async def wait_for(
    probe: Callable[[], Awaitable[Any]], accept: Callable[[Any], bool], within: float
) -> Any:
    deadline = time.monotonic() + within
    value = await probe()
    while not accept(value) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        value = await probe()
    return value


# -- edge cases -------------------------------------------------------------------------


async def edge(saga: Saga) -> Outcome:
    outcome = Outcome("edge", "the reference's edge cases")
    await twice_with_key(saga, outcome)
    await twice_without_key(saga, outcome)
    await burst_from_one_user(saga, outcome)
    await cancel_racing_discount(saga, outcome)
    await duplicate_event(saga, outcome)
    return outcome


async def twice_with_key(saga: Saga, outcome: Outcome) -> None:
    body = saga.plain_body()
    assert body is not None
    key = f"scenario-{uuid.uuid4()}"
    first, second = await asyncio.gather(saga.api.create(body, key), saga.api.create(body, key))
    ids = {first.booking_id, second.booking_id}
    outcome.check(
        "same request twice at once, one Idempotency-Key",
        "both answered 201 with the same booking (one of them a replay)",
        f"{first.status_code}/{second.status_code}, {len(ids)} booking id(s), "
        f"replayed {first.replayed}/{second.replayed}",
        first.status_code == second.status_code == 201
        and len(ids) == 1
        and first.replayed != second.replayed,
    )
    booking_id = first.booking_id or second.booking_id
    if booking_id:
        booking = await saga.finish(booking_id)
        outcome.check(
            "  ... and that booking is decided once",
            "final, 1 outcome in its history",
            f"{booking['status']}, {result_lines(booking)} outcome(s)",
            booking["status"] in TERMINAL_STATUSES and result_lines(booking) == 1,
        )


async def twice_without_key(saga: Saga, outcome: Outcome) -> None:
    body = saga.plain_body()
    assert body is not None
    first, second = await asyncio.gather(saga.api.create(body), saga.api.create(body))
    ids = [i for i in (first.booking_id, second.booking_id) if i]
    bookings = await asyncio.gather(*(saga.finish(i) for i in ids))
    outcome.check(
        "same request twice at once, no key",
        "two bookings (nothing says they are one), each final with 1 outcome",
        f"{len(set(ids))} booking(s): "
        + ", ".join(f"{b['status']} with {result_lines(b)} outcome(s)" for b in bookings),
        len(set(ids)) == 2
        and all(b["status"] in TERMINAL_STATUSES and result_lines(b) == 1 for b in bookings),
    )


async def burst_from_one_user(saga: Saga, outcome: Outcome, size: int = 10) -> None:
    name = f"Burst {uuid.uuid4().hex[:8]}"
    bodies: list[dict[str, Any]] = []
    for i in range(size):
        eligible = saga.eligible_body(name) if i % 2 == 0 else None
        body = eligible[0] if eligible else saga.plain_body(name)
        if body is None:
            raise UsageProblem("the policy discounts every booking the burst could send")
        bodies.append(body)
    created = await asyncio.gather(*(saga.api.create(b) for b in bodies))
    ids = [c.booking_id for c in created if c.booking_id]
    outcome.check(
        f"burst of {size} bookings from one user",
        f"all {size} accepted",
        f"{len(ids)} accepted"
        + "".join(f"; {c.status_code}: {c.problem}" for c in created if not c.booking_id)[:300],
        len(ids) == size,
    )
    bookings = await asyncio.gather(*(saga.finish(i) for i in ids))
    unfinished = [b for b in bookings if b["status"] not in TERMINAL_STATUSES]
    lost = [b for b in bookings if result_lines(b) != 1]
    outcome.check(
        "  ... each decided exactly once",
        "all final, 1 outcome each (no lost or doubled updates)",
        f"{len(unfinished)} not final, {len(lost)} without exactly 1 outcome",
        not unfinished and not lost,
    )
    user_ids = {b["userId"] for b in bookings}
    outcome.check(
        "  ... one user",
        "the same userId on every booking (the reference made a new one each time)",
        f"{len(user_ids)} distinct userId(s)",
        len(user_ids) == 1,
    )
    if saga.redis is not None:
        holders = await saga.holders()
        wrong = [b["id"] for b in bookings if (b["id"] in holders) != discounted_booking(b)]
        outcome.check(
            "  ... quota units match the discounts",
            "a unit held by every discounted booking and by no other",
            f"{len(wrong)} mismatch(es)" + (f": {', '.join(wrong[:3])}" if wrong else ""),
            not wrong,
        )


async def cancel_racing_discount(saga: Saga, outcome: Outcome) -> None:
    eligible = saga.eligible_body()
    if eligible is None:
        outcome.notes.append("cancel racing the discount: skipped (nothing is eligible)")
        return
    booking_id = await saga.book(eligible[0], outcome)
    if booking_id is None:
        return
    code, _ = await saga.api.cancel(booking_id)

    def result_seen(b: dict[str, Any]) -> bool:
        return any(
            "Late discount result ignored" in line or "Status: " in line for line in b["history"]
        )

    booking = await saga.api.wait(booking_id, saga.timeout, until=result_seen)
    cancelled = code == 200 and booking["status"] == "CANCELLED"
    # Decided (and refused: quota full) before the cancel: nothing left to cancel.
    refused_first = code == 409 and booking["status"] == "REJECTED"
    outcome.check(
        "cancel racing the discount",
        "CANCELLED stays CANCELLED whenever the discount result arrives",
        f"cancel answered {code}; then {short(booking)}"
        + ("" if result_seen(booking) else ", result never seen"),
        (cancelled or refused_first) and result_seen(booking),
    )
    if saga.redis is not None:
        holders = await wait_for(saga.holders, lambda h: booking_id not in h, saga.timeout)
        outcome.check(
            "  ... and its quota unit comes back",
            "no unit held for the cancelled booking",
            "still held" if booking_id in holders else "none held",
            booking_id not in holders,
        )
    first = "before" if any("(was PENDING)" in line for line in booking["history"]) else "after"
    outcome.notes.append(f"cancel racing: the cancel landed {first} the discount result")


async def duplicate_event(saga: Saga, outcome: Outcome, copies: int = 2) -> None:
    """Inject copies of a booking_created at the broker; watch every result the worker sends."""
    import aio_pika

    eligible = saga.eligible_body() or (saga.plain_body(), "")
    if saga.amqp_url is None or saga.redis is None:
        outcome.notes.append("duplicate event at the broker: skipped (needs RabbitMQ and Redis)")
        return
    async with common.broker(saga.amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        try:
            exchange = await channel.get_exchange(contracts.EXCHANGE, ensure=True)
        except Exception:
            raise Unreachable(
                "RabbitMQ", saga.amqp_url, f"exchange {contracts.EXCHANGE} missing: is medbook up?"
            ) from None
        tap = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await tap.bind(exchange, routing_key=Event.DISCOUNT_PROCESSED.value)
        booking_id = await saga.book(eligible[0], outcome)  # type: ignore[arg-type]
        if booking_id is None:
            return
        booking = await saga.api.get(booking_id)
        assert booking is not None
        event = BookingCreated(
            booking_id=uuid.UUID(booking_id),
            user_id=booking["userId"],
            user_name=booking["userName"],
            gender=booking["gender"],
            dob=booking["dob"],
            services=tuple(ServiceItem(**s) for s in booking["services"]),
            base_price=booking["basePrice"],
            trace_id=booking["traceId"],
            created_at=booking["createdAt"],
        )
        for _ in range(copies):
            await exchange.publish(
                aio_pika.Message(
                    contracts.encode(event),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    type=Event.BOOKING_CREATED.value,
                    headers={contracts.CONTRACT_VERSION_HEADER: contracts.CONTRACT_VERSION},
                ),
                routing_key=Event.BOOKING_CREATED.value,
            )
        expected = copies + 1
        results: list[str] = []
        deadline = time.monotonic() + saga.timeout
        while len(results) < expected and time.monotonic() < deadline:
            message = await tap.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            with contextlib.suppress(ValueError, KeyError):
                body = json.loads(message.body)
                if body["bookingId"] == booking_id:
                    results.append(body["resultId"])
    stored = await stored_result(saga.redis, booking_id)
    stored_id = json.loads(stored)["resultId"] if stored else None
    outcome.check(
        f"duplicate event at the broker ({copies} extra copies of booking_created)",
        f"{expected} results, all the stored decision {stored_id}",
        f"{len(results)} result(s) with {len(set(results))} distinct resultId(s)",
        len(results) == expected and set(results) == {stored_id},
    )
    booking = await saga.finish(booking_id)
    outcome.check(
        "  ... and the booking is decided once",
        "final, 1 outcome in its history",
        f"{booking['status']}, {result_lines(booking)} outcome(s)",
        booking["status"] in TERMINAL_STATUSES and result_lines(booking) == 1,
    )
    day = saga.today()
    count = await QuotaStore(saga.redis).used(day)
    members = await QuotaMaintenance(saga.redis).reservations(day)
    outcome.check(
        "  ... and the quota counted it at most once",
        "the day's counter equals its reservations",
        f"counter {count}, reservations {members}",
        count == members,
    )


SCENARIOS: dict[Name, Callable[[Saga], Awaitable[Outcome]]] = {
    Name.POSITIVE: positive,
    Name.BLOCKED: blocked,
    Name.NO_DISCOUNT: no_discount,
    Name.QUOTA: quota,
    Name.EDGE: edge,
}


# -- output ------------------------------------------------------------------------------


def render(outcome: Outcome) -> None:
    console = common.out()
    title = escape(outcome.title)
    if outcome.skipped:
        console.print(f"[yellow]SKIP[/yellow] {outcome.scenario}: {title} ({outcome.skipped})")
        return
    verdict = "[green]PASS[/green]" if outcome.ok else "[red]FAIL[/red]"
    console.print(f"{verdict} {outcome.scenario}: {title} ({outcome.seconds:.1f}s)")
    for check in outcome.checks:
        mark = "[green]ok  [/green]" if check.ok else "[red]FAIL[/red]"
        console.print(
            f"  {mark} {escape(check.name)}: expected {escape(check.expected)}; "
            f"saw {escape(check.seen)}"
        )
    for note in outcome.notes:
        console.print(f"       [dim]{escape(note)}[/dim]")


async def run_scenarios(
    names: list[Name],
    *,
    url: str,
    token: str | None,
    redis_url: str,
    amqp_url: str,
    booking_timeout: float,
    worker_refresh: float,
    as_json: bool,
) -> list[Outcome]:
    needs_redis = {Name.QUOTA, Name.EDGE} & set(names)
    needs_broker = Name.EDGE in names
    say = common.err().print
    async with contextlib.AsyncExitStack() as stack:
        api = await stack.enter_async_context(BookingApi(url, token))
        redis = None
        try:
            redis = await stack.enter_async_context(common.redis_client(redis_url))
        except Unreachable as exc:
            if needs_redis:
                raise
            say(f"[yellow]note:[/yellow] {exc}; quota checks skipped, policy from the environment")
        if needs_broker:  # fail early, before any booking is made
            await stack.enter_async_context(common.broker(amqp_url))
        if redis is not None:
            view = await common.current_policy(redis)
        else:
            from medbook.config import PolicyDefaults

            view = PolicyView(QuotaPolicy.from_defaults(PolicyDefaults()), False, None)
        saga = Saga(
            api,
            view,
            booking_timeout,
            worker_refresh,
            redis=redis,
            amqp_url=amqp_url if needs_broker else None,
            say=say,
        )
        if not as_json:
            say(
                f"[dim]policy: daily limit {view.policy.daily_limit}, "
                f"{view.policy.discount_percent:g}% off, day {saga.today()} "
                f"({view.policy.time_zone}); {view.source}[/dim]"
            )
        outcomes = []
        for name in names:
            started = time.monotonic()
            outcome = await SCENARIOS[name](saga)
            outcome.seconds = time.monotonic() - started
            outcomes.append(outcome)
            if not as_json:
                render(outcome)
        return outcomes


def scenario(
    name: Annotated[
        Name,
        typer.Argument(
            help="positive, blocked, no-discount, quota, edge, or all (every one in turn).",
            metavar="SCENARIO",
        ),
    ],
    url: common.ApiUrl = None,
    token: common.ApiToken = None,
    redis_url: common.RedisUrl = None,
    amqp_url: common.AmqpUrl = None,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for each booking to finish.", min=0.1, metavar="SECONDS"
        ),
    ] = 30.0,
    policy_refresh: common.PolicyRefresh = None,
    json_output: common.JsonOutput = False,
) -> None:
    """Run the reference's scenarios against a running system and say PASS or FAIL, with what
    was expected and what was seen.

    positive: an eligible booking gets the discount. blocked: a blocked user is rejected once
    and takes no quota. no-discount: a plain booking pays the base price. quota: with the daily
    limit lowered to 2 units above today's usage (through the policy's owner, restored after),
    three eligible bookings get two discounts and one rejection, and cancelling gives the units
    back. edge: the same request twice at once (with and without an Idempotency-Key), a burst
    from one user, a cancel racing the discount, and duplicate events injected at the broker.

    Exit status: 0 every check passed, 1 a check failed, 2 a server cannot be reached.
    """
    names: list[Name] = list(ORDER) if name is Name.ALL else [name]
    url = common.api_url(url)
    refresh = policy_refresh if policy_refresh is not None else common.policy_refresh_seconds()
    outcomes = common.run(
        run_scenarios(
            names,
            url=url,
            token=token,
            redis_url=common.redis_dsn(redis_url),
            amqp_url=common.amqp_dsn(amqp_url),
            booking_timeout=timeout,
            worker_refresh=refresh,
            as_json=json_output,
        )
    )
    passed = sum(o.ok and not o.skipped for o in outcomes)
    failed = [o.scenario for o in outcomes if not o.ok]
    if json_output:
        typer.echo(
            json.dumps({"ok": not failed, "scenarios": [o.to_dict() for o in outcomes]}, indent=2)
        )
    else:
        checks = sum(len(o.checks) for o in outcomes)
        bad = sum(not c.ok for o in outcomes for c in o.checks)
        summary = f"{len(outcomes)} scenario(s), {checks} checks: {passed} passed"
        if failed:
            summary += f", FAILED: {', '.join(failed)} ({bad} check(s))"
        common.out().print(("[red]" if failed else "[green]") + summary)
    raise typer.Exit(common.EXIT_FAILED if failed else common.EXIT_OK)
