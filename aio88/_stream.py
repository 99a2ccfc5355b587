"""A finished video's bytes as they arrive (:class:`VideoContent`): ``async for`` over
``client.videos.content(id)``, with errors in aio88's tree and an optional resume."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import anyio

from ._config import DOWNLOAD_BLOCK_SIZE, RetryPolicy
from ._errors import APIConnectionError
from ._failures import TRANSPORT_ERRORS, translate
from ._retry import backoff_delay

__all__ = ["VideoContent"]


class VideoContent:
    """A finished video's bytes as they arrive: ``async for chunk in content``.

    A broken or stalled connection raises :class:`APIConnectionError` (or
    :class:`APITimeoutError`) saying how many bytes had arrived, or, when the stream was
    opened with ``resume=True``, is continued from there with a ``Range`` request: the
    chunks go on as if nothing happened.

    Attributes:
        status: The HTTP status (200, or 206 for a range).
        headers: The response headers.
        received: Bytes of the body handed out so far.
    """

    #: The chunk size of ``async for``.
    CHUNK_SIZE = DOWNLOAD_BLOCK_SIZE

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        *,
        reopen: Callable[[int, str | None], Awaitable[aiohttp.ClientResponse]] | None,
        policy: RetryPolicy,
        read_timeout: float | None,
    ) -> None:
        self._response = response
        self._reopen = reopen
        self._policy = policy
        self._read_timeout = read_timeout
        self._what = f"GET {response.url.path}"
        self.status = response.status
        self.headers = response.headers
        self.received = 0
        self._length = response.content_length if response.status != 206 else None
        # If-Range takes a strong ETag only (a weak one always gets the whole file back).
        etag = response.headers.get("ETag")
        strong = etag if etag and not etag.startswith("W/") else None
        self._validator = strong or response.headers.get("Last-Modified")

    @property
    def content_type(self) -> str:
        """The media type, e.g. ``"video/mp4"``."""
        return self._response.content_type

    @property
    def content_length(self) -> int | None:
        """The body's length in bytes, when the server said."""
        return self._length

    async def iter_chunks(self, size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """Iterate over the body in chunks of at most ``size`` bytes.

        Raises:
            APIConnectionError: The connection broke or stalled (and was not resumed).
        """
        failures = 0
        while True:
            try:
                # aiohttp's own read timer covers a silent server; this one also covers a
                # body its parser gave up on without a word (a malformed chunk).
                with anyio.fail_after(self._read_timeout):
                    chunk = await self._response.content.read(size)
            except TRANSPORT_ERRORS as exc:
                failures += 1
                await self._resume(exc, failures)
                continue
            if not chunk:
                return
            failures = 0
            self.received += len(chunk)
            yield chunk

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.iter_chunks()

    async def read(self) -> bytes:
        """Read the whole body into memory (small files only; prefer ``download``)."""
        return b"".join([chunk async for chunk in self.iter_chunks()])

    def release(self) -> None:
        """Give the connection back (``async with`` does it for you)."""
        self._response.release()

    async def _resume(self, exc: BaseException, failures: int) -> None:
        """Continue the body from ``received`` on a new response, or raise why not."""
        error = translate(exc, self._what)
        cut = type(error)  # a stall stays an APITimeoutError
        got = f"after {self.received:,} bytes"
        if self._reopen is None:
            raise cut(
                f"{error.message}: the stream was cut {got}; open it with resume=True to "
                "continue it, or save the file with download(), which resumes by itself"
            ) from exc
        if failures >= self._policy.attempts:
            raise cut(
                f"{error.message}: the stream was cut {got} and could not be resumed "
                f"({failures} tries)"
            ) from exc
        self._response.close()
        await anyio.sleep(backoff_delay(failures - 1, self._policy))
        response = await self._reopen(self.received, self._validator)
        start, _, total = (response.headers.get("Content-Range") or "").partition("/")
        why = None
        if response.status != 206 or start.removeprefix("bytes ").split("-")[0] != str(
            self.received
        ):
            why = f"it answered HTTP {response.status} to a Range request"
        elif self._length is not None and total != str(self._length):
            why = f"the file changed on the server ({total} bytes instead of {self._length})"
        if why is not None:
            response.release()
            raise APIConnectionError(
                f"{self._what}: the stream was cut {got}, and the server cannot continue it "
                f"({why}); start again, or use download(), which restarts cleanly"
            ) from exc
        self._response = response
