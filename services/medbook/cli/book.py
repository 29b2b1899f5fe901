"""``medbook book``: make one booking and watch its saga to the end."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from medbook.cli import common
from medbook.cli.api import BookingApi
from medbook.cli.common import UsageProblem
from medbook.contracts import TERMINAL_STATUSES, Gender


def ask(question: str) -> str:
    """Ask on standard error, read a line from standard input (so --json output stays clean)."""
    while True:
        common.err().print(f"{question}: ", end="")
        try:
            answer = input().strip()
        except EOFError:
            common.err().print()
            raise typer.Abort() from None
        if answer:
            return answer


def ask_gender() -> str:
    choices = [g.value for g in Gender]
    while True:
        answer = ask(f"Gender ({'/'.join(choices)})")
        for choice in choices:
            if answer.lower() == choice.lower():
                return choice
        common.err().print(f"[red]choose one of {', '.join(choices)}[/red]")


_DATE_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}")


def dob_problem(text: str) -> str | None:
    """What is wrong with a date of birth as written (None: nothing), in the API's words."""
    if not _DATE_SHAPE.fullmatch(text):
        return "write the date as YYYY-MM-DD, e.g. 1990-04-23"
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return f"{text} is not a real calendar date"
    return None


def ask_dob() -> str:
    while True:
        answer = ask("Date of birth (YYYY-MM-DD)")
        problem = dob_problem(answer)
        if problem is None:
            return answer
        common.err().print(f"[red]{problem}[/red]")


def pick_services(answer: str, catalog: list[dict[str, Any]]) -> list[str] | str:
    """Numbers or names, comma-separated -> the service names (or a problem to show)."""
    picked: list[str] = []
    by_name = {item["name"].lower(): item["name"] for item in catalog}
    for part in (p.strip() for p in answer.split(",")):
        if not part:
            continue
        if part.isdigit() and 1 <= int(part) <= len(catalog):
            name = catalog[int(part) - 1]["name"]
        elif part.lower() in by_name:
            name = by_name[part.lower()]
        else:
            return f"{part!r} is neither a number from the list nor a service's name"
        if name not in picked:
            picked.append(name)
    return picked or "choose at least one service"


def catalog_names(names: list[str], catalog: list[dict[str, Any]]) -> list[str]:
    """Service names as the catalog spells them, whatever their case (unknown ones as given,
    for the API to refuse with its own message)."""
    by_name = {item["name"].lower(): item["name"] for item in catalog}
    return [by_name.get(name.strip().lower(), name) for name in names]


