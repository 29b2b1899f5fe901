"""Hostile requests for a mixed load: the attacks the HTTP edge refuses, sent among good ones.

``medbook bench --hostile 10%`` sends, among the good bookings, requests that
the booking API must refuse with a 4xx in the JSON error shape, never a 5xx,
and without costing the good bookings around them anything (docs/security.md):
a NUL or control character in a field (the request that once failed the 90
bookings committed with it), a name with nothing visible or with a bidi
override, a date of birth in the future, duplicate JSON keys, malformed JSON, an
oversized body, header and URL. The server closes the connection after a 431
or a 414 (what it still reads is discarded): the generator's pool opens another.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass(frozen=True)
class HostileRequest:
    name: str
    expect: frozenset[int]  # the statuses the API may answer it with
    path: str = "/booking"
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _booking(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "userId": "hostile-1",
        "userName": "Mallory",
        "gender": "Female",
        "dob": "1990-01-01",
        "services": ["General Consultation"],
    }
    body.update(fields)
    return body


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def catalogue(today: dt.date) -> list[HostileRequest]:
    """Every attack of the mix, in the order they are sent in turn."""
    bad_request = frozenset({400, 422})
    future = (today + dt.timedelta(days=2)).isoformat()  # not today in any time zone
    good = _json(_booking())
    return [
        HostileRequest("nul in a name", bad_request, body=_json(_booking(userName="a\u0000b"))),
        HostileRequest("control character in userId", bad_request,
                       body=_json(_booking(userId="u\u0007\u009b1"))),
        HostileRequest("invisible name", bad_request,
                       body=_json(_booking(userName="\u200b\u200c\u200d\ufeff"))),
        HostileRequest("bidi override", bad_request,
                       body=_json(_booking(userName="\u202eAsha"))),
        HostileRequest("dob in the future", bad_request, body=_json(_booking(dob=future))),
        HostileRequest("duplicate keys", bad_request,
                       body=good[:-1] + b', "gender": "Male"}'),
        HostileRequest("malformed json", bad_request, body=b'{"userId": "x", "userName": '),
        HostileRequest("oversized body", frozenset({413}), body=b'{"userName": "' + b"a" * 70_000
                       + b'"}'),
        HostileRequest("oversized header", frozenset({431}), body=good,
                       headers={"X-Filler": "h" * 20_000}),
        HostileRequest("oversized url", frozenset({414}), path="/booking?" + "q" * 9_000,
                       body=good),
    ]  # fmt: skip


@dataclass
class HostileTally:
    """What the hostile requests got: status (or transport error) counts by attack; and the
    ones answered outside what their attack expects (a 2xx or a 5xx: a hole)."""

    answers: dict[str, Counter[str]] = field(default_factory=dict)
    unexpected: Counter[str] = field(default_factory=Counter)

    @property
    def sent(self) -> int:
        return sum(sum(c.values()) for c in self.answers.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "answers": {name: dict(counts) for name, counts in self.answers.items()},
            "unexpected": dict(self.unexpected),
        }


def hostile_before(index: int, fraction: float) -> bool:
    """Whether a hostile request goes before good request ``index``, so that ``fraction`` of
    all requests are hostile, evenly spread (0.1: one before every ninth good one)."""
    if fraction <= 0:
        return False
    per_good = fraction / (1 - fraction)
    return int((index + 1) * per_good) > int(index * per_good)


async def send(
    session: aiohttp.ClientSession, api_url: str, request: HostileRequest, tally: HostileTally
) -> None:
    """Send one hostile request; count its answer (a lost connection counts as one)."""
    headers = {"Content-Type": "application/json", **request.headers}
    try:
        async with session.post(f"{api_url}{request.path}", data=request.body,
                                headers=headers) as response:  # fmt: skip
            await response.read()
            answer = str(response.status)
            json_shape = response.content_type == "application/json"
            expected = response.status in request.expect and json_shape
    except (aiohttp.ClientError, TimeoutError) as exc:
        answer, expected = type(exc).__name__, False
    tally.answers.setdefault(request.name, Counter())[answer] += 1
    if not expected:
        tally.unexpected[f"{request.name}: {answer}"] += 1
