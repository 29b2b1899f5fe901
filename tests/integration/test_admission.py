"""Admission control: a backlogged saga slows creates down, never refuses them."""

from __future__ import annotations

import asyncio
import time

from medbook import metrics
from tests.helpers import Infra, eligible_body, eventually, running_stack


def waits() -> float:
    return metrics.BOOKING.get_sample_value("medbook_admission_wait_seconds_count") or 0


async def test_creates_wait_while_the_backlog_is_over_the_limit_then_go_on(infra: Infra) -> None:
    settings = infra.booking_settings(max_pending=5, admission_wait=0.3)
    async with running_stack(infra, booking_settings=settings, start_worker=False) as stack:
        for _ in range(5):  # the worker is away: these stay PENDING
            assert (await stack.book(eligible_body())).status_code == 201
        await eventually(
            lambda: asyncio.sleep(0, stack.booking.admission.pending),
            lambda n: n >= 5,
            what="backlog seen",
        )
        before = waits()
        started = time.monotonic()
        response = await stack.book(eligible_body())
        assert response.status_code == 201  # slowed down, not refused
        assert 0.25 <= time.monotonic() - started < 2
        assert waits() == before + 1

        await stack.start_worker()  # the backlog drains: creates are prompt again
        await eventually(
            lambda: asyncio.sleep(0, stack.booking.admission.pending),
            lambda n: n < 5,
            what="backlog drained",
        )
        started = time.monotonic()
        assert (await stack.book(eligible_body())).status_code == 201
        assert time.monotonic() - started < 0.25


async def test_no_limit_when_max_pending_is_zero(infra: Infra) -> None:
    settings = infra.booking_settings(max_pending=0, admission_wait=5)
    async with running_stack(infra, booking_settings=settings, start_worker=False) as stack:
        started = time.monotonic()
        for _ in range(10):
            assert (await stack.book(eligible_body())).status_code == 201
        assert time.monotonic() - started < 2


class StubStore:
    """Only what admission control reads: the PENDING count."""

    def __init__(self, pending: int) -> None:
        self.pending = pending

    async def count_pending(self) -> int:
        return self.pending


async def test_waiters_go_in_first_come_first_served_in_bursts() -> None:
    from medbook.booking.admission import AdmissionControl

    gate = AdmissionControl(StubStore(4), limit=4, max_wait=5, burst=2)  # type: ignore[arg-type]
    gate.pending = 4
    order: list[int] = []

    async def create(n: int) -> None:
        await gate.admit()
        order.append(n)

    waiting = [asyncio.create_task(create(n)) for n in range(3)]
    await asyncio.sleep(0.01)
    assert order == []
    gate.finished()  # room for one, but the burst is two: nobody yet
    await asyncio.sleep(0.01)
    assert order == []
    gate.finished()  # room for two: the first two, in order
    await asyncio.sleep(0.01)
    assert order == [0, 1]
    assert gate.pending == 4
    gate.finished()  # one waiter left: a burst of one is enough
    await asyncio.wait_for(asyncio.gather(*waiting), 1)
    assert order == [0, 1, 2]


async def test_a_waiter_goes_on_after_the_longest_wait() -> None:
    from medbook.booking.admission import AdmissionControl

    gate = AdmissionControl(StubStore(10), limit=1, max_wait=0.1)  # type: ignore[arg-type]
    gate.pending = 10
    started = time.monotonic()
    await gate.admit()
    assert 0.1 <= time.monotonic() - started < 0.5
    assert gate.pending == 11
