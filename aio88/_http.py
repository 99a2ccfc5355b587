"""The single request path: auth, proxies, TLS, timeouts, pacing, retries, error mapping.

Every request the client makes goes through :class:`Transport`, and through aiohttp: aio88
speaks no HTTP of its own. The transport decides nothing about *what* to send; it makes
sure each request carries the credentials only to the API's own origin, goes through the
right proxy, waits its turn in the shared rate budget, is retried only when that is safe
(:meth:`Transport.send`, the one retry driver), and fails with an exception from
:mod:`aio88._errors`, never a raw aiohttp one.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import ssl as ssl_module
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

import aiohttp
import anyio
from multidict import CIMultiDict
from yarl import URL

from ._config import (
    CREATE_KEEPALIVE,
    ERROR_BODY_LIMIT,
    MAX_REDIRECTS,
    POOL_KEEPALIVE,
    RetryPolicy,
    Timeouts,
)
from ._errors import (
    APIConnectionError,
    APITimeoutError,
    make_status_error,
    request_id_from,
)
from ._proxies import Proxies, ProxyChoice, ProxySetting
from ._retry import AdaptiveRate, backoff_delay, parse_retry_after, retry_delay, should_retry
from ._version import __version__

__all__ = ["Body", "Response", "SSLSetting", "Transport", "check_headers", "translate"]

log = logging.getLogger("aio88")

USER_AGENT = (
    f"aio88/{__version__} aiohttp/{aiohttp.__version__} "
    f"{platform.python_implementation()}/{platform.python_version()}"
)

#: What ``Client(ssl=...)`` takes: a context, ``False`` (no verification) or ``None``.
SSLSetting = ssl_module.SSLContext | bool | None

_T = TypeVar("_T")
_DIRECT: ProxyChoice = (None, None)

#: Characters that would end a header line early (and so smuggle in another header, or a
#: whole request), or that no HTTP server accepts.
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")
_FORBIDDEN_IN_NAMES = (*_FORBIDDEN_IN_HEADERS, ":", " ", "\t")


def check_headers(headers: Mapping[str, str], api_key: str) -> None:
    """Refuse header names or values (and an API key) that could not be sent safely.

    Raises:
        ValueError: Naming the header and what is wrong with it.
    """
    for char in _FORBIDDEN_IN_HEADERS:
        if char in api_key:
            raise ValueError(
                f"the API key contains {char!r}; copy the key again without line breaks"
            )
    for name, value in headers.items():
        if not all(isinstance(part, str) for part in (name, value)):
            raise TypeError(f"header {name!r}: names and values must be strings")
        if not name or any(char in name for char in _FORBIDDEN_IN_NAMES):
            raise ValueError(f"header name {name!r} is not valid in HTTP")
        for char in _FORBIDDEN_IN_HEADERS:
            if char in value:
                raise ValueError(
                    f"header {name!r} has {char!r} in its value, which would end the header "
                    "line early; remove it"
                )


def api_deadline(timeouts: Timeouts) -> float | None:
    """How long an API call (not a stream) may take in all: ``total``, and no longer
    than connecting plus one ``read`` gap, since its answer comes in one piece."""
    bounds = [t for t in (timeouts.total, _sum(timeouts.connect, timeouts.read)) if t is not None]
    return min(bounds) if bounds else None


def _sum(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


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
        return exc
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return APITimeoutError(f"{what}: timed out connecting to the server", request_sent=False)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return APITimeoutError(f"{what}: timed out waiting for the server")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return APIConnectionError(
            f"{what}: the TLS certificate of {exc.host}:{exc.port} is not trusted "
            f"({exc.certificate_error}); pass Client(ssl=...) with a context that trusts "
            "your CA, or set SSL_CERT_FILE before the program starts",
            request_sent=False,
        )
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return APIConnectionError(
            f"{what}: cannot connect to the proxy {exc.host}:{exc.port} "
            f"({exc.os_error.strerror or exc.os_error})",
            request_sent=False,
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or str(exc.os_error)
        return APIConnectionError(
            f"{what}: cannot connect to {exc.host}:{exc.port} ({reason})", request_sent=False
        )
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return APIConnectionError(
            f"{what}: the proxy refused the connection (HTTP {exc.status} {exc.message})",
            request_sent=False,
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return APIConnectionError(
            f"{what}: the server closed the connection without a complete answer"
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        return APIConnectionError(f"{what}: the server closed the connection mid-body")
    if isinstance(exc, aiohttp.TooManyRedirects):
        return APIConnectionError(f"{what}: stopped after {MAX_REDIRECTS} redirects (a loop?)")
    if isinstance(exc, aiohttp.InvalidURL):
        return APIConnectionError(f"{what}: the server redirected to an unusable URL ({exc})")
    if isinstance(exc, aiohttp.ClientResponseError):
        # aiohttp's parser refused the answer (a bad status line, a malformed header...)
        return APIConnectionError(f"{what}: the server's answer is not valid HTTP ({exc.message})")
    return APIConnectionError(f"{what}: {type(exc).__name__}: {exc}")


#: Failures that trying again cannot mend: a redirect loop, a redirect nowhere, a
#: certificate we do not trust.
_FINAL_ERRORS = (
    aiohttp.TooManyRedirects,
    aiohttp.InvalidURL,
    aiohttp.ClientConnectorCertificateError,
)


#: What a request or a body read can fail with, before translation.
TRANSPORT_ERRORS = (
    aiohttp.ClientError,
    TimeoutError,
    asyncio.TimeoutError,
    OSError,
    APIConnectionError,
)


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
        # A compressed body arrives decompressed: its Content-Length says nothing then.
        encoded = response.headers.get("Content-Encoding", "identity") not in ("", "identity")
        self.content_length = None if encoded else response.content_length
        #: Body bytes handed over so far.
        self.received = 0
        self._failure: APIConnectionError | None = None

    async def next_block(self) -> list[bytes] | None:
        """The next block of the body, or None at its end: the pieces aiohttp received,
        about ``block_size`` bytes of them (less at the end of the body).

        The pieces are collected, never joined: joining them was a copy of the whole body,
        12 % of a download's time at 1 GB/s. And they go to the writer thread in large
        blocks: a hand-over per piece (64-256 KiB) made the two threads trade the GIL so
        often that throughput halved.

        Raises:
            APIConnectionError: The connection broke (or the body was cut short); pieces
                received before are returned first, so that they reach the ``.part``.
        """
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        content = self._response.content
        pieces: list[bytes] = []
        size = 0
        try:
            while size < self.block_size:
                piece, end_of_http_chunk = await content.readchunk()
                if piece:
                    pieces.append(piece)
                    size += len(piece)
                elif not end_of_http_chunk:
                    break  # the end of the body (an empty piece that ends a chunk is not)
        except TRANSPORT_ERRORS as exc:
            failure = translate(exc, self._what)
            failure.__cause__ = exc
            if not pieces:
                raise failure from exc
            self._failure = failure  # raised on the next call, after these are kept
        self.received += size
        return pieces or None

    async def read_small_body(self, limit: int, timeout: float | None) -> bytes:
        """At most ``limit`` bytes of the body, if they come within ``timeout`` seconds."""
        return await read_limited(self._response, limit, timeout)


async def read_limited(
    response: aiohttp.ClientResponse, limit: int, timeout: float | None
) -> bytes:
    """Up to ``limit`` bytes of a body that should be small (an error message): what
    arrives within ``timeout`` seconds, and never a whole video."""
    data = b""
    with anyio.move_on_after(timeout):
        try:
            while len(data) < limit:
                chunk = await response.content.read(limit - len(data))
                if not chunk:
                    break
                data += chunk
        except TRANSPORT_ERRORS:
            pass
    return data


class Transport:
    """Owns the aiohttp sessions and sends every request of one :class:`~aio88.Client`.

    Two sessions share the client's settings: one for every request but creates, and one
    for creates, whose connections are reused only within :data:`CREATE_KEEPALIVE` seconds.
    A POST sent on a pooled connection that the server has just closed fails although the
    server never saw it, and aiohttp does not retry a POST; for a create that would look
    like "maybe created, maybe billed". A connection used a moment ago is not being closed.
    """

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
        proxy: ProxySetting = None,
        ssl: SSLSetting = None,
        trace_configs: Sequence[aiohttp.TraceConfig] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_headers(headers or {}, api_key)
        self.base_url = base_url
        self.origin = URL(base_url).origin()
        self.retry = retry
        self.timeouts = timeouts
        self.max_connections = max_connections
        self.clock = clock
        self.rate = AdaptiveRate(rate_limit, now=clock())
        self.session: aiohttp.ClientSession | None = None
        self._create_session: aiohttp.ClientSession | None = None
        self.owns_session = session is None
        self._given_session = session
        self._proxy_setting = proxy
        self._proxies: Proxies | None = None
        self._ssl = ssl
        self._trace_configs = list(trace_configs or ())
        # Built once and reused unchanged: aiohttp takes a CIMultiDict as it is. A user's
        # header replaces the default of the same name, whatever its case.
        base: CIMultiDict[str] = CIMultiDict({"User-Agent": USER_AGENT, "Accept": "*/*"})
        self._plain_headers = CIMultiDict(base)
        base["Accept"] = "application/json"
        for name, value in (headers or {}).items():
            base[name] = value
            if name.lower() in ("user-agent", "host"):
                self._plain_headers[name] = value
        base["Authorization"] = f"Bearer {api_key}"
        self._api_headers = base
        self._json_headers = CIMultiDict(base)
        self._json_headers["Content-Type"] = "application/json"
        # An API answer is a small JSON body that comes in one or two reads, so the gap
        # between reads and the whole answer are bounded together, by one timer per
        # request: aiohttp's sock_read would re-arm a second one for every packet.
        self._request_timeout = aiohttp.ClientTimeout(
            total=api_deadline(timeouts), sock_connect=timeouts.connect
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        self._api_proxy: ProxyChoice = _DIRECT
        self._consecutive_429 = 0
        #: Requests sent, including retries (for stats and tests).
        self.requests_sent = 0
        #: 429 answers seen.
        self.rate_limited = 0
        #: Retries made.
        self.retries = 0

    # -- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Create the sessions (or adopt the caller's). Needs a running event loop."""
        self._proxies = Proxies(self._proxy_setting)
        if self._given_session is not None:
            self.session = self._create_session = self._given_session
            if self._proxy_setting is None:
                return  # the caller's session decides (its own trust_env)
        else:
            ssl: ssl_module.SSLContext | bool = True if self._ssl is None else self._ssl
            if ssl is False:
                log.warning(
                    "aio88.Client(ssl=False): TLS certificates are not verified; anyone on "
                    "the network path can read the API key"
                )
            self.session = self._new_session(ssl, keepalive=POOL_KEEPALIVE)
            self._create_session = self._new_session(ssl, keepalive=CREATE_KEEPALIVE)
        self._api_proxy = self.proxy_for(self.origin)

    def _new_session(
        self, ssl: ssl_module.SSLContext | bool, keepalive: float
    ) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.max_connections,
            limit_per_host=0,
            ttl_dns_cache=300,
            ssl=ssl,
            keepalive_timeout=keepalive,
        )
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            trust_env=False,  # the environment's proxies are read once, by Proxies
            trace_configs=self._trace_configs or None,
        )

    async def aclose(self) -> None:
        """Close the sessions if this transport created them."""
        sessions = self._owned_sessions()
        self.session = self._create_session = None
        for session in sessions:
            await session.close()

    def abandon(self) -> None:
        """Release sockets without awaiting: the last resort of ``Client.__del__``."""
        sessions = self._owned_sessions()
        self.session = self._create_session = None
        for session in sessions:
            if session.closed:
                continue
            connector = session.connector
            session.detach()  # marks it closed, so aiohttp does not warn a second time
            if connector is not None:
                connector._close()  # synchronous socket close; nothing left to await on

    def _owned_sessions(self) -> list[aiohttp.ClientSession]:
        if not self.owns_session:
            return []
        return [s for s in (self.session, self._create_session) if s is not None]

    @property
    def is_open(self) -> bool:
        """Whether the sessions exist (between :meth:`open` and :meth:`aclose`)."""
        return self.session is not None

    # -- addressing ----------------------------------------------------------------------

    def auth_headers_for(self, url: URL) -> CIMultiDict[str]:
        """The headers for a request to ``url``: credentials only for the API's origin."""
        if url.origin() == self.origin:
            return CIMultiDict(self._api_headers)
        return CIMultiDict(self._plain_headers)

    def api_url(self, path: str) -> URL:
        """The absolute URL of an API path (``path`` is already validated and encoded)."""
        return URL(self.base_url + path, encoded=True)

    # -- pacing --------------------------------------------------------------------------

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

    # -- the one retry driver --------------------------------------------------------------

    async def send(
        self,
        method: str,
        url: URL,
        read: Callable[[aiohttp.ClientResponse], Awaitable[_T]],
        *,
        headers: CIMultiDict[str],
        proxy: ProxyChoice,
        body: bytes | Callable[[], object] | None = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool,
        timeout: aiohttp.ClientTimeout,
        read_bufsize: int | None = None,
    ) -> _T:
        """Send a request until it succeeds or must fail, and return ``read(response)``.

        This is the retry loop of every request: JSON calls, streams and downloads. Each try
        takes a turn in the rate budget. A successful answer (below 400; aiohttp follows
        redirects, and drops the credentials when one leaves the API's origin) is handed to
        ``read``, whose failures to read it count as failures of the try. An error answer
        is read (64 KiB at most) and raised as its :class:`APIStatusError`, or retried.

        Args:
            method: The HTTP method.
            url: The absolute URL.
            read: Takes the response; for a JSON call, it reads the body; for a stream, it
                returns the response unread (the caller then releases it).
            headers: The request's headers (see :meth:`auth_headers_for`).
            proxy: The proxy and its headers (see :meth:`proxy_for`).
            body: The request body, or what builds it afresh for each try (a form cannot
                be sent twice).
            params: Query parameters.
            idempotent: Whether resending is harmless. A create is not: it is retried only
                when the server provably did not see it.
            timeout: aiohttp's timeouts for each try.
            read_bufsize: How much of the body aiohttp may hold before pausing the socket.

        Raises:
            APIStatusError: The server answered 4xx/5xx (after any retries).
            APIConnectionError: The server could not be reached (after any retries).
        """
        session = self._session_for(method, idempotent)
        proxy_url, proxy_headers = proxy
        attempt = 0
        while True:
            await self._wait_turn()
            attempt += 1
            self.requests_sent += 1
            try:
                resp = await session.request(
                    method,
                    url,
                    headers=headers,
                    data=body() if callable(body) else body,
                    params=params,
                    timeout=timeout,
                    proxy=proxy_url,
                    proxy_headers=proxy_headers,
                    max_redirects=MAX_REDIRECTS,
                    read_bufsize=read_bufsize,
                )
                if resp.status < 400:
                    result = await read(resp)
                    if self._consecutive_429:
                        self._consecutive_429 = 0
                    self.rate.on_success()
                    return result
                error_body = await read_limited(resp, ERROR_BODY_LIMIT, self.timeouts.read)
                resp.release()
            except _FINAL_ERRORS as exc:
                raise translate(exc, f"{method} {url.path}") from exc
            except TRANSPORT_ERRORS as exc:
                what = f"{method} {url.path}"  # failures only: the poll path builds no strings
                await anyio.sleep(self._delay_after_failure(exc, what, attempt, idempotent))
                continue
            what = f"{method} {url.path}"
            delay = self._delay_or_raise(
                resp.status, resp.headers, error_body, attempt, idempotent, what
            )
            if delay > 0:
                await anyio.sleep(delay)

    def _session_for(self, method: str, idempotent: bool) -> aiohttp.ClientSession:
        session = self.session if idempotent or method != "POST" else self._create_session
        if session is None:
            raise RuntimeError("aio88.Client is closed; open a new Client to send requests")
        return session

    def proxy_for(self, url: URL) -> ProxyChoice:
        """The proxy a request to ``url`` goes through (None: directly), and its headers."""
        if self._proxies is None or (self._given_session is not None and not self._proxy_setting):
            return _DIRECT  # closed, or the caller's session decides
        return self._proxies.for_url(url)

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
            raise make_status_error(status, body, headers, retry_after=retry_after)
        if status == 429:
            # Everyone now waits for the shared pause in _wait_turn; don't add our own.
            delay = 0.0
        self._log_retry(what, attempt, delay, f"HTTP {status}")
        return delay

    def _log_retry(self, what: str, attempt: int, delay: float, reason: str) -> None:
        self.retries += 1
        log.info("%s failed (%s); retry %d in %.2fs", what, reason, attempt, delay)

    # -- what the resources and engines call -------------------------------------------------

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
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        debug = log.isEnabledFor(logging.DEBUG)
        started = time.perf_counter() if debug else 0.0  # only a log line needs it
        response = await self.send(
            method,
            self.api_url(path),
            _read_whole,
            headers=self._json_headers if json is not None else self._api_headers,
            proxy=self._api_proxy,
            body=json if form is None else form,
            params=params,
            idempotent=idempotent,
            timeout=self._request_timeout,
        )
        if debug:
            log.debug(
                "%s %s -> %d in %.1f ms (request id %s)",
                method,
                path,
                response.status,
                (time.perf_counter() - started) * 1000,
                response.request_id,
            )
        return response

    async def open_stream(
        self,
        url: URL,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        read_bufsize: int | None = None,
    ) -> aiohttp.ClientResponse:
        """Open a streamed GET: a response below 400 with its body unread, for the caller
        to read and release. Retries only until the body starts.

        Credentials go only to the API origin, also across redirects. An error status
        raises its :class:`APIStatusError` with the body read. ``Timeouts.read`` bounds
        the wait for the head and every gap in the body (not the whole body: a big file
        is never cut off for taking long).
        """
        request_headers = self.auth_headers_for(url)
        for name, value in (headers or {}).items():
            request_headers[name] = value
        return await self.send(
            "GET",
            url,
            _unread,
            headers=request_headers,
            proxy=self.proxy_for(url),
            params=params,
            idempotent=True,
            timeout=self._stream_timeout,
            read_bufsize=read_bufsize,
        )

    @asynccontextmanager
    async def stream(
        self,
        url: URL,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """:meth:`open_stream` as a context manager that releases the response."""
        resp = await self.open_stream(url, headers=headers, params=params)
        try:
            yield resp
        finally:
            resp.release()

    @asynccontextmanager
    async def open_body(
        self, url: URL, *, headers: Mapping[str, str], block_size: int
    ) -> AsyncIterator[Body]:
        """Open a download's response: its status is 2xx, its body not read yet, and read
        in blocks of up to ``block_size`` (aiohttp may buffer that much)."""
        resp = await self.open_stream(url, headers=headers, read_bufsize=block_size)
        try:
            yield Body(resp, block_size)
        finally:
            resp.release()


async def _read_whole(resp: aiohttp.ClientResponse) -> Response:
    return Response(resp.status, resp.headers, await resp.read())


async def _unread(resp: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
    return resp
