"""A lean HTTP/1.1 keep-alive client for load generation against a service on loopback.

`httpx` costs hundreds of microseconds per request, which would make the generator the
bottleneck. This client keeps a fixed pool of connections (asyncio protocols, TCP_NODELAY)
and writes each request at once on an idle connection, or pipelines it behind others when
all are busy; a response completes the request's future. It is bounded: at most
`connections * max_pipeline` requests in flight, beyond which a request fails at once
(`error="client: ..."`) rather than queueing.

It only talks to loopback addresses: a load generator pointed at a real host by mistake
would be a denial-of-service tool, so any other host is refused with ValueError.

    client = HttpLoadClient("127.0.0.1", port, connections=64)
    await client.start()
    result = await client.post_json("/api/v1/predict/quality", body)
    result.success, result.status, result.body, result.error, result.headers
    await client.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
from collections import deque
from typing import Any

__all__ = ["HttpLoadClient", "HttpResult", "check_loopback"]

_MAX_HEAD = 64 * 1024


def check_loopback(host: str) -> str:
    """Return `host` when it is a loopback address (or `localhost`); else ValueError.

    Names other than `localhost` are refused without resolving them: a lookup could send
    traffic (DNS) and resolve to anything."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(
            f"HttpLoadClient: host {host!r} is not a loopback address; this load client only "
            "sends to 127.0.0.0/8, ::1 or localhost"
        ) from None
    if not address.is_loopback:
        raise ValueError(
            f"HttpLoadClient: host {host!r} is not a loopback address; this load client only "
            "sends to 127.0.0.0/8, ::1 or localhost"
        )
    return str(address)


