"""The emulator's signed callbacks, against real aiohttp.web receivers on loopback: the
signing (independent of the client's, checked by the client's own ``unwrap``), the
server's retry schedule, each fault knob, and a poller that a callback ends with one GET."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from anyio.streams.buffered import BufferedByteReceiveStream
from clocks import WatchedClock

from aio88 import BadRequestError, Client, Schedule, Status, WebhookVerificationError
from aio88.testing import CallbackFaults, Dialect, Emulator, ManualClock
from aio88.testing.__main__ import build_parser, callback_faults
from aio88.testing._arguments import UsageError
from aio88.testing._callbacks import (
    ATTEMPTS,
    OFF_LOOPBACK,
    check_callback_url,
    encode_event,
    is_loopback,
    sign,
)

KEY = "sk-test"

#: 88API's server signs this body so (the vector of docs/webhooks.md).
VECTOR_BODY = (
    b'{"id":"evt_task_abc_completed","type":"video.completed","created_at":1760000000,'
    b'"data":{"task_id":"task_abc","model":"sora-2","status":"completed","progress":"100%",'
    b'"output_url":"https://assets.example/media/x.mp4","created_at":1759999900,'
    b'"completed_at":1759999990}}'
)
VECTOR_SIGNATURE = "sha256=dbe8d9bad77e927d52fd69c146b624b46672606a83d430ff6d98916e4f682518"


@dataclass
class Received:
    """One callback as the receiver got it."""

    body: bytes
    headers: dict[str, str]


@dataclass
class Receiver:
    """A real aiohttp.web server on loopback that records every callback and answers
    each with the next of ``answers`` (204 once they run out)."""

    url: str = ""
    answers: list[int] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append(Received(await request.read(), dict(request.headers)))
        self._changed.set()
        return web.Response(status=self.answers.pop(0) if self.answers else 204)

    async def wait_for(self, count: int) -> None:
        """Until ``count`` callbacks have arrived."""
        with anyio.fail_after(10):
            while len(self.got) < count:
                self._changed.clear()
                await self._changed.wait()

    def task_ids(self) -> list[str]:
        return [json.loads(r.body)["data"]["task_id"] for r in self.got]


@asynccontextmanager
async def receiver(
    answers: list[int] | None = None,
    *,
    extra: Callable[[web.Application], object] | None = None,
) -> AsyncIterator[Receiver]:
    """A :class:`Receiver` serving ``POST /callback`` on 127.0.0.1."""
    recorder = Receiver(answers=list(answers or []))
    app = web.Application()
    app.router.add_post("/callback", recorder.handle)
    if extra is not None:
        extra(app)
    async with TestServer(app, host="127.0.0.1") as server:
        recorder.url = str(server.make_url("/callback"))
        yield recorder


class SleeperClock(WatchedClock):
    """A watched clock a test advances only once the emulator waits (a deadline taken
    after an advance would start from the new time)."""

    async def wait_for_sleeper(self, deadline: float) -> None:
        """Until someone sleeps until exactly ``deadline``."""
        with anyio.fail_after(10):
            while deadline not in self.sleeping:  # noqa: ASYNC110 - a list the sender fills
                await asyncio.sleep(0.001)


async def until(condition: Callable[[], bool]) -> None:
    """Until ``condition`` holds (the emulator's state, no event to wait on)."""
    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - emulator state, no event to wait on
            await asyncio.sleep(0.001)


def events_made(emu: Emulator, count: int) -> Callable[[], bool]:
    """Whether ``count`` callback events have been made (their faults drawn)."""
    return lambda: emu.stats().callbacks["events"] == count


# -- the signing -----------------------------------------------------------------------


def test_the_signing_reproduces_the_servers_vector() -> None:
    event = json.loads(VECTOR_BODY)
    assert encode_event(event) == VECTOR_BODY  # compact, in order, as Go writes it
    assert sign("sk-callbacksigningkey", 1760000000, VECTOR_BODY) == VECTOR_SIGNATURE
    # The key as the server stores it: no Bearer, no sk-, nothing after a channel's dash.
    for key in ("callbacksigningkey", "Bearer sk-callbacksigningkey", "sk-callbacksigningkey-7"):
        assert sign(key, 1760000000, VECTOR_BODY) == VECTOR_SIGNATURE


def test_bodies_escape_as_go_does() -> None:
    """``&`` in a signed link is ``\\u0026`` on the wire: a receiver must verify the raw
    bytes, never a re-encoding."""
    assert encode_event({"u": "a?x=1&y=<é>"}) == '{"u":"a?x=1\\u0026y=\\u003cé\\u003e"}'.encode()


@pytest.mark.parametrize(
    "url", ["https://example.com/cb", "http://10.0.0.1/cb", "http://localhost.example/cb"]
)
def test_only_loopback_urls_are_called(url: str) -> None:
    assert check_callback_url(url) == url  # accepted, as the server accepts it
    assert not is_loopback(url)


def test_loopback_urls_are_called() -> None:
    for url in ("http://127.0.0.1:8/cb", "http://[::1]:8/cb", "https://localhost/cb"):
        assert check_callback_url(url) == url and is_loopback(url)
    assert is_loopback("http://127.9.9.9/")
    assert check_callback_url("") is None
    assert check_callback_url(None) is None


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "127.0.0.1/cb", "http://[::1/", 42])
def test_what_is_not_an_http_url_is_refused(url: object) -> None:
    with pytest.raises(ValueError, match="callback_url"):
        check_callback_url(url)


