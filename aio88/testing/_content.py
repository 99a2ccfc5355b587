"""The video every finished task serves: its bytes, digest and ETag, ``Range`` requests
(206, 416, ``If-Range``), HEAD, and cutting a body short."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Iterable
from importlib import resources
from typing import NoReturn

from aiohttp import web

__all__ = [
    "PATTERN_BLOCK",
    "TRUNCATE_PAUSE",
    "WRITE_CHUNK",
    "ConnectionCut",
    "Content",
    "drop",
    "etag_for",
    "parse_range",
    "send_content",
    "send_truncated",
]

TRUNCATE_PAUSE = 0.1
"""How long a truncated video body pauses before its connection is dropped."""
WRITE_CHUNK = 1024 * 1024
"""Bytes per write when serving content: large enough to keep loopback fast."""
PATTERN_BLOCK = 64 * 1024
"""Length of the block that deterministic content repeats."""


class ConnectionCut(Exception):
    """Raised inside a handler once it has closed the connection: nothing more to send."""


class Content:
    """The file every finished task serves: given bytes, the bundled sample MP4, or
    ``size`` deterministic bytes (a seeded block repeated, never held in memory whole).

    Args:
        data: The bytes to serve; ``None`` (with no ``size``) serves the sample MP4.
        size: Serve this many deterministic bytes instead.
        seed: Seeds the deterministic bytes.
    """

    def __init__(self, data: bytes | None, size: int | None, seed: int) -> None:
        if data is not None and size is not None:
            raise ValueError("pass content or content_size, not both")
        self._data = data
        self._size = size
        self._block = random.Random(seed).randbytes(PATTERN_BLOCK) if size is not None else b""
        self._sha256: str | None = None
        self._pattern: bytes | None = None

    @property
    def length(self) -> int:
        """The size of the file, in bytes."""
        if self._size is not None:
            return self._size
        return len(self._bytes())

    @property
    def sha256(self) -> str:
        """The hex SHA-256 of the file (computed once)."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            for chunk in self.chunks(0, self.length):
                digest.update(chunk)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def _bytes(self) -> bytes:
        # Read on first use: most emulators never serve a file.
        if self._data is None:
            self._data = (resources.files(__package__) / "sample.mp4").read_bytes()
        return self._data

    def chunks(self, start: int, end: int) -> Iterable[bytes | memoryview]:
        """The file's bytes ``[start, end)``, in chunks of at most :data:`WRITE_CHUNK`."""
        if self._size is None:
            data = memoryview(self._bytes())
            for offset in range(start, end, WRITE_CHUNK):
                yield data[offset : min(end, offset + WRITE_CHUNK)]
            return
        # One buffer of whole blocks plus a spare block, made once; each chunk is a
        # zero-copy slice of it at the right phase, so serving 1 GiB allocates nothing.
        view = memoryview(self._pattern_buffer())
        offset = start
        while offset < end:
            phase = offset % PATTERN_BLOCK
            n = min(end - offset, WRITE_CHUNK)
            yield view[phase : phase + n]
            offset += n

    def _pattern_buffer(self) -> bytes:
        if self._pattern is None:
            self._pattern = self._block * (WRITE_CHUNK // PATTERN_BLOCK + 1)
        return self._pattern


def etag_for(seed: int, length: int) -> str:
    """The strong ETag of the content an emulator with ``seed`` serves."""
    return f'"emu-{seed}-{length}"'


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` into ``[start, end)``.

    Returns ``None`` when the range cannot be satisfied (the caller answers 416).
    """
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None  # several ranges would need multipart/byteranges: not offered
    first, _, last = spec.strip().partition("-")
    try:
        if not first:
            n = int(last)
            return (max(0, size - n), size) if n > 0 and size else None
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size or start >= end:
        return None
    return start, min(end, size)


def drop(request: web.Request) -> None:
    """Close the request's connection without a word."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def send_truncated(request: web.Request, response: web.Response) -> NoReturn:
    """Send ``response``'s head and half its body, then close the connection.

    Raises:
        ConnectionCut: always, once the connection is closed.
    """
    body = response.body
    assert isinstance(body, bytes)
    stream = web.StreamResponse(status=response.status, headers=response.headers)
    stream.content_length = len(body)  # promise it all, so the cut is visible
    await stream.prepare(request)
    await stream.write(body[: len(body) // 2])
    drop(request)
    raise ConnectionCut


async def send_content(
    request: web.Request,
    content: Content,
    *,
    etag: str,
    honor_range: bool,
    truncate: bool,
) -> web.StreamResponse:
    """Serve ``content`` for a GET or HEAD: 200, 206 for a ``Range`` (when ``honor_range``
    and any ``If-Range`` matches ``etag``), 416 for a range past the end.

    ``truncate``: send half of what is promised, then close the connection.

    Raises:
        ConnectionCut: when truncated, once the connection is closed.
    """
    size = content.length
    start, end = 0, size
    status = 200
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    # A stale If-Range means the client's part is of another file: send it all.
    if range_header and honor_range and (if_range is None or if_range == etag):
        parsed = parse_range(range_header, size)
        if parsed is None:
            return web.Response(
                status=416, headers={"Content-Range": f"bytes */{size}", "ETag": etag}
            )
        start, end = parsed
        status = 206
    response = web.StreamResponse(status=status)
    response.content_type = "video/mp4"
    response.content_length = end - start
    response.headers["ETag"] = etag
    response.headers["Accept-Ranges"] = "bytes" if honor_range else "none"
    response.headers["Content-Disposition"] = 'attachment; filename="video.mp4"'
    if status == 206:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    stop = start + (end - start) // 2 if truncate else end
    for chunk in content.chunks(start, stop):
        await response.write(chunk)
    if truncate:
        # A real connection dies a moment after its last bytes, not in the same
        # instant: the client gets to read them (and keep them in its .part).
        await asyncio.sleep(TRUNCATE_PAUSE)
        drop(request)
        raise ConnectionCut
    await response.write_eof()
    return response
