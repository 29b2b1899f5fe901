"""``medbook quota``: the daily discount quota in Redis: read, reset, list and clean, watch.

"Today" is the quota day in the policy's time zone (the published policy, else
the defaults from the environment), as the discount worker counts it. Every
read and write goes through the discount package (:class:`QuotaStore`,
:class:`QuotaMaintenance`), which knows the keys and finds them with ``SCAN``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from medbook.cli import common
from medbook.discount.maintenance import QuotaDay, QuotaMaintenance
from medbook.discount.quota import QuotaStore

app = typer.Typer(
    help="Today's discount quota: usage and limit, reset, past days' keys, a live view.",
    no_args_is_help=True,
)

Day = Annotated[
    str | None,
    typer.Option(
        help="A quota day, YYYY-MM-DD (default: today in the policy's time zone).",
        metavar="DATE",
    ),
]


def parse_day(text: str | None) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter("write the day as YYYY-MM-DD", param_hint="--day") from None


@dataclass
class Usage:
    day: str
    time_zone: str
    today: bool
    used: int
    reservations: int
    limit: int
    remaining: int
    policy: str
    bookings: list[str] | None = None


async def usage(redis: Any, day: dt.date | None, with_ids: bool) -> Usage:
    view = await common.current_policy(redis)
    today = view.policy.today()
    day = day or today
    store = QuotaStore(redis)
    used = await store.used(day)
    reservations = await QuotaMaintenance(redis).reservations(day)
    return Usage(
        day=day.isoformat(),
        time_zone=view.policy.time_zone,
        today=day == today,
        used=used,
        reservations=reservations,
        limit=view.policy.daily_limit,
        remaining=max(view.policy.daily_limit - used, 0),
        policy=view.source,
        bookings=sorted(await store.holders(day)) if with_ids else None,
    )


def bar(used: int, limit: int, width: int = 40) -> Text:
    filled = width if limit <= 0 else min(width, round(width * used / limit))
    colour = "red" if used >= limit else ("yellow" if used >= 0.8 * limit else "green")
    return Text.assemble("            ", ("━" * filled, colour), ("━" * (width - filled), "grey37"))


def render_usage(u: Usage) -> Group:
    when = "today" if u.today else "not today"
    lines: list[Any] = [
        Text.from_markup(f"quota day   {u.day} ({when} in {u.time_zone})"),
        Text.from_markup(f"used        [bold]{u.used}[/bold] of {u.limit} ({u.remaining} left)"),
        bar(u.used, u.limit),
        Text(f"policy      {u.policy}"),
    ]
    if u.used != u.reservations:
        lines.append(
            Text.from_markup(
                f"[yellow]the counter ({u.used}) and the reservations ({u.reservations}) "
                "differ: written by something other than the worker?[/yellow]"
            )
        )
    if u.bookings is not None:
        lines.append(Text(f"reserved by {len(u.bookings)} booking(s):"))
        lines.extend(Text(f"  {b}") for b in u.bookings)
    return Group(*lines)


@app.command("get", short_help="Today's usage and limit (--ids: who holds a unit).")
def get(
    day: Day = None,
    ids: Annotated[bool, typer.Option("--ids", help="List the bookings holding a unit.")] = False,
    redis_url: common.RedisUrl = None,
    json_output: common.JsonOutput = False,
) -> None:
    """Today's usage and limit, in the policy's time zone (and the reserved booking ids with
    --ids). Exit status: 0, or 2 when Redis cannot be reached."""

    async def main() -> Usage:
        async with common.redis_client(common.redis_dsn(redis_url)) as redis:
            return await usage(redis, parse_day(day), ids)

    result = common.run(main())
    if json_output:
        typer.echo(json.dumps(asdict(result), indent=2))
    else:
        common.out().print(render_usage(result))


@app.command("reset", short_help="Drop a day's reservations: discounts again up to the limit.")
def reset(
    day: Day = None,
    yes: common.Yes = False,
    redis_url: common.RedisUrl = None,
) -> None:
    """Drop the day's reservations (today's by default): the count goes to 0 and the worker
    grants discounts again up to the limit. Asks first unless --yes.

    Exit status: 0 reset, 1 declined, 2 Redis cannot be reached."""

    async def main() -> tuple[str, int]:
        async with common.redis_client(common.redis_dsn(redis_url)) as redis:
            current = await usage(redis, parse_day(day), False)
            common.confirm(
                f"Reset the quota of {current.day}: drop {current.used} reservation(s) "
                f"of {current.limit}?",
                yes,
            )
            dropped = await QuotaStore(redis).reset(dt.date.fromisoformat(current.day))
            return current.day, dropped

    reset_day, dropped = common.run(main())
    common.out().print(f"quota of {reset_day} reset: {dropped} reservation(s) dropped")


@dataclass
class DayKeys:
    day: str
    used: int | None
    reservations: int | None
    reservation_keys: int
    expires_in: float | None
    when: str  # past, today, future
    keys: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, found: QuotaDay, today: dt.date) -> DayKeys:
        when = "today" if found.day == today else ("past" if found.day < today else "future")
        return cls(
            found.day.isoformat(),
            found.used,
            found.reservations,
            found.reservation_keys,
            found.expires_in,
            when,
            found.keys,
        )


async def scan_days(redis: Any, today: dt.date) -> list[DayKeys]:
    """Every quota day found in Redis, with its keys and the reservations pointing to it."""
    return [DayKeys.of(d, today) for d in await QuotaMaintenance(redis).days()]


def days_table(days: list[DayKeys]) -> Table:
    table = Table(title="quota keys in Redis (found with SCAN)", title_justify="left")
    for column in ("day", "", "used", "reservations", "reservation keys", "expires in"):
        table.add_column(column, justify="left" if column in ("day", "") else "right")
    for d in days:
        table.add_row(
            d.day,
            d.when,
            "-" if d.used is None else str(d.used),
            "-" if d.reservations is None else str(d.reservations),
            str(d.reservation_keys),
            "-" if d.expires_in is None else common.human_duration(d.expires_in),
        )
    return table


@app.command("keys", short_help="Every quota day in Redis, with its keys and expiry.")
def keys(redis_url: common.RedisUrl = None, json_output: common.JsonOutput = False) -> None:
    """List every quota day in Redis (today, past and future days) with its counter, its
    reservations and when its keys expire. Uses SCAN, never KEYS."""

    async def main() -> tuple[str, list[DayKeys]]:
        async with common.redis_client(common.redis_dsn(redis_url)) as redis:
            today = (await common.current_policy(redis)).policy.today()
            return today.isoformat(), await scan_days(redis, today)

    today, days = common.run(main())
    if json_output:
        typer.echo(json.dumps({"today": today, "days": [asdict(d) for d in days]}, indent=2))
    elif not days:
        common.out().print(f"no quota keys in Redis (today is {today})")
    else:
        common.out().print(days_table(days))


@app.command("clean", short_help="Delete the keys of past quota days.")
def clean(
    yes: common.Yes = False,
    dry_run: Annotated[bool, typer.Option(help="Only say what would be deleted.")] = False,
    redis_url: common.RedisUrl = None,
) -> None:
    """Delete the keys of past quota days (their counters, reservation sets and the
    reservations pointing to them); today's and later days' are kept. Uses SCAN, never KEYS.
    Asks first unless --yes.

    Exit status: 0 cleaned (or nothing to clean), 1 declined, 2 Redis cannot be reached."""

    async def main() -> list[DayKeys]:
        async with common.redis_client(common.redis_dsn(redis_url)) as redis:
            today = (await common.current_policy(redis)).policy.today()
            past = [d for d in await scan_days(redis, today) if d.when == "past"]
            console = common.out()
            if not past:
                console.print(f"nothing to clean: no quota keys before {today}")
                return []
            console.print(days_table(past))
            if dry_run:
                console.print(f"dry run: would delete the keys of {len(past)} past day(s)")
                return past
            common.confirm(f"Delete the quota keys of {len(past)} past day(s)?", yes)
            # Also the reservations whose day's set had already expired.
            _, orphans = await QuotaMaintenance(redis).clean_before(today)
            console.print(
                f"deleted the quota keys of {len(past)} past day(s)"
                + (f" ({orphans} reservation(s) left without their day)" if orphans else "")
            )
            return past

    common.run(main())


@app.command("watch", short_help="A live view of today's used vs limit.")
def watch(
    interval: common.Interval = 1.0,
    count: common.Refreshes = None,
    redis_url: common.RedisUrl = None,
) -> None:
    """A live view of today's used vs limit (follows a policy change and the day's turn).
    Ctrl-C ends it (exit status 0)."""

    async def main() -> None:
        async with common.redis_client(common.redis_dsn(redis_url)) as redis:
            console = common.out()
            previous: tuple[str, int, float] | None = None

            async def frame() -> Group:
                nonlocal previous
                u = await usage(redis, None, False)
                now = time.monotonic()
                rate = ""
                if previous is not None and previous[0] == u.day and now > previous[2]:
                    per_minute = (u.used - previous[1]) / (now - previous[2]) * 60
                    rate = f"  ({per_minute:+.0f}/min)"
                previous = (u.day, u.used, now)
                stamp = dt.datetime.now().strftime("%H:%M:%S")
                header = Text.from_markup(f"[dim]{stamp}{escape(rate)}[/dim]")
                return Group(header, render_usage(u))

            await common.live_loop(console, frame, interval, count)

    common.run(main(), interrupt_ok=True)
