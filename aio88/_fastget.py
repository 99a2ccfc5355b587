"""The poll fast path: keep-alive HTTP/1.1 GETs to the API's own origin, and nothing else.

A poll is the same tiny request, thousands of times: ``GET /v1/videos/{id}`` with fixed
headers, answered by a small JSON body. A general HTTP client spends most of its time on
what a poll never needs (cookie jars, redirects, tracing, request objects, two or three
timers per request). This module sends such GETs over pooled connections with the
request bytes prepared once and one timer sweep for all requests, and hands back status,
headers and body. Anything unusual (a redirect, a protocol surprise) is the caller's cue
to use aiohttp instead; creates, downloads and other origins always use aiohttp.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from typing import TypeVar

from ._errors import APIConnectionError, APITimeoutError

__all__ = [
    "FastGetPool",
    "Headers",
    "UnusualResponse",
    "body_framing",
    "connect",
    "decode_chunked",
    "host_header",
    "parse_head",
]

_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 2**20


class UnusualResponse(Exception):
    """Something the fast path does not handle (a redirect, an unknown framing)."""


class Headers(dict[str, str]):
    """Response headers with case-insensitive lookups (names are stored lower-case)."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        """The header's value, whatever the case of ``key``."""
        return dict.get(self, key.lower(), default)

    def value(self, key: str) -> str:
        """The header's value, or ``""`` when absent."""
        return dict.get(self, key.lower(), "")

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


def parse_head(head: bytes) -> tuple[int, Headers]:
    """The status and headers of a response head (without its final blank line)."""
    lines = head.split(b"\r\n")
    try:
        _, code, *_ = lines[0].split(b" ", 2)
        status = int(code)
    except ValueError:
        raise UnusualResponse(f"bad status line {lines[0][:80]!r}") from None
    headers = Headers()
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return status, headers


def body_framing(status: int, headers: Headers) -> tuple[int, bool]:
    """How the body ends: (its length, or -1 for "at the close"; whether it is chunked)."""
    if "chunked" in headers.value("transfer-encoding").lower():
        return -1, True
    if "content-length" in headers:
        try:
            return int(headers["content-length"]), False
        except ValueError:
            raise UnusualResponse("bad Content-Length") from None
    if status in (204, 304) or 100 <= status < 200:
        return 0, False
    return -1, False


