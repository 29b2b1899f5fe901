"""A TCP proxy that loses one answer on purpose: the way a failover loses a commit's acknowledgement.

It forwards every byte between a client and a server until it is armed with
a marker and a direction. Then, the first chunk that carries the marker is
dropped and both sides are disconnected:

- ``to_server``: the client's request never arrives (nothing happened);
- ``to_client``: the server did the work (for a statement in autocommit, the
  commit happened before its ``CommandComplete`` is flushed at ``Sync``) but
  the client never hears it: the commit's acknowledgement is lost.
"""

from __future__ import annotations

import asyncio
import contextlib

import port_for


class CuttingProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.port = port_for.select_random()
        self.cuts = 0
        self._marker: bytes | None = None
        self._direction = "to_client"
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def arm(self, marker: bytes, direction: str) -> None:
        if direction not in ("to_server", "to_client"):
            raise ValueError("direction is to_server or to_client")
        self._marker, self._direction = marker, direction

    async def start(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            self.host, self.target_port
        )
        done = asyncio.Event()
        pipes = [
            asyncio.create_task(self._pipe(reader, upstream_writer, "to_server", done)),
            asyncio.create_task(self._pipe(upstream_reader, writer, "to_client", done)),
        ]
        self._tasks.update(pipes)
        await done.wait()
        for pipe in pipes:
            pipe.cancel()
        for w in (writer, upstream_writer):
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
        self._tasks.difference_update(pipes)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        direction: str,
        done: asyncio.Event,
    ) -> None:
        try:
            while chunk := await source.read(65536):
                marker = self._marker
                if marker is not None and direction == self._direction and marker in chunk:
                    self._marker = None  # once
                    self.cuts += 1
                    break
                sink.write(chunk)
                await sink.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            done.set()
