"""What every ``medbook`` subcommand shares: settings, connections, exit codes, output.

Settings come from the same environment as the services (``MEDBOOK_*`` and the
reference's ``DB_*``, ``REDIS_*``, ``RABBITMQ_URL``), through the services' own
settings classes, and each can be overridden by a flag. A server that cannot
be reached is reported in one line and exits with :data:`EXIT_USAGE`, never
with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import typer
from rich.console import Console

from medbook.config import PolicyDefaults, PostgresSettings, RabbitSettings, RedisSettings

T = TypeVar("T")

# Exit codes scripts can rely on (documented in docs/cli.md, "Exit status").
EXIT_OK: Final = 0  # done; every check passed
EXIT_FAILED: Final = 1  # a check failed, a booking is stuck, or a confirmation was declined
EXIT_USAGE: Final = 2  # bad arguments, or a server cannot be reached
EXIT_INTERRUPTED: Final = 130  # Ctrl-C during a run (live views end with 0)

DEFAULT_API_URL: Final = "http://127.0.0.1:3000"


def _width(terminal: bool) -> int | None:
    # Piped output is not wrapped (wide tables stay one line per row) unless COLUMNS says so.
    return None if terminal or os.environ.get("COLUMNS") else 200


def out() -> Console:
    """Standard output (results)."""
    terminal = sys.stdout.isatty()
    return Console(highlight=False, width=_width(terminal), soft_wrap=not terminal)


def err() -> Console:
    """Standard error (progress, warnings, errors)."""
    terminal = sys.stderr.isatty()
    return Console(stderr=True, highlight=False, width=_width(terminal), soft_wrap=not terminal)


def mask(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class Unreachable(Exception):
    """A server the command needs cannot be reached (or refuses us)."""

    def __init__(self, what: str, target: str, cause: BaseException | str) -> None:
        reason = cause if isinstance(cause, str) else (str(cause) or type(cause).__name__)
        super().__init__(f"cannot reach {what} at {mask(target)}: {reason}")


class UsageProblem(Exception):
    """The command cannot run as asked (bad value, missing setting); exits 2."""


class CheckFailed(Exception):
    """A verification failed; exits 1 with the message."""


# -- options shared by the subcommands -----------------------------------------------

ApiUrl = Annotated[
    str,
    typer.Option(
        "--url", envvar="MEDBOOK_API_URL", help="Booking API of the running system.", metavar="URL"
    ),
]
ApiToken = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="MEDBOOK_API_TOKEN",
        help="Bearer token, when the API requires one.",
        show_default=False,
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="PostgreSQL URL (default: MEDBOOK_DATABASE_URL, or the DB_* variables).",
        show_default=False,
        metavar="URL",
    ),
]
RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        help="Redis URL (default: MEDBOOK_REDIS_URL, or the REDIS_* variables).",
        show_default=False,
        metavar="URL",
    ),
]
AmqpUrl = Annotated[
    str | None,
    typer.Option(
        "--amqp-url",
        help="RabbitMQ URL (default: MEDBOOK_RABBITMQ_URL or RABBITMQ_URL).",
        show_default=False,
        metavar="URL",
    ),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
PolicyRefresh = Annotated[
    float | None,
    typer.Option(
        help="Seconds the worker takes to re-read the policy "
        "(default: MEDBOOK_POLICY_REFRESH, or 1).",
        show_default=False,
    ),
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def database_dsn(override: str | None) -> str:
    if override:
        return PostgresSettings(url=override).dsn
    return PostgresSettings().dsn


def redis_dsn(override: str | None) -> str:
    return override or RedisSettings().dsn


def amqp_dsn(override: str | None) -> str:
    return override or RabbitSettings().url.get_secret_value()


def policy_refresh_seconds() -> float:
    """How often the discount worker re-reads the policy (its MEDBOOK_POLICY_REFRESH)."""
    from medbook.config import DiscountSettings

    return DiscountSettings().policy_refresh_interval


# -- connections -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[Any]:
    """A Redis client that has answered a PING (else :class:`Unreachable`)."""
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
    try:
        try:
            await client.ping()
        except Exception as exc:
            raise Unreachable("Redis", url, exc) from None
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def database(url: str) -> AsyncIterator[Any]:
    """An asyncpg connection to the bookings database (else :class:`Unreachable`)."""
    import asyncpg

    try:
        connection = await asyncpg.connect(url, timeout=5)
    except Exception as exc:
        raise Unreachable("PostgreSQL", url, exc) from None
    try:
        yield connection
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 5)


@contextlib.asynccontextmanager
async def broker(url: str) -> AsyncIterator[Any]:
    """An aio-pika connection to RabbitMQ (else :class:`Unreachable`)."""
    import logging

    import aio_pika

    # Their own log lines would repeat, as a traceback, what Unreachable says in one line.
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    try:
        connection = await aio_pika.connect(
            url, timeout=5, client_properties={"connection_name": "medbook-cli"}
        )
    except Exception as exc:
        raise Unreachable("RabbitMQ", url, exc) from None
    try:
        yield connection
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


# -- running a command -------------------------------------------------------------------


def run(main: Coroutine[Any, Any, T], *, interrupt_ok: bool = False) -> T:
    """Run the command's coroutine; turn expected failures into a message and an exit code."""
    try:
        return asyncio.run(main)
    except KeyboardInterrupt:
        if interrupt_ok:
            raise typer.Exit(EXIT_OK) from None
        err().print("[yellow]interrupted[/yellow]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (Unreachable, UsageProblem) as exc:
        err().print(f"[red]error:[/red] {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    except CheckFailed as exc:
        err().print(f"[red]failed:[/red] {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    except typer.Exit:
        raise
    except Exception as exc:
        import httpx

        if isinstance(exc, httpx.TransportError) or _lost_server(exc):
            err().print(f"[red]error:[/red] lost a server during the run: {exc!r}")
            raise typer.Exit(EXIT_USAGE) from None
        raise


def _lost_server(exc: Exception) -> bool:
    """Is this a server that went away (in any adapter's terms)?"""
    from medbook.booking import database
    from medbook.failures import DependencyUnavailable
    from medbook.messaging import translate as amqp
    from medbook.redis_connection import translate as redis

    return any(
        isinstance(translate(exc), DependencyUnavailable)
        for translate in (database.translate, redis, amqp)
    )


def confirm(question: str, yes: bool) -> None:
    """Ask before a destructive step; a refusal (or no terminal to ask on) exits 1."""
    if yes:
        return
    try:
        answer = typer.confirm(question, default=False, err=True)
    except typer.Abort:  # no answer (end of input)
        answer = False
    if not answer:
        err().print("aborted: nothing changed")
        raise typer.Exit(EXIT_FAILED)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> dt.timedelta:
    """``90s``, ``60m``, ``2h``, ``7d`` (a bare number is seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration (examples: 90s, 60m, 2h, 7d)")
    value, unit = float(match.group(1)), (match.group(2) or "s").lower()
    return dt.timedelta(seconds=value * _UNIT_SECONDS[unit])


def human_duration(delta: dt.timedelta | float) -> str:
    seconds = delta.total_seconds() if isinstance(delta, dt.timedelta) else delta
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


@dataclass(frozen=True)
class PolicyView:
    """The quota policy in force and where it comes from."""

    policy: Any  # QuotaPolicy
    published: bool
    owner: str | None

    @property
    def source(self) -> str:
        if not self.published:
            return "defaults from the environment (no policy published)"
        return f"published by {self.owner}" if self.owner else "published (no owner: the store)"


async def current_policy(redis: Any) -> PolicyView:
    """The published policy, else the workers' defaults from this environment."""
    from pydantic import ValidationError

    from medbook.discount.policy import QuotaPolicy, describe_error
    from medbook.discount.policy_store import PolicyStore

    store = PolicyStore(redis)
    try:
        published = await store.load()
    except ValidationError as exc:
        raise UsageProblem(f"the published policy is invalid: {describe_error(exc)}") from None
    if published is None:
        return PolicyView(QuotaPolicy.from_defaults(PolicyDefaults()), False, None)
    return PolicyView(published, True, await store.owner())


async def live_loop(
    console: Console,
    frame: Callable[[], Awaitable[Any]],
    interval: float,
    count: int | None,
) -> None:
    """Refresh ``frame()`` every ``interval`` s, ``count`` times (None: until Ctrl-C).

    On a terminal the view is redrawn in place (rich Live); otherwise each refresh
    is printed in turn, which suits logs and tests.
    """
    shown = 0
    if not console.is_terminal:
        while count is None or shown < count:
            if shown:
                await asyncio.sleep(interval)
            console.print(await frame())
            shown += 1
        return
    from rich.live import Live

    with Live(await frame(), console=console, auto_refresh=False) as live:
        shown = 1
        while count is None or shown < count:
            await asyncio.sleep(interval)
            live.update(await frame(), refresh=True)
            shown += 1
