"""The emulator keeps its own contract, so a client failure is never an emulator bug.

These tests speak plain aiohttp to it, never aio88's client.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import anyio
import pytest

from aio88 import Client
from aio88.testing import Emulator, Faults, ManualClock

AUTH = {"Authorization": "Bearer sk-test"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_lifecycle_follows_the_manual_clock(http: aiohttp.ClientSession) -> None:
    """queued -> in_progress with growing progress -> succeeded, only as the clock moves."""
    clock = ManualClock()
    async with Emulator(clock=clock, duration=(100.0, 100.0), seed=3) as emu:
        task_id = emu.add_task("video")
        task = emu.tasks[task_id]
        url = f"{emu.base_url}/v1/videos/{task_id}"

        async def state() -> tuple[str, int]:
            async with http.get(url, headers=AUTH) as resp:
                body = await resp.json()
            return body["status"], body["progress"]

        assert await state() == ("queued", 0)
        assert task.queued_for is not None
        clock.advance(task.queued_for + 25)
        status, early = await state()
        assert status == "in_progress" and 0 < early < 50
        clock.advance(50)
        status, later = await state()
        assert status == "in_progress" and later > early
        clock.advance(100)
        assert await state() == ("succeeded", 100)
        assert task.finished_at() == pytest.approx(100.0)


async def test_seeded_durations_and_failures_are_reproducible() -> None:
    """The same seed gives the same ids, durations and outcomes."""

    def draw(seed: int) -> list[tuple[str, float, bool]]:
        emu = Emulator(seed=seed, failure_rate=0.5)
        ids = [emu.add_task() for _ in range(20)]
        return [(i, emu.tasks[i].run_for, emu.tasks[i].will_fail) for i in ids]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    outcomes = [fails for _, _, fails in draw(1)]
    assert any(outcomes) and not all(outcomes)


async def test_manual_control(http: aiohttp.ClientSession) -> None:
    """duration=None holds tasks; complete/fail/set_progress drive them."""
    async with Emulator(duration=None, dialect="newapi") as emu:
        ids = [emu.add_task("generation") for _ in range(3)]
        emu.complete(ids[0])
        emu.fail(ids[1], "vendor said no")
        emu.set_progress(ids[2], 42)
        seen = []
        for task_id in ids:
            async with http.get(
                f"{emu.base_url}/v1/video/generations/{task_id}", headers=AUTH
            ) as r:
                seen.append((await r.json())["data"])
        assert [d["status"] for d in seen] == ["SUCCESS", "FAILURE", "IN_PROGRESS"]
        assert seen[1]["fail_reason"] == "vendor said no"
        assert seen[2]["progress"] == "42%"
        assert seen[0]["result_url"].startswith(emu.media_url)


@pytest.mark.parametrize("dialect", ["docs", "newapi"])
async def test_create_answers_in_dialect(http: aiohttp.ClientSession, dialect: str) -> None:
    """docs: 201 and a display id; newapi: 200 with id == task_id."""
    async with Emulator(dialect=dialect) as emu:  # type: ignore[arg-type]
        async with http.post(
            f"{emu.base_url}/v1/video/generations", json={"prompt": "x"}, headers=AUTH
        ) as resp:
            body = await resp.json()
            status = resp.status
        if dialect == "docs":
            assert status == 201 and body["id"] != body["task_id"]
            assert resp.headers["x-request-id"]
        else:
            assert status == 200 and body["id"] == body["task_id"]
            assert resp.headers["X-Oneapi-Request-Id"]


async def test_content_range_head_etag(http: aiohttp.ClientSession) -> None:
    """Range gives 206 with Content-Range; HEAD gives headers only; a stale If-Range gets 200."""
    async with Emulator(duration=None, content_size=300_000, seed=9) as emu:
        task_id = emu.add_task(status="succeeded")
        url = f"{emu.base_url}/v1/videos/{task_id}/content"
        async with http.get(url, headers=AUTH) as resp:
            whole = await resp.read()
            etag = resp.headers["ETag"]
        assert hashlib.sha256(whole).hexdigest() == emu.content_sha256
        assert len(whole) == emu.content_length == 300_000
        async with http.get(url, headers={**AUTH, "Range": "bytes=100000-"}) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == "bytes 100000-299999/300000"
            assert await resp.read() == whole[100000:]
        async with http.get(url, headers={**AUTH, "Range": "bytes=10-19"}) as resp:
            assert await resp.read() == whole[10:20]
        async with http.get(url, headers={**AUTH, "Range": "bytes=-5"}) as resp:
            assert await resp.read() == whole[-5:]
        async with http.get(url, headers={**AUTH, "Range": "bytes=300000-"}) as resp:
            assert resp.status == 416
            assert resp.headers["Content-Range"] == "bytes */300000"
        async with http.get(url, headers={**AUTH, "Range": "bytes=5-", "If-Range": '"old"'}) as r:
            assert r.status == 200 and len(await r.read()) == 300_000
        async with http.get(url, headers={**AUTH, "Range": "bytes=5-", "If-Range": etag}) as r:
            assert r.status == 206
        async with http.head(url, headers=AUTH) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == "300000"
            assert await resp.read() == b""


async def test_range_can_be_ignored(http: aiohttp.ClientSession) -> None:
    """honor_range=False answers every Range with the whole file."""
    async with Emulator(duration=None, honor_range=False) as emu:
        task_id = emu.add_task(status="succeeded")
        url = f"{emu.base_url}/v1/videos/{task_id}/content"
        async with http.get(url, headers={**AUTH, "Range": "bytes=10-"}) as resp:
            assert resp.status == 200
            assert len(await resp.read()) == emu.content_length


async def test_default_content_is_a_real_mp4(http: aiohttp.ClientSession) -> None:
    """The default file is an MP4 (ftyp box first), small."""
    async with Emulator(duration=None) as emu:
        task_id = emu.add_task(status="succeeded")
        async with http.get(f"{emu.base_url}/v1/videos/{task_id}/content", headers=AUTH) as resp:
            data = await resp.read()
        assert data[4:8] == b"ftyp"
        assert len(data) < 64 * 1024
        assert resp.content_type == "video/mp4"


async def test_media_origin_refuses_credentials_and_expires(http: aiohttp.ClientSession) -> None:
    """The second origin answers 400 to any Authorization, 403 once expired, 404 if unknown."""
    async with Emulator(duration=None, dialect="newapi") as emu:
        task_id = emu.add_task(status="succeeded")
        async with http.get(
            f"{emu.base_url}/v1/videos/{task_id}/content", headers=AUTH, allow_redirects=False
        ) as resp:
            assert resp.status == 307
            location = resp.headers["Location"]
            assert resp.headers["Cache-Control"] == "no-store"
        assert location.startswith(emu.media_url)
        async with http.get(location, headers=AUTH) as resp:
            assert resp.status == 400
        async with http.get(location) as resp:
            assert resp.status == 200
        emu.expired.add(task_id)
        async with http.get(location) as resp:
            assert resp.status == 403
        async with http.get(f"{emu.media_url}/media/task_nope.mp4") as resp:
            assert resp.status == 404


async def test_in_flight_is_counted(http: aiohttp.ClientSession) -> None:
    """in_flight and max_in_flight count concurrent requests."""
    async with Emulator(duration=None, faults=Faults(latency=0.05)) as emu:
        task_id = emu.add_task()

        async def get() -> None:
            async with http.get(f"{emu.base_url}/v1/videos/{task_id}", headers=AUTH) as resp:
                await resp.read()

        await asyncio.gather(*(get() for _ in range(8)))
        assert emu.max_in_flight == 8
        assert emu.in_flight == 0


async def test_random_faults_follow_their_rates(http: aiohttp.ClientSession) -> None:
    """With rate_429=1 every request is limited; the log records the fault."""
    async with Emulator(duration=None, faults=Faults(rate_429=1.0, retry_after=3)) as emu:
        async with http.get(f"{emu.base_url}/v1/videos/x", headers=AUTH) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "3"
        assert emu.requests[0].fault == "429"
        emu.faults.rate_429 = 0
        emu.faults.rate_500 = 1.0
        async with http.get(f"{emu.base_url}/v1/videos/x", headers=AUTH) as resp:
            assert resp.status == 500


async def test_scripted_faults_match_method_and_path(http: aiohttp.ClientSession) -> None:
    """inject(...) hits only matching requests, `times` times."""
    async with Emulator(duration=None) as emu:
        task_id = emu.add_task()
        emu.inject("500", times=2, path="/v1/video/")
        url = f"{emu.base_url}/v1/videos/{task_id}"
        async with http.get(url, headers=AUTH) as resp:
            assert resp.status == 200  # /v1/videos does not match /v1/video/
        for expected in (500, 500, 404):
            async with http.get(f"{emu.base_url}/v1/video/generations/x", headers=AUTH) as resp:
                assert resp.status == expected


async def test_bad_create_bodies(http: aiohttp.ClientSession) -> None:
    """Non-JSON, non-object, and bad multipart metadata are 400s."""
    async with Emulator() as emu:
        url = f"{emu.base_url}/v1/videos"
        async with http.post(
            url, data=b"{", headers={**AUTH, "Content-Type": "application/json"}
        ) as r:
            assert r.status == 400
        async with http.post(url, json=[1], headers=AUTH) as r:
            assert r.status == 400
        form = aiohttp.FormData({"prompt": "x", "metadata": "{not json"})
        form.add_field("input_reference", b"img", filename="a.png")
        async with http.post(url, data=form, headers=AUTH) as r:
            assert r.status == 400
        assert emu.tasks == {}


def test_configuration_errors() -> None:
    """Impossible settings fail at once."""
    with pytest.raises(ValueError, match="dialect"):
        Emulator(dialect="other")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duration"):
        Emulator(duration=(5, 1))
    with pytest.raises(ValueError, match="content or content_size"):
        Emulator(content=b"x", content_size=5)
    with pytest.raises(ValueError, match="forward"):
        ManualClock().advance(-1)


async def test_pytest_fixtures_work(aio88_emulator: Emulator, aio88_client: object) -> None:
    """The plugin's fixtures give a running emulator and a client bound to it."""
    from aio88 import Client

    assert isinstance(aio88_client, Client)
    assert aio88_client.base_url == aio88_emulator.base_url
    task_id = aio88_emulator.add_task()
    assert (await aio88_client.videos.retrieve(task_id)).id == task_id


