"""What every ``medbook`` subcommand shares: settings, connections, exit codes, output.

Where each server is: a flag, else the same environment as the services
(``MEDBOOK_*`` and the reference's ``DB_*``, ``REDIS_*``, ``RABBITMQ_URL``),
read through the services' own settings classes, else the ``medbook dev``
running in this checkout (its stack file, :mod:`medbook.devstack.discovery`),
else the servers' standard local ports. A server that cannot be reached is
reported in one line that says how to point the command at it, and exits with
:data:`EXIT_USAGE`, never with a traceback.
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
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import annotated_types
import typer
from pydantic import BaseModel
from pydantic_settings import BaseSettings
from rich.console import Console

from medbook.config import PolicyDefaults, PostgresSettings, RabbitSettings, RedisSettings
from medbook.devstack import discovery

if TYPE_CHECKING:
    from medbook.discount.policy import QuotaPolicy

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


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader went away (``medbook ... | head``): end quietly with 0, as a pipeline
        expects (rich's own choice is exit status 1)."""
        self.quiet = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(EXIT_OK)


def out() -> Console:
    """Standard output (results)."""
    terminal = sys.stdout.isatty()
    return _Console(highlight=False, width=_width(terminal), soft_wrap=not terminal)


def err() -> Console:
    """Standard error (progress, warnings, errors)."""
    terminal = sys.stderr.isatty()
    return _Console(stderr=True, highlight=False, width=_width(terminal), soft_wrap=not terminal)


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


# How to say where each server is: (flag, variable).
POINTERS: Final = {
    "the booking API": ("--url", "MEDBOOK_API_URL"),
    "PostgreSQL": ("--database-url", "MEDBOOK_DATABASE_URL"),
    "Redis": ("--redis-url", "MEDBOOK_REDIS_URL"),
    "RabbitMQ": ("--amqp-url", "MEDBOOK_RABBITMQ_URL"),
    "the discount worker's metrics": ("--worker-metrics-url", "MEDBOOK_WORKER_METRICS_URL"),
}


def how_to_point(what: str) -> str:
    """The end of an "unreachable" message: where the address came from, how to give another."""
    flag, variable = POINTERS.get(what, ("a flag", "a variable"))
    found = stack()
    if found is not None:
        return (
            f"(the address of the medbook dev running on {found.data_dir}; give {flag} or "
            f"set {variable} for another system)"
        )
    return (
        f"(no medbook dev is running here: start one with `make dev`, or give {flag} or set "
        f"{variable}; `medbook dev env` prints a running stack's settings)"
    )


class Unreachable(Exception):
    """A server the command needs cannot be reached (or refuses us)."""

    def __init__(self, what: str, target: str, cause: BaseException | str) -> None:
        reason = cause if isinstance(cause, str) else (str(cause) or type(cause).__name__)
        super().__init__(f"cannot reach {what} at {mask(target)}: {reason} {how_to_point(what)}")


class UsageProblem(Exception):
    """The command cannot run as asked (bad value, missing setting); exits 2."""


class CheckFailed(Exception):
    """A verification failed; exits 1 with the message."""


# -- options shared by the subcommands -----------------------------------------------

