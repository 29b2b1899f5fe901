"""The benchmark's hostile mix (cli/hostile.py): its share, and every attack refusable."""

from __future__ import annotations

import datetime as dt

import pytest

from medbook.cli.hostile import catalogue, hostile_before


@pytest.mark.parametrize(("share", "good"), [(0.1, 900), (0.25, 300), (0.5, 100)])
def test_the_share_of_hostile_requests_is_the_one_asked_for(share: float, good: int) -> None:
    hostile = sum(hostile_before(i, share) for i in range(good))
    assert hostile / (hostile + good) == pytest.approx(share, abs=0.005)


def test_no_share_sends_nothing_hostile() -> None:
    assert not any(hostile_before(i, 0.0) for i in range(100))


def test_every_attack_expects_a_refusal_and_the_future_is_not_today_anywhere() -> None:
    today = dt.date(2026, 12, 31)
    attacks = catalogue(today)
    assert len({a.name for a in attacks}) == len(attacks)
    assert all(a.expect and all(400 <= s < 500 for s in a.expect) for a in attacks)
    (future,) = [a for a in attacks if a.name == "dob in the future"]
    assert b'"dob": "2027-01-02"' in future.body  # two days on: past every time zone's today
