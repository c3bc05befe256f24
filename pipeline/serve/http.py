"""uvicorn's httptools protocol with the two bounds it lacks: header size and read time.

uvicorn bounds idle keep-alive connections (`timeout_keep_alive`) and concurrency
(`limit_concurrency`), and h11 bounds header size (`h11_max_incomplete_event_size`), but
with httptools (our parser: it is much faster) a client may send headers without end, send
half a body and wait, or open a connection and send nothing, each holding a connection
forever. `BoundedHttpToolsProtocol` adds:

- a header bound (`MAX_HEADER_BYTES`): request line plus headers larger than that are
  answered 431 and the connection closed (checked while parsing, and for headers spread
  over several reads, by the bytes read before they were complete);
- a read timeout (`BODY_READ_TIMEOUT_S`): a request whose headers and body have not fully
  arrived that long after its first byte is answered 408 (or, if the app already answered,
  just closed);
- an idle timeout from the first byte: a new connection that sends nothing is closed after
  `timeout_keep_alive`, as uvicorn does between requests.

The limits reach each connection through the app's lifespan state (`LIMITS_KEY`), set by
`create_app` from `ServeSettings`, so every worker process applies its own settings.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["LIMITS_KEY", "BoundedHttpToolsProtocol", "HttpLimits"]

LIMITS_KEY = "relcert.http_limits"


@dataclass(frozen=True)
class HttpLimits:
    """Per-connection bounds (see the module docstring)."""

    max_header_bytes: int = 16_384
    read_timeout_s: float = 10.0


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request we refuse."""


def _response(status: int, reason: bytes, detail: bytes) -> bytes:
    body = b'{"detail": "' + detail + b'"}'
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % (status, reason, len(body))
    ) + body


_TOO_LARGE = _response(
    431, b"Request Header Fields Too Large", b"headers: larger than MAX_HEADER_BYTES"
)
_TIMEOUT = _response(
    408,
    b"Request Timeout",
    b"request: headers and body did not arrive within BODY_READ_TIMEOUT_S",
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a header size bound and a request read timeout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = self.app_state.get(LIMITS_KEY)
        if not isinstance(limits, HttpLimits):
            limits = HttpLimits()
        self._max_header_bytes = limits.max_header_bytes
        self._read_timeout_s = limits.read_timeout_s
        self._header_bytes = 0
        self._in_request = False  # a request began and its body is not complete
        self._in_headers = False  # ... and its headers are not complete
        self._first_read = False  # the current read is the one the request began in
        self._read_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # a connection that never sends a byte is idle too
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        was_in_headers = self._in_headers
        self._first_read = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self._refuse_if_needed():
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_headers:
            if was_in_headers and not self._first_read:
                # headers spread over reads: count what arrived while they were incomplete
                self._header_bytes += len(data)
            if self._header_bytes > self._max_header_bytes:
                self._refuse(_TOO_LARGE)
                return
        if self._in_request and self._read_timer is None and not self.transport.is_closing():
            self._read_timer = self.loop.call_later(self._read_timeout_s, self._read_timed_out)

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_request = True
        self._in_headers = True
        self._first_read = True
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_request = False
        self._cancel_read_timer()
        super().on_message_complete()

    # ------------------------------------------------------------------ refusals
    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self._max_header_bytes:
            raise _Refused  # stops the parser; data_received answers 431

    def _refuse_if_needed(self) -> bool:
        if self._in_headers and self._header_bytes > self._max_header_bytes:
            self._refuse(_TOO_LARGE)
            return True
        return False

    def _refuse(self, response: bytes) -> None:
        self._cancel_read_timer()
        self._in_request = self._in_headers = False
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if not self._in_request or self.transport.is_closing():
            return
        cycle = self.cycle
        answered = not self._in_headers and cycle is not None and cycle.response_started
        self.logger.warning("relcert serve: request not received within the read timeout")
        if answered:
            self.transport.close()
        else:
            self._refuse(_TIMEOUT)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
