"""PostgreSQL addresses with several hosts: the primary is whichever of them accepts writes.

``MEDBOOK_DATABASE_URL`` may name several hosts, as libpq and asyncpg read it:
``postgresql://user:password@db-a:5432,db-b:5432/medbook?target_session_attrs=read-write``.
A connection then goes to the first host that is up and writable, so after a
failover (a standby promoted by Patroni, CloudNativePG or by hand) new
connections find the new primary by themselves. With several hosts and no
``target_session_attrs``, ``read-write`` is added: the services write, and
connecting to a standby would only fail later, on the first write.

Two of our libraries do not read such a URL themselves, and get it in their
own shape from here:

- ``databases`` splits a URL into host, port, user, password and database
  and drops every other parameter: :func:`databases_arguments` hands asyncpg
  the whole DSN instead (so ``target_session_attrs``, ``sslmode`` and friends
  reach it);
- SQLAlchemy (alembic) reads one ``host:port``: :func:`sqlalchemy_url` gives
  the multi-host form its psycopg dialect takes (``?host=a:5432&host=b:5432``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

SCHEMES: Final = ("postgresql", "postgres")
SESSION_ATTRS: Final = (
    "any",
    "primary",
    "standby",
    "prefer-standby",
    "read-write",
    "read-only",
)


class DatabaseAddressError(ValueError):
    """The database URL cannot be used (the message says why, without secrets)."""


@dataclasses.dataclass(frozen=True)
class PostgresAddress:
    """A ``postgresql://`` URL, read: hosts in order, and the rest as given."""

    scheme: str
    userinfo: str  # as written (percent-encoded), '' if none
    hosts: tuple[tuple[str, int | None], ...]
    database: str  # percent-encoded path, without the leading slash
    query: tuple[tuple[str, str], ...]

    @property
    def multi_host(self) -> bool:
        return len(self.hosts) > 1

    def option(self, name: str) -> str | None:
        for key, value in self.query:
            if key == name:
                return value
        return None

    def with_option(self, name: str, value: str) -> PostgresAddress:
        query = (*((k, v) for k, v in self.query if k != name), (name, value))
        return dataclasses.replace(self, query=query)

    def url(self, scheme: str | None = None) -> str:
        hosts = ",".join(_host_text(host, port) for host, port in self.hosts)
        at = "@" if self.userinfo else ""
        query = f"?{urlencode(self.query)}" if self.query else ""
        return f"{scheme or self.scheme}://{self.userinfo}{at}{hosts}/{self.database}{query}"

    def masked(self) -> str:
        if ":" not in self.userinfo:
            return self.url()
        user = self.userinfo.split(":", 1)[0]
        return dataclasses.replace(self, userinfo=f"{user}:***").url()


def _host_text(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port is not None else shown


def parse(dsn: str) -> PostgresAddress:
    """Read a ``postgresql://`` URL with one or more ``host[:port]``; :class:`DatabaseAddressError`
    when it is not one."""
    scheme, sep, rest = dsn.partition("://")
    scheme_name = scheme.lower().split("+", 1)[0]
    if not sep or scheme_name not in SCHEMES:
        raise DatabaseAddressError(
            f"the database URL must start with postgresql:// (got {_masked_raw(dsn)!r})"
        )
    netloc, _, tail = rest.partition("/")
    path, _, query_text = tail.partition("?")
    if "?" in netloc:  # postgresql://host?sslmode=... (no database)
        netloc, _, query_text = netloc.partition("?")
        path = ""
    userinfo, _, host_list = netloc.rpartition("@")
    hosts = tuple(_read_host(part, dsn) for part in host_list.split(",")) if host_list else ()
    query = tuple(parse_qsl(query_text, keep_blank_values=True))
    address = PostgresAddress(scheme, userinfo, hosts, path, query)
    attrs = address.option("target_session_attrs")
    if attrs is not None and attrs not in SESSION_ATTRS:
        raise DatabaseAddressError(
            f"target_session_attrs={attrs!r} in the database URL is not one of "
            f"{', '.join(SESSION_ATTRS)}"
        )
    return address


def _read_host(text: str, dsn: str) -> tuple[str, int | None]:
    text = text.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise DatabaseAddressError(f"a host is missing in the database URL {_masked_raw(dsn)!r}")
    if not port:
        return unquote(host), None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise DatabaseAddressError(
            f"port {port!r} in the database URL {_masked_raw(dsn)!r} is not a port"
        )
    return unquote(host), int(port)


def _masked_raw(dsn: str) -> str:
    try:
        parts = urlsplit(dsn)
        if parts.password is None:
            return dsn
    except ValueError:
        return "<unreadable URL>"
    userinfo, _, hosts = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hosts}").geturl()


def normalized(dsn: str) -> str:
    """``dsn`` for asyncpg: ``target_session_attrs=read-write`` added when several hosts are
    named and no attribute is; otherwise as given."""
    address = parse(dsn)
    if address.multi_host and address.option("target_session_attrs") is None:
        address = address.with_option("target_session_attrs", "read-write")
    return address.url(scheme="postgresql")


def masked(dsn: str) -> str:
    """``dsn`` with its password replaced by ``***``."""
    try:
        return parse(dsn).masked()
    except DatabaseAddressError:
        return _masked_raw(dsn)


def databases_arguments(dsn: str) -> tuple[str, dict[str, Any]]:
    """``(url, options)`` for ``databases.Database(url, **options)`` that make asyncpg read
    the whole DSN itself (all hosts, ``target_session_attrs``, ``sslmode``, ...).

    ``databases`` parses its URL into host, port, user, password and database
    (a multi-host URL does not parse: its "port" is not a number) and passes
    those to asyncpg, then its options over them. So it gets the first host
    alone, without parameters (it only picks its backend from it), and the
    options set the complete DSN and ``None`` for each part it would pass.
    """
    address = parse(dsn)
    first = dataclasses.replace(address, hosts=address.hosts[:1], query=())
    options: dict[str, Any] = {
        "dsn": normalized(dsn),
        "host": None,
        "port": None,
        "user": None,
        "password": None,
        "database": None,
    }
    return first.url(scheme="postgresql"), options


def sqlalchemy_url(dsn: str, driver: str = "psycopg") -> str:
    """The SQLAlchemy URL (``postgresql+<driver>://``) for ``dsn``.

    One host: the same URL with the driver in the scheme. Several: the hosts go
    to repeated ``host=`` query parameters, the form SQLAlchemy's psycopg
    dialect reads (``postgresql+psycopg://user:pass@/db?host=a:5432&host=b:5432``).
    """
    address = parse(normalized(dsn))
    scheme = f"postgresql+{driver}"
    if not address.multi_host:
        return address.url(scheme=scheme)
    hosts = tuple(("host", _host_text(host, port)) for host, port in address.hosts)
    at = "@" if address.userinfo else ""
    query = urlencode(hosts + address.query, quote_via=quote, safe=":[]")
    return f"{scheme}://{address.userinfo}{at}/{address.database}?{query}"