# -- what is sent ----------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["docs", "newapi"])
async def test_a_callback_verifies_with_the_clients_key_and_not_another(dialect: Dialect) -> None:
    async with (
        receiver() as hook,
        Emulator(dialect=dialect, duration=None) as emu,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
    ):
        video = await client.videos.create(prompt="a red fox", callback_url=hook.url)
        assert emu.stats().callbacks["events"] == 0  # nothing until it ends
        emu.complete(video.id)
        await hook.wait_for(1)
        got = hook.got[0]
        event = client.webhooks.unwrap(got.body, got.headers)
        assert event.task_id == video.id
        assert event.status is Status.SUCCEEDED and event.type == "video.completed"
        assert event.id == f"evt_{video.id}_completed" == got.headers["X-NewAPI-Delivery"]
        assert event.url is not None and event.url.startswith(emu.media_url)
        assert event.progress == 100 and event.model == "sora-2" and event.error is None
        assert got.headers["User-Agent"] == "NewAPI-Task-Callback/1.0"
        assert got.headers["Content-Type"] == "application/json"
        assert got.headers["X-NewAPI-Event"] == "video.completed"
        data = json.loads(got.body)["data"]
        assert "error" not in data  # omitted when empty, as the server's omitempty does
        assert data["created_at"] <= data["completed_at"] <= json.loads(got.body)["created_at"]
        with pytest.raises(WebhookVerificationError):
            client.webhooks.unwrap(got.body, got.headers, keys=["sk-someoneelse"])
        await until(lambda: emu.stats().callbacks["delivered"] == 1)
        [delivery] = emu.callbacks
        assert delivery.status == 204 and delivery.attempt == 1 and delivery.body == got.body


async def test_a_failed_task_sends_video_failed_with_its_error() -> None:
    async with (
        receiver() as hook,
        Emulator(duration=None) as emu,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
    ):
        task = await client.generations.create(
            model="kling-v1", prompt="a red fox", callback_url=hook.url
        )
        emu.fail(task.id, "the prompt was refused")
        await hook.wait_for(1)
        event = client.webhooks.unwrap(hook.got[0].body, hook.got[0].headers)
        assert event.type == "video.failed" and event.status is Status.FAILED
        assert event.error == "the prompt was refused" and event.url is None
        assert event.id == f"evt_{task.id}_failed"
        assert "output_url" not in json.loads(hook.got[0].body)["data"]


