"""A create's sending is known exactly: committed before its first byte leaves, "sent"
only once a byte did, undone while a 429's backoff runs. Against the emulator and raw
loopback servers: a port nobody listens on, a server that reads and never answers, one
that closes without answering."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import anyio
import pytest

from aio88 import APIConnectionError, Client, RateLimitError, RetryPolicy, Timeouts
from aio88._sending import SendMark, marking
from aio88.testing import Emulator

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=3, backoff_initial=0.01, backoff_max=0.02)
_Answer = Callable[[bytes], bytes | None]


class Journal:
    """A mark whose hooks write what happened, and what the server had seen by then."""

    def __init__(self, emulator: Emulator | None = None) -> None:
        self.events: list[str] = []
        self.emulator = emulator
        self.mark = SendMark(self._before_write, self._not_taken)
        self.undone = anyio.Event()

    async def _before_write(self) -> None:
        seen = self.emulator.creates if self.emulator is not None else None
        self.events.append(f"commit (server had {seen})")

    async def _not_taken(self) -> None:
        self.events.append("undo")
        self.undone.set()


def _client(base_url: str, **options: object) -> Client:
    # (A base URL ending in /v1 is fine: the client takes it off.)
    return Client(api_key="sk-test", base_url=base_url, retry=FAST, **options)  # type: ignore[arg-type]


async def test_a_create_is_committed_before_the_server_sees_it() -> None:
    async with Emulator(api_key="sk-test") as emu, _client(emu.base_url) as client:
        journal = Journal(emu)
        with marking(journal.mark):
            task = await client.videos.create(prompt="a fox")
        assert task.id in emu.tasks
        assert journal.events == ["commit (server had 0)"]
        assert journal.mark.sent and journal.mark.committed


async def test_a_claim_made_ahead_is_confirmed_before_the_first_byte() -> None:
    """Committed ahead (a shared ledger's claim), the mark still runs ``before_write``
    once, just before the write: the claim is confirmed after whatever wait came between."""
    async with Emulator(api_key="sk-test") as emu, _client(emu.base_url) as client:
        journal = Journal(emu)
        journal.mark.claimed()
        with marking(journal.mark):
            await client.videos.create(prompt="a fox")
            await client.videos.create(prompt="a second fox, same mark")
        assert journal.events == ["commit (server had 0)"]
        assert journal.mark.sent and journal.mark.committed


async def test_nothing_listening_is_not_sent_and_never_committed(closed_port: int) -> None:
    async with _client(f"http://127.0.0.1:{closed_port}/v1") as client:
        journal = Journal()
        with marking(journal.mark), pytest.raises(APIConnectionError) as caught:
            await client.videos.create(prompt="a fox")
    assert caught.value.request_sent is False
    assert journal.events == []  # retried three times, never committed: nothing left
    assert not journal.mark.sent


async def test_a_429_is_undone_while_waiting_then_committed_again() -> None:
    async with Emulator(api_key="sk-test") as emu, _client(emu.base_url) as client:
        emu.inject("429", times=2, method="POST", retry_after=0.05)
        journal = Journal(emu)
        with marking(journal.mark):
            await client.videos.create(prompt="a fox")
        assert journal.events == [
            "commit (server had 0)",
            "undo",
            "commit (server had 1)",  # the logged 429 created nothing
            "undo",
            "commit (server had 2)",
        ]
        assert len(emu.tasks) == 1


async def test_a_429_to_the_end_is_the_callers_to_read() -> None:
    async with Emulator(api_key="sk-test") as emu, _client(emu.base_url) as client:
        emu.inject("429", times=5, method="POST", retry_after=0.01)
        journal = Journal(emu)
        with marking(journal.mark), pytest.raises(RateLimitError):
            await client.videos.create(prompt="a fox")
        # The last answer is the caller's to read (a complete 429: not created).
        assert journal.events[-1].startswith("commit")
        assert not emu.tasks


async def test_a_dropped_create_was_sent() -> None:
    async with Emulator(api_key="sk-test") as emu, _client(emu.base_url) as client:
        emu.inject("drop", times=1, method="POST")
        journal = Journal(emu)
        with marking(journal.mark), pytest.raises(APIConnectionError) as caught:
            await client.videos.create(prompt="a fox")
        assert caught.value.request_sent is True  # the server had it: not retried
        assert journal.mark.sent and journal.events == ["commit (server had 0)"]
        assert emu.creates == 1


async def test_cancelled_while_waiting_for_an_answer_counts_as_sent() -> None:
    received = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # reads the request, never answers
        received.set()
        await reader.read()  # until the client goes away
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, _client(f"http://127.0.0.1:{port}") as client:
        journal = Journal()
        async with anyio.create_task_group() as tg:

            async def create() -> None:
                with marking(journal.mark):
                    await client.videos.create(prompt="a fox")

            tg.start_soon(create)
            await received.wait()  # the server has the request: now cancel
            tg.cancel_scope.cancel()
    assert journal.mark.sent and journal.mark.committed


async def test_cancelled_in_a_429_backoff_is_not_sent() -> None:
    async with Emulator(api_key="sk-test") as emu, _client(emu.base_url) as client:
        emu.inject("429", times=1, method="POST", retry_after=30)
        journal = Journal(emu)
        async with anyio.create_task_group() as tg:

            async def create() -> None:
                with marking(journal.mark):
                    await client.videos.create(prompt="a fox")

            tg.start_soon(create)
            await journal.undone.wait()  # the 429 came: the create waits out Retry-After
            tg.cancel_scope.cancel()
        assert not journal.mark.sent and not journal.mark.committed
        assert journal.events == ["commit (server had 0)", "undo"]


async def test_a_timeout_before_connecting_is_not_sent(
    raw_server: Callable[[_Answer], asyncio.Future[int]],
) -> None:
    # A connect that takes longer than the whole request may: nothing was written.
    port = await raw_server(lambda request: None)
    slow = aiohttp.TraceConfig()

    async def dawdle(*_: object) -> None:
        await asyncio.sleep(0.5)

    slow.on_connection_create_start.append(dawdle)
    timeouts = Timeouts(connect=0.1, read=0.1, total=0.2)
    async with _client(
        f"http://127.0.0.1:{port}/v1", timeouts=timeouts, trace_configs=[slow]
    ) as client:
        journal = Journal()
        with marking(journal.mark), pytest.raises(APIConnectionError) as caught:
            await client.videos.create(prompt="a fox")
    assert caught.value.request_sent is False
    assert journal.events == [] and not journal.mark.sent


async def test_through_a_callers_session_the_whole_request_counts_as_sent(
    closed_port: int,
) -> None:
    # No tracing on a caller's session: committed before the request, sent if in doubt.
    async with aiohttp.ClientSession() as session:
        client = _client(f"http://127.0.0.1:{closed_port}/v1", session=session)
        async with client:
            journal = Journal()
            with marking(journal.mark), pytest.raises(APIConnectionError) as caught:
                await client.videos.create(prompt="a fox")
    assert caught.value.request_sent is False  # a refused connect says so itself
    tries = ["commit (server had None)", "undo"] * 3
    assert journal.events == tries[:-1]  # the last try's failure is the caller's to read


async def test_without_a_mark_the_error_still_says_exactly(
    raw_server: Callable[[_Answer], asyncio.Future[int]],
) -> None:
    port = await raw_server(lambda request: None)  # reads the request, closes: no answer
    async with _client(f"http://127.0.0.1:{port}/v1") as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.videos.create(prompt="a fox")
    assert caught.value.request_sent is True


async def test_a_create_redirected_to_a_get_was_taken(
    raw_server: Callable[[_Answer], asyncio.Future[int]],
) -> None:
    """A 303 after a POST says "created, look there": if the GET then fails, the create
    still may exist, and says so."""
    port = await raw_server(
        lambda request: (
            b"HTTP/1.1 303 See Other\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"
            if request.startswith(b"POST")
            else None  # the GET: closed without an answer
        )
    )
    async with _client(f"http://127.0.0.1:{port}") as client:
        journal = Journal()
        with marking(journal.mark), pytest.raises(APIConnectionError) as caught:
            await client.videos.create(prompt="a fox")
    assert caught.value.request_sent is True
    assert journal.mark.sent and journal.events == ["commit (server had None)"]


async def test_a_create_redirected_with_307_is_sent_again(
    raw_server: Callable[[_Answer], asyncio.Future[int]],
) -> None:
    """A 307 asks for the same POST elsewhere: the first hop created nothing."""
    body = b'{"id": "video_1", "object": "video", "status": "queued", "model": "sora-2"}'

    def answer(request: bytes) -> bytes:
        if request.startswith(b"POST /v1/videos "):
            return b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /v2/videos\r\n" + (
                b"Content-Length: 0\r\n\r\n"
            )
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + (
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    port = await raw_server(answer)
    async with _client(f"http://127.0.0.1:{port}") as client:
        journal = Journal()
        with marking(journal.mark):
            video = await client.videos.create(prompt="a fox")
    assert video.id == "video_1"
    assert journal.mark.sent and journal.events == ["commit (server had None)"]
