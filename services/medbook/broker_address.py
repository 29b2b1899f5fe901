"""RabbitMQ addresses: one URL, a list of URLs, or one URL naming several hosts.

``MEDBOOK_RABBITMQ_URL`` may be one URL, a comma-separated list of URLs, or one
URL naming several hosts (``amqp://user:pass@h1:5672,h2:5672/vhost``, the form
PostgreSQL and MongoDB use), which is expanded to one URL per host with the
same credentials, virtual host and parameters. Pure parsing, so that the
settings can check the value when they are read (the connection that uses the
list is broker_connection.py).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from yarl import URL

_SCHEMES = ("amqp", "amqps")
# A list separator is a comma (or white space) followed by the next URL's scheme:
# a comma inside a password or a host list is not one.
_LIST_SEPARATOR = re.compile(r"\s*,\s*(?=amqps?://)|\s+(?=amqps?://)", re.IGNORECASE)


class BrokerAddressError(ValueError):
    """The broker address setting cannot be used (the message says why, without secrets)."""


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hosts}").geturl()


def broker_urls(value: str) -> tuple[str, ...]:
    """Every node's AMQP URL in ``value``, in order, each once.

    >>> broker_urls("amqp://u:p@a:5672,b:5673/v")
    ('amqp://u:p@a:5672/v', 'amqp://u:p@b:5673/v')
    """
    text = value.strip()
    if not text:
        raise BrokerAddressError("no RabbitMQ URL given")
    urls: list[str] = []
    for part in _LIST_SEPARATOR.split(text):
        for url in _expand_hosts(part.strip().rstrip(",")):
            if url not in urls:
                urls.append(url)
    return tuple(urls)


def _expand_hosts(url: str) -> list[str]:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise BrokerAddressError(
            f"not an AMQP URL: {masked(url)!r} (expected amqp://user:password@host:port/vhost; "
            "several nodes as a comma-separated list)"
        )
    netloc, slash, tail = rest.partition("/")
    query_start = netloc.find("?")
    if query_start >= 0:  # amqp://host?heartbeat=5: no path, a query
        netloc, tail, slash = netloc[:query_start], netloc[query_start:], ""
    userinfo, at, hosts = netloc.rpartition("@")
    prefix = f"{scheme}://{userinfo}{at}"
    suffix = f"{slash}{tail}"
    names = [h.strip() for h in hosts.split(",")]
    if not names or any(not h or h.startswith(":") for h in names):
        raise BrokerAddressError(f"a host is missing in the RabbitMQ URL {masked(url)!r}")
    expanded = [f"{prefix}{host}{suffix}" for host in names]
    for candidate in expanded:
        try:
            parsed = URL(candidate)
            _ = parsed.port  # a port that is not a number raises here
        except ValueError as exc:
            raise BrokerAddressError(
                f"cannot read the RabbitMQ URL {masked(candidate)!r}: {exc}"
            ) from None
        if not parsed.host:
            raise BrokerAddressError(f"a host is missing in the RabbitMQ URL {masked(url)!r}")
    return expanded
