"""Callbacks as the fast path, polling as the fallback: ``poller.deliver()``,
``poller.webhook_handler()`` and ``Schedule.fallback()``, against the emulator and a real
aiohttp.web server on loopback, with a manual clock where timing matters."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from clocks import WatchedClock, settle

from aio88 import CallbackEvent, Client, Outcome, Schedule, Status
from aio88._config import CALLBACK_MEMORY, DEFAULT_RETRY, DEFAULT_TIMEOUTS
from aio88._http import Transport
from aio88._poll import Poller
from aio88._webhooks import Webhooks
from aio88.testing import Emulator, ManualClock

KEY = "sk-test"


def callback(
    task_id: str, *, stamp: int | None = None, key: str = KEY
) -> tuple[bytes, dict[str, str]]:
    """A callback as 88API's server sends it: the body and its signed headers."""
    stamp = int(time.time()) if stamp is None else stamp
    event_id = f"evt_{task_id}_completed"
    body = json.dumps(
        {
            "id": event_id,
            "type": "video.completed",
            "created_at": stamp,
            "data": {"task_id": task_id, "status": "completed", "progress": "100%"},
        }
    ).encode()
    secret = ("sk-" + key.removeprefix("sk-")).encode()
    digest = hmac.new(secret, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {
        "Content-Type": "application/json",
        "X-NewAPI-Event": "video.completed",
        "X-NewAPI-Delivery": event_id,
        "X-NewAPI-Timestamp": str(stamp),
        "X-NewAPI-Signature": f"sha256={digest}",
    }


def event_for(task_id: str) -> CallbackEvent:
    body, headers = callback(task_id)
    return Webhooks(KEY).unwrap(body, headers)


@asynccontextmanager
async def receiver(poller: Poller) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """A real aiohttp.web server on loopback with the poller's handler at /callback."""
    app = web.Application()
    app.router.add_post("/callback", poller.webhook_handler())
    async with TestClient(TestServer(app)) as http:
        yield http


@asynccontextmanager
async def bare_poller(
    emu: Emulator, clock: ManualClock, outcomes: list[Outcome]
) -> AsyncIterator[Poller]:
    """A poller as a watch runs it (``add()`` + ``on_outcome``), on its own transport."""
    transport = Transport(
        api_key=KEY,
        base_url=emu.base_url,
        timeouts=DEFAULT_TIMEOUTS,
        retry=DEFAULT_RETRY,
        rate_limit=None,
        max_connections=8,
        headers=None,
        session=None,
    )
    try:
        async with Poller(
            transport,
            schedule=Schedule.fallback(),
            clock=clock,
            on_outcome=outcomes.append,
            webhooks=Webhooks(KEY),
        ) as poller:
            yield poller
    finally:
        await transport.aclose()


async def test_a_callback_wakes_every_waiter_before_the_fallback_poll() -> None:
    clock = WatchedClock()
    async with Emulator(clock=clock, duration=None) as emu:
        task_id = emu.add_task()
        async with (
            Client(KEY, base_url=emu.base_url) as client,
            client.poller(schedule=Schedule.fallback(), clock=clock) as poller,
            receiver(poller) as http,
        ):
            done: list[Status] = []

            async def waiter() -> None:
                done.append((await poller.wait(task_id)).status)

            # The clock never moves: only the callback can end the waits in time.
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for _ in range(5):
                        tg.start_soon(waiter)
                    await settle(poller.stats, clock)  # the one first poll: still queued
                    assert emu.count("GET") == 1
                    emu.complete(task_id)
                    body, headers = callback(task_id)
                    response = await http.post("/callback", data=body, headers=headers)
                    assert response.status == 204
    assert done == [Status.SUCCEEDED] * 5
    assert clock.now() == 0
    assert emu.count("GET", f"/v1/videos/{task_id}") == 2  # one stream, one poll per event


@pytest.mark.parametrize(
    ("tamper", "status"),
    [
        ("forged", 401),
        ("tampered", 401),
        ("stale", 401),
        ("future", 401),
        ("replayed", 401),
        ("unsigned", 401),
        ("oversized", 413),
        ("oversized-chunked", 413),
        ("not-an-event", 400),
    ],
)
async def test_refused_callbacks_poll_nothing(tamper: str, status: int) -> None:
    clock = WatchedClock()
    async with Emulator(clock=clock, duration=None) as emu:
        task_id = emu.add_task()
        async with (
            Client(KEY, base_url=emu.base_url) as client,
            client.poller(schedule=Schedule.fallback(), clock=clock) as poller,
            receiver(poller) as http,
        ):
            async with anyio.create_task_group() as tg:
                tg.start_soon(poller.wait, task_id)
                await settle(poller.stats, clock)
                emu.complete(task_id)
                body, headers = callback(task_id)
                data: object = body
                if tamper == "forged":
                    body, headers = callback(task_id, key="sk-someoneelse")
                    data = body
                elif tamper == "tampered":  # signed, then changed on the way
                    data = body.replace(b"completed", b"failed")
                elif tamper == "stale":
                    body, headers = callback(task_id, stamp=int(time.time()) - 301)
                    data = body
                elif tamper == "future":
                    body, headers = callback(task_id, stamp=int(time.time()) + 301)
                    data = body
                elif tamper == "replayed":  # a genuine request captured an hour ago, resent
                    body, headers = callback(task_id, stamp=int(time.time()) - 3600)
                    data = body
                elif tamper == "unsigned":
                    del headers["X-NewAPI-Signature"]
                elif tamper == "oversized":
                    data = b" " * (64 * 1024 + 1)
                elif tamper == "oversized-chunked":

                    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length
                        for _ in range(80):
                            yield b" " * 1024

                    data = chunks()
                elif tamper == "not-an-event":
                    signed = callback(task_id)[0].replace(b'"data"', b'"dato"')
                    stamp = headers["X-NewAPI-Timestamp"]
                    digest = hmac.new(b"sk-test", f"{stamp}.".encode() + signed, "sha256")
                    headers["X-NewAPI-Signature"] = "sha256=" + digest.hexdigest()
                    data = signed
                response = await http.post("/callback", data=data, headers=headers)
                assert response.status == status
                await settle(poller.stats, clock)
                assert emu.count("GET") == 1  # the refused callback polled nothing
                tg.cancel_scope.cancel()


async def test_a_duplicate_callback_gives_no_second_outcome() -> None:
    clock = WatchedClock()
    outcomes: list[Outcome] = []
    async with Emulator(clock=clock, duration=None) as emu:
        task_id = emu.add_task()
        async with bare_poller(emu, clock, outcomes) as poller, receiver(poller) as http:
            poller.add(task_id, fresh=True)
            await settle(poller.stats, clock)
            assert emu.count("GET") == 0  # fresh: the fallback's first poll is 60 s away
            emu.complete(task_id)
            body, headers = callback(task_id)
            for _ in range(3):  # the server retries a delivery it thinks was lost
                response = await http.post("/callback", data=body, headers=headers)
                assert response.status == 204
            await settle(poller.stats, clock)
            await poller.deliver(event_for(task_id))  # and late, once it has finished
            clock.advance(3600)
            await settle(poller.stats, clock)
    assert [(o.id, o.ok) for o in outcomes] == [(task_id, True)]
    assert emu.count("GET") == 1


async def test_a_watch_takes_callbacks_and_yields_each_task_once() -> None:
    clock = WatchedClock()
    async with Emulator(clock=clock, duration=None) as emu:
        ids = [emu.add_task() for _ in range(3)]
        async with (
            Client(KEY, base_url=emu.base_url) as client,
            client.watch([], schedule=Schedule.fallback(), clock=clock) as outcomes,
        ):
            outcomes.add(ids, fresh=True)
            app = web.Application()
            app.router.add_post("/callback", outcomes.webhook_handler())
            async with TestClient(TestServer(app)) as http:
                for task_id in ids:
                    emu.complete(task_id)
                    body, headers = callback(task_id)
                    for _ in range(2):  # each delivered twice, as a retrying server does
                        response = await http.post("/callback", data=body, headers=headers)
                        assert response.status == 204
                await outcomes.deliver(event_for(ids[0]))  # and one late, by hand
                seen: list[str] = []
                with anyio.fail_after(10):
                    async for outcome in outcomes:  # the clock never moves
                        assert outcome.ok
                        seen.append(outcome.id)
    assert sorted(seen) == sorted(ids)
    assert emu.count("GET") == 3  # one poll per task, none for the duplicates
    assert clock.now() == 0


async def test_a_lost_callback_is_caught_by_the_fallback_poll() -> None:
    clock = WatchedClock()
    outcomes: list[Outcome] = []
    async with Emulator(clock=clock, duration=None) as emu:
        task_id = emu.add_task()
        async with bare_poller(emu, clock, outcomes) as poller:
            poller.add(task_id, fresh=True)
            await settle(poller.stats, clock)
            emu.complete(task_id)  # its callback never arrives
            clock.advance(59)
            await settle(poller.stats, clock)
            assert outcomes == []
            assert emu.count("GET") == 0
            clock.advance(2)
            await settle(poller.stats, clock)
    assert [(o.id, o.ok) for o in outcomes] == [(task_id, True)]
    assert emu.count("GET") == 1


async def test_an_event_before_the_wait_polls_once_at_once() -> None:
    clock = WatchedClock()
    async with Emulator(clock=clock, duration=None) as emu:
        early, watched, forgotten = emu.add_task(), emu.add_task(), emu.add_task()
        for task_id in (early, watched, forgotten):
            emu.complete(task_id)
        outcomes: list[Outcome] = []
        async with bare_poller(emu, clock, outcomes) as poller:
            for task_id in (early, watched):
                await poller.deliver(event_for(task_id))
            await settle(poller.stats, clock)
            assert emu.count("GET") == 0  # no request for a task nobody waits on
            with anyio.fail_after(10):
                assert (await poller.wait(early)).status is Status.SUCCEEDED
            poller.add(watched, fresh=True)  # polled at once, not after `first`
            await settle(poller.stats, clock)
            assert [o.id for o in outcomes] == [watched]
            assert emu.count("GET") == 2
            # Remembered for 30 minutes only: then a fresh task waits for `first` again.
            await poller.deliver(event_for(forgotten))
            clock.advance(CALLBACK_MEMORY + 1)
            poller.add(forgotten, fresh=True)
            await settle(poller.stats, clock)
            assert emu.count("GET") == 2


def test_the_fallback_schedule() -> None:
    schedule = Schedule.fallback()
    assert schedule.first == 60.0
    assert schedule.next_delay(0, 1, rand=lambda: 0.0) == pytest.approx(162.0)
    assert schedule.next_delay(5000, 9, rand=lambda: 1.0) == pytest.approx(198.0)
    assert schedule.next_delay(0, 1, hint=2.0, rand=lambda: 0.5) == 180.0  # hints ignored
    assert schedule.next_delay(0, 1, rand=lambda: 0.5, eta=1.0) == 180.0  # and progress
    assert Schedule.fallback(first=10, every=30).first == 10
    with pytest.raises(ValueError, match="fallback"):
        Schedule.fallback(every=0)
    assert Schedule().first == 2.0  # the default schedule is untouched
    assert Schedule().next_delay(0, 0, rand=lambda: 0.5) == 5.0


def test_a_poller_without_webhooks_has_no_handler() -> None:
    poller = Client(KEY).poller()
    assert callable(poller.webhook_handler())
    with pytest.raises(RuntimeError, match=r"client\.poller"):
        Poller(
            Transport(
                api_key=KEY,
                base_url="http://127.0.0.1:9",
                timeouts=DEFAULT_TIMEOUTS,
                retry=DEFAULT_RETRY,
                rate_limit=None,
                max_connections=1,
                headers=None,
                session=None,
            )
        ).webhook_handler()
