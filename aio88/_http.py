"""The single request path: auth, timeouts, pacing, retries and error translation.

Every request the client makes goes through :class:`Transport`. It decides nothing about
*what* to send; it makes sure each request carries the credentials only to the API's own
origin, waits its turn in the shared rate budget, is retried only when that is safe, and
fails with an exception from :mod:`aio88._errors`, never a raw aiohttp one.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from urllib.parse import urlencode

import aiohttp
import anyio
from yarl import URL

from ._body import FastBody, open_body
from ._config import RetryPolicy, Timeouts
from ._errors import (
    APIConnectionError,
    APITimeoutError,
    make_status_error,
    request_id_from,
)
from ._fastget import FastGetPool, UnusualResponse
from ._retry import AdaptiveRate, backoff_delay, parse_retry_after, retry_delay, should_retry
from ._version import __version__

__all__ = ["AiohttpBody", "Body", "Response", "Transport"]

log = logging.getLogger("aio88")

USER_AGENT = (
    f"aio88/{__version__} aiohttp/{aiohttp.__version__} "
    f"{platform.python_implementation()}/{platform.python_version()}"
)

#: How much of an error body is read: enough for any JSON error, never a whole video.
ERROR_BODY_LIMIT = 64 * 1024


class Response:
    """A finished API response: status, headers and the whole (small) body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def request_id(self) -> str | None:
        """The server's request id, when it sent one."""
        return request_id_from(self.headers)


