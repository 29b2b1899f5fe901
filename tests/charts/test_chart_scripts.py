"""The script the chart ships (charts/medbook/files): the `helm test` pod's booking, run
against real servers. (The booking pods' wait for the schema is `medbook-migrate wait`,
from the image: tests/charts/test_migrate_command.py.)"""

from __future__ import annotations

import asyncio
import os
import sys

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
