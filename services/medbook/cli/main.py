"""``medbook``: the command for the people who run, demo, test and operate medbook."""

from __future__ import annotations

import typer

from medbook.cli import bench, dev

app = typer.Typer(
    name="medbook",
    help="Run, exercise and operate the medbook booking saga.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """Run, exercise and operate the medbook booking saga.

    Settings come from the same environment variables as the services
    (MEDBOOK_*, and the reference's DB_*, REDIS_*, RABBITMQ_URL).
    """


app.command("dev")(dev.dev)
app.command("bench")(bench.bench)


if __name__ == "__main__":
    app()
