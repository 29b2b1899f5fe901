"""Restarts with backoff for the local stack: what crashes comes back, a crash loop stops.

As a cluster restarts a crashed pod, ``medbook dev`` restarts a process of the
stack that exited on its own: after ``first_delay`` seconds, then twice as long
each time it dies again within ``stable_after`` seconds of starting (up to
``max_delay``); a run that lasted makes the next delay short again. One that
died ``give_up_after`` times in a row, each within seconds of starting, is
reported and left stopped: the rest of the stack keeps running (the data
servers are never stopped because a service died). Each exit and each restart
is a log line saying why and how often.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class Unit(Protocol):
    """Something the stack runs: a service process or a data server."""

    @property
    def name(self) -> str: ...

    @property
    def running(self) -> bool: ...

    @property
    def log_path(self) -> Path: ...

    def start(self) -> None: ...

    def exit_status(self) -> str:
        """How it ended, in words (``exit 1``, ``killed by SIGKILL``)."""
        ...


def describe_exit(code: int | None) -> str:
    """``exit 1``, ``killed by SIGKILL``, or ``stopped`` when the code is unknown."""
    if code is None:
        return "stopped"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


@dataclass
class _Record:
    unit: Unit
    started_at: float
    quick_exits: int = 0  # in a row, each within stable_after of its start
    restarts: int = 0
    restart_at: float | None = None
    given_up: bool = False


class Supervisor:
    def __init__(
        self,
        *,
        stable_after: float = 10.0,
        first_delay: float = 1.0,
        max_delay: float = 30.0,
        give_up_after: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stable_after = stable_after
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.give_up_after = give_up_after
        self.clock = clock
        self._records: list[_Record] = []

    def watch(self, units: Sequence[Unit]) -> None:
        """Supervise these units, started just now."""
        now = self.clock()
        self._records += [_Record(unit, now) for unit in units]

    @property
    def given_up(self) -> list[str]:
        """The units left stopped after a crash loop."""
        return [r.unit.name for r in self._records if r.given_up]

    def check(self) -> None:
        """One round: notice exits, schedule restarts, restart what is due."""
        for record in self._records:
            if record.given_up:
                continue
            now = self.clock()
            if record.restart_at is not None:
                if now >= record.restart_at:
                    self._restart(record)
                continue
            if record.unit.running:
                if record.quick_exits and now - record.started_at >= self.stable_after:
                    record.quick_exits = 0  # it stays up now
                continue
            self._exited(record, now)

    def _exited(self, record: _Record, now: float) -> None:
        unit, ran = record.unit, now - record.started_at
        status = unit.exit_status()
        record.quick_exits = record.quick_exits + 1 if ran < self.stable_after else 0
        if record.quick_exits >= self.give_up_after:
            record.given_up = True
            log.error(
                "%s exited (%s) %d times in a row, each within %.0fs of starting: left "
                "stopped, the rest keeps running; see %s",
                unit.name,
                status,
                record.quick_exits,
                self.stable_after,
                unit.log_path,
            )
            return
        delay = min(self.first_delay * 2 ** max(record.quick_exits - 1, 0), self.max_delay)
        record.restart_at = now + delay
        log.warning(
            "%s exited (%s) after %.1fs; restarting it in %gs (restart %d%s)",
            unit.name,
            status,
            ran,
            delay,
            record.restarts + 1,
            f", {record.quick_exits} quick exits in a row" if record.quick_exits > 1 else "",
        )

    def _restart(self, record: _Record) -> None:
        record.restart_at = None
        record.restarts += 1
        try:
            record.unit.start()
        except Exception as exc:  # counts as one more quick exit
            log.warning("%s could not be restarted: %s", record.unit.name, exc)
        record.started_at = self.clock()
        if record.unit.running:
            log.info("%s restarted", record.unit.name)
