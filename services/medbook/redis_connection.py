"""Redis: the client the services make, and what its driver's errors mean.

:func:`redis_errors` (a context manager) and :func:`redis_call` (a decorator
for adapter methods) translate redis-py's errors into the services' taxonomy
(``medbook.failures``): a refused, lost or timed-out connection, a server still
loading its data, a read-only replica (a failover in progress) and a cluster
that is down are :class:`~medbook.failures.DependencyUnavailable`; a full
memory or an exhausted connection pool is
:class:`~medbook.failures.DependencyBusy`. A wrong password, a script error
or a bad argument goes through untouched: those are bugs or configuration.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Final, ParamSpec, TypeVar

from redis import exceptions as redis_exceptions
from redis.asyncio import Redis

from medbook.failures import Dependency, DependencyBusy, DependencyUnavailable, translated_errors
from medbook.redis_sentinel import redis_from_url

P = ParamSpec("P")
T = TypeVar("T")

_NOT_AN_OUTAGE: Final[tuple[type[BaseException], ...]] = (
    redis_exceptions.AuthenticationError,
    redis_exceptions.AuthorizationError,
    redis_exceptions.MaxConnectionsError,
)
_UNAVAILABLE: Final[tuple[type[BaseException], ...]] = (
    redis_exceptions.ConnectionError,  # refused, lost, loading (BusyLoadingError)
    redis_exceptions.TimeoutError,
    redis_exceptions.ReadOnlyError,  # a replica: the master moved
    redis_exceptions.TryAgainError,
    redis_exceptions.ClusterDownError,
    ConnectionError,
    TimeoutError,
)
_BUSY: Final[tuple[type[BaseException], ...]] = (
    redis_exceptions.OutOfMemoryError,
    redis_exceptions.MaxConnectionsError,
)


def translate(exc: BaseException) -> BaseException:
    """The taxonomy's exception for a redis-py error, or ``exc`` itself."""
    if isinstance(exc, _BUSY):
        return DependencyBusy(Dependency.REDIS, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, _UNAVAILABLE) and not isinstance(exc, _NOT_AN_OUTAGE):
        return DependencyUnavailable(Dependency.REDIS, f"{type(exc).__name__}: {exc}")
    return exc


def redis_errors() -> contextlib.AbstractContextManager[None]:
    """Raise redis-py's errors inside the block as the taxonomy's exceptions."""
    return translated_errors(translate)


def redis_call(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorates an adapter's coroutine method with :func:`redis_errors`."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with redis_errors():
            return await method(*args, **kwargs)

    return wrapper


def redis_client(url: str, *, max_connections: int = 64) -> Redis:
    """The client every medbook process uses: short timeouts, health checks.

    ``url`` may name Redis Sentinels (``redis+sentinel://``): the client then
    talks to the current master and follows a failover (redis_address.py).
    """
    return redis_from_url(
        url,
        socket_connect_timeout=3,
        socket_timeout=5,
        health_check_interval=10,
        max_connections=max_connections,
    )
