"""Which database errors a failover causes, and what the booking service does with each."""

from __future__ import annotations

import asyncpg
import pytest

from medbook.booking import failover
from medbook.booking.database import translate
from medbook.failures import DependencyUnavailable


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
        # what the next user of a pooled connection whose server vanished gets
        asyncpg.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
)
def test_a_connection_lost_mid_statement_is_sent_again_and_else_a_503(exc: Exception) -> None:
    assert failover.lost_mid_statement(exc)
    assert isinstance(translate(exc), DependencyUnavailable)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),  # never connected: nothing sent
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.InternalClientError("something else"),
    ],
)
def test_other_failures_are_not_taken_for_a_lost_statement(exc: Exception) -> None:
    assert not failover.lost_mid_statement(exc)


def test_a_read_only_server_is_left_and_answered_503() -> None:
    exc = asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction")
    assert failover.read_only_server(exc)
    assert isinstance(translate(exc), DependencyUnavailable)
