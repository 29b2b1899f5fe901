"""Background tasks with a start and a stop, written once.

Every long-running service keeps loops beside its main work: the outbox relay,
admission control's count, the gauges, the policy refresh. They are started
into one :class:`Background`, which keeps a reference to each task (a task
nobody references can be garbage-collected mid-flight), logs a task that dies
of an error, and stops them all together: a task started ``graceful`` (one
that ends by itself once its stop event is set, such as the relay finishing
its batch) gets up to ``grace`` seconds to do so; the others are cancelled.
A job to repeat at an interval is :func:`every`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._graceful: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(
        self, coroutine: Coroutine[Any, Any, Any], *, name: str, graceful: bool = False
    ) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        if graceful:
            self._graceful.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._graceful.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background task %s died: %r", task.get_name(), exc, exc_info=exc)

    async def stop(self, grace: float = 0.0) -> None:
        """Cancel the tasks; graceful ones first get up to ``grace`` seconds to end."""
        tasks = list(self._tasks)
        if not tasks:
            return
        graceful = [t for t in tasks if t in self._graceful]
        for task in tasks:
            if task not in self._graceful:
                task.cancel()
        if graceful and grace > 0:
            await asyncio.wait(graceful, timeout=grace)
        for task in graceful:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def every(
    interval: float,
    job: Callable[[], Awaitable[object]],
    *,
    name: str,
    logger: logging.Logger = log,
) -> None:
    """Run ``job`` every ``interval`` seconds (start to start) until cancelled.

    A failure does not end the loop: the first of a run of failures is logged as
    a warning, the next ones at debug level, and the recovery once.
    """
    failing = False
    while True:
        started = time.monotonic()
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            (logger.debug if failing else logger.warning)("%s failed: %r", name, exc)
            failing = True
        else:
            if failing:
                logger.info("%s works again", name)
            failing = False
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
