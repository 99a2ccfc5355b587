"""The aiohttp sessions a transport sends through: one for every request but creates,
one for creates, sharing their cookies, TLS settings and tracing."""

from __future__ import annotations

import logging
import ssl as ssl_module
from collections.abc import Sequence

import aiohttp

from ._config import CREATE_KEEPALIVE, DNS_CACHE_TTL, POOL_KEEPALIVE
from ._sending import SendMark

__all__ = ["SSLSetting", "close_now", "make_sessions", "send_tracing"]

log = logging.getLogger("aio88")

#: What ``Client(ssl=...)`` takes: a context, ``False`` (no verification) or ``None``.
SSLSetting = ssl_module.SSLContext | bool | None


def make_sessions(
    max_connections: int, ssl: SSLSetting, trace_configs: Sequence[aiohttp.TraceConfig]
) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
    """(the session for every request but creates, the one for creates).

    The creates' pool reuses a connection only within :data:`CREATE_KEEPALIVE` seconds:
    a POST written onto a pooled connection the server has just closed fails although the
    server never saw it, and aiohttp does not resend a POST, so it would look like "maybe
    created, maybe billed". One cookie jar: a sticky balancer's cookie goes everywhere.
    """
    verify: ssl_module.SSLContext | bool = True if ssl is None else ssl
    if verify is False:
        log.warning(
            "aio88.Client(ssl=False): TLS certificates are not verified; anyone on the "
            "network path can read the API key"
        )
    cookies = aiohttp.CookieJar()

    def session(keepalive: float, *own: aiohttp.TraceConfig) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            limit_per_host=0,
            ttl_dns_cache=DNS_CACHE_TTL,
            ssl=verify,
            keepalive_timeout=keepalive,
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=cookies,
            trust_env=False,  # the environment's proxies are read once, by Proxies
            # Ours last: a caller's hook that pauses then runs before "sent" is noted,
            # not between it and the write.
            trace_configs=[*trace_configs, *own] or None,
        )

    return session(POOL_KEEPALIVE), session(CREATE_KEEPALIVE, send_tracing())


def send_tracing() -> aiohttp.TraceConfig:
    """Tracing that marks a create's :class:`SendMark` (passed as ``trace_request_ctx``).

    aiohttp signals "headers sent" when it *buffers* the headers, before any byte is
    written (they go out with the body's first chunk), and "chunk sent" just before it
    writes each piece of the body. So the first is where a caller commits "may reach the
    server", and the second is the moment it becomes true. A create always has a body. (With
    ``Expect: 100-continue`` the headers go out alone first; a server cannot create from
    headers without their body, so "not sent" still holds until the body's first chunk.)
    """

    async def on_headers(
        _session: aiohttp.ClientSession,
        context: object,
        _params: aiohttp.TraceRequestHeadersSentParams,
    ) -> None:
        mark = getattr(context, "trace_request_ctx", None)
        if isinstance(mark, SendMark):
            await mark.writing()

    async def on_chunk(
        _session: aiohttp.ClientSession,
        context: object,
        _params: aiohttp.TraceRequestChunkSentParams,
    ) -> None:
        mark = getattr(context, "trace_request_ctx", None)
        if isinstance(mark, SendMark):
            mark.wrote()

    tracing = aiohttp.TraceConfig()
    tracing.on_request_headers_sent.append(on_headers)
    tracing.on_request_chunk_sent.append(on_chunk)
    tracing.freeze()
    return tracing


def close_now(session: aiohttp.ClientSession) -> None:
    """Close a session's sockets without awaiting (no event loop to await on: a client
    dropped while open, in ``__del__``)."""
    if session.closed:
        return
    connector = session.connector
    session.detach()  # marks it closed, so aiohttp does not warn a second time
    if connector is not None:
        # aiohttp has no public synchronous close.
        connector._close()  # noqa: SLF001
