"""The booking service's PostgreSQL connection, and what its driver's errors mean.

The pool comes from ``databases`` (on asyncpg). :func:`database_errors`
translates asyncpg's errors into the services' taxonomy (``medbook.failures``):
those that mean the server cannot be reached, is shutting down, is starting,
is read-only (a standby during a failover) or lost a commit's answer become
:class:`~medbook.failures.DependencyUnavailable`; a statement timeout, a
deadlock and a serialization failure become
:class:`~medbook.failures.DependencyBusy`; a value the server cannot store (a NUL
in a text, an out-of-range number) is :class:`~medbook.failures.InvalidData`.
Everything else (a constraint
violation, a bad value, a bug) goes through untouched.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Final

import asyncpg
from databases import Database

from medbook import postgres_dsn
from medbook.booking import failover
from medbook.failures import (
    Dependency,
    DependencyBusy,
    DependencyUnavailable,
    InvalidData,
    translated_errors,
)

CLIENT_TIMEOUT_MARGIN: Final = 5.0

_UNAVAILABLE: Final[tuple[type[BaseException], ...]] = (
    asyncpg.PostgresConnectionError,  # refused, lost, commit answer lost (08xxx)
    asyncpg.CannotConnectNowError,  # starting up or in recovery
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.IdleSessionTimeoutError,
    asyncpg.ReadOnlySQLTransactionError,  # a standby, or a primary being demoted
    asyncpg.exceptions.TargetServerAttributeNotMatched,  # no read-write host in the DSN (yet)
    ConnectionError,  # refused, reset, aborted, broken pipe
    TimeoutError,  # connecting, or waiting for a pooled connection
    socket.gaierror,  # the host name does not resolve (yet)
)

_BUSY: Final[tuple[type[BaseException], ...]] = (
    asyncpg.QueryCanceledError,  # statement_timeout, or cancelled by an operator
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.InsufficientResourcesError,  # disk full, out of memory
)


def translate(exc: BaseException) -> BaseException:
    """The taxonomy's exception for a driver error, or ``exc`` itself."""
    if isinstance(exc, asyncpg.DataError | asyncpg.CharacterNotInRepertoireError):
        return InvalidData(Dependency.DATABASE, str(exc))
    if isinstance(exc, _BUSY) and not isinstance(exc, asyncpg.TooManyConnectionsError):
        return DependencyBusy(Dependency.DATABASE, _describe(exc))
    if isinstance(exc, _UNAVAILABLE) or _closed_connection(exc):
        return DependencyUnavailable(Dependency.DATABASE, _describe(exc))
    return exc


def _closed_connection(exc: BaseException) -> bool:
    # asyncpg raises its generic InterfaceError for an operation on a closed connection,
    # and InternalClientError ("another operation is in progress") on a pooled connection
    # whose server vanished during its last operation (a failover).
    return failover.lost_mid_statement(exc) and not isinstance(exc, asyncpg.PostgresError)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def database_errors() -> contextlib.AbstractContextManager[None]:
    """Raise driver errors inside the block as the taxonomy's exceptions."""
    return translated_errors(translate)


async def _reset_connection(connection: asyncpg.Connection) -> None:
    """Replaces asyncpg's per-release reset query (a measured ~30% of a booking's CPU).

    Our statements leave no session state behind (no LISTEN, SET, advisory
    lock or open cursor), so the only thing to undo is an interrupted
    transaction.
    """
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


def create_database(
    dsn: str, *, max_size: int, connect_timeout: float, statement_timeout: float
) -> Database:
    """The pool. A slow statement is stopped by the server (``statement_timeout``: a
    :class:`~medbook.failures.DependencyBusy`); the client gives up a little later
    (a server that does not answer at all is unreachable: unavailable)."""
    # A multi-host DSN (failover) reaches asyncpg whole: databases would drop its hosts.
    url, options = postgres_dsn.databases_arguments(dsn)
    return Database(
        url,
        **options,
        min_size=0,
        max_size=max_size,
        timeout=connect_timeout,
        command_timeout=statement_timeout + CLIENT_TIMEOUT_MARGIN,
        server_settings={"statement_timeout": str(int(statement_timeout * 1000))},
        reset=_reset_connection,
        max_inactive_connection_lifetime=60,
    )
