"""Group commit: concurrent callers share one statement and one commit (or one round trip).

The booking service batches its creates and its results into one PostgreSQL
statement each; the discount worker batches its decisions into one Redis
pipeline. Under load, many requests (or results) arrive while a statement is in
flight. Instead of one transaction each, they queue and the next flush
writes all of them in one statement: one round trip, one WAL flush, one pool
checkout, for up to ``max_batch`` items. There is no timer: a flush starts as
soon as the loop gets to it, so a lone request waits for nothing, and the
batch grows only as fast as requests pile up behind a busy flush. Every
caller gets its own outcome (or exception) and returns only after the commit,
so durability and each caller's semantics are those of a transaction of its
own. One caller's bad item never fails the others: when a batch fails for any
reason but an outage (a value the database refuses, a bug), its items are
flushed again one by one, and only the guilty one gets the error. An outage
fails every caller at once (retrying each would only wait longer for the same).

With tracing on, the flush is a trace of its own (with the batch size), linked
to the span each caller was in when it joined (its step: ``booking.create``,
``discount.process``, ``booking.apply_result``): one statement serves many
bookings, so it cannot belong to one of them. The wait is no span of its own:
it is most of the step's own duration, and a span per booking per batch was a
quarter of all the spans of a booking.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext

from medbook.failures import DependencyError
from medbook.telemetry import sampled

log = logging.getLogger(__name__)
tracer = trace.get_tracer("medbook")

In = TypeVar("In")
Out = TypeVar("Out")


class GroupCommit(Generic[In, Out]):
    def __init__(
        self,
        flush: Callable[[Sequence[In]], Awaitable[Sequence[Out]]],
        *,
        max_batch: int = 256,
        max_concurrent: int = 2,
        name: str = "batch",
        isolate: Callable[[Exception], bool] = lambda exc: not isinstance(exc, DependencyError),
    ) -> None:
        self._flush = flush
        self.isolate = isolate
        self.max_batch = max_batch
        self.max_concurrent = max_concurrent
        self.name = name
        self._pending: list[tuple[In, asyncio.Future[Out], SpanContext | None]] = []
        self._running = 0
        self._flushers: set[asyncio.Task[None]] = set()  # referenced until done

    async def submit(self, item: In) -> Out:
        # The caller's span, to be linked from the flush (none with tracing off, or in a
        # trace the sampler dropped).
        caller = trace.get_current_span().get_span_context() if sampled() else None
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future, caller))
        if self._running < self.max_concurrent:
            self._running += 1
            # Started on the next loop turn, so callers arriving in this one join the batch.
            asyncio.get_running_loop().call_soon(self._start_flusher)
        return await future

    def _start_flusher(self) -> None:
        task = asyncio.create_task(self._drain(), name=f"{self.name}-flush")
        self._flushers.add(task)
        task.add_done_callback(self._flushers.discard)

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                live = [entry for entry in batch if not entry[1].done()]
                if not live:
                    continue
                try:
                    outcomes = await self._flush_traced(live)
                except BaseException as exc:
                    if isinstance(exc, Exception) and len(live) > 1 and self.isolate(exc):
                        log.warning(
                            "%s batch of %d failed (%r); flushing its items one by one",
                            self.name,
                            len(live),
                            exc,
                        )
                        for entry in live:
                            await self._flush_alone(entry)
                        continue
                    for _, future, _ in live:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future, _), outcome in zip(live, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)
        finally:
            self._running -= 1

    async def _flush_alone(self, entry: tuple[In, asyncio.Future[Out], SpanContext | None]) -> None:
        future = entry[1]
        try:
            (outcome,) = await self._flush_traced([entry])
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(outcome)

    async def _flush_traced(
        self, live: list[tuple[In, asyncio.Future[Out], SpanContext | None]]
    ) -> Sequence[Out]:
        items = [item for item, _, _ in live]
        links = [Link(context) for _, _, context in live if context is not None]
        if not links:
            return await self._flush(items)
        with tracer.start_as_current_span(
            f"{self.name} flush", context=Context(), links=links,
            attributes={"medbook.batch_size": len(items)},
        ):  # fmt: skip
            return await self._flush(items)