async def test_json_multipart_and_remix_creates_all_carry_callback_url() -> None:
    async with (
        receiver() as hook,
        Emulator(duration=None) as emu,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
    ):
        generation = await client.generations.create(
            model="kling-v1", prompt="json", callback_url=hook.url
        )
        multipart = await client.videos.create(
            prompt="multipart", input_reference=b"\x89PNG fake", callback_url=hook.url
        )
        remix = await client.videos.remix(
            multipart.id, prompt="remix", extra_body={"callback_url": hook.url}
        )
        plain = await client.videos.create(prompt="no callback")
        assert emu.tasks[multipart.id].files  # it did go as multipart
        for task_id in (generation.id, multipart.id, remix.id, plain.id):
            emu.complete(task_id)
        await hook.wait_for(3)
        await until(lambda: emu.stats().callbacks["delivered"] == 3)
        assert sorted(hook.task_ids()) == sorted([generation.id, multipart.id, remix.id])
        assert emu.stats().callbacks["events"] == 3


@pytest.mark.parametrize("dialect", ["docs", "newapi"])
async def test_a_callback_url_off_loopback_is_never_called(dialect: Dialect) -> None:
    """Accepted at create (code under test may pass its production URL), logged as
    skipped when the task ends, never sent."""
    async with (
        Emulator(dialect=dialect, duration=None) as emu,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
    ):
        video = await client.videos.create(prompt="a fox", callback_url="https://example.com/cb")
        emu.complete(video.id)
        await until(lambda: emu.stats().callbacks["skipped"] == 1)
        [skipped] = emu.callbacks
        assert not skipped.sent and skipped.error == OFF_LOOPBACK and not skipped.headers
        assert skipped.url == "https://example.com/cb"
        assert emu.stats().callbacks["attempts"] == 0


@pytest.mark.parametrize("dialect", ["docs", "newapi"])
async def test_a_malformed_callback_url_is_refused_at_create(dialect: Dialect) -> None:
    async with (
        Emulator(dialect=dialect, duration=None) as emu,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
    ):
        with pytest.raises(BadRequestError, match="http or https") as caught:
            await client.videos.create(prompt="a fox", callback_url="ftp://127.0.0.1/cb")
        if dialect == "newapi":
            assert caught.value.code == "invalid_callback_url"
        with pytest.raises(BadRequestError, match="2048"):
            await client.generations.create(
                model="kling-v1", prompt="a fox", callback_url="http://127.0.0.1/" + "x" * 2048
            )
        assert emu.tasks == {}


async def test_a_task_ending_by_its_own_timeline_calls_back_on_the_emulators_clock() -> None:
    clock = SleeperClock()
    async with (
        receiver() as hook,
        Emulator(clock=clock, duration=(10.0, 10.0)) as emu,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
    ):
        video = await client.videos.create(prompt="a fox", callback_url=hook.url)
        await clock.wait_for_sleeper(10.0)  # the follower sleeps until the task's end
        clock.advance(9.5)
        await clock.wait_for_sleeper(10.0)  # woken, not ended: asleep again
        assert hook.got == [] and emu.stats().callbacks["events"] == 0
        clock.advance(0.5)
        await hook.wait_for(1)
        assert hook.task_ids() == [video.id]
        assert emu.callbacks[0].clock == 10.0


async def test_a_real_clock_timeline_calls_back_too() -> None:
    async with (
        receiver() as hook,
        Emulator(duration=(0.05, 0.1)) as emu,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
    ):
        video = await client.videos.create(prompt="a fox", callback_url=hook.url)
        await hook.wait_for(1)
        assert client.webhooks.unwrap(hook.got[0].body, hook.got[0].headers).task_id == video.id


# -- retries ---------------------------------------------------------------------------


