"""``medbook dlq``: the dead-letter queues: list, show, replay, purge.

A message lands in ``<queue>.dlq`` when a consumer gave up on it (the reason,
the tries, the queue and the time are in ``x-medbook-*`` headers) or when the
broker did, after too many deliveries (``x-death``). Browsing never consumes:
messages are fetched without an ack and handed back when the channel closes.
Replaying republishes a message's body, type and headers (less the
dead-letter ones, tries reset) to the saga's exchange with its event type as
the routing key, waits for the broker's confirm, and only then removes it
from the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import aio_pika
import typer
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from rich.console import JustifyMethod
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from medbook.cli import common
from medbook.cli.common import UsageProblem
from medbook.contracts import (
    ATTEMPT_HEADER,
    BOOKING_QUEUE,
    DEAD_LETTER_AT_HEADER,
    DEAD_LETTER_QUEUE_HEADER,
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_TRIES_HEADER,
    DISCOUNT_QUEUE,
    EXCHANGE,
    Event,
    dead_letter_queue,
)

app = typer.Typer(
    help="Dead-lettered messages: list, show, replay after a fix, purge.", no_args_is_help=True
)

SOURCES = {"discount": DISCOUNT_QUEUE, "booking": BOOKING_QUEUE}
REPLAYED_AT_HEADER = "x-medbook-replayed-at"
# Headers that describe the dead-lettering, not the message: dropped on replay.
DEAD_LETTER_HEADERS = frozenset(
    {
        DEAD_LETTER_REASON_HEADER,
        DEAD_LETTER_TRIES_HEADER,
        DEAD_LETTER_QUEUE_HEADER,
        DEAD_LETTER_AT_HEADER,
        ATTEMPT_HEADER,
        REPLAYED_AT_HEADER,
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
    }
)

QueueOption = Annotated[
    str | None,
    typer.Option(
        "--queue",
        "-q",
        help="discount or booking: whose dead letters (default: both).",
        show_default=False,
        metavar="QUEUE",
    ),
]
Selectors = Annotated[
    list[str] | None,
    typer.Argument(
        help="Messages: their ref (as `list` shows it), message id or booking id.",
        show_default=False,
        metavar="SELECTOR",
    ),
]
Scan = Annotated[
    int,
    typer.Option(
        help="Read at most this many messages per queue (the rest are not looked at).",
        min=1,
        metavar="N",
    ),
]


def dlq_names(queue: str | None) -> list[str]:
    if queue is None:
        return [dead_letter_queue(q) for q in SOURCES.values()]
    name = queue.removesuffix(".dlq").removesuffix("_queue")
    if name not in SOURCES:
        raise typer.BadParameter(f"{queue!r}: use discount or booking", param_hint="--queue")
    return [dead_letter_queue(SOURCES[name])]


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {k: _text(v) for k, v in value.items()}
    return value


@dataclass
class Letter:
    """One dead-lettered message, as shown to a person."""

    queue: str
    position: int
    ref: str
    type: str | None
    message_id: str | None
    booking_id: str | None
    reason: str
    tries: int | None
    original_queue: str | None
    dead_lettered_at: str | None
    headers: dict[str, Any] = field(default_factory=dict)
    body: str = ""

    def matches(self, selector: str) -> bool:
        return selector in (self.ref, self.message_id, self.booking_id)

    def to_dict(self, with_body: bool = True) -> dict[str, Any]:
        data = dict(self.__dict__)
        if not with_body:
            data.pop("body")
            data.pop("headers")
        return data


def read_letter(queue: str, position: int, message: AbstractIncomingMessage) -> Letter:
    headers: dict[str, Any] = dict(message.headers or {})  # AMQP field values: checked below
    reason = headers.get(DEAD_LETTER_REASON_HEADER)
    tries = headers.get(DEAD_LETTER_TRIES_HEADER)
    original = headers.get(DEAD_LETTER_QUEUE_HEADER)
    at = headers.get(DEAD_LETTER_AT_HEADER)
    deaths = headers.get("x-death") or []
    if reason is None and deaths:  # dead-lettered by the broker itself
        death = deaths[0]
        why = _text(death.get("reason"))
        original = _text(death.get("queue"))
        reason = f"broker: {why}" + (
            " (too many deliveries: the consumer kept crashing on it?)"
            if why == "delivery_limit"
            else ""
        )
        tries = headers.get("x-delivery-count")
        at = _text(death.get("time"))
    digest = hashlib.sha256(
        json.dumps(
            [queue, message.message_id, _text(at), tries, _text(reason)], default=str
        ).encode()
        + message.body
    ).hexdigest()[:10]
    booking_id = None
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        booking_id = json.loads(message.body).get("bookingId")
    return Letter(
        queue=queue,
        position=position,
        ref=digest,
        type=message.type,
        message_id=message.message_id,
        booking_id=booking_id if isinstance(booking_id, str) else None,
        reason=_text(reason) or "unknown",
        tries=int(tries) if isinstance(tries, int | str) and str(tries).isdigit() else None,
        original_queue=_text(original),
        dead_lettered_at=_text(at),
        headers=_text(headers),
        body=message.body.decode(errors="replace"),
    )


async def open_queue(channel: AbstractChannel, name: str) -> AbstractQueue | None:
    """The queue, declared passively (None when it does not exist yet)."""
    try:
        return await channel.declare_queue(name, passive=True)
    except aio_pika.exceptions.ChannelClosed:
        return None


@contextlib.asynccontextmanager
async def browsing(
    connection: Any, name: str, scan: int
) -> AsyncIterator[tuple[int, list[AbstractIncomingMessage]]]:
    """(count in the queue, the first ``scan`` messages), fetched without an ack.

    Ack a message inside the block to remove it; every other one goes back to the
    queue, in its order, when the block ends (the channel closes).
    """
    channel = await connection.channel(publisher_confirms=False)
    try:
        queue = await open_queue(channel, name)
        if queue is None:
            yield 0, []
            return
        count = queue.declaration_result.message_count or 0
        wanted = min(count, scan)
        messages: list[AbstractIncomingMessage] = []
        if wanted:
            await channel.set_qos(prefetch_count=0)  # all of them at once, not one get each
            async with queue.iterator(no_ack=False) as iterator:
                with contextlib.suppress(TimeoutError, StopAsyncIteration):
                    while len(messages) < wanted:
                        # Fewer than counted: another client took some meanwhile.
                        messages.append(await asyncio.wait_for(anext(iterator), 5))
        yield count, messages
    finally:
        if not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()  # unacked messages return to the queue


def check_selection(selectors: list[str], everything: bool) -> None:
    if everything and selectors:
        raise UsageProblem("give message refs or ids, or --all, not both")
    if not everything and not selectors:
        raise UsageProblem("say which messages: refs (see `medbook dlq list`), ids, or --all")


# -- list / show ---------------------------------------------------------------------------


async def collect(
    amqp_url: str, names: list[str], scan: int, selectors: list[str] | None = None
) -> dict[str, tuple[int, list[Letter]]]:
    found: dict[str, tuple[int, list[Letter]]] = {}
    async with common.broker(amqp_url) as connection:
        for name in names:
            async with browsing(connection, name, scan) as (count, messages):
                letters = [read_letter(name, i, m) for i, m in enumerate(messages, start=1)]
            if selectors is not None:
                letters = [x for x in letters if any(x.matches(s) for s in selectors)]
            found[name] = (count, letters)
    return found


@app.command("list", short_help="How many dead letters each queue holds, and why.")
def list_(
    queue: QueueOption = None,
    limit: Annotated[int, typer.Option(help="Messages shown per queue.", min=1, metavar="N")] = 20,
    scan: Scan = 10_000,
    amqp_url: common.AmqpUrl = None,
    json_output: common.JsonOutput = False,
) -> None:
    """How many messages each dead-letter queue holds, the first --limit of them (ref, event
    type, booking, tries, when, reason), and the count by reason. Nothing is consumed."""
    names = dlq_names(queue)
    found = common.run(collect(common.amqp_dsn(amqp_url), names, scan))
    if json_output:
        typer.echo(
            json.dumps(
                [
                    {
                        "queue": name,
                        "count": count,
                        "by_reason": dict(Counter(x.reason for x in letters)),
                        "messages": [x.to_dict(with_body=False) for x in letters[:limit]],
                    }
                    for name, (count, letters) in found.items()
                ],
                indent=2,
            )
        )
        return
    console = common.out()
    for name, (count, letters) in found.items():
        if not count:
            console.print(f"{name}: empty")
            continue
        table = Table(title=f"{name}: {count} message(s)", title_justify="left")
        for column in ("#", "ref", "type", "booking", "tries", "dead-lettered"):
            justify: JustifyMethod = "right" if column in ("#", "tries") else "left"
            table.add_column(column, justify=justify, no_wrap=True)
        table.add_column("reason")  # takes what is left, cut with "..." (`show` has it all)
        for x in letters[:limit]:
            table.add_row(
                str(x.position),
                x.ref,
                x.type or "-",
                (x.booking_id or "-")[:8],
                "-" if x.tries is None else str(x.tries),
                (x.dead_lettered_at or "-")[:19].replace("T", " "),
                Text(x.reason, no_wrap=True, overflow="ellipsis"),
            )
        console.print(table)
        if count > limit:
            console.print(f"  ... and {count - min(limit, len(letters))} more (--limit)")
        if count > len(letters):
            console.print(f"  (only the first {len(letters)} were read: --scan)")
        reasons = Counter(x.reason[:100] for x in letters)
        console.print(f"  by reason (of {len(letters)} read):")
        for reason, n in reasons.most_common(10):
            console.print(f"    {n:>6}  {escape(reason)}")


@app.command("show", short_help="Everything about the selected dead letters.")
def show(
    selectors: Selectors = None,
    queue: QueueOption = None,
    scan: Scan = 10_000,
    amqp_url: common.AmqpUrl = None,
    json_output: common.JsonOutput = False,
) -> None:
    """Everything about the selected messages: properties, headers, the body. Nothing is
    consumed. Exit status: 0 shown, 1 no message matched."""
    names = dlq_names(queue)
    wanted = list(selectors or [])
    if not wanted:
        raise typer.BadParameter("say which message: its ref (see `medbook dlq list`) or an id")
    found = common.run(collect(common.amqp_dsn(amqp_url), names, scan, wanted))
    letters = [x for _, (_, xs) in found.items() for x in xs]
    if json_output:
        typer.echo(json.dumps([x.to_dict() for x in letters], indent=2))
    console = common.out()
    if not letters:
        common.err().print(f"no dead letter matches {', '.join(wanted)}")
        raise typer.Exit(common.EXIT_FAILED)
    if json_output:
        return
    for x in letters:
        console.print(f"[bold]{x.queue} #{x.position}[/bold] ref {x.ref}")
        for label, value in (
            ("type", x.type),
            ("message id", x.message_id),
            ("booking", x.booking_id),
            ("reason", x.reason),
            ("tries", x.tries),
            ("from queue", x.original_queue),
            ("dead-lettered", x.dead_lettered_at),
        ):
            console.print(f"  {label:<14} {escape(str(value if value is not None else '-'))}")
        console.print("  headers")
        for key, value in sorted(x.headers.items()):
            console.print(f"    {escape(key)}: {escape(json.dumps(value, default=str))}")
        console.print("  body")
        try:
            body = json.dumps(json.loads(x.body), indent=2)
        except ValueError:
            body = x.body
        for line in body.splitlines():
            console.print(f"    {escape(line)}")


# -- replay / purge ------------------------------------------------------------------------


def replay_copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    headers = {k: v for k, v in (message.headers or {}).items() if k not in DEAD_LETTER_HEADERS}
    headers[REPLAYED_AT_HEADER] = dt.datetime.now(dt.UTC).isoformat()
    return aio_pika.Message(
        message.body,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        type=message.type,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
        headers=headers,
    )


@dataclass
class Moved:
    done: list[Letter] = field(default_factory=list)  # one by one
    purged: dict[str, int] = field(default_factory=dict)  # whole queues: how many
    refused: list[tuple[Letter, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.done) + sum(self.purged.values())

    def by_queue(self) -> dict[str, int]:
        counts = Counter(x.queue for x in self.done)
        counts.update(self.purged)
        return dict(counts)


async def queue_counts(connection: Any, names: list[str]) -> dict[str, int]:
    counts = {}
    for name in names:
        channel = await connection.channel()
        queue = await open_queue(channel, name)
        counts[name] = (queue.declaration_result.message_count or 0) if queue else 0
        if not channel.is_closed:
            await channel.close()
    return counts


async def take(
    amqp_url: str,
    names: list[str],
    selectors: list[str],
    everything: bool,
    *,
    replay: bool,
    yes: bool,
    scan: int,
) -> Moved:
    """Replay (or delete) the selected messages; the others stay where they were."""
    check_selection(selectors, everything)
    moved = Moved()
    known = {e.value for e in Event}
    async with common.broker(amqp_url) as connection:
        counts = await queue_counts(connection, names)
        if not replay and any(counts.values()):
            what = "every message" if everything else f"the messages {', '.join(selectors)}"
            where = ", ".join(f"{n} ({counts[n]} in all)" for n in names if counts[n])
            common.confirm(f"Delete {what} from {where}?", yes)
        publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await publisher.get_exchange(EXCHANGE, ensure=True) if replay else None
        for name in names:
            if not counts[name]:
                continue
            if everything and not replay:
                channel = await connection.channel()
                queue = await channel.declare_queue(name, passive=True)
                purged = await queue.purge()
                moved.purged[name] = purged.message_count or 0
                await channel.close()
                continue
            # With --all, round after round until what was there at the start went through.
            remaining = counts[name] if everything else min(counts[name], scan)
            while remaining > 0:
                async with browsing(connection, name, min(remaining, scan)) as (_, messages):
                    if not messages:
                        break
                    remaining -= len(messages)
                    letters = [read_letter(name, i, m) for i, m in enumerate(messages, start=1)]
                    chosen = [
                        (x, m)
                        for x, m in zip(letters, messages, strict=True)
                        if everything or any(x.matches(s) for s in selectors)
                    ]
                    if not replay:
                        for letter, message in chosen:
                            await message.ack()
                            moved.done.append(letter)
                    else:
                        assert exchange is not None
                        await replay_batch(exchange, chosen, known, moved)
                if not everything:
                    break
        await publisher.close()
    return moved


async def replay_batch(
    exchange: Any,
    chosen: list[tuple[Letter, AbstractIncomingMessage]],
    known: set[str],
    moved: Moved,
    batch: int = 200,
) -> None:
    """Publish each with a confirm (many in flight), then ack it in the dead-letter queue."""
    routable = []
    for letter, message in chosen:
        if message.type in known:
            routable.append((letter, message))
        else:
            why = f"event type {message.type!r} cannot be routed: purge it, or fix and republish"
            moved.refused.append((letter, why))
    for start in range(0, len(routable), batch):
        part = routable[start : start + batch]
        results = await asyncio.gather(
            *(exchange.publish(replay_copy(m), routing_key=m.type) for _, m in part),
            return_exceptions=True,
        )
        for (letter, message), result in zip(part, results, strict=True):
            if isinstance(result, BaseException):
                moved.refused.append((letter, f"the broker did not take it: {result!r}"))
            else:
                await message.ack()
                moved.done.append(letter)


@app.command("replay", short_help="Put dead letters back into the saga, after a fix.")
def replay(
    selectors: Selectors = None,
    scan: Scan = 10_000,
    everything: Annotated[
        bool, typer.Option("--all", help="Every message now in the queue(s).")
    ] = False,
    queue: QueueOption = None,
    amqp_url: common.AmqpUrl = None,
    json_output: common.JsonOutput = False,
) -> None:
    """Put dead-lettered messages back into the saga (after fixing what failed): each is
    republished with its type and headers (tries reset) to the saga's exchange, confirmed by
    the broker, then removed from the dead-letter queue. A message that fails again comes back.

    Exit status: 0 every selected message replayed (--all: also when there was none), 1 none
    matched or some could not be replayed (unknown event type), 2 bad selection or no broker."""
    names = dlq_names(queue)
    moved = common.run(
        take(
            common.amqp_dsn(amqp_url),
            names,
            list(selectors or []),
            everything,
            replay=True,
            yes=True,
            scan=scan,
        )
    )
    report(moved, "replayed", json_output, everything)


@app.command("purge", short_help="Delete dead letters for good.")
def purge(
    selectors: Selectors = None,
    scan: Scan = 10_000,
    everything: Annotated[
        bool, typer.Option("--all", help="Every message in the queue(s).")
    ] = False,
    queue: QueueOption = None,
    yes: common.Yes = False,
    amqp_url: common.AmqpUrl = None,
    json_output: common.JsonOutput = False,
) -> None:
    """Delete dead-lettered messages for good. Asks first unless --yes.

    Exit status: 0 deleted (--all: also when there was none), 1 declined or none matched,
    2 bad selection or no broker."""
    names = dlq_names(queue)
    moved = common.run(
        take(
            common.amqp_dsn(amqp_url),
            names,
            list(selectors or []),
            everything,
            replay=False,
            yes=yes,
            scan=scan,
        )
    )
    report(moved, "deleted", json_output, everything)


def report(moved: Moved, verb: str, as_json: bool, everything: bool) -> None:
    if as_json:
        typer.echo(
            json.dumps(
                {
                    verb: moved.total,
                    "by_queue": moved.by_queue(),
                    "messages": [x.to_dict(with_body=False) for x in moved.done],
                    "refused": [
                        x.to_dict(with_body=False) | {"why": why} for x, why in moved.refused
                    ],
                },
                indent=2,
            )
        )
    else:
        console = common.out()
        by_queue = moved.by_queue()
        console.print(
            f"{verb} {moved.total} message(s)"
            + (" (" + ", ".join(f"{q}: {n}" for q, n in by_queue.items()) + ")" if by_queue else "")
        )
        for x in moved.done:
            console.print(f"  {x.queue} {x.ref} {x.type or '-'} {x.booking_id or ''}")
        for x, why in moved.refused:
            console.print(f"  [red]not {verb}[/red] {x.queue} {x.ref}: {escape(why)}")
    if moved.refused or not (moved.total or everything):
        raise typer.Exit(common.EXIT_FAILED)
