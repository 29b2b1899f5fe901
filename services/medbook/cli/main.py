"""``medbook``: the command for the people who run, demo, test and operate medbook."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from medbook.cli import bench, book, bookings, dev, dlq, load, quota, scenarios, top


class MedbookCommand(TyperGroup):
    """The root command: when the reader of its output goes away (``medbook ... | head``), the
    command ends quietly with status 0, as a pipeline expects."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # Anything still buffered would fail again at exit: send it nowhere.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None


# Plain (click) help: it wraps at the terminal's width and never cuts an option's name.
app = typer.Typer(
    name="medbook",
    cls=MedbookCommand,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def main() -> None:
    """Run, exercise and operate the medbook booking saga.

    Each server is found from its flag (--url, --database-url, --redis-url, --amqp-url),
    else the services' own variables (MEDBOOK_*, and the reference's DB_*, REDIS_*,
    RABBITMQ_URL), else the `medbook dev` running in this checkout (make dev), else the
    servers' standard local ports.

    Exit status: 0 ok; 1 a check failed, a booking is stuck, or a confirmation was declined;
    2 bad usage or a server that cannot be reached; 130 interrupted.
    """


app.add_typer(dev.app, name="dev", short_help="The whole system on this machine, until Ctrl-C.")
app.command("book", short_help="Make one booking and watch its saga to the end.")(book.book)
app.command("scenario", short_help="The reference's scenarios: PASS or FAIL, and why.")(
    scenarios.scenario
)
app.add_typer(load.app, name="load", short_help="Load tests on the benchmark's engine.")
app.command("bench", short_help="The saga's benchmark: N bookings at concurrency C.")(bench.bench)
app.add_typer(
    quota.app, name="quota", short_help="Today's discount quota: get, reset, keys, clean."
)
app.add_typer(bookings.app, name="bookings", short_help="The bookings: watch, stats, purge.")
app.add_typer(dlq.app, name="dlq", short_help="Dead letters: list, show, replay, purge.")
app.command("top", short_help="A full-screen live view of the running saga.")(top.top)


if __name__ == "__main__":
    app()
