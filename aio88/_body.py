"""The download fast path: a GET whose body goes from the socket straight into a few large
buffers, for the download's writer thread (:mod:`aio88._writer`) to append to the file.

aiohttp hands a body over as many small ``bytes`` objects, copied on their way through its
parser and joined again into chunks; at hundreds of MB/s that copying, not the network, is
the cost (0.7x curl here). This module reads the socket *into* preallocated buffers
(:class:`asyncio.BufferedProtocol`): each is handed to the writer when full and reused once
written. No copy is made in Python, and memory stays at three buffers whatever the file's
size (reading pauses while the disk catches up).

Only plain responses take this path: a body framed by ``Content-Length`` or by the close
of the connection, without content coding. For anything else (a chunked or compressed
video, a 1xx) :func:`open_body` raises :class:`UnusualResponse` before the body, and the
caller asks aiohttp instead. Every request has its own connection, closed at the end: a
download is long enough for a handshake to be noise, and no half-read connection is ever
pooled. Redirects and retries are the caller's (:meth:`aio88._http.Transport.open_body`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping

import anyio
from yarl import URL

from ._errors import APIConnectionError, APITimeoutError
from ._fastget import (
    Headers,
    UnusualResponse,
    body_framing,
    connect,
    decode_chunked,
    host_header,
    parse_head,
)

__all__ = ["FastBody", "open_body"]

#: The most a response head may take.
_MAX_HEAD = 64 * 1024
#: Buffers per download: one being written, one full and waiting, one being filled.
_BUFFERS = 3


class FastBody(asyncio.BufferedProtocol):
    """One response on its own connection: the head, then the body in large blocks.

    Use :meth:`next_block` for each filled block (a ``memoryview``), then hand it back
    with :meth:`recycle` once written, so that its buffer takes more of the body.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, buffer_size: int) -> None:
        self._loop = loop
        self._size = max(buffer_size, _MAX_HEAD)
        self._buffer: bytearray | None = bytearray(self._size)
        self._filled = 0
        self._free: list[bytearray] = []
        self._allocated = 1
        self._ready: deque[memoryview] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._head: asyncio.Future[None] = loop.create_future()
        self._in_body = False
        self._length = -1
        self._chunked = False
        self._ended = False
        self._error: APIConnectionError | None = None
        self._paused = False
        self._transport: asyncio.Transport | None = None
        #: The status code, once the head has arrived.
        self.status = 0
        #: The response headers (names in lower case, lookups in any case).
        self.headers = Headers()
        #: Body bytes received so far (written or not).
        self.received = 0

    # -- what the downloader reads --

    @property
    def content_type(self) -> str:
        """The media type, lower-cased, without parameters (``""`` when absent)."""
        return self.headers.value("content-type").split(";", 1)[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        """The body's length, when the server said."""
        return self._length if self._length >= 0 else None

    async def next_block(self) -> memoryview | None:
        """The next filled block of the body, or None at its end.

        Raises:
            APIConnectionError: The connection closed before the whole body arrived
                (after every block that did arrive has been handed out).
        """
        while not self._ready:
            if self._ended:
                if self._error is not None:
                    raise self._error
                return None
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._ready.popleft()

    def recycle(self, block: memoryview) -> None:
        """Take back a block once written; reading goes on if it was waiting for one."""
        buffer = block.obj
        block.release()
        assert isinstance(buffer, bytearray)
        self._free.append(buffer)
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def leftovers(self) -> list[memoryview]:
        """What arrived but was not handed out (when a download stops early), in order:
        written to the ``.part``, so that a resume does not fetch it again. Closes the
        connection: nothing more may land in a buffer being written."""
        self.close()
        blocks = list(self._ready)
        self._ready.clear()
        if self._in_body and self._filled and self.status < 300 and self._buffer is not None:
            blocks.append(memoryview(self._buffer)[: self._filled])
            self._filled = 0
            self._buffer = None
        return blocks

    async def read_small_body(self, limit: int, timeout: float | None) -> bytes:
        """The body of an error answer: at most ``limit`` bytes, or what came within
        ``timeout`` seconds; then close."""
        with anyio.move_on_after(timeout):
            while not self._ended and self._filled < limit:
                waiter = self._waiter = self._loop.create_future()
                try:
                    await waiter
                finally:
                    self._waiter = None
        data = bytes((self._buffer or b"")[: self._filled])
        self.close()
        if self._chunked:
            return decode_chunked(data, 0) or b""
        return data[:limit]

    def close(self) -> None:
        """Close the connection (at once: nothing more of it is wanted)."""
        if not self._head.done():
            self._head.cancel()  # nobody waits for it any more
        if self._transport is not None:
            self._transport.abort()
            self._transport = None

    # -- asyncio.BufferedProtocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        buffer = self._buffer
        if buffer is None:
            # Reading was paused for want of a buffer, yet more came (TLS may read ahead).
            buffer = self._buffer = self._take_buffer()
        return memoryview(buffer)[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._ended:
            return  # bytes after the body (there should be none): ignored
        if not self._in_body:
            self._filled += nbytes
            self._read_head()
            return
        self.received += nbytes
        self._filled += nbytes
        if self._length >= 0 and self.received >= self._length:
            extra = self.received - self._length
            self._filled -= extra
            self.received = self._length
            self._end(None)
        elif self.status >= 300:
            self._take_small_body()
        elif self._filled == len(self._buffer or b""):
            self._hand_over()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost says how the body ended

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self._head.done():
            self._head.set_exception(
                APIConnectionError("the server closed the connection without answering")
            )
            return
        if self._ended:
            return
        if self._length < 0 and not self._chunked:
            self._end(None)  # a body delimited by the close itself
        else:
            self._end(
                APIConnectionError(
                    f"the server closed the connection mid-body, after {self.received} of "
                    f"{self._length} bytes"
                    if self._length >= 0
                    else "the server closed the connection mid-body"
                )
            )

    # -- inside --

    def _read_head(self) -> None:
        assert self._buffer is not None
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n", 0, self._filled)
        if end < 0 and self._filled < _MAX_HEAD:
            return  # more to come
        if end < 0 or end > _MAX_HEAD:
            self._fail_head(UnusualResponse("response headers too large"))
            return
        try:
            self.status, self.headers = parse_head(bytes(buffer[:end]))
            self._length, self._chunked = body_framing(self.status, self.headers)
        except UnusualResponse as exc:
            self._fail_head(exc)
            return
        if self.status < 200:
            self._fail_head(UnusualResponse(f"informational answer {self.status}"))
            return
        if self.status < 300:
            coding = self.headers.value("content-encoding").lower()
            if self._chunked or coding not in ("", "identity"):
                self._fail_head(UnusualResponse("a chunked or encoded body"))
                return
        # What came with the head is the start of the body: move it to the front.
        start = end + 4
        leftover = self._filled - start
        buffer[:leftover] = buffer[start : self._filled]
        self._filled = 0
        self._in_body = True
        self._head.set_result(None)
        if leftover or self._length == 0:
            self.buffer_updated(leftover)

    def _fail_head(self, exc: Exception) -> None:
        if not self._head.done():
            self._head.set_exception(exc)
        self.close()

    def _take_buffer(self) -> bytearray:
        if self._free:
            return self._free.pop()
        self._allocated += 1
        return bytearray(self._size)

    def _hand_over(self) -> None:
        """The buffer is full: queue it for the writer and go on in a free one."""
        assert self._buffer is not None
        self._ready.append(memoryview(self._buffer)[: self._filled])
        self._filled = 0
        if self._free or self._allocated < _BUFFERS:
            self._buffer = self._take_buffer()
        else:
            # The disk is behind: stop reading until the writer gives a buffer back.
            self._buffer = None
            if self._transport is not None and not self._paused:
                self._paused = True
                self._transport.pause_reading()
        self._wake()

    def _end(self, error: APIConnectionError | None) -> None:
        self._ended = True
        self._error = error
        if self._filled and self.status < 300:
            assert self._buffer is not None
            self._ready.append(memoryview(self._buffer)[: self._filled])
            self._filled = 0
        if self._transport is not None and self._length >= 0:
            self.close()  # the whole body is here; the server need not be waited for
        self._wake()

    def _take_small_body(self) -> None:
        """An error or redirect body: kept whole in the first buffer for its message."""
        assert self._buffer is not None
        if self._chunked and decode_chunked(self._buffer[: self._filled], 0) is not None:
            self._end(None)
            return
        if self._filled == len(self._buffer) and self._transport is not None:
            self._paused = True  # longer than anyone reads: the rest is not wanted
            self._transport.pause_reading()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _host_header(url: URL) -> str:
    assert url.raw_host is not None and url.port is not None
    return host_header(url.raw_host, url.port, 443 if url.scheme == "https" else 80)


async def open_body(
    url: URL,
    headers: Mapping[str, str],
    *,
    ssl_context: ssl.SSLContext | None,
    connect_timeout: float | None,
    head_timeout: float | None,
    buffer_size: int,
) -> FastBody:
    """Send ``GET url`` on a new connection; return once the response head has arrived.

    ``ssl_context`` is for an https URL (None for http).

    Raises:
        APIConnectionError: Connecting failed (``request_sent=False``), or the connection
            closed before an answer.
        APITimeoutError: Connecting or the head took too long.
        UnusualResponse: The answer is one for aiohttp (see the module's docstring).
    """
    loop = asyncio.get_running_loop()
    host, port = url.raw_host, url.port
    assert host is not None and port is not None
    body = await connect(
        lambda: FastBody(loop, buffer_size),
        host,
        port,
        ssl_context,
        connect_timeout,
        f"GET {url.path}",
    )
    lines = [f"GET {url.raw_path_qs} HTTP/1.1", f"Host: {_host_header(url)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += ["Connection: close", "", ""]
    try:
        assert body._transport is not None
        body._transport.write("\r\n".join(lines).encode("latin-1"))
        await asyncio.wait_for(body._head, head_timeout)
    except (TimeoutError, asyncio.TimeoutError) as exc:
        body.close()
        raise APITimeoutError(f"GET {url.path}: no answer within {head_timeout:g}s") from exc
    except BaseException:
        body.close()
        raise
    return body