def decode_chunked(buffer: bytes | bytearray, pos: int) -> bytes | None:
    """The body of a chunked message starting at ``pos``; None while it is incomplete."""
    body = bytearray()
    while True:
        end = buffer.find(b"\r\n", pos)
        if end < 0:
            return None
        try:
            size = int(bytes(buffer[pos:end]).split(b";")[0], 16)
        except ValueError:
            raise UnusualResponse("bad chunk size") from None
        if size == 0:
            if buffer.find(b"\r\n", end + 2) < 0:
                return None  # trailers not complete yet
            return bytes(body)
        if len(buffer) < end + 2 + size + 2:
            return None
        body += buffer[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


def host_header(host: str, port: int, default_port: int) -> str:
    """The ``Host`` header's value: the port only when not the scheme's default; an IPv6
    literal in brackets."""
    if ":" in host:
        host = f"[{host}]"
    return host if port == default_port else f"{host}:{port}"


_P = TypeVar("_P", bound=asyncio.BaseProtocol)


async def connect(
    factory: Callable[[], _P],
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    timeout: float | None,
    what: str,
) -> _P:
    """Open a connection for ``factory``'s protocol, failing in aio88's own words.

    Raises:
        APITimeoutError: Not connected within ``timeout`` (``request_sent=False``).
        APIConnectionError: Refused, unreachable or unresolvable (``request_sent=False``).
    """
    loop = asyncio.get_running_loop()
    try:
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                factory,
                host,
                port,
                ssl=ssl_context,
                server_hostname=host if ssl_context is not None else None,
            ),
            timeout,
        )
    except (TimeoutError, asyncio.TimeoutError) as exc:
        raise APITimeoutError(
            f"{what}: timed out connecting to {host}:{port}", request_sent=False
        ) from exc
    except OSError as exc:
        raise APIConnectionError(
            f"{what}: cannot connect to {host}:{port} ({exc.strerror or exc})",
            request_sent=False,
        ) from exc
    return protocol


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    __slots__ = (
        "_body_start",
        "_buffer",
        "_chunked",
        "_head",
        "_length",
        "_waiter",
        "closed",
        "started",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.started = 0.0
        self._waiter: asyncio.Future[tuple[int, Headers, bytes, bool]] | None = None
        self._reset()

    def _reset(self) -> None:
        self._buffer = bytearray()
        self._head: tuple[int, Headers] | None = None
        self._length = -1
        self._chunked = False
        self._body_start = 0

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._head is not None and self._length < 0 and not self._chunked:
                self._finish(keep_alive=False)  # a body delimited by the close itself
            else:
                waiter.set_exception(
                    APIConnectionError("the server closed the connection mid-response")
                )

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0 or end > _MAX_HEAD:
                if len(buffer) > _MAX_HEAD:
                    self._fail(UnusualResponse("response headers too large"))
                return
            self._parse_head(bytes(buffer[:end]))
            self._body_start = end + 4
            if self._waiter is None or self._waiter.done():
                return
        if self._chunked:
            self._try_chunked()
        elif self._length >= 0 and len(buffer) - self._body_start >= self._length:
            self._finish(keep_alive=True)

    # -- parsing --

    def _parse_head(self, head: bytes) -> None:
        try:
            status, headers = parse_head(head)
        except UnusualResponse as exc:
            self._fail(exc)
            return
        self._head = (status, headers)
        if 300 <= status < 400:
            self._fail(UnusualResponse(f"redirect {status}"))
            return
        try:
            self._length, self._chunked = body_framing(status, headers)
        except UnusualResponse as exc:
            self._fail(exc)
            return
        if self._length > _MAX_BODY:
            self._fail(UnusualResponse("body too large for a poll"))

    def _try_chunked(self) -> None:
        try:
            body = decode_chunked(self._buffer, self._body_start)
        except UnusualResponse as exc:
            self._fail(exc)
            return
        if body is not None:
            self._finish(keep_alive=True, body=body)

    def _finish(self, *, keep_alive: bool, body: bytes | None = None) -> None:
        assert self._head is not None
        status, headers = self._head
        if body is None:
            start = self._body_start
            end = start + self._length if self._length >= 0 else len(self._buffer)
            body = bytes(self._buffer[start:end])
        if headers.value("connection").lower() == "close":
            keep_alive = False
        waiter = self._waiter
        self._reset()
        if waiter is not None and not waiter.done():
            waiter.set_result((status, headers, body, keep_alive and not self.closed))

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.abort()

    def abort(self) -> None:
        """Close the connection at once."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- requests --

    def send(
        self, request: bytes, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[tuple[int, Headers, bytes, bool]]:
        """Write a request; the future resolves with (status, headers, body, reusable)."""
        assert self.transport is not None
        self._reset()
        waiter = self._waiter = loop.create_future()
        self.started = loop.time()
        self.transport.write(request)
        return waiter


class FastGetPool:
    """Keep-alive connections to one origin, for small GETs.

    Args:
        host: The origin's host.
        port: Its port.
        use_tls: Whether it is https.
        prefix: The path prefix of the base URL (``""`` for a bare origin).
        headers: Headers for every request (Authorization included), in order.
        connect_timeout: Seconds to establish a connection.
        total_timeout: Seconds a request may take in all; checked by one periodic sweep
            (at most every second) rather than a timer per request.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        use_tls: bool,
        prefix: str,
        headers: Mapping[str, str],
        connect_timeout: float | None,
        total_timeout: float | None,
    ) -> None:
        self.host = host
        self.port = port
        self._ssl = ssl.create_default_context() if use_tls else None
        lines = [f"Host: {host_header(host, port, 443 if use_tls else 80)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self._tail = ("\r\n".join(["", *lines]) + "\r\n\r\n").encode("latin-1")
        self._prefix = prefix.encode()
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._connect_timeout = connect_timeout
        self._total_timeout = total_timeout
        self._sweeper: asyncio.TimerHandle | None = None
        # One sweep for all requests, often enough for the timeout to fire on time.
        self._sweep_every = min(1.0, total_timeout / 2) if total_timeout else 1.0
        self._closed = False

    async def get(self, path_and_query: str) -> tuple[int, Headers, bytes]:
        """GET ``prefix + path_and_query``; return (status, headers, body).

        Raises:
            APIConnectionError: Connecting failed (``request_sent=False``) or the
                connection broke mid-response.
            APITimeoutError: The request took longer than the total timeout.
            UnusualResponse: The answer needs a full HTTP client (e.g. a redirect).
        """
        loop = asyncio.get_running_loop()
        request = b"GET " + self._prefix + path_and_query.encode() + b" HTTP/1.1" + self._tail
        conn = await self._acquire(loop)
        self._busy.add(conn)
        try:
            status, headers, body, reusable = await conn.send(request, loop)
        except BaseException:
            conn.abort()
            raise
        finally:
            self._busy.discard(conn)
        if reusable and not self._closed:
            self._idle.append(conn)
        else:
            conn.abort()
        return status, headers, body

    async def _acquire(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        idle = self._idle
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if not conn.closed and transport is not None and not transport.is_closing():
                return conn
        if self._closed:
            raise APIConnectionError("the client is closed", request_sent=False)
        if self._sweeper is None and self._total_timeout is not None:
            self._sweeper = loop.call_later(self._sweep_every, self._sweep, loop)
        return await connect(
            _Connection, self.host, self.port, self._ssl, self._connect_timeout, "GET"
        )

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail requests older than the total timeout; one timer for the whole pool."""
        self._sweeper = None
        if self._closed:
            return
        limit = self._total_timeout
        assert limit is not None
        now = loop.time()
        for conn in list(self._busy):
            waiter = conn._waiter
            if waiter is not None and not waiter.done() and now - conn.started > limit:
                waiter.set_exception(APITimeoutError(f"GET: no answer within {limit:g}s"))
                conn.abort()
        if self._busy or self._idle:
            self._sweeper = loop.call_later(self._sweep_every, self._sweep, loop)

    def close(self) -> None:
        """Close every connection."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in [*self._idle, *self._busy]:
            conn.abort()
        self._idle.clear()
