"""The single request path: auth, proxies, TLS, timeouts, pacing, retries, error mapping.

Every request the client makes goes through :class:`Transport`, and through aiohttp: aio88
speaks no HTTP of its own. The transport decides nothing about *what* to send; it makes
sure each request carries the credentials only to the API's own origin, goes through the
right proxy, waits its turn in the shared rate budget, is retried only when that is safe
(:meth:`Transport.send`, the one retry driver), and fails with an exception from
:mod:`aio88._errors`, never a raw aiohttp one.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Literal, TypeVar

import aiohttp
import anyio
from multidict import CIMultiDict
from yarl import URL

from ._body import Body, read_limited
from ._config import ERROR_BODY_LIMIT, MAX_REDIRECTS, RetryPolicy, Timeouts
from ._coordination import RateBudget
from ._errors import APIConnectionError, make_status_error, request_id_from
from ._failures import FINAL_ERRORS, TRANSPORT_ERRORS, translate
from ._headers import build_headers, check_headers
from ._models import redact_url
from ._pacing import LocalRateBudget
from ._proxies import DIRECT, Proxies, ProxyChoice, ProxySetting
from ._retry import backoff_delay, parse_retry_after, retry_delay, should_retry
from ._sending import SendMark, current_mark
from ._sessions import SSLSetting, close_now, make_sessions
from ._version import __version__

__all__ = ["Response", "Transport", "api_deadline"]

log = logging.getLogger("aio88")

USER_AGENT = (
    f"aio88/{__version__} aiohttp/{aiohttp.__version__} "
    f"{platform.python_implementation()}/{platform.python_version()}"
)

_T = TypeVar("_T")

#: Statuses whose ``Location`` is followed.
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


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


class Transport:
    """Owns the aiohttp sessions and sends every request of one :class:`~aio88.Client`.

    Two sessions share the client's settings and cookies: one for every request but
    creates, and one for creates, whose connections are reused only within
    :data:`CREATE_KEEPALIVE` seconds. A POST sent on a pooled connection that the server
    has just closed fails although the server never saw it, and aiohttp does not retry a
    POST; for a create that would look like "maybe created, maybe billed". A connection
    used a moment ago is not being closed.
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
        rate_budget: RateBudget | None = None,
    ) -> None:
        check_headers(headers or {}, api_key)
        self.base_url = base_url
        self.origin = URL(base_url).origin()
        self.retry = retry
        self.timeouts = timeouts
        self.max_connections = max_connections
        self.clock = clock
        #: Where every request takes its turn: this client's own bucket, or a fleet's.
        self.rate: RateBudget = (
            LocalRateBudget(rate_limit, clock) if rate_budget is None else rate_budget
        )
        self.session: aiohttp.ClientSession | None = None
        self._create_session: aiohttp.ClientSession | None = None
        self._closed = False
        self.owns_session = session is None
        self._given_session = session
        # With the caller's session and no proxy= of ours, its own trust_env decides.
        self._proxies = None if session is not None and proxy is None else Proxies(proxy)
        self._ssl = ssl
        self._trace_configs = list(trace_configs or ())
        self._api_headers, self._json_headers, self._plain_headers = build_headers(
            headers or {}, api_key, USER_AGENT
        )
        # The API's proxy, worked out now (no event loop needed), so that even a client's
        # first request, which opens it, goes through it.
        self._api_proxy: ProxyChoice = self.proxy_for(self.origin)
        if self._api_proxy[1] and self.origin.scheme == "http":
            # A plain-HTTP request through a proxy carries the proxy's credentials itself
            # (aiohttp sends proxy_headers only on a CONNECT).
            self._api_headers.update(self._api_proxy[1])
            self._json_headers.update(self._api_proxy[1])
        # An API answer is a small JSON body that comes in one or two reads, so the gap
        # between reads and the whole answer are bounded together, by one timer per
        # request: aiohttp's sock_read would re-arm a second one for every packet.
        self._request_timeout = aiohttp.ClientTimeout(
            total=api_deadline(timeouts), sock_connect=timeouts.connect
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        # A stream has no total, so its head (the proxy's CONNECT answer included, which
        # aiohttp reads without sock_read) is bounded on its own.
        self._head_limit = _sum(timeouts.connect, timeouts.read)
        self._consecutive_429 = 0
        #: Requests sent, including retries and redirects (for stats and tests).
        self.requests_sent = 0
        #: 429 answers seen.
        self.rate_limited = 0
        #: New congestion signals from 429s without ``Retry-After`` (the server said to slow
        #: down, not how much): one per window, as the rate budget judges them. A
        #: poller halves its concurrency once per signal.
        self.congestion_signals = 0
        #: Retries made.
        self.retries = 0

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def state(self) -> Literal["unopened", "open", "closed"]:
        """Where the transport is in its life: it opens once, on first use at the latest."""
        if self._closed:
            return "closed"
        return "unopened" if self.session is None else "open"

    def open(self) -> None:
        """Create the sessions (or adopt the caller's). Needs a running event loop.

        Raises:
            RuntimeError: It was closed (a closed client cannot be reopened).
        """
        if self._closed:
            raise RuntimeError(
                "this aio88.Client is closed and cannot be reopened; create a new Client "
                "(use `async with Client() as client:`)"
            )
        if self.session is not None:
            return
        if self._given_session is not None:
            self.session = self._create_session = self._given_session
        else:
            self.session, self._create_session = make_sessions(
                self.max_connections, self._ssl, self._trace_configs
            )

    async def aclose(self) -> None:
        """Close the sessions if this transport created them. Calling it again does nothing."""
        self._closed = True
        sessions = self._owned_sessions()
        self.session = self._create_session = None
        for session in sessions:
            await session.close()

    def abandon(self) -> None:
        """Release sockets without awaiting: the last resort of ``Client.__del__``."""
        self._closed = True
        sessions = self._owned_sessions()
        self.session = self._create_session = None
        for session in sessions:
            close_now(session)

    def _owned_sessions(self) -> list[aiohttp.ClientSession]:
        if not self.owns_session:
            return []
        return [s for s in (self.session, self._create_session) if s is not None]

    # -- addressing ----------------------------------------------------------------------

    def api_url(self, path: str) -> URL:
        """The absolute URL of an API path (``path`` is already validated and encoded)."""
        return URL(self.base_url + path, encoded=True)

    def proxy_for(self, url: URL) -> ProxyChoice:
        """The proxy a request to ``url`` goes through (None: directly), and its headers."""
        return DIRECT if self._proxies is None else self._proxies.for_url(url)

    def is_api(self, url: URL) -> bool:
        """Whether ``url`` is on the API's own origin (not a CDN's or a vendor's)."""
        origin = self.origin
        return (
            url.scheme == origin.scheme
            and url.raw_host == origin.raw_host
            and url.port == origin.port
        )

    def headers_for(
        self, url: URL, extra: Mapping[str, str] | None = None
    ) -> tuple[CIMultiDict[str], ProxyChoice]:
        """The headers and proxy of a request to ``url``: the user's headers and the
        credentials only for the API's origin, then ``extra`` (Range, Accept...)."""
        if self.is_api(url):
            headers, proxy = CIMultiDict(self._api_headers), self._api_proxy
        else:
            headers, proxy = CIMultiDict(self._plain_headers), self.proxy_for(url)
            if proxy[1] and url.scheme == "http":
                headers.update(proxy[1])  # see open(): plain HTTP carries proxy credentials
        if extra:
            headers.update(extra)
        return headers, proxy

    # -- pacing --------------------------------------------------------------------------

    def _on_429(self, retry_after: float | None, sent_at: float) -> float:
        """Slow the whole client after a 429 for a request sent at ``sent_at``; return
        the pause applied. Only a request sent after the last 429 was acted on makes a new
        signal (a burst of 429s from requests already in flight counts once)."""
        self.rate_limited += 1
        pause = retry_after
        if pause is None:
            pause = backoff_delay(self._consecutive_429, self.retry)
        pause = min(pause, self.retry.retry_after_max)
        if self.rate.rate_limited(self.clock(), pause, sent_at):
            self._consecutive_429 += 1
            if retry_after is None:
                self.congestion_signals += 1
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
        extra: Mapping[str, str] | None = None,
        body: bytes | Callable[[], object] | None = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool,
        timeout: aiohttp.ClientTimeout,
        read_bufsize: int | None = None,
        head_limit: float | None = None,
    ) -> _T:
        """Send a request until it succeeds or must fail, and return ``read(response)``.

        This is the retry loop of every request: JSON calls, streams and downloads. Each try
        and each redirect takes a turn in the rate budget. Redirects are followed here,
        not by aiohttp, so that each hop gets its own headers (the credentials and the
        user's headers only on the API's origin) and its own proxy. A successful answer is
        handed to ``read``, whose failures to read it count as failures of the try. An
        error answer is read (64 KiB at most) and raised as its :class:`APIStatusError`, or
        retried.

        Args:
            method: The HTTP method.
            url: The absolute URL.
            read: Takes the response; for a JSON call, it reads the body; for a stream, it
                returns the response unread (the caller then releases it).
            headers: The first hop's headers, and ``proxy`` its proxy (see
                :meth:`headers_for`).
            proxy: The first hop's proxy and proxy headers.
            extra: Headers every hop carries (Range, If-Range, Accept...).
            body: The request body, or what builds it afresh for each try (a form cannot
                be sent twice).
            params: Query parameters of the first hop.
            idempotent: Whether resending is harmless. A create is not: it is retried only
                when the server provably did not see it.
            timeout: aiohttp's timeouts for each try.
            read_bufsize: How much of the body aiohttp may hold before pausing the socket.
            head_limit: Seconds within which the answer's head must arrive (streams).

        Raises:
            APIStatusError: The server answered 4xx/5xx (after any retries).
            APIConnectionError: The server could not be reached (after any retries).
        """
        session = self._session_for(method, idempotent)
        # A create's sending is marked (see _sending): exactly by our sessions' tracing,
        # cautiously (the whole request counts as sent) through a caller's session.
        mark = None if idempotent else current_mark.get() or SendMark()
        traced = self.owns_session and session is self._create_session
        taken = False  # a POST answered by a redirect to a GET: the server took it
        attempt = redirects = 0
        while True:
            # A token from the shared budget, and past any 429's pause (one await: no
            # wrapper of ours on every request's path).
            await self.rate.wait_turn()
            sent_at = self.clock()
            attempt += 1
            self.requests_sent += 1
            location = None
            if mark is not None and not taken:
                mark.new_try()
                if not traced:
                    await mark.writing()
                    mark.wrote()
            try:
                sending = session.request(
                    method,
                    url,
                    headers=headers,
                    data=body() if callable(body) else body,
                    params=params,
                    timeout=timeout,
                    proxy=proxy[0],
                    proxy_headers=proxy[1],
                    allow_redirects=False,
                    raise_for_status=False,  # whatever a caller's session says
                    auto_decompress=True,
                    read_bufsize=read_bufsize,
                    trace_request_ctx=mark,
                )
                if head_limit is None:  # an API call: its total timer bounds it
                    resp = await sending
                else:
                    with anyio.fail_after(head_limit):
                        resp = await sending
                status = resp.status
                if status < 300:
                    result = await read(resp)
                    if self._consecutive_429 or self.rate.recovering:  # after 429s only
                        self._consecutive_429 = 0
                        self.rate.succeeded(self.clock())
                    return result
                try:
                    if status in _REDIRECTS and "Location" in resp.headers:
                        location = resp.headers["Location"]
                    else:
                        error_body = await read_limited(
                            resp.content, ERROR_BODY_LIMIT, self.timeouts.read
                        )
                finally:
                    resp.release()
            except FINAL_ERRORS as exc:
                error = translate(exc, f"{method} {url.path}")
                _agree_on_sent(mark, error, traced=traced, taken=taken)
                raise error from _quotable(exc)
            except TRANSPORT_ERRORS as exc:
                # Failures only build strings: the poll path stays lean.
                what = f"{method} {url.path}"
                error = translate(exc, what)
                _agree_on_sent(mark, error, traced=traced, taken=taken)
                delay = self._delay_after_failure(error, exc, what, attempt, idempotent)
                if mark is not None and not mark.sent:
                    await mark.not_taken()
                await anyio.sleep(delay)
                continue
            if location is not None:
                redirects += 1
                url = _redirect_target(url, location, redirects, f"{method} {url.path}")
                headers, proxy = self.headers_for(url, extra)
                params = None  # the Location carries its own query
                if status == 303 or (status in (301, 302) and method == "POST"):
                    method, body = "GET", None  # as browsers do, and RFC 9110 allows
                    taken = mark is not None  # whatever the GET meets, the create may exist
                attempt -= 1  # following a redirect is not a retry
                continue
            what = f"{method} {url.path}"
            if status == 407 and proxy[0] is not None:
                # The proxy's answer to a plain-HTTP request, not the API's: as on a CONNECT.
                if mark is not None and not taken:
                    mark.sent = False  # the proxy kept it
                raise APIConnectionError(
                    f"{what}: the proxy refused the connection (HTTP 407); check the "
                    "credentials in the proxy URL",
                    request_sent=False,
                )
            delay = self._delay_or_raise(
                status,
                resp.headers,
                error_body,
                attempt,
                idempotent,
                what,
                sent_at,
                media_host=None if self.is_api(url) else url.host,
            )
            if mark is not None and status == 429 and not taken:
                await mark.not_taken()  # a 429 creates nothing: not "maybe billed" while we wait
            if delay > 0:
                await anyio.sleep(delay)

    def _session_for(self, method: str, idempotent: bool) -> aiohttp.ClientSession:
        if self.session is None:
            self.open()  # on first use; refuses a closed transport
        session = self.session if idempotent or method != "POST" else self._create_session
        assert session is not None
        return session

    def _delay_after_failure(
        self,
        error: APIConnectionError,
        exc: BaseException,
        what: str,
        attempt: int,
        idempotent: bool,
    ) -> float:
        """For a transport failure (``exc``, translated as ``error``): raise it, or return
        how long to wait."""
        if not should_retry(
            attempt=attempt,
            policy=self.retry,
            idempotent=idempotent,
            request_sent=error.request_sent,
        ):
            raise error from _quotable(exc)
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
        sent_at: float,
        *,
        media_host: str | None = None,
    ) -> float:
        """For an error status: raise its exception, or return how long to wait to retry.
        ``media_host``: the server that answered, when it is not the API's."""
        retry_after = parse_retry_after(headers, time.time())
        pause = self._on_429(retry_after, sent_at) if status == 429 else 0.0
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
                status, body, headers, retry_after=retry_after, media_host=media_host
            )
        if status == 429:
            # Everyone now waits for the shared pause in rate.wait_turn; don't add our own.
            self._log_retry(what, attempt, pause, "HTTP 429, the whole client pauses")
            return 0.0
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
        """Open a streamed GET: a response below 300 with its body unread, for the caller
        to read and release. Retries only until the body starts.

        Credentials go only to the API origin, also across redirects. The body is asked
        for uncompressed (a ``Range`` counts the bytes as sent, so a resume of a decoded
        body would be wrong). An error status raises its :class:`APIStatusError` with the
        body read. ``connect + read`` bounds the wait for the head, and ``Timeouts.read``
        every gap in the body (not the whole body: a big file is never cut off for taking
        long).
        """
        extra = {"Accept-Encoding": "identity", **(headers or {})}
        request_headers, proxy = self.headers_for(url, extra)
        return await self.send(
            "GET",
            url,
            _unread,
            headers=request_headers,
            proxy=proxy,
            extra=extra,
            params=params,
            idempotent=True,
            timeout=self._stream_timeout,
            read_bufsize=read_bufsize,
            head_limit=self._head_limit,
        )

    @asynccontextmanager
    async def open_body(
        self, url: URL, *, headers: Mapping[str, str], block_size: int
    ) -> AsyncIterator[Body]:
        """Open a download's response: its status is 2xx, its body not read yet, and read
        in blocks of about ``block_size`` (aiohttp may buffer twice that)."""
        resp = await self.open_stream(url, headers=headers, read_bufsize=block_size)
        try:
            yield Body(resp, block_size)
        finally:
            resp.release()


