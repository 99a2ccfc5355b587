"""Reading bodies: a download's, in blocks for the writer thread (:class:`Body`), and
an error's or a message's, short and bounded in time (:func:`read_limited`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import aiohttp
import anyio

from ._config import MESSAGE_EXCERPT_LIMIT
from ._errors import APIConnectionError, DownloadError
from ._failures import TRANSPORT_ERRORS, translate
from ._models import redact_text

__all__ = ["NOT_VIDEO_TYPES", "Body", "read_limited", "refuse_message"]

#: Content types that mean "a message" (an error, a page), not a video.
NOT_VIDEO_TYPES = ("application/json", "text/", "application/problem+json")


class Body:
    """A download's response, body not read yet: read it in blocks with :meth:`next_block`."""

    def __init__(self, response: aiohttp.ClientResponse, block_size: int) -> None:
        self._response = response
        #: The most aiohttp holds before it pauses reading the socket (half its buffer).
        self.block_size = block_size
        self._what = f"GET {response.url.path}"
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers
        self.content_type = response.content_type
        #: Whether the body came compressed (although ``identity`` was asked for): its
        #: Content-Length then says nothing, and a Range would count other bytes.
        self.encoded = response.headers.get("Content-Encoding", "identity") not in (
            "",
            "identity",
        )
        self.content_length = None if self.encoded else response.content_length
        #: Body bytes received so far.
        self.received = 0
        self._pieces: list[bytes] = []
        self._failure: APIConnectionError | None = None

    async def next_block(self) -> list[bytes] | None:
        """The next block of the body, or None at its end: the pieces aiohttp received,
        about ``block_size`` bytes of them (less at the end of the body).

        The pieces are collected, never joined: joining them was a copy of the whole body,
        12 % of a download's time at 1 GB/s. And they go to the writer thread in large
        blocks: a hand-over per piece (64-256 KiB) made the two threads trade the GIL so
        often that throughput halved. Pieces of a block cut short by a cancellation stay
        in :meth:`leftovers`.

        Raises:
            APIConnectionError: The connection broke (or the body was cut short); pieces
                received before are returned first, so that they reach the ``.part``.
        """
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        content = self._response.content
        pieces = self._pieces
        size = 0
        try:
            while size < self.block_size:
                piece, end_of_http_chunk = await content.readchunk()
                if piece:
                    pieces.append(piece)
                    size += len(piece)
                    self.received += len(piece)
                elif not end_of_http_chunk:
                    break  # the end of the body (an empty piece that ends a chunk is not)
        except TRANSPORT_ERRORS as exc:
            failure = translate(exc, self._what)
            failure.__cause__ = exc
            if not pieces:
                raise failure from exc
            self._failure = failure  # raised on the next call, after these are kept
        return self.leftovers() or None

    def leftovers(self) -> list[bytes]:
        """The pieces received and not handed out yet (and forget them)."""
        pieces, self._pieces = self._pieces, []
        return pieces

    async def refuse_message(self, where: str, timeout: float | None, dest: Path) -> None:
        """Raise :class:`DownloadError` if the body is a message, not a video
        (see :func:`refuse_message`)."""
        await refuse_message(self._response, where, timeout, dest)


async def read_limited(content: aiohttp.StreamReader, limit: int, timeout: float | None) -> bytes:
    """Up to ``limit`` bytes of a body that should be small (an error message, a
    callback): what arrives within ``timeout`` seconds (``None``: no limit), and never a
    whole video. ``content`` is a response's or a server request's body stream."""
    data = b""
    with anyio.move_on_after(timeout):
        try:
            while len(data) < limit:
                chunk = await content.read(limit - len(data))
                if not chunk:
                    break
                data += chunk
        except TRANSPORT_ERRORS:
            pass
    return data


async def refuse_message(
    response: aiohttp.ClientResponse, where: str, timeout: float | None, dest: Path | None = None
) -> None:
    """Raise :class:`DownloadError` with the server's words when ``response`` is a message
    (JSON, text) where a video was expected; return when it is not."""
    if not response.content_type.startswith(NOT_VIDEO_TYPES):
        return
    text = await read_limited(response.content, MESSAGE_EXCERPT_LIMIT, timeout)
    raise DownloadError(
        f"expected a video from {where} but got {response.content_type}: "
        f"{redact_text(text.decode('utf-8', 'replace'))!r}",
        path=dest,
        status_code=response.status,
    )
