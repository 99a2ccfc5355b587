"""HTTP compatibility: the public API against real servers on loopback.

Each case is something a real network does (1xx heads, HTTP/1.0, ``Connection`` lists,
gzip, silence, idle and exhausted keep-alive connections, a forward proxy, a private CA,
an IDN host) and asserts on what the server actually received. Servers: a scripted raw
asyncio server, nginx, ``python -m http.server`` and tinyproxy (``tests/servers.py``).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from servers import (
    Handler,
    Nginx,
    RawConnection,
    RawRequest,
    RawServer,
    RawServerPool,
    StaticHttpServer,
    TestCA,
    TinyProxy,
    free_port,
    http_reply,
    task_id_of,
    task_json,
)

from aio88 import (
    Aio88Error,
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    BadRequestError,
    Client,
    DownloadError,
    InternalServerError,
    NotFoundError,
    Outcome,
    RetryPolicy,
    Schedule,
    Timeouts,
    Watch,
)
from aio88.testing import Emulator

KEY = "sk-compat"
#: Retries that cost no time (the policy's rules, none of its patience).
FAST_RETRY = RetryPolicy(attempts=3, backoff_initial=0.01, backoff_max=0.02)
#: No retries by aio88: whatever succeeds did so on its first try.
NO_RETRY = RetryPolicy(attempts=1)
#: Short enough that a stuck request fails the test quickly.
SHORT = Timeouts(connect=2.0, read=2.0, total=5.0)
FAST_POLL = Schedule.fixed(0.01)
#: No test may hang: each one runs under this deadline (seconds).
GUARD = 15.0
JSON = ("Content-Type", "application/json")
HINTS = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
)


def make_client(base_url: str, **options: Any) -> Client:
    """A client for ``base_url``, with fast retries and short timeouts unless told
    otherwise. Options go to :class:`aio88.Client` as they are."""
    options.setdefault("retry", FAST_RETRY)
    options.setdefault("timeouts", SHORT)
    return Client(options.pop("api_key", KEY), base_url=base_url, **options)


def the_task(request: RawRequest) -> bytes:
    """A completed task with the id that was asked for; a queued ``task_new`` to a create."""
    if request.method == "POST":
        return http_reply(task_json("task_new", status="queued"))
    return http_reply(task_json(task_id_of(request)))


@asynccontextmanager
async def guard() -> AsyncIterator[None]:
    """Fail (instead of hanging) if the block takes longer than :data:`GUARD`."""
    with anyio.fail_after(GUARD):
        yield


async def collect(outcomes: Watch) -> dict[str, Outcome]:
    """Every outcome of a watch, by id."""
    found: dict[str, Outcome] = {}
    async for outcome in outcomes:
        found[outcome.id] = outcome
    return found


# -- a raw server: what aiohttp parses and a hand-written client did not ---------------


async def test_1xx_answers_before_polls_are_skipped(raw_servers: RawServerPool) -> None:
    """100 Continue and 103 Early Hints before each answer, on one kept-alive
    connection: every poll gets its own task (never the previous poll's answer)."""
    server = await raw_servers.start(lambda request: HINTS + the_task(request))
    async with make_client(server.base_url, retry=NO_RETRY) as client, guard():
        got = [(await client.videos.retrieve(f"task_{i}")).id for i in range(4)]
    assert got == ["task_0", "task_1", "task_2", "task_3"]
    assert [task_id_of(r) for r in server.requests] == got


async def test_watch_after_1xx_gives_each_outcome_its_own_task(
    raw_servers: RawServerPool,
) -> None:
    """The old bug: the 1xx was taken as one poll's answer and the real answer handed to
    the next poll on that connection, so one task's outcome carried another's."""
    server = await raw_servers.start(lambda request: HINTS + the_task(request))
    ids = ["task_a", "task_b", "task_c"]
    async with make_client(server.base_url, retry=NO_RETRY) as client, guard():
        async with client.watch(ids, schedule=FAST_POLL, concurrency=1, timeout=5) as watch:
            outcomes = await collect(watch)
    assert sorted(outcomes) == ids
    for task_id, outcome in outcomes.items():
        assert outcome.error is None, outcome.error
        assert outcome.task is not None and outcome.task.id == task_id
        assert outcome.ok
    assert sorted(task_id_of(r) for r in server.requests) == ids


@pytest.mark.parametrize("framing", ["content-length", "until-close"])
async def test_http_1_0_answers(raw_servers: RawServerPool, framing: str) -> None:
    """An HTTP/1.0 server closes after each answer: several polls in a row all succeed
    on their first try, each on its own connection."""

    def answer(request: RawRequest) -> bytes:
        body = task_json(task_id_of(request))
        return http_reply(body, version="HTTP/1.0", content_length=framing == "content-length")

    server = await raw_servers.start(answer)
    async with make_client(server.base_url, retry=NO_RETRY) as client, guard():
        got = [(await client.videos.retrieve(f"task_{i}")).id for i in range(5)]
    assert got == [f"task_{i}" for i in range(5)]
    assert len(server.requests) == 5 and server.connections == 5


async def test_connection_close_in_a_token_list(raw_servers: RawServerPool) -> None:
    """``Connection: close, x-foo`` closes the connection as ``close`` alone does."""

    def answer(request: RawRequest) -> bytes:
        return http_reply(
            task_json(task_id_of(request)), headers=[JSON, ("Connection", "close, x-foo")]
        )

    server = await raw_servers.start(answer)
    async with make_client(server.base_url, retry=NO_RETRY) as client, guard():
        got = [(await client.videos.retrieve(f"task_{i}")).id for i in range(5)]
    assert got == [f"task_{i}" for i in range(5)]
    assert len(server.requests) == 5 and server.connections == 5


async def test_gzip_answer_is_decoded(raw_servers: RawServerPool) -> None:
    """The request offers gzip, and a gzip-encoded task is decoded."""

    def answer(request: RawRequest) -> bytes:
        body = gzip.compress(task_json(task_id_of(request), seconds="8"))
        return http_reply(body, headers=[JSON, ("Content-Encoding", "gzip")])

    server = await raw_servers.start(answer)
    async with make_client(server.base_url) as client, guard():
        task = await client.videos.retrieve("task_1")
    assert task.id == "task_1" and task.seconds == "8"
    accept = server.requests[0].values("accept-encoding")
    assert len(accept) == 1 and "gzip" in accept[0].lower(), server.requests[0].head


async def test_silent_server_times_out_per_read_timeout(raw_servers: RawServerPool) -> None:
    """A server that reads the poll and never answers: ``Timeouts.read`` ends each try
    (no total deadline here), then ``APITimeoutError`` after the policy's attempts."""

    async def silent(conn: RawConnection) -> None:
        while await conn.read_request() is not None:
            await conn.wait_for_close()

    server = await raw_servers.start(handler=silent)
    timeouts = Timeouts(connect=0.25, read=0.15, total=None)
    retry = RetryPolicy(attempts=2, backoff_initial=0.01, backoff_max=0.02)
    async with make_client(server.base_url, timeouts=timeouts, retry=retry) as client, guard():
        with pytest.raises(APITimeoutError):
            await client.videos.retrieve("task_1")
    assert len(server.requests) == 2


async def test_answer_sent_before_the_request_is_read(raw_servers: RawServerPool) -> None:
    """Some servers answer as soon as a connection opens (and close): the answer is
    still the poll's answer."""

    async def eager(conn: RawConnection) -> None:
        await conn.send(http_reply(task_json("task_1"), headers=[JSON, ("Connection", "close")]))
        await conn.read_request()

    server = await raw_servers.start(handler=eager)
    async with make_client(server.base_url) as client, guard():
        task = await client.videos.retrieve("task_1")
    assert task.id == "task_1"
    assert [r.path for r in server.requests] == ["/v1/videos/task_1"]


async def test_error_sent_before_the_request_is_read(raw_servers: RawServerPool) -> None:
    """An overloaded server's 503 sent at once: an aio88 status error after the retries."""

    async def busy(conn: RawConnection) -> None:
        body = b'{"error": {"message": "overloaded"}}'
        await conn.send(
            http_reply(body, status=503, reason="Busy", headers=[JSON, ("Connection", "close")])
        )
        await conn.read_request()

    server = await raw_servers.start(handler=busy)
    async with make_client(server.base_url) as client, guard():
        with pytest.raises(InternalServerError, match="overloaded"):
            await client.videos.retrieve("task_1")
    assert server.connections == FAST_RETRY.attempts


async def test_answer_for_another_task_is_a_validation_error(raw_servers: RawServerPool) -> None:
    """An answer about another task is never taken for the one asked about: retrieve,
    wait and watch all say so."""
    server = await raw_servers.start(lambda request: http_reply(task_json("task_other")))
    async with make_client(server.base_url) as client, guard():
        with pytest.raises(APIResponseValidationError):
            await client.videos.retrieve("task_1")
        with pytest.raises(APIResponseValidationError):
            await client.videos.wait("task_1", schedule=FAST_POLL, timeout=5)
        async with client.watch(["task_1", "task_2"], schedule=FAST_POLL, timeout=5) as watch:
            outcomes = await collect(watch)
    assert sorted(outcomes) == ["task_1", "task_2"]
    for outcome in outcomes.values():
        assert not outcome.ok
        assert isinstance(outcome.error, APIResponseValidationError), outcome.error
    assert server.requests, "the server was asked"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"headers": {"X-Note": "a\r\nX-Injected: 1"}}, "X-Note"),
        ({"headers": {"X-Note": "a\nb"}}, "X-Note"),
        ({"headers": {"X-Note": "a\rb"}}, "X-Note"),
        ({"headers": {"X-Note": "a\x00b"}}, "X-Note"),
        ({"headers": {"X-Bad\r\nName": "v"}}, "X-Bad"),
        ({"api_key": "sk-1\r\nX-Injected: 1"}, "(?i)api.?key|authorization"),
        ({"api_key": "sk-1\r\n\r\nGET /steal HTTP/1.1"}, "(?i)api.?key|authorization"),
        ({"api_key": "sk-1\x00"}, "(?i)api.?key|authorization"),
    ],
    ids=["crlf", "lf", "cr", "nul", "name", "key-crlf", "key-request", "key-nul"],
)
async def test_control_characters_in_headers_are_refused(
    raw_servers: RawServerPool, options: dict[str, Any], named: str
) -> None:
    """CR, LF or NUL in a header or the key: ``ValueError`` naming it, from ``Client()``,
    before anything is sent."""
    server = await raw_servers.start(the_task)
    try:
        client = make_client(server.base_url, **options)
    except ValueError as exc:
        assert re.search(named, str(exc)), str(exc)
    else:
        async with client, guard():
            with suppress(Aio88Error, ValueError):
                await client.videos.retrieve("task_1")
        pytest.fail(f"Client() accepted {options!r}; the server received {server.requests!r}")
    assert server.requests == [] and server.connections == 0