def _quotable(exc: BaseException) -> BaseException | None:
    """``exc`` as the cause to chain, unless its message quotes a URL with a query (an
    aiohttp error names the URL whole, signature included): then none, since our own
    message already says what failed."""
    return None if "?" in str(exc) else exc


def _agree_on_sent(
    mark: SendMark | None, error: APIConnectionError, *, traced: bool, taken: bool
) -> None:
    """Make a create's failure and its mark agree on whether the request left: a POST the
    server answered with a redirect was taken; else the tracing saw it exactly (a timeout
    may come before any byte left); without tracing, the kind of failure is the guess."""
    if mark is None:
        return
    if taken:
        mark.sent = error.request_sent = True
    elif traced:
        error.request_sent = mark.sent
    else:
        mark.sent = error.request_sent


def _redirect_target(url: URL, location: str, redirects: int, what: str) -> URL:
    """Where a redirect leads, or why it is not followed."""
    if redirects > MAX_REDIRECTS:
        raise APIConnectionError(f"{what}: stopped after {MAX_REDIRECTS} redirects (a loop?)")
    try:
        target = url.join(URL(location))
    except ValueError as exc:
        raise APIConnectionError(
            f"{what}: redirected to an unusable URL {redact_url(location)!r}"
        ) from exc
    if target.scheme not in ("http", "https") or not target.host:
        raise APIConnectionError(f"{what}: redirected to an unusable URL {redact_url(location)!r}")
    return target


async def _read_whole(resp: aiohttp.ClientResponse) -> Response:
    return Response(resp.status, resp.headers, await resp.read())


async def _unread(resp: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
    return resp