def translate(exc: BaseException, what: str) -> APIConnectionError:
    """Turn an aiohttp or timeout exception into aio88's, saying whether the request left.

    ``what`` names the request ("GET /v1/videos/x") for the message. This is the one place
    aiohttp's exceptions are mapped; callers ``raise translate(exc, what) from exc``.
    """
    if isinstance(exc, APIConnectionError):
        return exc  # the fast path raises aio88's own errors already
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return APITimeoutError(f"{what}: timed out connecting to the server", request_sent=False)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return APITimeoutError(f"{what}: timed out waiting for the server")
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or str(exc.os_error)
        return APIConnectionError(
            f"{what}: cannot connect to {exc.host}:{exc.port} ({reason})", request_sent=False
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return APIConnectionError(f"{what}: the server closed the connection mid-response")
    return APIConnectionError(f"{what}: {type(exc).__name__}: {exc}")


_TRANSPORT_ERRORS = (
    aiohttp.ClientError,
    TimeoutError,
    asyncio.TimeoutError,
    OSError,
    APIConnectionError,
)


#: How many redirects a download follows.
MAX_REDIRECTS = 10


class AiohttpBody:
    """A download's body read through aiohttp: the fallback to :class:`FastBody`, with the
    same interface (used with a caller's own session, or for a chunked or encoded body)."""

    def __init__(self, response: aiohttp.ClientResponse, block_size: int) -> None:
        self._response = response
        self._block_size = block_size
        self._what = f"GET {response.url.path}"
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers
        self.content_type = response.content_type
        # A compressed body arrives decompressed: its Content-Length says nothing then.
        encoded = response.headers.get("Content-Encoding", "identity") not in ("", "identity")
        self.content_length = None if encoded else response.content_length
        #: Body bytes received so far.
        self.received = 0

    async def next_block(self) -> memoryview | None:
        """The next piece of the body (up to the block size), or None at its end."""
        try:
            chunk = await self._response.content.read(self._block_size)
        except _TRANSPORT_ERRORS as exc:
            raise translate(exc, self._what) from exc
        if not chunk:
            return None
        self.received += len(chunk)
        return memoryview(chunk)

    def recycle(self, block: memoryview) -> None:
        """Nothing to reuse: aiohttp makes a new ``bytes`` each time."""

    def leftovers(self) -> list[memoryview]:
        """Nothing is held back: each piece is handed out as it comes."""
        return []

    async def read_small_body(self, limit: int, timeout: float | None) -> bytes:
        """At most ``limit`` bytes of the body, if they come within ``timeout`` seconds."""
        with anyio.move_on_after(timeout):
            try:
                return await self._response.content.read(limit)
            except _TRANSPORT_ERRORS:
                pass
        return b""


#: A download's response, whichever way it is read.
Body = FastBody | AiohttpBody


class Transport:
    """Owns the aiohttp session and sends every request of one :class:`~aio88.Client`."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeouts: Timeouts,
        retry: RetryPolicy,
        rate_limit: float | None,
        max_connections: int,
        headers: Mapping[str, str] | None,
        session: aiohttp.ClientSession | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url
        self.origin = URL(base_url).origin()
        self.retry = retry
        self.timeouts = timeouts
        self.max_connections = max_connections
        self.clock = clock
        self.rate = AdaptiveRate(rate_limit, now=clock())
        self.session: aiohttp.ClientSession | None = None
        #: The poll fast path (GETs to the API origin), when this transport owns its session.
        self.fast: FastGetPool | None = None
        self.owns_session = session is None
        self._given_session = session
        # Built once: every API request reuses these objects unchanged.
        self._api_headers = {
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            **(headers or {}),
            "Authorization": f"Bearer {api_key}",
        }
        self._json_headers = {**self._api_headers, "Content-Type": "application/json"}
        self._request_timeout = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        # For downloads, which watch for stalls themselves: aiohttp's sock_read re-arms a
        # timer on every packet, a measurable cost at hundreds of MB/s.
        self._download_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=None
        )
        self._tls: ssl.SSLContext | None = None
        self._consecutive_429 = 0
        #: Requests sent, including retries (for stats and tests).
        self.requests_sent = 0
        #: 429 answers seen.
        self.rate_limited = 0
        #: Retries made.
        self.retries = 0

    def open(self) -> None:
        """Create (or adopt) the aiohttp session. Needs a running event loop."""
        if self._given_session is not None:
            self.session = self._given_session
            return
        connector = aiohttp.TCPConnector(
            limit=self.max_connections, limit_per_host=0, ttl_dns_cache=300
        )
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
        base = URL(self.base_url)
        assert base.host is not None and base.port is not None
        self.fast = FastGetPool(
            host=base.host,
            port=base.port,
            use_tls=base.scheme == "https",
            prefix=base.raw_path.rstrip("/"),
            headers=self._api_headers,
            connect_timeout=self.timeouts.connect,
            total_timeout=self.timeouts.total,
        )

    async def aclose(self) -> None:
        """Close the session if this transport created it."""
        session, self.session = self.session, None
        fast, self.fast = self.fast, None
        if fast is not None:
            fast.close()
        if session is not None and self.owns_session:
            await session.close()

    def abandon(self) -> None:
        """Release sockets without awaiting: the last resort of ``Client.__del__``."""
        session, self.session = self.session, None
        fast, self.fast = self.fast, None
        if fast is not None:
            fast.close()
        if session is None or not self.owns_session or session.closed:
            return
        connector = session.connector
        session.detach()  # marks it closed, so aiohttp does not warn a second time
        if connector is not None:
            connector._close()  # synchronous socket close; nothing left to await on

    def auth_headers_for(self, url: URL) -> dict[str, str]:
        """The headers for a request to ``url``: credentials only for the API's origin."""
        if url.origin() == self.origin:
            return dict(self._api_headers)
        return {"User-Agent": USER_AGENT}

    def api_url(self, path: str) -> URL:
        """The absolute URL of an API path (``path`` is already validated and encoded)."""
        return URL(self.base_url + path, encoded=True)

    async def _wait_turn(self) -> None:
        """Take a token from the shared rate budget, sleeping if none is free."""
        delay = self.rate.reserve(self.clock())
        if delay > 0:
            await anyio.sleep(delay)

    def _on_429(self, retry_after: float | None) -> float:
        """Slow the whole client after a 429; return the pause applied."""
        self.rate_limited += 1
        self._consecutive_429 += 1
        pause = retry_after
        if pause is None:
            pause = backoff_delay(self._consecutive_429 - 1, self.retry)
        self.rate.on_rate_limited(self.clock(), min(pause, self.retry.retry_after_max))
        return pause

    def _session(self) -> aiohttp.ClientSession:
        session = self.session
        if session is None:
            raise RuntimeError("aio88.Client is closed; open a new Client to send requests")
        return session

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: bytes | None = None,
        form: Callable[[], aiohttp.FormData] | None = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> Response:
        """Send one API request (with retries) and return its successful response.

        Args:
            method: The HTTP method.
            path: The path below ``base_url``, starting with ``/``.
            json: An already-encoded JSON body.
            form: Builds a fresh multipart body for each try (a form cannot be resent).
            params: Query parameters.
            idempotent: Whether resending is harmless; by default, GET and HEAD are.

        Raises:
            APIStatusError: The server answered 4xx/5xx (after any retries).
            APIConnectionError: The server could not be reached (after any retries).
        """
        session = self._session()
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        headers = self._json_headers if json is not None else self._api_headers
        debug = log.isEnabledFor(logging.DEBUG)
        fast_path = self.fast if method == "GET" and json is None and form is None else None
        path_and_query = path + ("?" + urlencode(params) if params else "")
        url = self.api_url(path) if fast_path is None else None  # built only for aiohttp
        attempt = 0
        while True:
            await self._wait_turn()
            attempt += 1
            self.requests_sent += 1
            started = time.perf_counter() if debug else 0.0  # only a log line needs it
            resp_headers: Mapping[str, str]
            try:
                if fast_path is not None:
                    try:
                        status, resp_headers, body = await fast_path.get(path_and_query)
                    except UnusualResponse:
                        fast_path = None  # a redirect or such: aiohttp handles it
                        url = self.api_url(path)
                        status, resp_headers, body = await self._via_aiohttp(
                            session, method, url, headers, json, form, params
                        )
                else:
                    assert url is not None
                    status, resp_headers, body = await self._via_aiohttp(
                        session, method, url, headers, json, form, params
                    )
            except _TRANSPORT_ERRORS as exc:
                what = f"{method} {path}"
                await anyio.sleep(self._delay_after_failure(exc, what, attempt, idempotent))
                continue

            if debug:
                log.debug(
                    "%s %s -> %d in %.1f ms (request id %s, try %d)",
                    method,
                    path,
                    status,
                    (time.perf_counter() - started) * 1000,
                    request_id_from(resp_headers),
                    attempt,
                )
            if status < 300:
                if self._consecutive_429:
                    self._consecutive_429 = 0
                self.rate.on_success()
                return Response(status, resp_headers, body)
            what = f"{method} {path}"  # failures only: the poll path builds no strings
            delay = self._delay_or_raise(status, resp_headers, body, attempt, idempotent, what)
            if delay > 0:
                await anyio.sleep(delay)

    async def _via_aiohttp(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        json: bytes | None,
        form: Callable[[], aiohttp.FormData] | None,
        params: Mapping[str, str] | None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        async with session.request(
            method,
            url,
            headers=headers,
            data=json if form is None else form(),
            params=params,
            timeout=self._request_timeout,
        ) as resp:
            return resp.status, resp.headers, await resp.read()

    def _delay_after_failure(
        self, exc: BaseException, what: str, attempt: int, idempotent: bool
    ) -> float:
        """For a transport failure: raise it translated, or return how long to wait."""
        error = translate(exc, what)
        if not should_retry(
            attempt=attempt,
            policy=self.retry,
            idempotent=idempotent,
            request_sent=error.request_sent,
        ):
            raise error from exc
        delay = backoff_delay(attempt - 1, self.retry)
        self._log_retry(what, attempt, delay, str(error))
        return delay

    def _delay_or_raise(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        attempt: int,
        idempotent: bool,
        what: str,
    ) -> float:
        """For an error status: raise its exception, or return how long to wait to retry."""
        retry_after = parse_retry_after(headers, time.time())
        if status == 429:
            self._on_429(retry_after)
        policy = self.retry
        delay: float | None = None
        if should_retry(
            attempt=attempt,
            policy=policy,
            idempotent=idempotent,
            status=status,
            server_says=headers.get("x-should-retry"),
        ):
            delay = retry_delay(attempt - 1, policy, retry_after)
        if delay is None:
            raise make_status_error(
                status, body[:ERROR_BODY_LIMIT], headers, retry_after=retry_after
            )
        if status == 429:
            # Everyone now waits for the shared pause in _wait_turn; don't add our own.
            delay = 0.0
        self._log_retry(what, attempt, delay, f"HTTP {status}")
        return delay

    def _log_retry(self, what: str, attempt: int, delay: float, reason: str) -> None:
        self.retries += 1
        log.info("%s failed (%s); retry %d in %.2fs", what, reason, attempt, delay)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: URL,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        own_stall_watch: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a streamed response (a download). Retries only until the body starts.

        Credentials go only to the API origin; aiohttp drops them on a redirect to another
        origin. An error status raises its :class:`APIStatusError` with the body read.
        Errors while the caller reads the body are the caller's to translate (the
        downloader resumes them from the bytes it already has). With ``own_stall_watch``
        the caller detects a stalled body itself (no per-read timeout).
        """
        session = self._session()
        request_headers = self.auth_headers_for(url)
        if headers:
            request_headers.update(headers)
        what = f"{method} {url.path}"
        timeout = self._download_timeout if own_stall_watch else self._stream_timeout
        attempt = 0
        while True:
            await self._wait_turn()
            attempt += 1
            self.requests_sent += 1
            try:
                resp = await session.request(
                    method,
                    url,
                    headers=request_headers,
                    params=params,
                    timeout=timeout,
                )
            except _TRANSPORT_ERRORS as exc:
                await anyio.sleep(self._delay_after_failure(exc, what, attempt, True))
                continue
            if resp.status >= 400:
                body = b""
                try:
                    with anyio.move_on_after(self.timeouts.read):
                        body = await resp.content.read(ERROR_BODY_LIMIT)
                except _TRANSPORT_ERRORS:
                    pass
                finally:
                    resp.release()
                delay = self._delay_or_raise(resp.status, resp.headers, body, attempt, True, what)
                if delay > 0:
                    await anyio.sleep(delay)
                continue
            try:
                yield resp
            finally:
                resp.release()
            return

    @asynccontextmanager
    async def open_body(
        self, url: URL, *, headers: Mapping[str, str], block_size: int
    ) -> AsyncIterator[Body]:
        """Open a download's response: its status is 2xx, its body not read yet.

        With the transport's own session, the request goes on its own connection and the
        body is read straight into large buffers (:mod:`aio88._body`); redirects are
        followed here, with credentials only for the API's origin. A caller's session,
        or an answer the fast path does not read (a chunked or encoded body), goes through
        aiohttp instead. Retries, pacing and errors are as for :meth:`stream`.
        """
        fast = await self._open_fast_body(url, headers, block_size) if self.fast else None
        if fast is None:
            async with self.stream("GET", url, headers=headers, own_stall_watch=True) as resp:
                yield AiohttpBody(resp, block_size)
            return
        try:
            yield fast
        finally:
            fast.close()

    async def _open_fast_body(
        self, url: URL, headers: Mapping[str, str], block_size: int
    ) -> FastBody | None:
        """:meth:`open_body` on aio88's own connection; None when aiohttp should read it."""
        request_headers = {**self.auth_headers_for(url), **headers}
        attempt = redirects = 0
        while True:
            await self._wait_turn()
            attempt += 1
            self.requests_sent += 1
            what = f"GET {url.path}"
            try:
                body = await open_body(
                    url,
                    request_headers,
                    ssl_context=self._tls_context() if url.scheme == "https" else None,
                    connect_timeout=self.timeouts.connect,
                    head_timeout=self.timeouts.read,
                    buffer_size=block_size,
                )
            except UnusualResponse as exc:
                log.debug("%s: %s; reading it with aiohttp", what, exc)
                return None
            except _TRANSPORT_ERRORS as exc:
                await anyio.sleep(self._delay_after_failure(exc, what, attempt, True))
                continue
            status, location = body.status, body.headers.get("location")
            if status in (301, 302, 303, 307, 308) and location:
                body.close()
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise APIConnectionError(f"{what}: more than {MAX_REDIRECTS} redirects")
                url = url.join(URL(location))
                # Credentials only to the API's origin: a CDN never sees the key.
                request_headers = {**self.auth_headers_for(url), **headers}
                attempt -= 1  # following a redirect is not a retry
                continue
            if status >= 300:
                error_body = await body.read_small_body(ERROR_BODY_LIMIT, self.timeouts.read)
                delay = self._delay_or_raise(status, body.headers, error_body, attempt, True, what)
                if delay > 0:
                    await anyio.sleep(delay)
                continue
            if self._consecutive_429:
                self._consecutive_429 = 0
            self.rate.on_success()
            return body

    def _tls_context(self) -> ssl.SSLContext:
        """The TLS settings for downloads, made once (loading the CA store takes time)."""
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls
