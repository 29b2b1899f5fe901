"""The two scripts the chart ships (charts/medbook/files), run against real servers:
the booking pods' wait for the schema, and the `helm test` pod's booking."""

from __future__ import annotations

import asyncio
import os
import sys

from medbook.booking.migrations import upgrade
from medbook.devstack.servers import PostgresServer
from tests.charts.rendering import CHARTS_DIR
from tests.helpers import Stack

FILES = CHARTS_DIR / "medbook" / "files"


async def _run(script: str, *args: str, **env: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(FILES / script),
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, output.decode()


async def test_the_wait_ends_at_once_on_a_migrated_database(database_url: str) -> None:
    code, output = await _run("wait_for_schema.py", MEDBOOK_DATABASE_URL=database_url)
    assert code == 0, output
    assert "schema is at" in output


async def test_the_wait_lasts_until_the_migrations_ran(postgres_server: PostgresServer) -> None:
    name = "wait_for_schema_empty"
    postgres_server.drop_database(name)
    postgres_server.create_database(name)
    url = postgres_server.url_for(name)
    try:
        code, output = await _run(
            "wait_for_schema.py", "--timeout", "1", "--interval", "0.2", MEDBOOK_DATABASE_URL=url
        )
        assert code == 1, output
        assert "not migrated yet" in output and "gave up" in output

        waiting = asyncio.create_task(
            _run("wait_for_schema.py", "--interval", "0.2", MEDBOOK_DATABASE_URL=url)
        )
        await asyncio.sleep(1.5)
        assert not waiting.done()
        await asyncio.to_thread(upgrade, url.replace("postgresql://", "postgresql+psycopg://", 1))
        code, output = await waiting
        assert code == 0, output
    finally:
        postgres_server.drop_database(name)


async def test_the_helm_test_books_and_sees_the_saga_end(stack: Stack) -> None:
    code, output = await _run(
        "smoke_test.py", MEDBOOK_API_URL=str(stack.api.base_url), MEDBOOK_TEST_TIMEOUT="30"
    )
    assert code == 0, output
    assert "booked" in output
    assert " is CONFIRMED" in output or " is REJECTED" in output


async def test_the_helm_test_fails_when_the_api_is_unreachable() -> None:
    code, output = await _run(
        "smoke_test.py", MEDBOOK_API_URL="http://127.0.0.1:9", MEDBOOK_TEST_TIMEOUT="1"
    )
    assert code == 1
    assert "could not book" in output
