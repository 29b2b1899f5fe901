"""Acks that share a frame: the messages a consumer finishes together are acked with one
``basic.ack(multiple=True)``.

A consumer with a prefetch window finishes its messages in bursts: one read
from Redis or RabbitMQ (a batch of publisher confirms, the replies of one group
commit) resumes many handlers in the same loop turn. Each ack is a frame, a
trip through the client's write queue, a socket write and, on the broker, a
command to process; one ``multiple=True`` ack settles every delivery up to its
tag. So an ack is not sent at once: it is noted, and at the end of the loop
turn the longest run of deliveries, oldest first, that are all acked goes in one
frame. A finished message behind one still in flight is acked on its own in
the same turn (never held: a slow message at the head of the window must not
keep the others' prefetch slots), so the broker sees every ack no later than
before, and an ack that coalesces nothing costs what it cost.

Only the consumer's own bookkeeping makes this safe: ``multiple=True`` covers
every unsettled delivery up to the tag, so a delivery counts as outstanding
from its arrival until it is acked, or until its nack or reject has been
*sent*; the run never reaches past an outstanding one. Delivery tags belong to
a channel, so each channel (a recovered connection brings a new one) keeps its
own. Each ack's caller waits until its frame is written, as before; a crash
before that leaves the message unacked, and the broker redelivers it (the
handlers are idempotent: a redelivery is never an error).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiormq.abc
from aio_pika.abc import AbstractIncomingMessage


class _Window:
    """The deliveries of one channel not settled yet, oldest first."""

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        # delivery tag -> the future of its ack, None while outstanding (in flight)
        self.deliveries: dict[int, asyncio.Future[None] | None] = {}
        self.flush_scheduled = False


class AckCoalescer:
    """Acks of one consumer, coalesced per loop turn (see the module's docstring)."""

    def __init__(self) -> None:
        self._windows: dict[aiormq.abc.AbstractChannel, _Window] = {}
        self._senders: set[asyncio.Task[None]] = set()  # referenced until done
        self.frames_sent = 0  # ack frames written (for tests and the curious)
        self.acks = 0  # messages acked

    def _window(self, message: AbstractIncomingMessage) -> tuple[_Window, int] | None:
        tag = message.delivery_tag
        try:
            channel = message.channel  # raises once the channel is closed
        except Exception:
            return None
        if tag is None:
            return None
        window = self._windows.get(channel)
        if window is None:
            for closed in [c for c in self._windows if c.is_closed]:  # a recovered connection
                del self._windows[closed]
            window = self._windows[channel] = _Window(channel)
        return window, tag

    def received(self, message: AbstractIncomingMessage) -> None:
        """A delivery arrived: it is outstanding until it is acked or sent back."""
        found = self._window(message)
        if found is not None:
            window, tag = found
            window.deliveries[tag] = None

    async def ack(self, message: AbstractIncomingMessage) -> None:
        """Ack the message with the others acked in this loop turn; returns once its frame
        is written (raises as ``message.ack()`` would, e.g. on a closed channel)."""
        found = self._window(message)
        if found is None or found[1] not in found[0].deliveries:
            await message.ack()  # a delivery this consumer did not see arrive (or closed)
            return
        window, tag = found
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        window.deliveries[tag] = future
        if not window.flush_scheduled:
            window.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, window)
        await future

    @contextlib.asynccontextmanager
    async def settling(self, message: AbstractIncomingMessage) -> AsyncIterator[None]:
        """Around a nack or reject: the delivery stays outstanding until it is sent."""
        try:
            yield
        finally:
            found = self._window(message)
            if found is not None:
                window, tag = found
                window.deliveries.pop(tag, None)
                self._forget_if_empty(window)

    def _forget_if_empty(self, window: _Window) -> None:
        if not window.deliveries and not window.flush_scheduled:
            self._windows.pop(window.channel, None)

    def _flush(self, window: _Window) -> None:
        window.flush_scheduled = False
        deliveries = window.deliveries
        run: list[asyncio.Future[None]] = []
        last = None
        for tag, future in deliveries.items():  # oldest first
            if future is None:
                break
            run.append(future)
            last = tag
        if last is not None:
            for _ in run:
                del deliveries[next(iter(deliveries))]
            self._send(window, last, run, multiple=len(run) > 1)
        for tag, future in [(t, f) for t, f in deliveries.items() if f is not None]:
            del deliveries[tag]  # behind an outstanding delivery: on its own, now
            self._send(window, tag, [future], multiple=False)
        self._forget_if_empty(window)

    def _send(
        self,
        window: _Window,
        tag: int,
        futures: list[asyncio.Future[None]],
        *,
        multiple: bool,
    ) -> None:
        async def send() -> None:
            try:
                await window.channel.basic_ack(tag, multiple=multiple)
            except BaseException as exc:
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                self.frames_sent += 1
                self.acks += len(futures)
                for future in futures:
                    if not future.done():
                        future.set_result(None)

        task = asyncio.get_running_loop().create_task(send(), name="ack")
        self._senders.add(task)
        task.add_done_callback(self._senders.discard)