@pytest.mark.parametrize(
    ("headers", "name", "expected"),
    [
        ({"user-agent": "my-app/1.0"}, "User-Agent", "my-app/1.0"),
        ({"User-Agent": "my-app/1.0"}, "User-Agent", "my-app/1.0"),
        ({"Host": "api.example"}, "Host", "api.example"),
        ({"host": "api.example"}, "Host", "api.example"),
    ],
    ids=["user-agent", "User-Agent", "Host", "host"],
)
async def test_host_and_user_agent_overrides_replace_the_default(
    raw_servers: RawServerPool, headers: dict[str, str], name: str, expected: str
) -> None:
    """A user's ``Host`` or ``User-Agent`` replaces the default: exactly one such header,
    on polls and creates alike."""
    server = await raw_servers.start(the_task)
    async with make_client(server.base_url, headers=headers) as client, guard():
        await client.videos.retrieve("task_1")
        await client.videos.create(prompt="a red fox")
        await client.videos.retrieve("task_2")
    assert [r.method for r in server.requests] == ["GET", "POST", "GET"]
    for request in server.requests:
        assert request.values(name) == [expected], request.head


async def test_default_host_and_user_agent(raw_servers: RawServerPool) -> None:
    """Without overrides: one ``Host`` (the origin) and one ``aio88/...`` User-Agent."""
    server = await raw_servers.start(the_task)
    async with make_client(server.base_url) as client, guard():
        await client.videos.retrieve("task_1")
        await client.videos.create(prompt="a red fox")
    for request in server.requests:
        assert request.values("host") == [f"127.0.0.1:{server.port}"]
        (agent,) = request.values("user-agent")
        assert agent.startswith("aio88/")


