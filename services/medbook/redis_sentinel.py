"""The Redis client for a URL: one server, or the current master behind Redis Sentinel.

A Sentinel URL (``redis+sentinel://``, read by redis_address.py) gives a
client whose connections ask the sentinels where the master is, each time one
is made: after a failover, a connection to the old master fails (or is told
``READONLY`` by it, now a replica) and the next one goes to the new master.
Closing the client also closes its connections to the sentinels.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from medbook.redis_address import (
    SENTINEL_SCHEMES,
    RedisClusterUnsupported,
    check_url,
    parse_sentinel_url,
    scheme_of,
)


class SentinelRedis(Redis):
    """The master's client; closing it also closes its connections to the sentinels."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel_manager is not None:
            for client in self.sentinel_manager.sentinels:
                await client.aclose()


def redis_from_url(url: str, **connection: Any) -> Redis:
    """The client for ``url``; ``connection`` are redis-py connection options (timeouts, ...).

    A Sentinel URL gives a client of the current master: it asks the sentinels
    on each new connection, so it moves to a new master by itself.
    """
    check_url(url)
    if scheme_of(url) not in SENTINEL_SCHEMES:
        return Redis.from_url(url, **connection)
    address = parse_sentinel_url(url)
    sentinel_options: dict[str, Any] = {
        k: v for k, v in connection.items() if k.startswith("socket_")
    }
    if address.sentinel_password is not None:
        sentinel_options["password"] = address.sentinel_password
    if address.sentinel_username is not None:
        sentinel_options["username"] = address.sentinel_username
    if address.ssl:
        sentinel_options["ssl"] = True
    data: dict[str, Any] = {**connection, "db": address.db}
    if address.password is not None:
        data["password"] = address.password
    if address.username is not None:
        data["username"] = address.username
    if address.ssl:
        data["ssl"] = True
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        list(address.sentinels), sentinel_kwargs=sentinel_options, **data
    )
    client = sentinel.master_for(address.master, redis_class=SentinelRedis)
    assert isinstance(client, SentinelRedis)
    client.sentinel_manager = sentinel
    return client


async def refuse_cluster_mode(client: Redis) -> None:
    """Raise :class:`RedisClusterUnsupported` if the server runs with ``cluster-enabled yes``."""
    info = await client.info("cluster")
    if str(info.get("cluster_enabled", "0")) == "1":
        raise RedisClusterUnsupported("the Redis server runs in cluster mode")
