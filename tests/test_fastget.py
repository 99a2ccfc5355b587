"""The poll fast path against a raw loopback server that answers exactly as told.

A real TCP server, so that the framings nginx and the emulator never send (chunked
bodies, a body ended by the close, a redirect, broken heads, a stall) are still tested.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from conftest import Answer

from aio88 import APIConnectionError, APITimeoutError, Client
from aio88._fastget import FastGetPool, Headers, UnusualResponse
from aio88.testing import Emulator

TASK = b'{"id":"task_1","status":"completed","progress":100}'


def pool(port: int, total: float | None = 5.0) -> FastGetPool:
    return FastGetPool(
        host="127.0.0.1",
        port=port,
        use_tls=False,
        prefix="/api",
        headers={"Authorization": "Bearer k"},
        connect_timeout=2.0,
        total_timeout=total,
    )


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_keep_alive_reuses_one_connection(raw_server: object) -> None:
    """Consecutive GETs share a connection; the prefix and headers are sent."""
    seen: list[bytes] = []

    def answer(request: bytes) -> bytes:
        seen.append(request)
        return ok(TASK, b"X-Oneapi-Request-Id: r1\r\n")

    port = await raw_server(answer)  # type: ignore[operator]
    fast = pool(port)
    for _ in range(3):
        status, headers, body = await fast.get("/v1/videos/task_1?x=1")
        assert (status, body) == (200, TASK)
        assert headers.get("x-oneapi-request-id") == "r1" and "X-ONEAPI-REQUEST-ID" in headers
    assert len(fast._idle) == 1
    assert seen[0].startswith(b"GET /api/v1/videos/task_1?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Authorization: Bearer k\r\n" in seen[0]
    fast.close()


async def test_chunked_body(raw_server: object) -> None:
    """Transfer-Encoding: chunked is reassembled, in pieces as they come."""
    body = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    port = await raw_server(lambda _: body)  # type: ignore[operator]
    fast = pool(port)
    status, _, got = await fast.get("/x")
    assert (status, got) == (200, b"hello world")
    fast.close()


async def test_body_until_close_and_connection_close(raw_server: object) -> None:
    """No length: the body ends with the connection; Connection: close is not reused."""
    port = await raw_server(lambda _: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + TASK)  # type: ignore[operator]
    fast = pool(port)
    status, _, body = await fast.get("/x")
    assert (status, body) == (200, TASK)
    assert fast._idle == []
    fast.close()


async def test_no_content_statuses(raw_server: object) -> None:
    """204 has no body even without a length."""
    port = await raw_server(lambda _: b"HTTP/1.1 204 No Content\r\n\r\n")  # type: ignore[operator]
    fast = pool(port)
    assert (await fast.get("/x"))[0] == 204
    fast.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /y\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    ],
    ids=["redirect", "bad-status", "bad-length", "huge", "bad-chunk", "huge-head"],
)
async def test_unusual_answers_are_handed_back(raw_server: object, reply: bytes) -> None:
    """What the fast path does not handle raises UnusualResponse (aiohttp takes over)."""
    port = await raw_server(lambda _: reply)  # type: ignore[operator]
    fast = pool(port)
    with pytest.raises(UnusualResponse):
        await fast.get("/x")
    fast.close()


async def test_connection_lost_mid_response(raw_server: object) -> None:
    """A body cut short is an APIConnectionError (the request was sent)."""
    port = await raw_server(
        lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nshort"
    )  # type: ignore[operator]
    fast = pool(port)
    with pytest.raises(APIConnectionError, match="mid-response") as caught:
        await fast.get("/x")
    assert caught.value.request_sent
    fast.close()


async def test_stalled_answer_times_out(raw_server: object) -> None:
    """The sweep fails a request older than the total timeout."""
    port = await raw_server(lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nHANG")  # type: ignore[operator]
    fast = pool(port, total=0.2)
    with pytest.raises(APITimeoutError, match=r"no answer within 0\.2s"):
        await fast.get("/x")
    fast.close()


async def test_connect_failures(closed_port: int) -> None:
    """A closed port is a connection error that says nothing was sent; a closed pool too."""
    port = closed_port
    fast = pool(port)
    with pytest.raises(APIConnectionError, match="cannot connect") as caught:
        await fast.get("/x")
    assert caught.value.request_sent is False
    fast.close()
    with pytest.raises(APIConnectionError, match="closed"):
        await fast.get("/x")


async def test_client_falls_back_to_aiohttp_on_a_redirect(raw_server: object) -> None:
    """A poll that gets a redirect is redone through aiohttp, which follows it."""

    def answer(request: bytes) -> bytes:
        if b"GET /v1/videos/old" in request:
            return b"HTTP/1.1 302 Found\r\nLocation: /v1/videos/task_1\r\nContent-Length: 0\r\n\r\n"
        return ok(TASK, b"Content-Type: application/json\r\n")

    port = await raw_server(answer)  # type: ignore[operator]
    async with Client("k", base_url=f"http://127.0.0.1:{port}") as client:
        video = await client.videos.retrieve("old")
    assert video.id == "task_1"


def test_headers_mapping() -> None:
    """Headers are case-insensitive for lookups."""
    headers = Headers({"retry-after": "2"})
    assert headers["Retry-After"] == "2" and headers.get("RETRY-AFTER") == "2"
    assert headers.value("missing") == "" and 5 not in headers


async def test_callers_session_skips_the_fast_path(aio88_emulator: Emulator) -> None:
    """A session passed in is used for every request (its proxies, its tracing)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with Client("sk-test", base_url=aio88_emulator.base_url, session=session) as client:
            assert client._transport.fast is None
            await client.videos.retrieve(aio88_emulator.add_task())


async def test_polls_over_tls(tls_server: Callable[[Answer], asyncio.Future[int]]) -> None:
    """The fast path speaks TLS (88api.ai is https): handshake, certificate and hostname
    checked against a self-signed certificate for 127.0.0.1 that the test trusts."""
    requests: list[bytes] = []

    def answer(request: bytes) -> bytes:
        requests.append(request)
        return ok(TASK)

    port = await tls_server(answer)
    async with Client("k", base_url=f"https://127.0.0.1:{port}") as client:
        assert client._transport.fast is not None
        for _ in range(3):
            video = await client.videos.retrieve("task_1")
            assert video.id == "task_1"
    assert len(requests) == 3
    assert requests[0].startswith(b"GET /v1/videos/task_1 HTTP/1.1\r\nHost: 127.0.0.1:")


async def test_tls_certificate_is_checked(raw_server: object) -> None:
    """Without trust in the server's certificate, a poll fails instead of talking to it."""
    fast = FastGetPool(
        host="127.0.0.1",
        port=1,
        use_tls=True,
        prefix="",
        headers={},
        connect_timeout=2.0,
        total_timeout=5.0,
    )
    assert fast._ssl is not None and fast._ssl.verify_mode.name == "CERT_REQUIRED"
    assert fast._ssl.check_hostname
    fast.close()
