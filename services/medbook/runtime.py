"""Process plumbing shared by the services: event loop, signals, an embedded HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn

from medbook.http_protocol import BoundedHttpProtocol

log = logging.getLogger(__name__)

# Allocations (net of deallocations) between two collections of the youngest generation:
# Python's default, 700, runs one every few requests here; most of what a request or a
# message allocates is freed by reference counting long before, so the collections
# find little and cost a few per cent of the CPU.
GC_YOUNG_THRESHOLD = 20_000


class HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: the process decides when to stop.

    Setting :attr:`should_exit` stops accepting connections, lets in-flight
    requests finish (up to ``timeout_graceful_shutdown``) and runs the
    application's lifespan shutdown.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def http_server(
    app: Any, host: str, port: int, *, grace: float, access_log: bool = False
) -> HttpServer:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        http=BoundedHttpProtocol,  # httptools, with the request line and headers bounded
        lifespan="on",
        access_log=access_log,
        log_config=None,
        timeout_graceful_shutdown=int(grace),
        timeout_keep_alive=30,
        backlog=2048,
    )
    return HttpServer(config)


def on_stop_signals(callback: Callable[[str], None]) -> None:
    """Call ``callback(signal name)`` on SIGTERM or SIGINT (a second one is ignored)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, callback, sig.name)


def settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector from pausing a service for tens of milliseconds.

    What the imports made (modules, classes, pydantic schemas, OpenTelemetry) lives as
    long as the process, but every full collection walked all of it again: 60-70 ms each
    in the booking service, one every few seconds under load, long enough to show in
    the end-to-end p99. It is frozen (``gc.freeze``: out of every later collection), and
    the youngest generation is collected less often (:data:`GC_YOUNG_THRESHOLD`).
    Reference counting still frees nearly everything at once; cycles are still
    collected.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def run(main: Callable[[], Awaitable[int | None]]) -> int:
    """Run ``main`` on uvloop (when available), with the garbage collector settled
    (:func:`settle_garbage_collector`), and return its exit code."""
    settle_garbage_collector()
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    return runner(main()) or 0
