"""Addresses of highly available backends: broker URL lists, multi-host DSNs, Sentinel URLs."""

from __future__ import annotations

import pytest

from medbook import postgres_dsn
from medbook.broker_address import BrokerAddressError, broker_urls
from medbook.postgres_dsn import DatabaseAddressError
from medbook.redis_address import (
    RedisAddressError,
    RedisClusterUnsupported,
    check_url,
    describe,
    parse_sentinel_url,
)
from medbook.redis_sentinel import SentinelRedis, redis_from_url

# -- RabbitMQ ------------------------------------------------------------------------------


def test_broker_list_and_multi_host_forms_give_one_url_per_node() -> None:
    assert broker_urls("amqp://u:p@a:5672/") == ("amqp://u:p@a:5672/",)
    assert broker_urls("amqp://u:p@a:5672/v, amqps://u:p@b:5671/v amqp://u:p@a:5672/v") == (
        "amqp://u:p@a:5672/v",
        "amqps://u:p@b:5671/v",
    )
    assert broker_urls("amqp://u:p@a:5672,b,c:5673/vh?heartbeat=5") == (
        "amqp://u:p@a:5672/vh?heartbeat=5",
        "amqp://u:p@b/vh?heartbeat=5",
        "amqp://u:p@c:5673/vh?heartbeat=5",
    )


def test_a_comma_in_a_password_is_not_a_separator() -> None:
    assert broker_urls("amqp://u:p,w@a:5672/") == ("amqp://u:p,w@a:5672/",)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "no RabbitMQ URL"),
        ("http://u:secret@a/", "not an AMQP URL"),
        ("amqp://u:secret@a:5672,,b/", "a host is missing"),
        ("amqp://u:secret@a:port/", "cannot read"),
    ],
)
def test_bad_broker_addresses_are_refused_without_their_password(value: str, message: str) -> None:
    with pytest.raises(BrokerAddressError, match=message) as caught:
        broker_urls(value)
    assert "secret" not in str(caught.value)


# -- PostgreSQL ------------------------------------------------------------------------------


def test_multi_host_dsn_gets_read_write_and_one_host_stays_as_given() -> None:
    assert (
        postgres_dsn.normalized("postgresql://u:p@a:5432,b:5433/medbook")
        == "postgresql://u:p@a:5432,b:5433/medbook?target_session_attrs=read-write"
    )
    assert (
        postgres_dsn.normalized("postgresql://u:p@a:5432,b/m?target_session_attrs=primary")
        == "postgresql://u:p@a:5432,b/m?target_session_attrs=primary"
    )
    assert postgres_dsn.normalized("postgres://u:p@a/m") == "postgresql://u:p@a/m"


def test_databases_gets_one_host_and_asyncpg_the_whole_dsn() -> None:
    url, options = postgres_dsn.databases_arguments(
        "postgresql://u:p%40ss@a:5432,b:5433/medbook?sslmode=prefer"
    )
    assert url == "postgresql://u:p%40ss@a:5432/medbook"
    assert options == {
        "dsn": "postgresql://u:p%40ss@a:5432,b:5433/medbook"
        "?sslmode=prefer&target_session_attrs=read-write",
        "host": None,
        "port": None,
        "user": None,
        "password": None,
        "database": None,
    }


def test_sqlalchemy_gets_the_multi_host_query_form() -> None:
    assert postgres_dsn.sqlalchemy_url("postgresql://u:p@a:5432,[::1]:5433/m") == (
        "postgresql+psycopg://u:p@/m?host=a:5432&host=[::1]:5433&target_session_attrs=read-write"
    )
    assert postgres_dsn.sqlalchemy_url("postgresql://u:p@a/m") == "postgresql+psycopg://u:p@a/m"


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("mysql://u:secret@a/m", "must start with postgresql://"),
        ("postgresql://u:secret@a:5432,:5433/m", "a host is missing"),
        ("postgresql://u:secret@a:99999/m", "is not a port"),
        ("postgresql://u:secret@a,b/m?target_session_attrs=writable", "is not one of"),
    ],
)
def test_bad_dsns_are_refused_without_their_password(dsn: str, message: str) -> None:
    with pytest.raises(DatabaseAddressError, match=message) as caught:
        postgres_dsn.normalized(dsn)
    assert "secret" not in str(caught.value)


# -- Redis ------------------------------------------------------------------------------------


def test_sentinel_url_is_read_in_full() -> None:
    address = parse_sentinel_url(
        "redis+sentinel://:pw@s1:26379,s2,[::1]:26380/mymaster/3?sentinel_password=spw"
    )
    assert address.sentinels == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert (address.master, address.db, address.password) == ("mymaster", 3, "pw")
    assert address.sentinel_password == "spw"
    assert not address.ssl
    assert parse_sentinel_url("rediss+sentinel://s1/m").ssl
    assert describe("redis+sentinel://:pw@s1:1,s2:2/m/0") == (
        "Redis master 'm' (db 0) via the sentinels s1:1,s2:2"
    )


async def test_sentinel_url_gives_a_client_of_the_named_master() -> None:
    client = redis_from_url("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/orders/2")
    assert isinstance(client, SentinelRedis)
    pool = client.connection_pool
    assert pool.service_name == "orders"  # type: ignore[attr-defined]
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "pw"
    assert client.sentinel_manager is not None
    assert len(client.sentinel_manager.sentinels) == 2
    await client.aclose()


@pytest.mark.parametrize(
    ("url", "error", "message"),
    [
        ("redis+cluster://:secret@a:7000,b:7001", RedisClusterUnsupported, "Redis Cluster"),
        ("http://:secret@a", RedisAddressError, "not a Redis URL"),
        ("redis+sentinel://:secret@a:1", RedisAddressError, "names no master"),
        ("redis+sentinel://:secret@a:1/m/x", RedisAddressError, "not a number"),
        ("redis+sentinel://:secret@a:port/m", RedisAddressError, "not a port"),
        ("redis+sentinel://:secret@a:1/m?timeout=3", RedisAddressError, "unknown option"),
    ],
)
def test_bad_redis_addresses_are_refused_without_their_password(
    url: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        check_url(url)
    assert "secret" not in str(caught.value)