ApiUrl = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="MEDBOOK_API_URL",
        help="Booking API of the running system (default: the medbook dev running here, "
        f"else {DEFAULT_API_URL}).",
        metavar="URL",
        show_default=False,
    ),
]
ApiToken = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="MEDBOOK_API_TOKEN",
        help="Bearer token, when the API requires one.",
        show_default=False,
        metavar="TOKEN",
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="PostgreSQL URL (default: MEDBOOK_DATABASE_URL, or the DB_* variables, else the "
        "medbook dev running here).",
        show_default=False,
        metavar="URL",
    ),
]
RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        help="Redis URL (default: MEDBOOK_REDIS_URL, or the REDIS_* variables, else the "
        "medbook dev running here).",
        show_default=False,
        metavar="URL",
    ),
]
AmqpUrl = Annotated[
    str | None,
    typer.Option(
        "--amqp-url",
        help="RabbitMQ URL (default: MEDBOOK_RABBITMQ_URL or RABBITMQ_URL, else the medbook "
        "dev running here).",
        show_default=False,
        metavar="URL",
    ),
]
WorkerMetricsUrl = Annotated[
    str | None,
    typer.Option(
        envvar="MEDBOOK_WORKER_METRICS_URL",
        help="The discount worker's /metrics (default: the medbook dev running here).",
        metavar="URL",
        show_default=False,
    ),
]
StatesDatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="MEDBOOK_DATABASE_URL",
        help="Read final states from PostgreSQL (default: the medbook dev running here, "
        "else they are read from the API).",
        show_default=False,
        metavar="URL",
    ),
]
Seed = Annotated[
    int, typer.Option(help="Seed of the booking mix (same seed, same requests).", metavar="N")
]
SettleTimeout = Annotated[
    float,
    typer.Option(
        help="Seconds to wait for the bookings to finish (else: stuck).", min=0, metavar="SECONDS"
    ),
]
Interval = Annotated[
    float, typer.Option(help="Seconds between refreshes.", min=0.1, metavar="SECONDS")
]
Refreshes = Annotated[
    int | None,
    typer.Option(
        "--count",
        help="Stop after this many refreshes (default: until Ctrl-C).",
        min=1,
        metavar="N",
    ),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
PolicyRefresh = Annotated[
    float | None,
    typer.Option(
        help="Seconds the worker takes to re-read the policy "
        "(default: MEDBOOK_POLICY_REFRESH, or 1).",
        show_default=False,
        metavar="SECONDS",
    ),
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def field_bounds(model: type[BaseModel], name: str) -> dict[str, Any]:
    """A number field's bounds as ``typer.Option`` arguments (``min``, ``max``): the option
    refuses what the service would refuse, with the numbers written once, in its model."""
    bounds: dict[str, Any] = {}
    for rule in model.model_fields[name].metadata:
        if isinstance(rule, annotated_types.Ge):
            bounds["min"] = rule.ge
        elif isinstance(rule, annotated_types.Le):
            bounds["max"] = rule.le
        elif isinstance(rule, annotated_types.Gt | annotated_types.Lt):
            raise TypeError(f"{model.__name__}.{name}: an open bound; check it in a callback")
    return bounds


def must_be_positive(value: float) -> float:
    """A ``typer.Option`` callback for a number of seconds that must be above 0."""
    if value <= 0:
        raise typer.BadParameter(f"{value:g} is not above 0")
    return value


_found: dict[tuple[str, str | None], discovery.StackInfo | None] = {}


def stack() -> discovery.StackInfo | None:
    """The ``medbook dev`` running here, None when there is none (looked up once per place)."""
    here = (os.getcwd(), os.environ.get(discovery.DATA_ENV))
    if here not in _found:
        _found[here] = discovery.find()
    return _found[here]


def _configured(settings: type[BaseSettings], *fields: str) -> bool:
    """Does the environment set any of these settings (by any of their names)?"""
    for name in fields:
        names = getattr(settings.model_fields[name].validation_alias, "choices", ())
        if any(variable in os.environ for variable in names):
            return True
    return False


def database_configured() -> bool:
    """Does the environment say where PostgreSQL is (MEDBOOK_DATABASE_URL, DB_HOST, ...)?"""
    return _configured(PostgresSettings, "url", "host", "port", "user", "password", "name")


def api_url(given: str | None) -> str:
    """--url or MEDBOOK_API_URL, else the running medbook dev's API, else the default."""
    if given:
        return given
    found = stack()
    return found.api_url if found else DEFAULT_API_URL


def database_dsn(override: str | None) -> str:
    if override:
        return PostgresSettings(url=override).dsn
    found = stack()
    if found is not None and not _configured(
        PostgresSettings, "url", "host", "port", "user", "password", "name"
    ):
        return found.database_url
    return PostgresSettings().dsn


def redis_dsn(override: str | None) -> str:
    if override:
        return override
    found = stack()
    if found is not None and not _configured(
        RedisSettings, "url", "host", "port", "password", "db"
    ):
        return found.redis_url
    return RedisSettings().dsn


def amqp_dsn(override: str | None) -> str:
    if override:
        return override
    found = stack()
    if found is not None and not _configured(RabbitSettings, "url"):
        return found.amqp_url
    return RabbitSettings().url.get_secret_value()


def states_database(given: str | None) -> str | None:
    """Where final states are read: the given database, the running medbook dev's, else the API
    (None)."""
    if given:
        return given
    found = stack()
    return found.database_url if found else None


def worker_metrics_url(given: str | None) -> str | None:
    """--worker-metrics-url or MEDBOOK_WORKER_METRICS_URL, else the running medbook dev's."""
    if given:
        return given
    found = stack()
    return found.worker_metrics_url if found else None


def policy_refresh_seconds() -> float:
    """How often the discount worker re-reads the policy (its MEDBOOK_POLICY_REFRESH)."""
    from medbook.config import DiscountSettings

    return DiscountSettings().policy_refresh_interval


# -- connections -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[Any]:
    """A Redis client that has answered a PING (else :class:`Unreachable`).

    ``url`` may be a Sentinel URL (``redis+sentinel://...``): the client talks to
    the current master. A Redis Cluster is refused (:mod:`medbook.redis_address`).
    """
    from medbook.redis_address import RedisAddressError
    from medbook.redis_sentinel import redis_from_url, refuse_cluster_mode

    try:
        client = redis_from_url(url, socket_connect_timeout=3, socket_timeout=10)
    except RedisAddressError as exc:
        raise UsageProblem(str(exc)) from None
    try:
        try:
            await client.ping()
            await refuse_cluster_mode(client)
        except RedisAddressError as exc:
            raise UsageProblem(str(exc)) from None
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
    """An aio-pika connection to RabbitMQ (else :class:`Unreachable`).

    ``url`` may list a cluster's nodes: the first that answers is used.
    """
    import logging

    from medbook.broker_connection import BrokerAddressError, broker_urls, connect_any

    # Their own log lines would repeat, as a traceback, what Unreachable says in one line.
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    try:
        urls = broker_urls(url)
    except BrokerAddressError as exc:
        raise UsageProblem(str(exc)) from None
    try:
        connection = await connect_any(urls, name="medbook-cli")
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
    except (typer.Exit, BrokenPipeError):  # the reader went away: see cli/main.py
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

    policy: QuotaPolicy
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
