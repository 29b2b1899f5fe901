"""``medbook``: the command for the people who run, demo, test and operate medbook."""

from __future__ import annotations

import typer

from medbook.cli import bench, book, bookings, dev, dlq, load, quota, scenarios

app = typer.Typer(
    name="medbook",
    help="Run, exercise and operate the medbook booking saga.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


@app.callback()
def main() -> None:
    """Run, exercise and operate the medbook booking saga.

    Settings come from the same environment variables as the services
    (MEDBOOK_*, and the reference's DB_*, REDIS_*, RABBITMQ_URL); the booking API from
    MEDBOOK_API_URL (what `medbook dev` serves by default) or --url.

    Exit status: 0 ok; 1 a check failed, a booking is stuck, or a confirmation was declined;
    2 bad usage or a server that cannot be reached; 130 interrupted.
    """


app.command("dev")(dev.dev)
app.command("bench")(bench.bench)
app.command("book")(book.book)
app.command("scenario")(scenarios.scenario)
app.add_typer(load.app, name="load")
app.add_typer(quota.app, name="quota")
app.add_typer(bookings.app, name="bookings")
app.add_typer(dlq.app, name="dlq")


if __name__ == "__main__":
    app()