async def test_retries_after_500s_follow_the_servers_schedule() -> None:
    """A 500 is retried 10 s later, then 20 s (on the emulator's clock); each attempt is
    signed afresh and carries the same body and delivery id."""
    clock = SleeperClock()
    async with (
        receiver([500, 503]) as hook,
        Emulator(clock=clock, duration=None) as emu,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
    ):
        video = await client.videos.create(prompt="a fox", callback_url=hook.url)
        emu.complete(video.id)
        await hook.wait_for(1)
        await clock.wait_for_sleeper(10.0)
        clock.advance(9.9)
        await clock.wait_for_sleeper(10.0)
        assert len(hook.got) == 1
        clock.advance(0.1)
        await hook.wait_for(2)
        await clock.wait_for_sleeper(30.0)
        clock.advance(20)
        await hook.wait_for(3)
        await until(lambda: emu.stats().callbacks["delivered"] == 1)
        assert [d.clock for d in emu.callbacks] == [0.0, 10.0, 30.0]
        assert [d.attempt for d in emu.callbacks] == [1, 2, 3]
        assert [d.status for d in emu.callbacks] == [500, 503, 204]
        assert len({r.body for r in hook.got}) == 1
        assert {r.headers["X-NewAPI-Delivery"] for r in hook.got} == {f"evt_{video.id}_completed"}
        for got in hook.got:
            client.webhooks.unwrap(got.body, got.headers)
        counts = emu.stats().callbacks
        assert (counts["attempts"], counts["failed_attempts"], counts["gave_up"]) == (3, 2, 0)


async def test_a_receiver_that_is_down_gets_eight_attempts_then_none(closed_port: int) -> None:
    """Connection refused every time: 8 attempts, 10 s doubling (scaled by 0.001 here),
    then the server gives up."""
    url = f"http://127.0.0.1:{closed_port}/callback"
    async with (
        Emulator(duration=None, callback_time_scale=0.001) as emu,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
    ):
        video = await client.videos.create(prompt="a fox", callback_url=url)
        emu.complete(video.id)
        await until(lambda: emu.stats().callbacks["gave_up"] == 1)
        attempts = emu.callbacks
        assert len(attempts) == ATTEMPTS
        assert all(d.status == 0 and d.error for d in attempts)
        gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(attempts)]
        # Lower bounds only: each retry waits at least its scaled delay.
        for n, gap in enumerate(gaps):
            assert gap >= 0.01 * 2**n * 0.999
        assert emu.stats().callbacks["failed_attempts"] == ATTEMPTS


# -- faults ----------------------------------------------------------------------------


async def test_a_lost_event_is_never_sent() -> None:
    async with (
        receiver() as hook,
        Emulator(duration=None, callback_faults=CallbackFaults(loss_rate=1.0)) as emu,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
    ):
        video = await client.videos.create(prompt="a fox", callback_url=hook.url)
        emu.complete(video.id)
        await until(lambda: emu.stats().callbacks["events"] == 1)
        [lost] = emu.callbacks
        assert not lost.sent and lost.faults == ("lost",) and lost.status is None
        assert emu.stats().callbacks["lost"] == 1 and emu.stats().callbacks["attempts"] == 0
        assert hook.got == []


async def test_a_duplicated_event_is_sent_twice() -> None:
    async with (
        receiver() as hook,
        Emulator(duration=None, callback_faults=CallbackFaults(duplicate_rate=1.0)) as emu,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
    ):
        video = await client.videos.create(prompt="a fox", callback_url=hook.url)
        emu.complete(video.id)
        await hook.wait_for(2)
        events = [client.webhooks.unwrap(r.body, r.headers) for r in hook.got]
        assert events[0] == events[1]  # the same event, as a server's resend is
        await until(lambda: emu.stats().callbacks["delivered"] == 2)
        assert [d.copy for d in emu.callbacks] == [1, 2]
        assert emu.stats().callbacks["duplicated"] == 1


async def test_a_delayed_event_waits_its_delay() -> None:
    clock = SleeperClock()
    faults = CallbackFaults(delay_rate=1.0, delay=30.0)
    async with (
        receiver() as hook,
        Emulator(clock=clock, duration=None, callback_faults=faults) as emu,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
    ):
        video = await client.videos.create(prompt="a fox", callback_url=hook.url)
        emu.complete(video.id)
        await clock.wait_for_sleeper(30.0)
        assert hook.got == []
        clock.advance(30)
        await hook.wait_for(1)
        assert emu.callbacks[0].clock == 30.0 and emu.callbacks[0].faults == ("delayed",)