async def test_lf_only_answers_are_parsed(raw_servers: RawServerPool) -> None:
    """Bare ``\\n`` line endings: aiohttp's parser (its C one and its pure-Python one
    alike, checked on aiohttp 3.14) reads such an answer as a normal one, framing
    included: each poll gets its own task on the first try, on one kept-alive connection."""
    server = await raw_servers.start(
        lambda request: http_reply(task_json(task_id_of(request)), eol=b"\n")
    )
    async with make_client(server.base_url, retry=NO_RETRY) as client, guard():
        got = [(await client.videos.retrieve(task_id)).id for task_id in ("task_1", "task_2")]
    assert got == ["task_1", "task_2"]
    assert [task_id_of(r) for r in server.requests] == got
    assert server.connections == 1


async def test_max_connections_bounds_polls(raw_servers: RawServerPool) -> None:
    """``max_connections`` bounds the polls of a watch too."""

    async def slow(conn: RawConnection) -> None:
        while (request := await conn.read_request()) is not None:
            await asyncio.sleep(0.05)
            await conn.send(the_task(request))

    server = await raw_servers.start(handler=slow)
    ids = [f"task_{i}" for i in range(8)]
    async with make_client(server.base_url, max_connections=2) as client, guard():
        async with client.watch(ids, schedule=FAST_POLL, concurrency=8, timeout=10) as watch:
            outcomes = await collect(watch)
    assert all(outcome.ok for outcome in outcomes.values()), outcomes
    assert len(server.requests) == 8
    assert server.max_open_connections <= 2


async def test_sticky_cookie_is_sent_back_on_polls(raw_servers: RawServerPool) -> None:
    """A load balancer's sticky cookie (set on the first answer) comes back on the next
    polls (the issue's list; ``localhost``, as aiohttp keeps no cookies for IP hosts)."""

    def answer(request: RawRequest) -> bytes:
        cookie = [] if request.values("cookie") else [("Set-Cookie", "lb=node-7; Path=/")]
        return http_reply(task_json(task_id_of(request)), headers=[JSON, *cookie])

    server = await raw_servers.start(answer)
    async with make_client(f"http://localhost:{server.port}") as client, guard():
        for i in range(3):
            await client.videos.retrieve(f"task_{i}")
    cookies = [r.values("cookie") for r in server.requests]
    assert cookies == [[], ["lb=node-7"], ["lb=node-7"]]


# -- nginx: keep-alive connections the server closes -------------------------------------


def _marker() -> str:
    return uuid.uuid4().hex


@pytest.mark.slow
async def test_polls_survive_idle_and_exhausted_connections(nginx: Nginx) -> None:
    """nginx closes idle connections after 1 s and any after 3 requests. Ten polls with
    1.2 s gaps (one of them with the event loop blocked, as a busy process would) never
    surface an error, even with aio88's own retries off."""
    marker = _marker()
    ids = [f"task_{marker[:8]}_{i}" for i in range(10)]
    got = []
    client = make_client(nginx.base_url, retry=NO_RETRY, headers={"X-Compat-Test": marker})
    async with client, guard():
        for i, task_id in enumerate(ids):
            if i == 3:
                await asyncio.sleep(1.2)  # idle: nginx closes the pooled connection
            if i == 7:
                time.sleep(1.2)  # blocked: the close is not even seen before the next poll
            got.append((await client.videos.retrieve(task_id)).id)
    assert got == ids
    entries = await nginx.entries(marker, 10)
    assert [e.uri for e in entries] == [f"/v1/videos/{task_id}" for task_id in ids]
    assert all(e.status == 200 for e in entries)
    assert max(e.connection_requests for e in entries) <= 3
    assert len({e.connection for e in entries}) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("gap", ["idle", "busy"])
async def test_create_after_a_gap_goes_on_a_live_connection(nginx: Nginx, gap: str) -> None:
    """A create after 1.2 s without traffic (nginx closed the pooled connection at 1 s)
    succeeds, sent on a new connection or one used within the last second; with the
    loop blocked (busy) the client has not even seen the close."""
    marker = _marker()
    async with make_client(nginx.base_url, headers={"X-Compat-Test": marker}) as client, guard():
        await client.videos.create(prompt="a red fox")
        await client.videos.retrieve("task_warm")
        if gap == "idle":
            await asyncio.sleep(1.2)
        else:
            time.sleep(1.2)
        created = await client.videos.create(prompt="a grey wolf")
    assert created.id.startswith("task_c")
    entries = await nginx.entries(marker, 3)
    assert [(e.method, e.status) for e in entries] == [("POST", 200), ("GET", 200), ("POST", 200)]
    last = entries[-1]
    before = [e for e in entries[:-1] if e.connection == last.connection]
    assert last.connection_requests == 1 or last.msec - before[-1].msec < 1.0, entries


# -- python -m http.server: an HTTP/1.0 static server ------------------------------------


async def test_download_from_http_server(static_http: StaticHttpServer, tmp_path: Path) -> None:
    """A download of an absolute URL from an HTTP/1.0 server: the exact bytes."""
    data = os.urandom(300_000)
    url = static_http.add_file(f"{_marker()}/file.mp4", data)
    async with make_client(static_http.base_url) as client, guard():
        path = await client.download(url, tmp_path / "file.mp4")
    assert path.read_bytes() == data


async def test_content_stream_from_http_server(static_http: StaticHttpServer) -> None:
    """``videos.content`` streams a file from an HTTP/1.0 server, exactly."""
    data = os.urandom(200_000) + b"end"
    task_id = f"task_{_marker()}"
    static_http.add_file(f"v1/videos/{task_id}/content", data)
    async with make_client(static_http.base_url) as client, guard():
        async with client.videos.content(task_id) as body:
            received = b"".join([chunk async for chunk in body])
    assert received == data


async def test_polls_to_http_server(static_http: StaticHttpServer) -> None:
    """Polls to an HTTP/1.0 server (a new connection each) all succeed at once."""
    ids = [f"task_{_marker()}" for _ in range(4)]
    for task_id in ids:
        static_http.add_file(f"v1/videos/{task_id}", task_json(task_id))
    async with make_client(static_http.base_url, retry=NO_RETRY) as client, guard():
        got = [(await client.videos.retrieve(task_id)).id for task_id in ids]
    assert got == ids
    for task_id in ids:
        assert len(static_http.log_lines(f"GET /v1/videos/{task_id} ")) == 1


