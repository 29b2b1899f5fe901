"""The `medbook` command as a whole: help everywhere, settings from the services' environment,
and one clear line (exit status 2), never a traceback, when a server cannot be reached."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from medbook.cli.main import app
from tests.cli.conftest import Medbook, explain
from tests.helpers import Stack, service_env


def all_commands() -> list[tuple[list[str], Any]]:
    """Every command and group of `medbook`, with its path, from the command tree itself."""
    import typer

    found: list[tuple[list[str], Any]] = []

    def walk(command: Any, path: list[str]) -> None:
        found.append((path, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


COMMANDS = all_commands()
# typer's labels for a type (`<int>`, `<str>`, `<float range>`, `<list[str]>`, `<bool>`): an
# option's metavar that says nothing about its value.
TYPE_LABEL = re.compile(r"<(int|float|str|bool|uuid|path|datetime)( range)?>|<list\[")


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(path) or "medbook" for path, _ in COMMANDS]
)
def test_every_help_is_readable_at_80_columns(path: list[str], command: Any) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, explain(result)
    text = result.stdout
    assert text.startswith(f"Usage: medbook {' '.join(path)}".rstrip())
    assert [line for line in text.splitlines() if len(line) > 80] == []
    options = text[text.index("Options:") :]  # (typer labels every argument with its type)
    assert "…" not in text and not TYPE_LABEL.search(options), text
    words = set(re.findall(r"[\w-]+", text))
    for param in command.params:
        for name in [*param.opts, *param.secondary_opts]:
            if name.startswith("-"):
                assert name in words, f"{name} is cut or missing:\n{text}"
        envvars = param.envvar if isinstance(param.envvar, list) else [param.envvar]
        for envvar in filter(None, envvars):
            assert envvar in words, f"{envvar} is cut or missing:\n{text}"
    if getattr(command, "invoke_without_command", False):  # runs without a subcommand
        assert "COMMAND [ARGS]" not in text.splitlines()[0]


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["scenario", "positive", "--url", "http://127.0.0.1:1"], "the booking API"),
        (["book", "--url", "http://127.0.0.1:1", "--name", "x"], "the booking API"),
        (["load", "--url", "http://127.0.0.1:1"], "the booking API"),
        (["quota", "get", "--redis-url", "redis://127.0.0.1:1/0"], "Redis"),
        (
            ["bookings", "stats", "--database-url", "postgresql://u:secret@127.0.0.1:1/x"],
            "PostgreSQL",
        ),
        (["dlq", "list", "--amqp-url", "amqp://guest:secret@127.0.0.1:1/"], "RabbitMQ"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
async def test_an_unreachable_server_is_one_clear_line_and_exit_2(
    argv: list[str], what: str
) -> None:
    result = await asyncio.to_thread(CliRunner().invoke, app, argv)
    assert result.exit_code == 2, explain(result)
    assert f"error: cannot reach {what} at" in result.stderr
    assert "secret" not in result.output  # passwords are masked
    assert "Traceback" not in result.output


async def test_bad_usage_exits_2(medbook: Medbook) -> None:
    for argv in (
        ["bookings", "purge", "--older-than", "soon"],
        ["load", "--mix", "vip=1"],
        ["dlq", "replay"],
        ["dlq", "replay", "abc", "--all"],
        ["scenario", "everything"],
    ):
        result = await medbook(*argv)
        assert result.exit_code == 2, explain(result)


def run_medbook(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medbook.cli.main", *argv],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


async def test_settings_come_from_the_services_environment(stack: Stack) -> None:
    api_url = str(stack.api.base_url).rstrip("/")
    env = service_env(stack.infra, MEDBOOK_API_URL=api_url, MEDBOOK_POLICY_REFRESH="0.2")
    result = await asyncio.to_thread(run_medbook, ["scenario", "no-discount"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS no-discount" in result.stdout

    # The reference's variable names work too.
    db = urlsplit(stack.infra.database_url)
    redis = urlsplit(stack.infra.redis_url)
    reference = {
        k: v for k, v in env.items() if k not in ("MEDBOOK_DATABASE_URL", "MEDBOOK_REDIS_URL")
    } | {
        "DB_HOST": db.hostname or "", "DB_PORT": str(db.port), "DB_USERNAME": db.username or "",
        "DB_NAME": db.path.lstrip("/"), "REDIS_HOST": redis.hostname or "",
        "REDIS_PORT": str(redis.port), "RABBITMQ_URL": stack.infra.amqp_url,
    }  # fmt: skip
    result = await asyncio.to_thread(run_medbook, ["bookings", "stats", "--json"], reference)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["by_status"] == {"CONFIRMED": 1}
    result = await asyncio.to_thread(run_medbook, ["quota", "get", "--json"], reference)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["limit"] == 100


def test_medbook_dev_defaults_are_the_dev_stacks_ports() -> None:
    import dataclasses

    from medbook.cli import dev
    from medbook.devstack.stack import StackPorts

    written_out = (
        dev.POSTGRES_PORT,
        dev.REDIS_PORT,
        dev.AMQP_PORT,
        dev.HTTP_PORT,
        dev.METRICS_PORT,
    )
    assert written_out == dataclasses.astuple(StackPorts())


def test_the_command_has_no_sql_and_no_redis_keys_of_its_own() -> None:
    """It goes through the owners (booking.maintenance, discount's stores): their schema and key
    layout can change without the command breaking."""
    import re
    from pathlib import Path

    import medbook.cli

    sql = re.compile(r"\b(SELECT .+ FROM|DELETE FROM|INSERT INTO|UPDATE \w+ SET|TRUNCATE)\b", re.I)
    keys = re.compile(
        r"discount_quota|discount_reservation|discount_processed:|medbook:policy|"
        r"\b(counter_key|members_key|reservation_key|record_key|COUNTER_PREFIX|RESERVATION_PREFIX"
        r"|RECORD_PREFIX|POLICY_KEY)\b|\.(scan_iter|scard|smembers|hget|mget)\("
    )
    found = []
    for path in sorted(Path(medbook.cli.__file__).parent.glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if sql.search(line) or keys.search(line):
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert found == []


async def test_a_reader_that_goes_away_ends_the_command_quietly_with_0(stack: Stack) -> None:
    """`medbook ... | head -3`: a closed pipe is the reader's choice, not a failure."""

    def run() -> tuple[int, bytes]:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "medbook.cli.main", "bookings", "watch", "--count", "2000",
                "--interval", "0.1", "--database-url", stack.infra.database_url,
            ],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None and process.stderr is not None
        process.stdout.readline()
        process.stdout.close()
        code = process.wait(60)
        return code, process.stderr.read()

    code, errors = await asyncio.to_thread(run)
    assert (code, errors.decode()) == (0, "")