async def test_a_reordered_event_arrives_after_a_later_one_or_after_its_hold() -> None:
    clock = SleeperClock()
    faults = CallbackFaults(reorder_rate=1.0, hold=60.0)
    async with (
        receiver() as hook,
        Emulator(clock=clock, duration=None, callback_faults=faults) as emu,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
    ):
        first, second, third = [
            (await client.videos.create(prompt=f"fox {n}", callback_url=hook.url)).id
            for n in range(3)
        ]
        emu.complete(first)
        await until(lambda: emu.stats().callbacks["held"] == 1)
        faults.reorder_rate = 0.0
        emu.complete(second)
        await hook.wait_for(2)
        assert hook.task_ids() == [second, first]  # ended first, arrived last
        assert emu.callbacks[1].faults == ("reordered",)
        # Held with nothing after it: it goes once its hold is over.
        faults.reorder_rate = 1.0
        emu.complete(third)
        await clock.wait_for_sleeper(60.0)
        assert len(hook.got) == 2
        clock.advance(60)
        await hook.wait_for(3)
        assert hook.task_ids()[2] == third
        assert emu.stats().callbacks["reordered"] == 2 and emu.stats().callbacks["held"] == 0


async def test_a_wrongly_signed_event_fails_verification_and_is_retried() -> None:
    async with (
        receiver([401]) as hook,
        Emulator(
            duration=None,
            callback_faults=CallbackFaults(wrong_signature_rate=1.0),
            callback_time_scale=0.001,
        ) as emu,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
    ):
        video = await client.videos.create(prompt="a fox", callback_url=hook.url)
        emu.complete(video.id)
        await hook.wait_for(2)
        for got in hook.got:
            with pytest.raises(WebhookVerificationError, match="signature"):
                client.webhooks.unwrap(got.body, got.headers)
        assert emu.callbacks[0].status == 401
        assert emu.callbacks[0].faults == ("wrongly_signed",)


async def test_fault_draws_are_seeded() -> None:
    """The same seed loses the same events; the tasks a seed makes do not change."""
    lost: list[list[str]] = []
    for _ in range(2):
        faults = CallbackFaults(loss_rate=0.5)
        async with (
            receiver() as hook,
            Emulator(duration=None, seed=7, callback_faults=faults) as emu,
            Client(api_key=emu.api_key, base_url=emu.base_url) as client,
        ):
            for n in range(8):
                video = await client.videos.create(prompt=f"fox {n}", callback_url=hook.url)
                emu.complete(video.id)
                # One at a time, so the draws meet the events in creation order.
                await until(events_made(emu, n + 1))
            lost.append([d.task_id for d in emu.callbacks if not d.sent])
    assert lost[0] == lost[1] and 0 < len(lost[0]) < 8


async def test_aclose_cancels_callbacks_waiting_to_be_sent() -> None:
    clock = SleeperClock()
    async with receiver([500]) as hook:
        async with (
            Emulator(clock=clock, duration=(100.0, 100.0)) as emu,
            Client(api_key=emu.api_key, base_url=emu.base_url) as client,
        ):
            retried = await client.videos.create(prompt="retried", callback_url=hook.url)
            await client.videos.create(prompt="never ends", callback_url=hook.url)
            emu.complete(retried.id)
            await hook.wait_for(1)
            await clock.wait_for_sleeper(10.0)  # a retry waits; the other task's end too
        assert hook.got and len(hook.got) == 1


# -- the end-to-end path ---------------------------------------------------------------