class HttpResult:
    """One response (or failure). `success` is a 2xx status with no transport error."""

    __slots__ = ("_head", "body", "error", "status")

    def __init__(self, status: int, body: bytes, error: str | None, head: bytes = b"") -> None:
        self.status = status
        self.body = body
        self.error = error
        self._head = head

    @property
    def success(self) -> bool:
        return self.error is None and 200 <= self.status < 300

    @property
    def headers(self) -> dict[str, str]:
        """Response headers, lower-cased names (parsed on demand: the hot path never does)."""
        out: dict[str, str] = {}
        for line in self._head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            out[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        return out

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"HttpResult(status={self.status}, error={self.error!r}, body={self.body[:80]!r})"


class _Connection(asyncio.Protocol):
    """One keep-alive connection; responses arrive in request order (HTTP/1.1)."""

    def __init__(self, client: HttpLoadClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.pending: deque[asyncio.Future] = deque()
        self.buffer = bytearray()
        self.head: bytes | None = None
        self.status = 0
        self.need = 0  # body bytes of the response being read; -1: chunked; -2: until close
        self.close_after = False
        self.lost = False

    # ----------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while buffer:
            if self.head is None:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > _MAX_HEAD:
                        self._abort("response head larger than 64 KiB")
                    return
                head = bytes(buffer[:end])
                del buffer[: end + 4]
                if not self._parse_head(head):
                    return
            if self.need >= 0:
                if len(buffer) < self.need:
                    return
                body = bytes(buffer[: self.need])
                del buffer[: self.need]
            elif self.need == -1:
                parsed = _parse_chunked(buffer)
                if parsed is None:
                    return
                body, used = parsed
                del buffer[:used]
            else:
                return  # body until the connection closes
            self._deliver(body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head is not None and self.need == -2 and self.pending:
            self._deliver(bytes(self.buffer))
        reason = f"connection lost: {exc}" if exc else "connection closed by the server"
        while self.pending:
            future = self.pending.popleft()
            self.client._in_flight -= 1
            if not future.done():
                future.set_result(HttpResult(0, b"", reason))
        self._retire()

    def _retire(self) -> None:
        """Take this connection out of service (once) and let the client replace it."""
        if not self.lost:
            self.lost = True
            self.client._on_lost(self)

    # ----------------------------------------------------------------- parsing
    def _parse_head(self, head: bytes) -> bool:
        try:
            self.status = int(head[9:12])
        except ValueError:
            self._abort(f"malformed status line {head[:40]!r}")
            return False
        self.head = head
        lower = head.lower()
        self.close_after = b"\r\nconnection: close" in lower
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = lower.find(b"\r\n", at + 2)
            self.need = int(lower[at + 17 : stop if stop >= 0 else None])
        elif b"\r\ntransfer-encoding: chunked" in lower:
            self.need = -1
        elif self.status in (204, 304) or 100 <= self.status < 200:
            self.need = 0
        else:
            self.need = -2
        return True

    def _deliver(self, body: bytes) -> None:
        head, status = self.head or b"", self.status
        self.head = None
        if not self.pending:
            self._abort("a response arrived with no request waiting")
            return
        if 100 <= status < 200:
            return  # an interim response: the final one follows
        future = self.pending.popleft()
        client = self.client
        client._in_flight -= 1
        if not future.done():
            future.set_result(HttpResult(status, body, None, head))
        if self.close_after:
            self._retire()  # no new request may use it; pipelined ones fail on close
            self.transport.close()
        elif not self.pending:
            client._idle.append(self)

    def _abort(self, reason: str) -> None:
        while self.pending:
            future = self.pending.popleft()
            self.client._in_flight -= 1
            if not future.done():
                future.set_result(HttpResult(0, b"", f"protocol error: {reason}"))
        self._retire()
        if self.transport is not None:
            self.transport.close()


def _parse_chunked(buffer: bytearray) -> tuple[bytes, int] | None:
    """(body, bytes used) of a complete chunked body at the start of `buffer`, else None."""
    parts = []
    at = 0
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
        at = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", at - 2)
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 4
        if len(buffer) < at + size + 2:
            return None
        parts.append(bytes(buffer[at : at + size]))
        at += size + 2


class HttpLoadClient:
    """A bounded pool of HTTP/1.1 keep-alive connections to one loopback server."""

    def __init__(
        self,
        host: str,
        port: int,
        connections: int = 64,
        *,
        max_pipeline: int = 16,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if connections < 1:
            raise ValueError(f"connections must be >= 1, got {connections}")
        if max_pipeline < 1:
            raise ValueError(f"max_pipeline must be >= 1, got {max_pipeline}")
        self.host = check_loopback(host)
        self.port = int(port)
        self.connections = int(connections)
        self.max_pipeline = int(max_pipeline)
        self.max_in_flight = self.connections * self.max_pipeline
        self.connect_timeout_s = connect_timeout_s
        host_header = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = f"Host: {host_header}:{self.port}\r\n".encode()
        self._pool: list[_Connection] = []
        self._idle: list[_Connection] = []
        self._in_flight = 0
        self._next = 0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prefixes: dict[tuple[Any, ...], bytes] = {}
        self._reconnects: set[asyncio.Task] = set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def open_connections(self) -> int:
        return sum(not c.lost for c in self._pool)

    async def start(self) -> HttpLoadClient:
        """Open the connection pool (all connections, concurrently)."""
        self._loop = asyncio.get_running_loop()
        conns = await asyncio.gather(*(self._connect() for _ in range(self.connections)))
        self._pool = list(conns)
        self._idle = list(conns)
        return self

    async def __aenter__(self) -> HttpLoadClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _connect(self) -> _Connection:
        loop = self._loop or asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: _Connection(self), self.host, self.port),
            self.connect_timeout_s,
        )
        return protocol

    def _on_lost(self, conn: _Connection) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        if self._closed or self._loop is None or self._loop.is_closed():
            return
        task = self._loop.create_task(self._replace(conn))
        self._reconnects.add(task)
        task.add_done_callback(self._reconnects.discard)

    async def _replace(self, old: _Connection) -> None:
        for attempt in range(5):
            if self._closed:
                return
            try:
                new = await self._connect()
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            if self._closed:
                new.transport.close()
                return
            try:
                self._pool[self._pool.index(old)] = new
            except ValueError:
                self._pool.append(new)
            self._idle.append(new)
            return

    # ----------------------------------------------------------------- requests
    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> asyncio.Future[HttpResult]:
        """Send a request now; the returned future resolves to an HttpResult (never raises).
        `headers` are extra request headers (a few distinct sets: each is cached)."""
        key = (method, path, content_type, headers)
        prefix = self._prefixes.get(key)
        if prefix is None:
            extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
            prefix = (
                f"{method} {path} HTTP/1.1\r\n".encode()
                + self._host_header
                + f"{extra}Content-Type: {content_type}\r\nContent-Length: ".encode()
            )
            self._prefixes[key] = prefix
        return self._send(prefix + str(len(body)).encode() + b"\r\n\r\n" + body)

    def post_json(self, path: str, body: bytes) -> asyncio.Future[HttpResult]:
        """POST `body` (already-encoded JSON) to `path`; returns a future of HttpResult."""
        return self.request("POST", path, body)

    def get(self, path: str) -> asyncio.Future[HttpResult]:
        return self.request("GET", path)

    def _send(self, data: bytes) -> asyncio.Future[HttpResult]:
        loop = self._loop
        if loop is None:
            raise RuntimeError("HttpLoadClient: call `await client.start()` before sending")
        future = loop.create_future()
        if self._closed:
            future.set_result(HttpResult(0, b"", "client: closed"))
            return future
        conn = None
        idle = self._idle
        while idle:
            candidate = idle.pop()
            if not candidate.lost and not candidate.pending:
                conn = candidate
                break
        if conn is None:
            conn = self._pick_busy()
            if conn is None:
                if self.open_connections:
                    error = (
                        f"client: in-flight limit reached ({self._in_flight} requests on "
                        f"{self.connections} connections, max_pipeline={self.max_pipeline})"
                    )
                else:
                    error = "client: no open connection (reconnecting)"
                future.set_result(HttpResult(0, b"", error))
                return future
        try:
            conn.transport.write(data)
        except (OSError, RuntimeError) as exc:  # the transport closed under us
            conn._retire()
            future.set_result(HttpResult(0, b"", f"connection lost: {exc}"))
            return future
        conn.pending.append(future)
        self._in_flight += 1
        return future

    def _pick_busy(self) -> _Connection | None:
        pool = self._pool
        n = len(pool)
        limit = self.max_pipeline
        for _ in range(n):
            self._next = (self._next + 1) % n
            conn = pool[self._next]
            if not conn.lost and len(conn.pending) < limit:
                return conn
        return None

    async def close(self) -> None:
        """Close every connection; requests still in flight complete as failures."""
        self._closed = True
        for task in list(self._reconnects):
            task.cancel()
        for conn in self._pool:
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)  # let connection_lost callbacks run
        for conn in self._pool:
            while conn.pending:
                future = conn.pending.popleft()
                self._in_flight -= 1
                if not future.done():
                    future.set_result(HttpResult(0, b"", "client: closed"))
        self._idle.clear()
