"""Running the `medbook` command in tests: in a thread (the CLI runs its own event loop)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner, Result

from medbook.cli.main import app
from tests.helpers import Stack


@dataclass
class Medbook:
    """`medbook ...` against one test's servers (their URLs passed as flags)."""

    api_url: str
    redis_url: str
    amqp_url: str
    database_url: str

    def flags(self, command: str) -> list[str]:
        """The connection flags a subcommand takes."""
        first = command.split()[0]
        if first in ("book",):
            return ["--url", self.api_url]
        if first == "scenario":
            return [
                "--url", self.api_url, "--redis-url", self.redis_url,
                "--amqp-url", self.amqp_url, "--policy-refresh", "0.2",
            ]  # fmt: skip
        if first == "load":
            extra = ["--policy-refresh", "0.2"] if command.startswith("load quota") else []
            return [
                "--url", self.api_url, "--redis-url", self.redis_url,
                "--database-url", self.database_url, *extra,
            ]  # fmt: skip
        if first == "quota":
            return ["--redis-url", self.redis_url]
        if first == "bookings":
            return ["--database-url", self.database_url]
        if first == "dlq":
            return ["--amqp-url", self.amqp_url]
        return []

    async def __call__(self, *args: str, input: str | None = None) -> Result:
        """Run ``medbook <args> <connection flags>``; the result has exit_code and output."""
        argv = [*args, *self.flags(" ".join(args))]
        return await asyncio.to_thread(CliRunner().invoke, app, argv, input=input)


def explain(result: Result) -> str:
    """What to show when an assertion on a run fails."""
    text = f"exit {result.exit_code}\n--- output\n{result.output}"
    if result.exception and not isinstance(result.exception, SystemExit):
        import traceback

        text += "\n--- exception\n" + "".join(traceback.format_exception(result.exception))
    return text


@pytest.fixture(autouse=True)
def _unwrapped_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Piped output is not wrapped unless COLUMNS is set: keep the terminal's out of the tests."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture(autouse=True)
def _no_dev_stack_of_the_developer(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The commands find a running `make dev` by themselves: never the developer's own."""
    monkeypatch.setenv("MEDBOOK_DEV_DATA", str(tmp_path_factory.getbasetemp() / "no-dev-stack"))


@pytest.fixture
def medbook(stack: Stack) -> Medbook:
    return Medbook(
        api_url=str(stack.api.base_url).rstrip("/"),
        redis_url=stack.infra.redis_url,
        amqp_url=stack.infra.amqp_url,
        database_url=stack.infra.database_url,
    )