# -- tinyproxy: a real forward proxy -----------------------------------------------------


async def _proxy_logged(proxy: TinyProxy, needle: str) -> list[str]:
    """The proxy's request lines containing ``needle`` (waiting briefly for its log)."""
    for _ in range(50):
        lines = proxy.log_lines(needle)
        if lines:
            return lines
        await asyncio.sleep(0.02)
    return []


def _via_proxy(request: RawRequest) -> bool:
    return any("tinyproxy" in value for value in request.values("via"))


async def test_http_proxy_from_the_environment(
    tinyproxy: TinyProxy,
    raw_servers: RawServerPool,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """With ``HTTP_PROXY`` set, creates, polls and downloads all go through the proxy."""
    data = os.urandom(50_000)

    def answer(request: RawRequest) -> bytes:
        if request.path.endswith(".mp4"):
            return http_reply(data, headers=[("Content-Type", "video/mp4")])
        return the_task(request)

    origin = await raw_servers.start(answer)
    monkeypatch.setenv("HTTP_PROXY", tinyproxy.url)
    async with make_client(origin.base_url) as client, guard():
        await client.videos.create(prompt="a red fox")
        assert (await client.videos.retrieve("task_1")).id == "task_1"
        await client.download(f"{origin.base_url}/media/v.mp4", tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").read_bytes() == data
    assert [r.method for r in origin.requests] == ["POST", "GET", "GET"]
    assert all(_via_proxy(r) for r in origin.requests), [r.head for r in origin.requests]
    assert len(await _proxy_logged(tinyproxy, f"//127.0.0.1:{origin.port}/")) >= 3


async def test_https_proxy_tunnels_with_connect(
    tinyproxy: TinyProxy,
    raw_servers: RawServerPool,
    test_ca: TestCA,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``HTTPS_PROXY`` set, a TLS origin is reached through a ``CONNECT`` tunnel
    (the certificate checked end to end against the client's CA)."""
    origin = await raw_servers.start(the_task, ssl_context=test_ca.server_context())
    monkeypatch.setenv("HTTPS_PROXY", tinyproxy.url)
    async with make_client(origin.base_url, ssl=test_ca.client_context()) as client, guard():
        assert (await client.videos.retrieve("task_1")).id == "task_1"
    assert len(origin.requests) == 1
    assert await _proxy_logged(tinyproxy, f"CONNECT 127.0.0.1:{origin.port} ")


async def test_no_proxy_bypasses_the_proxy(
    tinyproxy: TinyProxy, raw_servers: RawServerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``NO_PROXY=127.0.0.1``: the origin is reached directly."""
    origin = await raw_servers.start(the_task)
    monkeypatch.setenv("HTTP_PROXY", tinyproxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with make_client(origin.base_url) as client, guard():
        assert (await client.videos.retrieve("task_1")).id == "task_1"
    assert len(origin.requests) == 1 and not _via_proxy(origin.requests[0])
    assert not tinyproxy.log_lines(f"127.0.0.1:{origin.port}")


async def test_proxy_false_ignores_the_environment(
    tinyproxy: TinyProxy, raw_servers: RawServerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``proxy=False``: ``HTTP_PROXY`` is ignored."""
    origin = await raw_servers.start(the_task)
    monkeypatch.setenv("HTTP_PROXY", tinyproxy.url)
    async with make_client(origin.base_url, proxy=False) as client, guard():
        assert (await client.videos.retrieve("task_1")).id == "task_1"
    assert len(origin.requests) == 1 and not _via_proxy(origin.requests[0])
    assert not tinyproxy.log_lines(f"127.0.0.1:{origin.port}")


async def test_explicit_proxy(tinyproxy: TinyProxy, raw_servers: RawServerPool) -> None:
    """``proxy="http://..."`` without any environment: polls and creates go through it."""
    origin = await raw_servers.start(the_task)
    async with make_client(origin.base_url, proxy=tinyproxy.url) as client, guard():
        assert (await client.videos.retrieve("task_1")).id == "task_1"
        await client.videos.create(prompt="a red fox")
    assert len(origin.requests) == 2
    assert all(_via_proxy(r) for r in origin.requests), [r.head for r in origin.requests]


# -- TLS with a private CA ---------------------------------------------------------------


@pytest.fixture
def no_ambient_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default trust store only: no ``SSL_CERT_FILE``/``SSL_CERT_DIR`` of the runner."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


async def _tls_origin(raw_servers: RawServerPool, test_ca: TestCA) -> RawServer:
    data = b"\x00video" * 10_000

    def answer(request: RawRequest) -> bytes:
        if request.path.endswith(".mp4"):
            return http_reply(data, headers=[("Content-Type", "video/mp4")])
        return the_task(request)

    return await raw_servers.start(answer, ssl_context=test_ca.server_context())


@pytest.mark.usefixtures("no_ambient_ca")
async def test_tls_with_a_private_ca(
    raw_servers: RawServerPool, test_ca: TestCA, tmp_path: Path
) -> None:
    """``ssl=`` a context trusting the test CA: polls and downloads verify against it."""
    origin = await _tls_origin(raw_servers, test_ca)
    async with make_client(origin.base_url, ssl=test_ca.client_context()) as client, guard():
        assert (await client.videos.retrieve("task_1")).id == "task_1"
        await client.download(f"{origin.base_url}/v.mp4", tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").stat().st_size == 60_000


@pytest.mark.usefixtures("no_ambient_ca")
async def test_tls_untrusted_certificate_is_refused(
    raw_servers: RawServerPool, test_ca: TestCA
) -> None:
    """Without ``ssl=``, a certificate from an unknown CA is refused with an aio88 error,
    and no request reaches the server."""
    origin = await _tls_origin(raw_servers, test_ca)
    async with make_client(origin.base_url) as client, guard():
        with pytest.raises(APIConnectionError, match=r"(?i)certificate|ssl|tls"):
            await client.videos.retrieve("task_1")
    assert origin.requests == []


@pytest.mark.usefixtures("no_ambient_ca")
async def test_ssl_false_skips_verification_and_warns_once(
    raw_servers: RawServerPool,
    test_ca: TestCA,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``ssl=False`` reaches an untrusted server, and says so once in the log."""
    origin = await _tls_origin(raw_servers, test_ca)
    caplog.set_level(logging.WARNING)
    async with make_client(origin.base_url, ssl=False) as client, guard():
        for task_id in ("task_1", "task_2"):
            assert (await client.videos.retrieve(task_id)).id == task_id
        await client.download(f"{origin.base_url}/v.mp4", tmp_path / "v.mp4")
    warnings = [
        r for r in caplog.records if r.name.startswith("aio88") and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert len(origin.requests) == 3


SSL_CERT_FILE_CHILD = """
import asyncio, sys
from aio88 import Client, RetryPolicy

async def main() -> None:
    async with Client("sk-compat", base_url=sys.argv[1], retry=RetryPolicy(attempts=1)) as c:
        print((await c.videos.retrieve("task_1")).id)

asyncio.run(main())
"""


@pytest.mark.usefixtures("no_ambient_ca")
async def test_ssl_cert_file_is_honoured(raw_servers: RawServerPool, test_ca: TestCA) -> None:
    """``SSL_CERT_FILE`` in a process's environment: the default client trusts that CA
    (in a child process, which reads it at start as a deployment would)."""
    origin = await _tls_origin(raw_servers, test_ca)
    env = {**os.environ, "SSL_CERT_FILE": str(test_ca.ca_cert)}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SSL_CERT_FILE_CHILD,
        origin.base_url,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    async with guard():
        out, err = await child.communicate()
    assert child.returncode == 0, err.decode(errors="replace")[-2000:]
    assert out.decode().strip() == "task_1"


# -- an IDN host through a proxy ---------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "punycode"),
    [("例え.テスト", "xn--r8jz45g.xn--zckzah"), ("例子.中国", "xn--fsqu00a.xn--fiqs8s")],
    ids=["japanese", "chinese"],
)
async def test_idn_host_goes_out_as_punycode(
    raw_servers: RawServerPool, host: str, punycode: str
) -> None:
    """The proxy (played by a raw server) sees the host in punycode, in the request
    line and the ``Host`` header."""
    proxy = await raw_servers.start(the_task)
    port = 8443
    client = make_client(f"http://{host}:{port}", proxy=proxy.base_url)
    async with client, guard():
        assert (await client.videos.retrieve("task_1")).id == "task_1"
    (request,) = proxy.requests
    assert request.line == f"GET http://{punycode}:{port}/v1/videos/task_1 HTTP/1.1"
    assert request.values("host") == [f"{punycode}:{port}"]


# -- tracing -----------------------------------------------------------------------------


class Traced:
    """What a TraceConfig saw: each request's first hop, redirects and ends."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, str]] = []
        self.redirects: list[tuple[str, str]] = []
        self.ends: list[tuple[str, str]] = []
        self.exceptions: list[tuple[str, str]] = []

    def config(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()

        async def on_start(
            session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestStartParams
        ) -> None:
            self.starts.append((params.method, str(params.url.with_query(None))))

        async def on_redirect(
            session: aiohttp.ClientSession,
            context: Any,
            params: aiohttp.TraceRequestRedirectParams,
        ) -> None:
            self.redirects.append((params.method, str(params.url.with_query(None))))

        async def on_end(
            session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestEndParams
        ) -> None:
            self.ends.append((params.method, str(params.url.with_query(None))))

        async def on_exception(
            session: aiohttp.ClientSession,
            context: Any,
            params: aiohttp.TraceRequestExceptionParams,
        ) -> None:
            self.exceptions.append((params.method, str(params.url.with_query(None))))

        config.on_request_start.append(on_start)
        config.on_request_redirect.append(on_redirect)
        config.on_request_end.append(on_end)
        config.on_request_exception.append(on_exception)
        return config


@pytest.mark.aio88_emulator(dialect="newapi", duration=None)
async def test_trace_configs_see_every_request(aio88_emulator: Emulator, tmp_path: Path) -> None:
    """A create, a retrieve, a watch of three, a content stream and a download through a
    redirect: every request that reached a server was visible to the TraceConfig."""
    traced = Traced()
    emulator = aio88_emulator
    ids = [emulator.add_task(status="succeeded") for _ in range(3)]
    client = make_client(
        emulator.base_url, api_key=emulator.api_key, trace_configs=[traced.config()]
    )
    async with client, guard():
        task = await client.videos.create(prompt="a red fox")
        emulator.complete(task.id)
        assert (await client.videos.retrieve(task.id)).id == task.id
        async with client.watch(ids, schedule=FAST_POLL, timeout=10) as watch:
            assert all(o.ok for o in (await collect(watch)).values())
        async with client.videos.content(task.id) as body:
            streamed = b"".join([chunk async for chunk in body])
        path = await client.videos.download(task.id, tmp_path / "v.mp4")
    assert len(streamed) == emulator.content_length == path.stat().st_size

    def url_of(origin: str, path: str) -> str:
        return (emulator.base_url if origin == "api" else emulator.media_url) + path

    received = [(r.method, url_of(r.origin, r.path)) for r in emulator.requests]
    # Each hop either was redirected or ended (aiohttp reports a followed redirect's hops
    # as redirects; a chain's last hop, or a redirect aio88 follows itself, as an end).
    hops = traced.redirects + traced.ends + traced.exceptions
    unseen = Counter(received) - Counter(hops)
    assert not unseen, f"requests the TraceConfig never saw: {sorted(unseen)}"
    assert Counter(hops) == Counter(received), f"traced but not received: {hops}, {received}"
    assert len(traced.ends) + len(traced.exceptions) == len(traced.starts)
    assert not traced.exceptions
    media = [url for _, url in received if url.startswith(emulator.media_url)]
    assert len(media) == 2, received  # content and download, each through the redirect


# -- redirects to another origin ---------------------------------------------------------

VIDEO = ("Content-Type", "video/mp4")
#: The user's headers of the redirect tests: a secret and a ``Host`` for the API only.
ORG_HEADERS = {"X-Org-Secret": "s3cr3t", "Host": "api.internal"}


def redirect_to(location: str) -> bytes:
    """A ``307`` to ``location``."""
    return http_reply(
        b"", status=307, reason="Temporary Redirect", headers=[("Location", location)]
    )


def assert_plain_request_to(server: RawServer, request: RawRequest) -> None:
    """``request`` carries nothing of the API's: no key, no user header, its own Host."""
    assert request.values("authorization") == [], request.head
    assert request.values("x-org-secret") == [], request.head
    assert request.values("host") == [f"127.0.0.1:{server.port}"], request.head
    assert len(request.values("user-agent")) == 1, request.head


async def test_redirect_to_another_origin_sends_no_api_headers(
    raw_servers: RawServerPool, tmp_path: Path
) -> None:
    """``content()`` and ``videos.download()`` redirected (307) to another origin: the
    API got the key, the user's headers and its ``Host``; the other origin gets none of
    them, and its own ``Host``."""
    data = os.urandom(40_000)
    media = await raw_servers.start(lambda request: http_reply(data, headers=[VIDEO]))
    api = await raw_servers.start(lambda request: redirect_to(f"{media.base_url}/media/x.mp4"))
    async with make_client(api.base_url, headers=ORG_HEADERS) as client, guard():
        async with client.videos.content("task_1") as body:
            streamed = await body.read()
        path = await client.videos.download("task_1", tmp_path / "v.mp4")
    assert streamed == data == path.read_bytes()
    assert [r.path for r in api.requests] == ["/v1/videos/task_1/content"] * 2
    for request in api.requests:
        assert request.values("authorization") == [f"Bearer {KEY}"], request.head
        assert request.values("x-org-secret") == ["s3cr3t"], request.head
        assert request.values("host") == ["api.internal"], request.head
    assert [r.path for r in media.requests] == ["/media/x.mp4"] * 2
    for request in media.requests:
        assert_plain_request_to(media, request)


async def test_download_from_another_origin_sends_no_api_headers(
    raw_servers: RawServerPool, tmp_path: Path
) -> None:
    """``client.download(url)`` of another origin: neither the user's headers nor their
    ``Host`` go with it."""
    data = os.urandom(40_000)
    media = await raw_servers.start(lambda request: http_reply(data, headers=[VIDEO]))
    api = await raw_servers.start(the_task)
    async with make_client(api.base_url, headers=ORG_HEADERS) as client, guard():
        path = await client.download(f"{media.base_url}/media/x.mp4", tmp_path / "v.mp4")
    assert path.read_bytes() == data
    assert api.requests == []
    (request,) = media.requests
    assert_plain_request_to(media, request)


# -- proxies: per hop, credentials, NO_PROXY, a silent proxy ------------------------------


async def test_each_redirect_hop_chooses_its_own_proxy(
    tinyproxy: TinyProxy,
    raw_servers: RawServerPool,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """``HTTP_PROXY`` with ``NO_PROXY=127.0.0.1``: the API (``localhost``) is reached
    through the proxy, the 127.0.0.1 origin it redirects to directly."""
    data = os.urandom(40_000)
    media = await raw_servers.start(lambda request: http_reply(data, headers=[VIDEO]))
    target = f"http://127.0.0.1:{media.port}/media/x.mp4"
    api = await raw_servers.start(lambda request: redirect_to(target))
    monkeypatch.setenv("HTTP_PROXY", tinyproxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with make_client(f"http://localhost:{api.port}") as client, guard():
        async with client.videos.content("task_1") as body:
            streamed = await body.read()
        path = await client.videos.download("task_1", tmp_path / "v.mp4")
    assert streamed == data == path.read_bytes()
    assert len(api.requests) == 2
    assert all(_via_proxy(r) for r in api.requests), [r.head for r in api.requests]
    assert len(media.requests) == 2
    assert not any(_via_proxy(r) for r in media.requests), [r.head for r in media.requests]
    assert await _proxy_logged(tinyproxy, f"//localhost:{api.port}/")
    assert not tinyproxy.log_lines(f"127.0.0.1:{media.port}")


async def test_proxy_credentials_for_http(
    tinyproxy_auth: TinyProxy, raw_servers: RawServerPool
) -> None:
    """``proxy="http://user:pass@..."`` to a proxy that wants them: plain proxied polls
    and creates get through."""
    origin = await raw_servers.start(the_task)
    proxy = tinyproxy_auth.url_with("user", "pass")
    async with make_client(origin.base_url, proxy=proxy) as client, guard():
        assert (await client.videos.retrieve("task_1")).id == "task_1"
        await client.videos.create(prompt="a red fox")
    assert [r.method for r in origin.requests] == ["GET", "POST"]
    assert all(_via_proxy(r) for r in origin.requests), [r.head for r in origin.requests]


async def test_proxy_credentials_for_https(
    tinyproxy_auth: TinyProxy, raw_servers: RawServerPool, test_ca: TestCA
) -> None:
    """The same credentials open a ``CONNECT`` tunnel to a TLS origin."""
    origin = await raw_servers.start(the_task, ssl_context=test_ca.server_context())
    proxy = tinyproxy_auth.url_with("user", "pass")
    client = make_client(origin.base_url, proxy=proxy, ssl=test_ca.client_context())
    async with client, guard():
        assert (await client.videos.retrieve("task_1")).id == "task_1"
    assert len(origin.requests) == 1
    assert await _proxy_logged(tinyproxy_auth, f"CONNECT 127.0.0.1:{origin.port} ")


async def test_proxy_credentials_from_the_environment(
    tinyproxy_auth: TinyProxy, raw_servers: RawServerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HTTP_PROXY=http://user:pass@...``: the credentials reach the proxy."""
    origin = await raw_servers.start(the_task)
    monkeypatch.setenv("HTTP_PROXY", tinyproxy_auth.url_with("user", "pass"))
    async with make_client(origin.base_url) as client, guard():
        assert (await client.videos.retrieve("task_1")).id == "task_1"
    assert len(origin.requests) == 1 and _via_proxy(origin.requests[0])


@pytest.mark.parametrize(
    ("credentials", "scheme", "status"),
    [("missing", "http", 407), ("missing", "https", 407), ("wrong", "https", 401)],
)
async def test_tinyproxy_refusal_is_a_connection_error(
    tinyproxy_auth: TinyProxy,
    raw_servers: RawServerPool,
    test_ca: TestCA,
    credentials: str,
    scheme: str,
    status: int,
) -> None:
    """tinyproxy refuses a request without credentials with 407, and (its own quirk;
    RFC 9110 says 407) wrong ones with 401: an ``APIConnectionError`` naming the proxy
    and that status, and nothing reaches the origin. (Wrong credentials on a plain
    ``http://`` request are left out: tinyproxy's 401 is then indistinguishable from
    the origin's.)"""
    tls = test_ca.server_context() if scheme == "https" else None
    origin = await raw_servers.start(the_task, ssl_context=tls)
    proxy = tinyproxy_auth.url if credentials == "missing" else tinyproxy_auth.url_with("user", "x")
    client = make_client(origin.base_url, proxy=proxy, ssl=test_ca.client_context())
    async with client, guard():
        with pytest.raises(APIConnectionError) as raised:
            await client.videos.retrieve("task_1")
    assert str(status) in str(raised.value) and "proxy" in str(raised.value).lower(), raised.value
    assert origin.requests == []


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_wrong_proxy_credentials_are_a_407_connection_error(
    raw_servers: RawServerPool, test_ca: TestCA, scheme: str
) -> None:
    """A proxy (a raw server) that answers wrong credentials with 407, as RFC 9110 says:
    an ``APIConnectionError`` naming the proxy and 407. The credentials were sent, on
    the plain request and on the ``CONNECT`` alike."""
    refusal = http_reply(
        b"",
        status=407,
        reason="Proxy Authentication Required",
        headers=[("Proxy-Authenticate", 'Basic realm="compat"'), ("Connection", "close")],
    )
    proxy = await raw_servers.start(lambda request: refusal)
    proxy_url = f"http://user:wrong@127.0.0.1:{proxy.port}"
    client = make_client(
        f"{scheme}://127.0.0.1:{free_port()}", proxy=proxy_url, ssl=test_ca.client_context()
    )
    async with client, guard():
        with pytest.raises(APIConnectionError) as raised:
            await client.videos.retrieve("task_1")
    assert "407" in str(raised.value) and "proxy" in str(raised.value).lower(), raised.value
    assert proxy.requests, "the proxy was asked"
    expected = "Basic " + base64.b64encode(b"user:wrong").decode()
    for request in proxy.requests:
        assert request.method == ("CONNECT" if scheme == "https" else "GET"), request.line
        assert request.values("proxy-authorization") == [expected], request.head


async def test_no_proxy_with_a_cidr_entry(
    raw_servers: RawServerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``NO_PROXY=127.0.0.0/8`` covers 127.0.0.1: the (recording) proxy sees nothing."""
    proxy = await raw_servers.start(the_task)
    origin = await raw_servers.start(the_task)
    monkeypatch.setenv("HTTP_PROXY", proxy.base_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.0/8")
    async with make_client(origin.base_url) as client, guard():
        assert (await client.videos.retrieve("task_1")).id == "task_1"
    assert proxy.requests == [] and proxy.connections == 0
    assert len(origin.requests) == 1


@pytest.mark.parametrize("call", ["retrieve", "content"])
async def test_proxy_silent_after_connect_times_out(raw_servers: RawServerPool, call: str) -> None:
    """A proxy that accepts the connection, reads the ``CONNECT`` and never answers:
    ``APITimeoutError`` from a poll and from a stream alike, not a hang."""

    async def mute(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.wait_for_close()

    proxy = await raw_servers.start(handler=mute)
    client = Client(
        KEY,
        base_url=f"https://127.0.0.1:{free_port()}",
        proxy=proxy.base_url,
        timeouts=Timeouts(connect=0.25, read=0.25),
        retry=RetryPolicy(attempts=1),
    )
    async with client:
        with anyio.fail_after(10), pytest.raises(APITimeoutError):
            if call == "retrieve":
                await client.videos.retrieve("task_1")
            else:
                async with client.videos.content("task_1") as body:
                    await body.read()
    assert [r.method for r in proxy.requests] == ["CONNECT"]


# -- bodies: encodings, malformed chunks, resumed streams ---------------------------------


async def test_streams_ask_for_identity_and_api_calls_for_gzip(
    raw_servers: RawServerPool, tmp_path: Path
) -> None:
    """Streams and downloads (of the API's content and of another URL) send
    ``Accept-Encoding: identity``; API calls offer gzip."""
    data = os.urandom(20_000)

    def answer(request: RawRequest) -> bytes:
        if request.path.endswith(("/content", ".mp4")):
            return http_reply(data, headers=[VIDEO])
        return the_task(request)

    server = await raw_servers.start(answer)
    async with make_client(server.base_url) as client, guard():
        await client.videos.retrieve("task_1")
        async with client.videos.content("task_1") as body:
            assert await body.read() == data
        await client.videos.download("task_1", tmp_path / "a.mp4")
        await client.download(f"{server.base_url}/media/x.mp4", tmp_path / "b.mp4")
    api, *streams = server.requests
    assert api.path == "/v1/videos/task_1"
    (offered,) = api.values("accept-encoding")
    assert "gzip" in offered.lower(), api.head
    assert [r.path for r in streams] == ["/v1/videos/task_1/content"] * 2 + ["/media/x.mp4"]
    for request in streams:
        assert request.values("accept-encoding") == ["identity"], request.head


#: A chunked video answer whose second chunk size is not hex; the connection stays open.
BAD_CHUNKED = (
    http_reply(b"", headers=[VIDEO, ("Transfer-Encoding", "chunked")], content_length=False)
    + b"5\r\nhello\r\nzz\r\n"
)


async def _bad_chunks(conn: RawConnection) -> None:
    while await conn.read_request() is not None:
        await conn.send(BAD_CHUNKED)
        await conn.wait_for_close()


async def test_malformed_chunk_in_content_is_an_aio88_error(raw_servers: RawServerPool) -> None:
    """A bad chunk size mid-stream: an aio88 connection or timeout error within the read
    timeout; never a hang, never a raw aiohttp exception."""
    server = await raw_servers.start(handler=_bad_chunks)
    timeouts = Timeouts(connect=1.0, read=0.5)
    async with make_client(server.base_url, timeouts=timeouts) as client:
        with anyio.fail_after(10), pytest.raises(Aio88Error) as raised:
            async with client.videos.content("task_1") as body:
                await body.read()
    assert isinstance(raised.value, APIConnectionError | APITimeoutError), repr(raised.value)


async def test_malformed_chunk_in_download_is_a_download_error(
    raw_servers: RawServerPool, tmp_path: Path
) -> None:
    """The same answer to a download: ``DownloadError`` after the tries, nothing at
    ``dest``."""
    server = await raw_servers.start(handler=_bad_chunks)
    timeouts = Timeouts(connect=1.0, read=0.5)
    retry = RetryPolicy(attempts=2, backoff_initial=0.01)
    dest = tmp_path / "v.mp4"
    async with make_client(server.base_url, timeouts=timeouts, retry=retry) as client:
        with anyio.fail_after(10), pytest.raises(DownloadError):
            await client.videos.download("task_1", dest)
    assert not dest.exists()
    assert server.requests


LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


def cut_then_resumed(
    data: bytes, *, headers: Sequence[tuple[str, str]] = (), resumed: bytes | None = None
) -> Handler:
    """Serves ``data`` (with ``headers``): a request without ``Range`` gets the full
    ``Content-Length`` but only the first half of the bytes, then the close; a ``Range``
    request gets a 206 of ``resumed`` (``data`` unless told) from the offset asked."""

    async def handle(conn: RawConnection) -> None:
        while (request := await conn.read_request()) is not None:
            ranged = request.values("range")
            if not ranged:
                head = http_reply(
                    b"",
                    headers=[VIDEO, ("Content-Length", str(len(data))), *headers],
                    content_length=False,
                )
                await conn.send(head + data[: len(data) // 2])
                return
            start = int(ranged[0].removeprefix("bytes=").removesuffix("-"))
            file = data if resumed is None else resumed
            content_range = f"bytes {start}-{len(file) - 1}/{len(file)}"
            await conn.send(
                http_reply(
                    file[start:],
                    status=206,
                    reason="Partial Content",
                    headers=[VIDEO, ("Content-Range", content_range), *headers],
                )
            )

    return handle


async def test_resume_refuses_a_changed_file(raw_servers: RawServerPool) -> None:
    """Cut after half; the Range answer's ``Content-Range`` total is not the first
    answer's ``Content-Length``: the file changed, and the stream says so."""
    data = os.urandom(100_000)
    server = await raw_servers.start(
        handler=cut_then_resumed(data, resumed=data + os.urandom(1000))
    )
    async with make_client(server.base_url) as client, guard():
        with pytest.raises(APIConnectionError, match=r"(?i)chang"):
            async with client.videos.content("task_1", resume=True) as body:
                await body.read()
    assert [r.values("range") for r in server.requests] == [[], ["bytes=50000-"]]


async def test_resume_if_range_is_last_modified_not_a_weak_etag(
    raw_servers: RawServerPool,
) -> None:
    """A weak ETag and a Last-Modified: the Range request's ``If-Range`` is the date (a
    weak ETag may not go there), and the resumed stream is exact."""
    data = os.urandom(100_000)
    headers = [("ETag", 'W/"x"'), ("Last-Modified", LAST_MODIFIED)]
    server = await raw_servers.start(handler=cut_then_resumed(data, headers=headers))
    async with make_client(server.base_url) as client, guard():
        async with client.videos.content("task_1", resume=True) as body:
            received = await body.read()
    first, ranged = server.requests
    assert first.values("range") == [] and first.values("if-range") == [], first.head
    assert ranged.values("range") == [f"bytes={len(data) // 2}-"], ranged.head
    assert ranged.values("if-range") == [LAST_MODIFIED], ranged.head
    assert received == data


async def test_resumed_stream_keeps_the_full_content_length(raw_servers: RawServerPool) -> None:
    """``content_length`` is the whole body's, before and after a resume."""
    data = os.urandom(100_000)
    server = await raw_servers.start(handler=cut_then_resumed(data))
    async with make_client(server.base_url) as client, guard():
        async with client.videos.content("task_1", resume=True) as body:
            before = body.content_length
            received = await body.read()
            after = body.content_length
    assert received == data
    assert len(server.requests) == 2
    assert (before, after) == (len(data), len(data))


# -- cookies and the caller's session -----------------------------------------------------


def cookies_of(request: RawRequest) -> set[str]:
    """The cookies a request carried, as ``name=value`` strings."""
    return {
        cookie.strip()
        for value in request.values("cookie")
        for cookie in value.split(";")
        if cookie.strip()
    }


async def test_creates_and_polls_share_cookies(raw_servers: RawServerPool) -> None:
    """A cookie set by a create's answer goes with the next poll, and one set by a poll
    with the next create (``localhost``: aiohttp keeps no cookies for IP hosts)."""

    def answer(request: RawRequest) -> bytes:
        if request.method == "POST":
            body, cookie = task_json("task_new", status="queued"), "lb=abc; Path=/"
        else:
            body, cookie = task_json(task_id_of(request)), "zone=z1; Path=/"
        return http_reply(body, headers=[JSON, ("Set-Cookie", cookie)])

    server = await raw_servers.start(answer)
    async with make_client(f"http://localhost:{server.port}") as client, guard():
        await client.videos.create(prompt="a red fox")
        await client.videos.retrieve("task_1")
        await client.videos.create(prompt="a grey wolf")
    assert [r.method for r in server.requests] == ["POST", "GET", "POST"]
    assert [cookies_of(r) for r in server.requests] == [
        set(),
        {"lb=abc"},
        {"lb=abc", "zone=z1"},
    ]


async def test_session_with_raise_for_status(raw_servers: RawServerPool) -> None:
    """A caller's session made with ``raise_for_status=True``: a 404 is still a
    ``NotFoundError`` (asked once), a 400 to a create a ``BadRequestError``."""

    def answer(request: RawRequest) -> bytes:
        if request.method == "POST":
            body = b'{"error": {"message": "prompt is too long", "type": "invalid_request"}}'
            return http_reply(body, status=400, reason="Bad Request")
        return http_reply(
            b'{"error": {"message": "no such video"}}', status=404, reason="Not Found"
        )

    server = await raw_servers.start(answer)
    async with aiohttp.ClientSession(raise_for_status=True) as session:
        async with make_client(server.base_url, session=session) as client, guard():
            with pytest.raises(NotFoundError):
                await client.videos.retrieve("task_1")
            assert len(server.requests) == 1
            with pytest.raises(BadRequestError):
                await client.videos.create(prompt="a red fox")
    assert [r.method for r in server.requests] == ["GET", "POST"]
