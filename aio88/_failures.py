"""aiohttp's failures in aio88's words: which error, whether the request left, and which
failures no retry can mend. The one place aiohttp's exceptions are mapped."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from ._errors import APIConnectionError, APITimeoutError
from ._models import redact_url

__all__ = ["FINAL_ERRORS", "TRANSPORT_ERRORS", "translate"]


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
        hint = " (check the credentials in the proxy URL)" if exc.status == 407 else ""
        return APIConnectionError(
            f"{what}: the proxy refused the connection (HTTP {exc.status} {exc.message})" + hint,
            request_sent=False,
        )
    if isinstance(exc, HttpProcessingError):
        return APIConnectionError(f"{what}: the body is not valid HTTP framing ({exc.message})")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return APIConnectionError(
            f"{what}: the server closed the connection without a complete answer"
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        return APIConnectionError(f"{what}: the server closed the connection mid-body")
    if isinstance(exc, aiohttp.InvalidURL):
        # Its text is the URL itself, whose query may be a signed link's credential.
        shown = redact_url(str(exc.url))
        if exc.description:
            shown += f" - {exc.description}"
        return APIConnectionError(f"{what}: the server redirected to an unusable URL ({shown})")
    if isinstance(exc, aiohttp.ClientResponseError):
        # aiohttp's parser refused the answer (a bad status line, a malformed header...)
        return APIConnectionError(f"{what}: the server's answer is not valid HTTP ({exc.message})")
    return APIConnectionError(f"{what}: {type(exc).__name__}: {exc}")


#: Failures that trying again cannot mend: a URL aiohttp refuses, a certificate we do
#: not trust, a proxy that refuses us (407: its credentials), a pinned fingerprint.
FINAL_ERRORS = (
    aiohttp.InvalidURL,
    aiohttp.ClientConnectorCertificateError,
    aiohttp.ClientHttpProxyError,
    aiohttp.ServerFingerprintMismatch,
)


#: What a request or a body read can fail with, before translation.
TRANSPORT_ERRORS = (
    aiohttp.ClientError,
    HttpProcessingError,  # aiohttp's pure-Python parser raises it for a bad body
    TimeoutError,
    asyncio.TimeoutError,
    OSError,
    APIConnectionError,
)
