"""The AMQP connection's socket: the frames written in one loop turn leave in one send.

aiormq's writer task writes each frame (a publish with its header and body, an ack, a
heartbeat) with its own ``StreamWriter.write``: one ``send`` system call, one TCP
segment on loopback with ``TCP_NODELAY``, and one read for RabbitMQ, per frame. When a
relay batch or the worker's handlers queue many publishes at once, the writer takes
them from its queue one after the other without yielding, so they can share a send.

:class:`CoalescingTransportFactory` gives aiormq (through ``transport_factory``, its own
extension point) a writer that collects what is written until the end of the loop turn
and then sends it with one ``writelines``. Nothing waits longer than that turn: a
``drain`` (which aiormq awaits for frames whose sender waits until they are written:
RPCs, the close) sends what is collected first, as do ``close`` and ``write_eof``.
Frames keep their order: they leave in the order they were written, in one buffer.

aiormq queues the frames for its writer in a queue bounded at ``FRAME_BUFFER_SIZE`` (10)
frames. With publishes that do not wait for their frame to be written
(``messaging.Publisher``), the eleventh concurrent publish of a batch waits for room while
holding its channel's lock, and from then on the batch's publishes are queued one per
loop turn (each lock hand-off takes a turn), each written alone. The bound is raised to
:data:`FRAME_QUEUE` for every aiormq connection of the process: what is in flight is
bounded by the senders themselves (the relay's batches, the consumers' prefetch), and the
writer writes without waiting for the socket (aiormq drains only for RPC frames).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiormq.connection import Connection, TCPTransportFactory, TLSTransportFactory, TransportFactory
from yarl import URL

# Frames aiormq's writer may have queued (its default: 10). A relay batch (256 publishes)
# and a worker's prefetch (64) both fit, with their acks.
FRAME_QUEUE = 1024
if not isinstance(getattr(Connection, "FRAME_BUFFER_SIZE", None), int):  # pragma: no cover
    raise ImportError("aiormq.Connection has no FRAME_BUFFER_SIZE: this aiormq is not supported")
Connection.FRAME_BUFFER_SIZE = FRAME_QUEUE


class CoalescedWriter:
    """A ``StreamWriter`` whose writes of one loop turn go to the socket together."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self.sends = 0  # socket writes made (for the tests)
        self.writes = 0  # writes asked for

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self.writes += 1

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def flush(self) -> None:
        """Send what was written since the last flush (nothing if the socket is closing)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if self._writer.is_closing():
            return  # the connection is gone: its frames are lost with it, as unwritten ones
        self.sends += 1
        if len(pending) == 1:
            self._writer.write(pending[0])
        else:
            self._writer.writelines(pending)

    async def drain(self) -> None:
        self.flush()
        await self._writer.drain()

    def write_eof(self) -> None:
        self.flush()
        self._writer.write_eof()

    def close(self) -> None:
        self.flush()
        self._writer.close()

    def __getattr__(self, name: str) -> Any:
        # The rest (transport, is_closing, can_write_eof, wait_closed, get_extra_info)
        # is the real writer's.
        return getattr(self._writer, name)


class CoalescingTransportFactory(TransportFactory):
    """aiormq's own transport (plain TCP, or TLS for ``amqps``) with a :class:`CoalescedWriter`."""

    def __init__(self) -> None:
        self.writer: CoalescedWriter | None = None  # the latest connection's

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        inner = TLSTransportFactory() if url.scheme == "amqps" else TCPTransportFactory()
        reader, writer = await inner.create(url, **kwargs)
        coalesced = CoalescedWriter(writer)
        self.writer = coalesced
        return reader, cast(asyncio.StreamWriter, coalesced)