async def test_a_watch_on_the_fallback_schedule_finishes_each_task_with_one_get() -> None:
    """Callbacks first, polling as the fallback: each task is created with the receiver's
    URL and watched fresh (no poll before ``Schedule.fallback``'s 60 s); its callback,
    through ``webhook_handler``, makes the one GET that ends it. The clock never moves,
    so no fallback poll is ever due."""
    clock = ManualClock()
    async with (
        Emulator(clock=clock, duration=None, dialect="newapi") as emu,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
        client.watch([], schedule=Schedule.fallback(), clock=clock) as outcomes,
        receiver(
            extra=lambda app: app.router.add_post("/hook", outcomes.webhook_handler())
        ) as hook,
    ):
        url = hook.url.replace("/callback", "/hook")
        videos = [await client.videos.create(prompt=f"fox {n}", callback_url=url) for n in range(3)]
        outcomes.add(videos, fresh=True)
        emu.complete(videos[0].id)
        emu.fail(videos[1].id, "refused")
        emu.complete(videos[2].id)
        ended: dict[str, bool] = {}
        with anyio.fail_after(10):
            async for outcome in outcomes:
                ended[outcome.id] = outcome.ok
        assert ended == {videos[0].id: True, videos[1].id: False, videos[2].id: True}
        assert clock.now() == 0
        for video in videos:
            assert emu.count("GET", f"/v1/videos/{video.id}") == 1
        assert emu.stats().polls == 3
        await until(lambda: emu.stats().callbacks["delivered"] == 3)
        assert {d.status for d in emu.callbacks} == {204}


# -- the command line ------------------------------------------------------------------


def test_the_emulator_command_takes_the_callback_knobs() -> None:
    args = build_parser().parse_args(
        [
            "--callback-loss",
            "0.2",
            "--callback-duplicate",
            "0.1",
            "--callback-delay-rate",
            "0.3",
            "--callback-delay",
            "5",
            "--callback-reorder",
            "0.4",
            "--callback-hold",
            "7",
            "--callback-wrong-signature",
            "0.05",
            "--callback-time-scale",
            "0.01",
        ]
    )
    assert callback_faults(args) == CallbackFaults(
        loss_rate=0.2,
        duplicate_rate=0.1,
        delay_rate=0.3,
        delay=5.0,
        reorder_rate=0.4,
        hold=7.0,
        wrong_signature_rate=0.05,
    )
    assert args.callback_time_scale == 0.01
    assert callback_faults(build_parser().parse_args([])) == CallbackFaults()
    with pytest.raises(UsageError, match="--callback-loss"):
        build_parser().parse_args(["--callback-loss", "1.5"])
    with pytest.raises(UsageError, match="--callback-time-scale"):
        build_parser().parse_args(["--callback-time-scale", "0"])


@pytest.mark.timeout(30)
async def test_the_emulator_command_sends_callbacks_with_its_faults_and_logs_them() -> None:
    """``aio88 emulator --callback-duplicate 1 --log --json``: a real process sends each
    event twice, and prints one ``callback`` line per attempt."""
    command = [sys.executable, "-m", "aio88", "emulator", "--port", "0", "--json", "--log"]
    flags = ["--duration", "0.05", "0.1", "--callback-duplicate", "1"]
    async with receiver() as hook, await anyio.open_process(command + flags) as process:
        assert process.stdout is not None
        lines = BufferedByteReceiveStream(process.stdout)

        async def line() -> dict[str, Any]:
            with anyio.fail_after(10):
                return dict(json.loads(await lines.receive_until(b"\n", 1 << 20)))

        try:
            ready = await line()
            async with Client(api_key=ready["api_key"], base_url=ready["base_url"]) as client:
                video = await client.videos.create(prompt="a fox", callback_url=hook.url)
                await hook.wait_for(2)
                for got in hook.got:
                    assert client.webhooks.unwrap(got.body, got.headers).task_id == video.id
            logged = [await line() for _ in range(3)]  # the create's line, two callbacks
            callbacks = [entry for entry in logged if entry["event"] == "callback"]
            assert [entry["status"] for entry in callbacks] == [204, 204]
            assert {entry["task_id"] for entry in callbacks} == {video.id}
            assert callbacks[0]["faults"] == ["duplicated"]
        finally:
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(10):
                assert await process.wait() == 0
