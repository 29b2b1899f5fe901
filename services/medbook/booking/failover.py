"""What the booking service does while PostgreSQL fails over to a standby.

Three things happen to a client during a failover (Patroni, CloudNativePG, or
``pg_ctl promote`` by hand), and each is handled where the statement runs:

- **A read-only server.** A primary being demoted (or fenced), or a standby,
  refuses writes (``25006 read_only_sql_transaction``). The pooled connection
  that got this answer is closed, so the pool's next connection goes through
  the DSN's host list again and lands on the server that now accepts writes
  (``target_session_attrs=read-write``); the request is answered 503.
- **A connection lost in the middle of a create.** The statement may or may not
  have committed: the server may have died before or after its commit, and
  its acknowledgement is lost either way. A create's rows are keyed by booking
  ids the service chose before sending, and its INSERT skips rows that exist,
  so the same statement is simply sent again, once, on a new connection: it
  writes what is missing and reports what the lost attempt had committed
  (:func:`lost_mid_statement` tells the two failures apart: a connection that
  could not be made is not retried, it answers 503 at once).
- **Nothing half-written.** A booking and its outbox event are one statement,
  one commit: both or neither, whichever server has them.
"""

from __future__ import annotations

import asyncpg

# Errors that mean the server went away while a statement was in flight (as
# opposed to a connection that could not be made, or a statement that failed).
_LOST: tuple[type[BaseException], ...] = (
    asyncpg.ConnectionDoesNotExistError,  # "connection was closed in the middle of operation"
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    ConnectionResetError,
    BrokenPipeError,
)


def lost_mid_statement(exc: BaseException) -> bool:
    """Did the connection die while a statement was running (its outcome unknown)?

    asyncpg's ``InternalClientError`` ("another operation is in progress") is
    what a pooled connection whose server vanished during its last operation
    answers next: the statement was not sent, and the connection is unusable.
    """
    return (
        isinstance(exc, _LOST)
        or (type(exc) is asyncpg.InterfaceError and "closed" in str(exc))
        or (isinstance(exc, asyncpg.InternalClientError) and "in progress" in str(exc))
    )


def read_only_server(exc: BaseException) -> bool:
    """Is the server this connection talks to no longer the one that takes writes?"""
    return isinstance(exc, asyncpg.ReadOnlySQLTransactionError)