def ask_services(catalog: list[dict[str, Any]], gender: str) -> list[str]:
    table = Table(title=f"Services offered to {gender}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("service")
    table.add_column("price", justify="right")
    for number, item in enumerate(catalog, start=1):
        table.add_row(str(number), item["name"], str(item["price"]))
    common.err().print(table)
    while True:
        answer = ask("Services (numbers or names, comma-separated)")
        picked = pick_services(answer, catalog)
        if isinstance(picked, list):
            return picked
        common.err().print(f"[red]{picked}[/red]")


def history_text(line: str) -> str:
    """``[2026-01-30T10:00:00.123Z] text`` -> ``10:00:00.123  text``."""
    if line.startswith("[") and "] " in line:
        stamp, text = line[1:].split("] ", 1)
        return f"{stamp[11:23]}  {text}"
    return line


def summary(booking: dict[str, Any]) -> str:
    status = booking["status"]
    base, final = booking["basePrice"], booking["finalPrice"]
    if status == "CONFIRMED":
        if final is not None and final < base:
            return f"[green]CONFIRMED[/green]  price {base} -> {final} (discount applied)"
        return f"[green]CONFIRMED[/green]  price {final} (no discount)"
    if status == "PENDING":
        return "[yellow]PENDING[/yellow]  no result yet"
    return f"[red]{status}[/red]  reason: {escape(str(booking['failReason'] or '-'))}"


async def book_main(
    url: str,
    token: str | None,
    fields: dict[str, Any],
    idempotency_key: str | None,
    wait: bool,
    within: float,
    as_json: bool,
) -> dict[str, Any]:
    out, say = common.out(), common.err()
    async with BookingApi(url, token) as api:
        if fields["userName"] is None:
            fields["userName"] = ask("Name")
        if fields["gender"] is None:
            fields["gender"] = ask_gender()
        if fields["dob"] is None:
            fields["dob"] = ask_dob()
        if fields["serviceNames"]:
            fields["serviceNames"] = catalog_names(fields["serviceNames"], await api.services())
        else:
            catalog = await api.services(fields["gender"])
            fields["serviceNames"] = ask_services(catalog, fields["gender"])
        created = await api.create(fields, idempotency_key)
        if created.booking_id is None:
            raise UsageProblem(
                f"the booking was refused ({created.status_code}): {created.problem}"
            )
        booking_id = created.booking_id
        if not as_json:
            replay = " (replayed: this Idempotency-Key was used before)" if created.replayed else ""
            out.print(
                f"booking [bold]{booking_id}[/bold] {created.body['status']}{replay}\n"
                f"  trace {created.body['traceId']} (times below in UTC)"
            )
        if not wait:
            return (await api.get(booking_id)) or {}
        shown = 0
        with say.status("waiting for the saga ...", spinner="dots") as spinner:

            def show(booking: dict[str, Any]) -> None:
                nonlocal shown
                steps = booking["history"][shown:]
                if as_json or not steps:
                    return
                # The spinner is drawn on standard error, the steps go to standard output:
                # take it off the screen while they are printed, or it stays behind them.
                spinner.stop()
                for line in steps:
                    out.print(f"  {escape(history_text(line))}")
                shown = len(booking["history"])
                spinner.start()

            booking = await api.wait(booking_id, within, on_change=show)
        if not as_json:
            out.print(summary(booking))
        return booking


def book(
    name: Annotated[
        str | None, typer.Option("--name", help="The customer's name.", metavar="NAME")
    ] = None,
    gender: Annotated[
        Gender | None,
        typer.Option(
            help="Male, Female or Other (any case).", case_sensitive=False, metavar="GENDER"
        ),
    ] = None,
    dob: Annotated[
        str | None, typer.Option(help="Date of birth, YYYY-MM-DD.", metavar="DATE")
    ] = None,
    services: Annotated[
        list[str] | None,
        typer.Option(
            "--service",
            "-s",
            help="A service's name, in any case (repeat for several).",
            metavar="NAME",
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Send this Idempotency-Key (a retry returns the same).", metavar="KEY"),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow the saga until a final status.")] = True,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the saga.", min=0.1, metavar="SECONDS")
    ] = 30.0,
    url: common.ApiUrl = None,
    token: common.ApiToken = None,
    json_output: common.JsonOutput = False,
) -> None:
    """Make a booking: asks for what the flags do not give (the catalog offered to the chosen
    gender is shown), submits it, and shows the saga's steps as they happen until the final
    status, price and reason.

    Exit status: 0 the booking reached a final status (CONFIRMED, REJECTED or CANCELLED), or
    was accepted with --no-wait; 1 still PENDING after --timeout; 2 the API refused the request
    or cannot be reached.
    """
    problem = dob_problem(dob) if dob is not None else None
    if problem is not None:
        raise typer.BadParameter(problem, param_hint="--dob")
    url = common.api_url(url)
    fields: dict[str, Any] = {
        "userName": name,
        "gender": gender.value if gender else None,
        "dob": dob,
        "serviceNames": list(services or []),
    }
    booking = common.run(book_main(url, token, fields, idempotency_key, wait, timeout, json_output))
    if json_output:
        typer.echo(json.dumps(booking, indent=2))
    if wait and booking.get("status") not in TERMINAL_STATUSES:
        common.err().print(f"[yellow]still PENDING after {timeout:g}s[/yellow]")
        raise typer.Exit(common.EXIT_FAILED)
    raise typer.Exit(common.EXIT_OK)
