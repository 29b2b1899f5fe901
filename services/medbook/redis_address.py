"""Where Redis is: one server, or a master found through Redis Sentinel; never a Redis Cluster.

``MEDBOOK_REDIS_URL`` takes

- ``redis://[[user]:password@]host:port/db``, ``rediss://...`` (TLS) or
  ``unix:///path?db=0``: one server, as redis-py reads them;
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/<master>[/db]``
  (``rediss+sentinel://`` for TLS): the sentinels to ask for the current
  master of ``<master>``. The client asks them again after a connection to
  the master fails or the master answers as a replica (``READONLY``), so it
  follows a failover by itself. The password is the data nodes' one; give the
  sentinels' own with ``?sentinel_password=...`` (and ``sentinel_username``).

Redis Cluster is refused, by URL (``redis+cluster://``) and, at start, by
asking the server (``INFO cluster``): medbook's quota is one counter per day
updated by scripts that also touch the booking's own keys, so all of a day's
keys would have to live in one hash slot, on one shard. A cluster would give
no capacity, only a second failover mechanism with the same asynchronous
replication that Sentinel already covers. See docs/high-availability.md.

Pure parsing, so that the settings check the value when they are read; the
client for a URL is made by redis_sentinel.py.
"""

from __future__ import annotations

import dataclasses
import logging
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme -> TLS
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
PLAIN_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_SENTINEL_PORT = 26379

CLUSTER_REFUSAL = (
    "medbook does not support Redis Cluster: a day's discount quota is one counter updated "
    "atomically with each booking's own keys, so every key would live in one hash slot on one "
    "shard and the cluster would add nothing but a second failover mechanism. Use one Redis "
    "server, or a master with replicas behind Redis Sentinel "
    "(redis+sentinel://host:port,host:port/<master>/0); see docs/high-availability.md."
)


class RedisAddressError(ValueError):
    """The Redis address setting cannot be used (the message says why, without secrets)."""


class RedisClusterUnsupported(RedisAddressError):
    """A Redis Cluster was given (by URL, or the server runs in cluster mode)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{detail}{': ' if detail else ''}{CLUSTER_REFUSAL}")


@dataclasses.dataclass(frozen=True)
class SentinelAddress:
    """A ``redis+sentinel://`` URL, read."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False

    def describe(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"Redis master {self.master!r} (db {self.db}) via the sentinels {hosts}"


def masked(url: str) -> str:
    """``url`` with its passwords replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hosts = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    query = "&".join(
        f"{key}=***" if "password" in key else f"{key}={value}"
        for key, values in parse_qs(parts.query, keep_blank_values=True).items()
        for value in values
    )
    return parts._replace(netloc=netloc, query=query).geturl()


def scheme_of(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""


def check_url(url: str) -> str:
    """``url`` if medbook can use it; else :class:`RedisAddressError` saying why."""
    scheme = scheme_of(url)
    if scheme in CLUSTER_SCHEMES:
        raise RedisClusterUnsupported(f"MEDBOOK_REDIS_URL is a Redis Cluster URL ({masked(url)})")
    if scheme in SENTINEL_SCHEMES:
        parse_sentinel_url(url)
    elif scheme not in PLAIN_SCHEMES:
        raise RedisAddressError(
            f"not a Redis URL: {masked(url)!r} (expected redis://host:port/db, rediss://..., "
            "unix:///path or redis+sentinel://host:port,host:port/<master>/db)"
        )
    return url


def parse_sentinel_url(url: str) -> SentinelAddress:
    scheme, _, rest = url.partition("://")
    ssl = SENTINEL_SCHEMES.get(scheme.lower())
    if ssl is None:
        raise RedisAddressError(f"not a Redis Sentinel URL: {masked(url)!r}")
    netloc, _, path_and_query = rest.partition("/")
    path, _, query = path_and_query.partition("?")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_port(h.strip(), url) for h in hosts.split(","))
    segments = [s for s in path.split("/") if s]
    if not segments:
        raise RedisAddressError(
            f"the Redis Sentinel URL {masked(url)!r} names no master: "
            "redis+sentinel://host:port,host:port/<master>/<db>"
        )
    if len(segments) > 2:
        raise RedisAddressError(
            f"the Redis Sentinel URL {masked(url)!r} has too many path segments "
            "(expected /<master>/<db>)"
        )
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise RedisAddressError(
                f"the database in the Redis Sentinel URL {masked(url)!r} is not a number"
            )
        db = int(segments[1])
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(options) - {"sentinel_password", "sentinel_username", "db"}
    if unknown:
        raise RedisAddressError(
            f"unknown option(s) {', '.join(sorted(unknown))} in the Redis Sentinel URL "
            f"{masked(url)!r} (known: sentinel_username, sentinel_password, db)"
        )
    if "db" in options:
        if not options["db"].isdigit():
            raise RedisAddressError(f"db in the Redis Sentinel URL {masked(url)!r} is not a number")
        db = int(options["db"])
    return SentinelAddress(
        sentinels=sentinels,
        master=unquote(segments[0]),
        db=db,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
        ssl=ssl,
    )


def _host_port(text: str, url: str) -> tuple[str, int]:
    if not text:
        raise RedisAddressError(f"a sentinel address is empty in {masked(url)!r}")
    if text.startswith("["):  # [::1]:26379
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise RedisAddressError(f"a sentinel host is missing in {masked(url)!r}")
    if not port:
        return host, DEFAULT_SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise RedisAddressError(f"sentinel port {port!r} in {masked(url)!r} is not a port")
    return host, int(port)


def describe(url: str) -> str:
    """Where ``url`` points, for logs and messages (no secrets)."""
    if scheme_of(url) in SENTINEL_SCHEMES:
        return parse_sentinel_url(url).describe()
    return masked(url)
