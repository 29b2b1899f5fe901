"""``medbook bookings``: the bookings table, live; counts and rates; purging old rows.

Reads PostgreSQL (the API has no list endpoint, on purpose) through the booking
package's :mod:`medbook.booking.maintenance`, which also holds the purge and its
rules: by default only bookings in a final status whose events have all left
the outbox; ``--include-pending`` also deletes PENDING ones, with their unsent
events, in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from typing import Annotated, Any

import typer
from rich.console import Group, JustifyMethod
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from medbook.booking.maintenance import BookingMaintenance
from medbook.cli import common
from medbook.contracts import BookingStatus

app = typer.Typer(
    help="The bookings in PostgreSQL: a live table, counts and rates, purging old ones.",
    no_args_is_help=True,
)

STATUS_STYLE = {
    "PENDING": "yellow",
    "CONFIRMED": "green",
    "REJECTED": "red",
    "CANCELLED": "magenta",
}

Duration = Annotated[str, typer.Option(metavar="DURATION", help="e.g. 90s, 60m, 2h, 7d.")]


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def history_text(line: str | None) -> str:
    if not line:
        return ""
    return line.split("] ", 1)[1] if line.startswith("[") and "] " in line else line


# -- watch ---------------------------------------------------------------------------------


class BookingsView:
    """The recent bookings, and the status changes seen between refreshes."""

    def __init__(self, connection: Any, limit: int) -> None:
        self.bookings = BookingMaintenance(connection)
        self.limit = limit
        self.seen: dict[str, str] = {}
        self.changes: list[tuple[str, str, str, str]] = []  # time, id, from, to
        self.first = True

    async def frame(self) -> Group:
        rows = await self.bookings.recent(self.limit)
        pending = (await self.bookings.backlog()).pending
        now = dt.datetime.now(dt.UTC)
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        table = Table(
            title=f"{stamp}  the {len(rows)} most recent bookings ({pending} PENDING in all)",
            title_justify="left",
        )
        # The short columns keep their width; the last step takes what is left, cut with "...".
        for column in ("booking", "user", "status", "price", "age"):
            justify: JustifyMethod = "right" if column in ("price", "age") else "left"
            table.add_column(column, justify=justify, no_wrap=True)
        table.add_column("last step")
        for row in rows:
            booking_id, status = row.booking_id, row.status
            before = self.seen.get(booking_id)
            if not self.first and before != status:
                self.changes.append((stamp, booking_id, before or "new", status))
            self.seen[booking_id] = status
            price = str(row.base_price)
            if row.final_price is not None and row.final_price != row.base_price:
                price = f"{row.base_price} -> {row.final_price}"
            table.add_row(
                booking_id[:8],
                escape(row.user_name[:24]),  # names are cut, never wrapped
                status_text(status),
                price,
                common.human_duration(now - row.created_at),
                Text(history_text(row.last_entry), no_wrap=True, overflow="ellipsis"),
            )
        self.first = False
        del self.changes[:-10]
        parts: list[Any] = [table]
        if self.changes:
            parts.append(Text("status changes:"))
            parts.extend(
                Text.assemble(f"  {t}  {i[:8]}  {a} -> ", status_text(b))
                for t, i, a, b in self.changes
            )
        return Group(*parts)


@app.command("watch", short_help="A live table of the most recent bookings.")
def watch(
    limit: Annotated[
        int, typer.Option(help="How many recent bookings to show.", min=1, metavar="N")
    ] = 20,
    interval: common.Interval = 1.0,
    count: common.Refreshes = None,
    database_url: common.DatabaseUrl = None,
) -> None:
    """A live table of the most recent bookings (status, price, age, last step) and the status
    changes seen since it started. Ctrl-C ends it (exit status 0)."""

    async def main() -> None:
        async with common.database(common.database_dsn(database_url)) as connection:
            view = BookingsView(connection, limit)
            await common.live_loop(common.out(), view.frame, interval, count)

    common.run(main(), interrupt_ok=True)


# -- stats ---------------------------------------------------------------------------------


@app.command("stats", short_help="Counts by status and reason, rates, end-to-end times.")
def stats(
    since: Duration = "60m",
    database_url: common.DatabaseUrl = None,
    json_output: common.JsonOutput = False,
) -> None:
    """Counts by status and reason (all time and created in the last --since), creation rate
    per minute over that window, end-to-end times (created -> final), and the oldest PENDING
    booking."""
    window = common.parse_duration(since)

    async def main() -> dict[str, Any]:
        async with common.database(common.database_dsn(database_url)) as connection:
            bookings = BookingMaintenance(connection)
            rows = await bookings.outcomes(dt.datetime.now(dt.UTC) - window)
            oldest = (await bookings.backlog()).oldest_pending_at
        minutes = window.total_seconds() / 60
        groups: list[dict[str, Any]] = [
            {
                "status": r.status,
                "reason": r.reason,
                "total": r.total,
                "recent": r.recent,
                "per_minute": round(r.recent / minutes, 2) if minutes else None,
                "seconds_p50": r.seconds_p50,
                "seconds_p95": r.seconds_p95,
            }
            for r in rows
        ]
        by_status: Counter[str] = Counter()
        recent_by_status: Counter[str] = Counter()
        for g in groups:
            by_status[g["status"]] += g["total"]
            recent_by_status[g["status"]] += g["recent"]
        return {
            "window": since,
            "total": sum(by_status.values()),
            "by_status": dict(by_status),
            "recent_by_status": dict(recent_by_status),
            "groups": groups,
            "oldest_pending_seconds": (
                (dt.datetime.now(dt.UTC) - oldest).total_seconds() if oldest else None
            ),
        }

    result = common.run(main())
    if json_output:
        typer.echo(json.dumps(result, indent=2))
        return
    table = Table(
        title=f"{result['total']} booking(s); the last {since}: "
        f"{sum(result['recent_by_status'].values())} created",
        title_justify="left",
    )
    for column in ("status", "reason", "total", f"last {since}", "per min", "e2e p50", "e2e p95"):
        table.add_column(column, justify="left" if column in ("status", "reason") else "right")

    def seconds(value: float | None) -> str:
        return "-" if value is None else common.human_duration(value)

    for g in result["groups"]:
        table.add_row(
            status_text(g["status"]),
            escape(g["reason"]),
            str(g["total"]),
            str(g["recent"]),
            f"{g['per_minute']:.1f}",
            seconds(g["seconds_p50"]),
            seconds(g["seconds_p95"]),
        )
    console = common.out()
    console.print(table)
    if result["oldest_pending_seconds"] is not None:
        console.print(
            f"oldest PENDING booking: {common.human_duration(result['oldest_pending_seconds'])} old"
        )


# -- purge ---------------------------------------------------------------------------------


def describe(counts: Counter[str] | dict[str, int]) -> str:
    parts = [f"{s} {counts[s]}" for s in BookingStatus if counts.get(s)]
    return ", ".join(parts) if parts else "none"


@app.command("purge", short_help="Delete old bookings, never breaking the saga.")
def purge(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", metavar="DURATION", help="Age of the last change, e.g. 60m, 2h, 7d."
        ),
    ],
    include_pending: Annotated[
        bool,
        typer.Option(
            help="Also delete PENDING bookings and their unsent events (see the warning)."
        ),
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Only say what would be deleted.")] = False,
    yes: common.Yes = False,
    batch: Annotated[
        int, typer.Option(help="Bookings deleted per transaction.", min=1, metavar="N")
    ] = 1000,
    database_url: common.DatabaseUrl = None,
    json_output: common.JsonOutput = False,
) -> None:
    """Delete bookings whose last change is older than --older-than: by default only those in
    a final status (CONFIRMED, REJECTED, CANCELLED) whose events have all left the outbox, so
    the saga never loses an event. Asks first unless --yes; says exactly what it deleted.

    --include-pending also deletes PENDING bookings with their unsent outbox events. A
    booking_created already on the broker is still decided by the worker: a quota unit it
    reserves for a deleted booking stays used until the day ends, and the result goes to the
    dead-letter queue as a result for an unknown booking.

    Exit status: 0 done (or nothing to delete), 1 declined, 2 bad duration or no database.
    """
    age = common.parse_duration(older_than)

    async def main() -> dict[str, Any]:
        say = common.err()
        async with common.database(common.database_dsn(database_url)) as connection:
            bookings = BookingMaintenance(connection)
            cutoff = dt.datetime.now(dt.UTC) - age
            found = await bookings.purge_preview(cutoff, include_pending)
            preview = found.matched
            total = sum(preview.values())
            report: dict[str, Any] = {
                "cutoff": cutoff.isoformat(),
                "matched": preview,
                "deleted": {},
                "events_deleted": 0,
                "kept_in_flight": found.kept_in_flight,
                "kept_pending": found.kept_pending,
                "dry_run": dry_run,
            }
            notes = []
            if report["kept_in_flight"]:
                notes.append(
                    f"{report['kept_in_flight']} kept: their events are still in the outbox"
                )
            if report["kept_pending"]:
                notes.append(f"{report['kept_pending']} PENDING kept (--include-pending)")
            say.print(
                f"{total} booking(s) last changed before {cutoff:%Y-%m-%d %H:%M:%S} UTC "
                f"({describe(preview)})" + "".join(f"; {n}" for n in notes)
            )
            if total == 0 or dry_run:
                return report
            if include_pending and preview.get("PENDING"):
                say.print(
                    "[yellow]warning:[/yellow] deleting PENDING bookings: an event already on "
                    "the broker is still decided by the worker; a unit it reserves stays used "
                    "today and its result is dead-lettered (unknown booking)"
                )
            common.confirm(f"Delete these {total} booking(s)?", yes)
            deleted: Counter[str] = Counter()
            while True:
                statuses, events = await bookings.purge_batch(cutoff, include_pending, batch)
                if not statuses:
                    break
                deleted += statuses
                report["events_deleted"] += events
            report["deleted"] = dict(deleted)
            return report

    report = common.run(main())
    if json_output:
        typer.echo(json.dumps(report, indent=2))
    elif report["dry_run"]:
        common.out().print(f"dry run: would delete {sum(report['matched'].values())} booking(s)")
    elif report["matched"]:
        common.out().print(
            f"deleted {sum(report['deleted'].values())} booking(s) ({describe(report['deleted'])})"
            f" and {report['events_deleted']} outbox event(s)"
        )
