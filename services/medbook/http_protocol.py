"""The HTTP/1.1 protocol the services serve with: uvicorn's httptools one, with bounds.

uvicorn (httptools) bounds the body only through the application and leaves the
request line and headers unbounded: a 16 MiB header was parsed (and buffered)
in full before the application could refuse it. :class:`BoundedHttpProtocol`
counts the bytes of each request's line and headers as they arrive (the raw
bytes fed to the parser a piece at a time bound what is buffered; the parser's
callbacks give the exact count of the target and of each header) and answers
``414`` (a request target over :data:`MAX_URL_BYTES`) or ``431`` (line and
headers over :data:`MAX_HEAD_BYTES`) at once, reading and discarding what the
client still sends (so it receives the answer instead of a reset) and never
keeping more than one chunk in memory. The errors uvicorn answers by itself (a
request it cannot parse, an application that fails before answering) have the
services' JSON error shape too.
"""

from __future__ import annotations

import http
from typing import Any, Final

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from medbook.clock import js_iso, utcnow

MAX_HEAD_BYTES: Final = 16 * 1024
MAX_URL_BYTES: Final = 8 * 1024
_FEED: Final = 4096  # bytes fed to the parser at a time while a head is being read
_LINGER_SECONDS: Final = 2.0


def error_document(status: int, message: str, path: str | None = None) -> dict[str, object]:
    """``{code, message, error, timestamp[, path]}``: every error the services answer."""
    body: dict[str, object] = {
        "code": status,
        "message": message,
        "error": http.HTTPStatus(status).phrase,
        "timestamp": js_iso(utcnow()),
    }
    if path is not None:
        body["path"] = path
    return body


def _response(status: int, message: str, *, close: bool) -> bytes:
    body = orjson.dumps(error_document(status, message))
    phrase = http.HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n" + ("connection: close\r\n" if close else "") + "\r\n"
    )
    return head.encode("ascii") + body


class BoundedHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._url_bytes = 0
        self._header_bytes = 0
        self._refusal: tuple[int, str] | None = None  # decided inside a parser callback
        self._discarding = False

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return  # answered and closing: what the client still sends is dropped
        view = memoryview(data)
        while view and not self._discarding:
            if self._in_head:  # the head is fed a piece at a time, and counted
                piece, view = view[:_FEED], view[_FEED:]
                self._head_bytes += len(piece)
                if self._head_bytes > MAX_HEAD_BYTES + _FEED:
                    self._refuse(
                        431, f"Request line and headers are larger than {MAX_HEAD_BYTES} bytes"
                    )
                    return
            else:
                piece, view = view, view[len(view) :]
            super().data_received(bytes(piece))
            if self.transport.is_closing():
                return

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._url_bytes = 0
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > MAX_URL_BYTES:
            self._refusal = (414, f"Request target is longer than {MAX_URL_BYTES} bytes")
            raise ValueError("request target too long")  # the parser stops: send_400_response
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # The exact count (the pieces fed above only bound what is buffered): the target,
        # then each header line as sent (name, ": ", value, CRLF).
        self._header_bytes += len(name) + len(value) + 4
        if self._url_bytes + self._header_bytes > MAX_HEAD_BYTES:
            self._refusal = (
                431,
                f"Request line and headers are larger than {MAX_HEAD_BYTES} bytes",
            )
            raise ValueError("head too large")  # the parser stops: send_400_response
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """What uvicorn answers to a request it cannot parse (or that a callback refused)."""
        status, message = self._refusal or (400, msg)
        self._refuse(status, message)

    def _refuse(self, status: int, message: str) -> None:
        self.logger.warning("refused a request: %s (%d)", message, status)
        self._discarding = True
        self.transport.write(_response(status, message, close=True))
        # Keep reading (and dropping) for a moment, so that a client still sending gets
        # the answer rather than a reset; then close.
        self.loop.call_later(_LINGER_SECONDS, self.transport.close)