@pytest.mark.aio88_emulator(dialect="newapi", seed=5)
async def test_marker_configures_the_fixture(aio88_emulator: Emulator) -> None:
    """@pytest.mark.aio88_emulator(...) passes keyword arguments to the Emulator."""
    assert aio88_emulator.dialect == "newapi"
    assert aio88_emulator.seed == 5


def test_command_line_starts_the_emulator() -> None:
    """python -m aio88.testing serves and says where."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "aio88.testing", "--port", "0", "--dialect", "newapi"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "newapi dialect" in line and "http://127.0.0.1:" in line
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        assert proc.wait(timeout=10) == 0
        if proc.stdout is not None:
            proc.stdout.close()


async def test_any_id_answers_unknown_ids(http: aiohttp.ClientSession) -> None:
    """any_id=True: an id never created is a finished task (for load tests)."""
    async with Emulator(any_id=True) as emu:
        async with http.get(f"{emu.base_url}/v1/videos/task_made_up", headers=AUTH) as resp:
            body = await resp.json()
        assert (resp.status, body["id"], body["status"]) == (200, "task_made_up", "succeeded")
        async with http.get(f"{emu.base_url}/v1/video/generations/g1", headers=AUTH) as resp:
            assert (await resp.json())["status"] == "succeeded"
        assert emu.tasks["g1"].kind == "generation"


async def test_a_client_gone_while_its_create_is_held(caplog: pytest.LogCaptureFixture) -> None:
    """Answers held (latency), a client that leaves, then the hold released: the emulator
    logs the request as unanswered, quietly, and creates nothing from a body it lost."""
    async with Emulator(api_key="sk-test") as emu:
        emu.faults.latency = 30.0
        async with Client("sk-test", base_url=emu.base_url) as client:
            with anyio.move_on_after(0.3):
                await client.videos.create(prompt="a fox")
        # The server must see the connection closed before the hold ends (a few turns of
        # the loop: the client's close, the FIN, aiohttp's connection_lost); released
        # sooner, the held create may read its body, already received, and answer it.
        await anyio.sleep(0.2)
        emu.faults.latency = 0.0  # releases the waiting request at once
        with anyio.fail_after(5):
            while emu.in_flight:  # noqa: ASYNC110 - a counter, no event
                await anyio.sleep(0.01)
        (request,) = emu.requests
        assert request.status == 0
    assert "Error handling request" not in caplog.text
