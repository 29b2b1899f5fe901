"""`medbook-migrate` as the chart runs it from the booking image, against the real PostgreSQL:
the migrations Job (`upgrade`), the booking pods' init container (`wait`), and `check`."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from medbook.booking.migrations import Schema, main, schema_state
from medbook.devstack.servers import PostgresServer

MIGRATE = Path(sys.executable).with_name("medbook-migrate")  # the console script


@dataclass
class Migrate:
    """``medbook-migrate`` in this process (a thread), as the image runs it: code and output."""

    capsys: pytest.CaptureFixture[str]
    caplog: pytest.LogCaptureFixture
    monkeypatch: pytest.MonkeyPatch

    async def __call__(self, *args: str, url: str) -> tuple[int, str]:
        self.monkeypatch.setenv("MEDBOOK_DATABASE_URL", url)
        self.caplog.clear()
        with self.caplog.at_level(logging.INFO, logger="medbook.migrate"):
            code = await asyncio.to_thread(main, list(args))
        captured = self.capsys.readouterr()
        return code, captured.out + captured.err + self.caplog.text


@pytest.fixture
def migrate(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> Migrate:
    return Migrate(capsys, caplog, monkeypatch)


def _sync(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def empty_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A database nobody migrated yet (what the in-chart PostgreSQL holds on a first install)."""
    name = f"m_{uuid.uuid4().hex[:12]}"
    postgres_server.create_database(name)
    yield postgres_server.url_for(name)
    postgres_server.drop_database(name)


def _refused(url: str) -> str:
    """The same database as a user it does not know (as a database initialised with other
    credentials refuses the chart's: the tests' server trusts passwords, not names)."""
    user, rest = url.removeprefix("postgresql://").split("@", 1)
    return f"postgresql://medbook_nobody:{user.partition(':')[2]}@{rest}"


async def test_the_wait_ends_at_once_on_a_migrated_database(
    migrate: Migrate, database_url: str
) -> None:
    code, output = await migrate("wait", url=database_url)
    assert code == 0, output
    assert "the schema is at 0002" in output
    code, output = await migrate("check", url=database_url)
    assert (code, output.strip()) == (0, "the schema is at 0002")


async def test_the_wait_lasts_until_the_migrations_ran(
    migrate: Migrate, empty_database: str
) -> None:
    code, output = await migrate("wait", "--timeout", "1", "--interval", "0.2", url=empty_database)
    assert code == 1, output
    assert "waiting: the database is not migrated yet" in output and "gave up after 1s" in output
    assert (await migrate("check", url=empty_database))[0] == 1

    waiting = asyncio.create_task(migrate("wait", "--interval", "0.2", url=empty_database))
    await asyncio.sleep(1)
    assert not waiting.done()
    code, output = await migrate("upgrade", url=empty_database)  # the migrations Job
    assert code == 0, output
    assert schema_state(_sync(empty_database)).schema is Schema.AT_HEAD
    code, output = await waiting
    assert code == 0, output  # the init container ends: the pod may start


async def test_the_wait_says_why_the_database_does_not_answer(
    migrate: Migrate, database_url: str
) -> None:
    code, output = await migrate(
        "wait", "--timeout", "0.5", "--interval", "0.1", url=_refused(database_url)
    )
    assert code == 1
    assert 'role "medbook_nobody" does not exist' in output
    code, output = await migrate("check", url=_refused(database_url))
    assert code == 2 and "the database cannot be reached" in output


async def test_a_database_migrated_by_a_newer_release_holds_nobody(
    migrate: Migrate, database_url: str
) -> None:
    """After a rollback: the older image neither waits nor touches the newer schema."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    code, output = await migrate("wait", "--timeout", "1", url=database_url)
    assert code == 0, output
    assert "9999, which this version does not know" in output
    code, output = await migrate("upgrade", url=database_url)
    assert code == 0, output
    assert "nothing to do" in output
    assert schema_state(_sync(database_url)).schema is Schema.NEWER


async def test_the_job_gives_up_on_a_database_that_never_answers(
    migrate: Migrate, database_url: str
) -> None:
    url = _refused(database_url)
    code, output = await migrate("upgrade", "--wait-for-database", "1", url=url)
    assert code == 2
    assert 'role "medbook_nobody" does not exist' in output


async def test_two_migrations_at_once_apply_the_schema_once(
    migrate: Migrate, empty_database: str
) -> None:
    """An install's Job and an upgrade's hook may overlap: an advisory lock orders them."""
    results = await asyncio.gather(*(migrate("upgrade", url=empty_database) for _ in range(2)))
    assert [code for code, _ in results] == [0, 0], results
    assert schema_state(_sync(empty_database)).schema is Schema.AT_HEAD


async def _run(*args: str, url: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(MIGRATE),
        *args,
        env={**os.environ, "MEDBOOK_DATABASE_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, output.decode()


async def test_the_console_script_keeps_its_old_form(empty_database: str) -> None:
    """``medbook-migrate [REVISION] [--sql]`` without a subcommand is ``upgrade``."""
    code, output = await _run("--sql", url=empty_database)
    assert code == 0, output
    assert "CREATE TABLE bookings" in output
    assert schema_state(_sync(empty_database)).schema is Schema.EMPTY  # printed, not run
