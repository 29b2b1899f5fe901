"""Process plumbing shared by the services: event loop, signals, an embedded HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn

from medbook.http_protocol import BoundedHttpProtocol

log = logging.getLogger(__name__)


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


def run(main: Callable[[], Awaitable[int | None]]) -> int:
    """Run ``main`` on uvloop (when available) and return its exit code."""
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    return runner(main()) or 0
