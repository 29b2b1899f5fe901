"""The one failure taxonomy: a dependency that is down, a dependency that is busy, and the rest.

Each adapter (PostgreSQL in ``booking/database.py``, Redis in
``redis_connection.py``, RabbitMQ in ``messaging.py``) turns its own driver's
errors into these, and only those it knows mean an outage or a refusal to
work right now. Everything else is a bug or a bad message, and is treated as
one: a message consumer counts the try and dead-letters after a few; the API
answers 500 and logs it. Nothing here follows ``__context__``: a bug raised
while handling a network error is a bug.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from enum import StrEnum


class Dependency(StrEnum):
    DATABASE = "database"
    REDIS = "redis"
    BROKER = "broker"


_WHAT = {
    Dependency.DATABASE: "the database",
    Dependency.REDIS: "Redis",
    Dependency.BROKER: "the message broker",
}


class DependencyError(Exception):
    """A dependency could not do what was asked; which one, and the driver's words."""

    def __init__(self, dependency: Dependency, detail: str) -> None:
        super().__init__(f"{dependency.value}: {detail}")
        self.dependency = dependency
        self.detail = detail

    @property
    def what(self) -> str:
        """The dependency as a sentence names it (``the database``)."""
        return _WHAT[self.dependency]


class DependencyUnavailable(DependencyError):
    """The dependency cannot be reached (refused, reset, timed out, shutting down, read-only).

    It may come back: a consumer retries in place, without counting a try, for
    as long as its outage budget allows; the API answers 503.
    """


class DependencyBusy(DependencyError):
    """The dependency answered but could not do the work now (statement timeout, deadlock,
    serialization failure, out of memory).

    Worth a retry, but the same work may fail the same way every time (a slow
    query times out on every try), so a consumer counts each try.
    """


class InvalidData(Exception):
    """A dependency refused a value the request carried (a character the database cannot
    store, say): the request's fault, answered 422, and never its neighbours' in a batch."""

    def __init__(self, dependency: Dependency, detail: str) -> None:
        super().__init__(f"{dependency.value}: {detail}")
        self.dependency = dependency
        self.detail = detail


@contextlib.contextmanager
def translated_errors(translate: Callable[[BaseException], BaseException]) -> Iterator[None]:
    """Raise the exceptions of the block as ``translate`` (an adapter's) maps them.

    An exception the adapter does not know goes through untouched; a known one is
    raised as its taxonomy exception, chained to the driver's for the traceback.
    """
    try:
        yield
    except Exception as exc:
        translated = translate(exc)
        if translated is exc:
            raise
        raise translated from exc
