"""The client against the emulator over loopback: every endpoint, both dialects."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import aiohttp
import anyio
import pytest
from conftest import BOTH_DIALECTS
from servers import RawServerPool, http_reply, task_id_of, task_json

import aio88
from aio88 import (
    APIConnectionError,
    APIResponseValidationError,
    AuthenticationError,
    BadRequestError,
    Client,
    DownloadError,
    FileInput,
    GenerationTask,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    Schedule,
    Status,
    TaskFailedError,
    Video,
    WaitTimeoutError,
)
from aio88.testing import Emulator
from aio88.testing.pytest_plugin import FAST_RETRY

pytestmark = pytest.mark.aio88_emulator(duration=None)

FAST_POLL = Schedule.fixed(0.01)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


# -- round trips ---------------------------------------------------------------------


@BOTH_DIALECTS
async def test_generation_create_retrieve_wait(
    aio88_client: Client, aio88_emulator: Emulator
) -> None:
    """create -> retrieve -> wait on /v1/video/generations, with every documented field sent."""
    task = await aio88_client.generations.create(
        model="kling-v1",
        prompt="a red fox",
        duration=5,
        fps=30,
        width=512,
        height=512,
        size="1280x720",
        image="https://img/x.png",
        seed=7,
        n=1,
        metadata={"negative_prompt": "blur"},
        callback_url="https://hook/x",
        extra_body={"mode": "pro"},
    )
    assert isinstance(task, GenerationTask)
    assert task.id in aio88_emulator.tasks
    sent = aio88_emulator.tasks[task.id].request
    assert sent == {
        "model": "kling-v1",
        "prompt": "a red fox",
        "duration": 5,
        "fps": 30,
        "width": 512,
        "height": 512,
        "size": "1280x720",
        "image": "https://img/x.png",
        "seed": 7,
        "n": 1,
        "metadata": {"negative_prompt": "blur"},
        "callback_url": "https://hook/x",
        "mode": "pro",
    }
    assert not task.done
    again = await aio88_client.generations.retrieve(task.id)
    assert again.id == task.id and again.status is Status.QUEUED
    aio88_emulator.complete(task.id)
    done = await aio88_client.generations.wait(task, schedule=FAST_POLL)
    assert done.status is Status.SUCCEEDED
    assert done.url and done.url.startswith(aio88_emulator.media_url)


@BOTH_DIALECTS
async def test_video_create_retrieve_wait_content(
    aio88_client: Client, aio88_emulator: Emulator
) -> None:
    """create -> retrieve -> wait -> content on /v1/videos."""
    video = await aio88_client.videos.create(
        model="sora-2", prompt="a red fox", seconds=8, size="1280x720", metadata={"k": 1}
    )
    assert isinstance(video, Video)
    assert aio88_emulator.tasks[video.id].request["seconds"] == "8"
    aio88_emulator.set_progress(video.id, 40)
    assert (await aio88_client.videos.retrieve(video.id)).progress == 40
    aio88_emulator.complete(video.id)
    video = await aio88_client.videos.wait(video.id, schedule=FAST_POLL)
    assert video.status is Status.SUCCEEDED and video.progress == 100
    async with aio88_client.videos.content(video.id) as body:
        assert body.content_type == "video/mp4"
        assert body.content_length == aio88_emulator.content_length
        chunks = [chunk async for chunk in body]
    assert len(b"".join(chunks)) == aio88_emulator.content_length


@BOTH_DIALECTS
async def test_the_two_families_share_tasks(aio88_client: Client, aio88_emulator: Emulator) -> None:
    """A generations task id also works on /v1/videos (one task system)."""
    task = await aio88_client.generations.create(model="kling-v1", prompt="x")
    aio88_emulator.complete(task.id)
    video = await aio88_client.videos.retrieve(task.id)
    assert video.status is Status.SUCCEEDED


@pytest.mark.parametrize(
    "reference",
    [
        pytest.param("path", id="path"),
        pytest.param("bytes", id="bytes"),
        pytest.param("file", id="file"),
    ],
)
async def test_video_create_multipart(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path, reference: str
) -> None:
    """input_reference as a path, bytes or file goes multipart; metadata as a JSON string."""
    image = tmp_path / "ref.png"
    image.write_bytes(PNG)
    sources: dict[str, FileInput] = {"path": image, "bytes": PNG, "file": io.BytesIO(PNG)}
    value = sources[reference]
    video = await aio88_client.videos.create(
        prompt="animate", input_reference=value, metadata={"watermark": False}
    )
    task = aio88_emulator.tasks[video.id]
    assert task.request["metadata"] == {"watermark": False}  # parsed from the JSON string
    (filename, size, content_type) = task.files["input_reference"]
    assert size == len(PNG) and content_type == "image/png"
    assert filename == ("ref.png" if reference == "path" else "reference")
    post = next(r for r in aio88_emulator.requests if r.method == "POST")
    assert post.headers["content-type"].startswith("multipart/form-data")


async def test_multipart_create_is_resent_after_429(
    aio88_client: Client, aio88_emulator: Emulator
) -> None:
    """A multipart body is rebuilt for the retry a 429 allows."""
    aio88_emulator.inject("429", method="POST")
    video = await aio88_client.videos.create(prompt="animate", input_reference=PNG)
    assert aio88_emulator.tasks[video.id].files["input_reference"][1] == len(PNG)
    assert aio88_emulator.creates == 2


@BOTH_DIALECTS
async def test_remix(aio88_client: Client, aio88_emulator: Emulator) -> None:
    """remix creates a new task from a finished one."""
    origin = aio88_emulator.add_task("video", status="succeeded")
    remix = await aio88_client.videos.remix(origin, prompt="now at night")
    assert remix.id != origin
    assert aio88_emulator.tasks[remix.id].remixed_from == origin
    with pytest.raises(NotFoundError):
        await aio88_client.videos.remix("task_missing", prompt="x")


# -- errors --------------------------------------------------------------------------


@BOTH_DIALECTS
async def test_unknown_task_is_not_found(aio88_client: Client, aio88_emulator: Emulator) -> None:
    """404 (docs) and 400 task_not_exist (server) are both NotFoundError, with a request id."""
    for resource in (aio88_client.generations, aio88_client.videos):
        with pytest.raises(NotFoundError) as caught:
            await resource.retrieve("task_missing")
        assert caught.value.request_id
        assert caught.value.request_id in str(caught.value)
        assert caught.value.status_code == (400 if aio88_emulator.dialect == "newapi" else 404)


@BOTH_DIALECTS
async def test_wrong_key_is_authentication_error(aio88_emulator: Emulator) -> None:
    """401 in either dialect's shape, with the server's message and a hint."""
    async with Client(api_key="sk-wrong", base_url=aio88_emulator.base_url) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.videos.retrieve("task_x")
    assert "AIO88_API_KEY" in str(caught.value)
    assert caught.value.request_id
    assert "sk-wrong" not in str(caught.value)


async def test_key_without_sk_prefix_is_accepted(aio88_emulator: Emulator) -> None:
    """The server strips sk-; so does the emulator."""
    task_id = aio88_emulator.add_task()
    async with Client(api_key="test", base_url=aio88_emulator.base_url) as client:
        assert (await client.videos.retrieve(task_id)).id == task_id


@BOTH_DIALECTS
async def test_server_validation_error(aio88_client: Client, aio88_emulator: Emulator) -> None:
    """The server's 400 "prompt is required" is a BadRequestError with its message."""
    with pytest.raises(BadRequestError, match="prompt is required"):
        await aio88_client.videos.create(prompt="x", extra_body={"prompt": ""})


async def test_garbage_200_is_validation_error(
    aio88_client: Client, aio88_emulator: Emulator
) -> None:
    """A 200 whose body is not a task raises APIResponseValidationError with an excerpt."""
    task_id = aio88_emulator.add_task()
    aio88_emulator.inject("garbage")
    with pytest.raises(APIResponseValidationError) as caught:
        await aio88_client.videos.retrieve(task_id)
    assert caught.value.status_code == 200
    assert "502 Bad Gateway" in caught.value.body_excerpt
    assert caught.value.request_id


@BOTH_DIALECTS
async def test_content_before_finish(aio88_client: Client, aio88_emulator: Emulator) -> None:
    """The content of an unfinished task is an error, not a video."""
    task_id = aio88_emulator.add_task()
    with pytest.raises((NotFoundError, BadRequestError)):
        async with aio88_client.videos.content(task_id):
            pass  # pragma: no cover


# -- retries -------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["429", "500", "drop", "truncate"])
async def test_get_is_retried(aio88_client: Client, aio88_emulator: Emulator, fault: str) -> None:
    """A read survives a 429, a 500, a dropped connection and a truncated body."""
    task_id = aio88_emulator.add_task()
    aio88_emulator.inject(fault, times=2)  # type: ignore[arg-type]
    assert (await aio88_client.videos.retrieve(task_id)).id == task_id
    assert aio88_emulator.count("GET") == 3


async def test_get_gives_up_after_attempts(aio88_client: Client, aio88_emulator: Emulator) -> None:
    """When every try fails, the last error is raised after `attempts` tries."""
    aio88_emulator.inject("500", times=10)
    with pytest.raises(InternalServerError):
        await aio88_client.videos.retrieve("task_x")
    assert aio88_emulator.count("GET") == FAST_RETRY.attempts


@BOTH_DIALECTS
async def test_retry_after_is_waited_for(aio88_client: Client, aio88_emulator: Emulator) -> None:
    """Retry-After: 1 keeps the next try at least a second away (from the server's log)."""
    task_id = aio88_emulator.add_task()
    aio88_emulator.inject("429", retry_after=1)
    await aio88_client.videos.retrieve(task_id)
    first, second = aio88_emulator.requests
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 1.0


async def test_429_pauses_every_request(aio88_client: Client, aio88_emulator: Emulator) -> None:
    """After a 429 with Retry-After, no request of the client reaches the server early."""
    import anyio

    task_id = aio88_emulator.add_task()
    aio88_emulator.inject("429", retry_after=0.5)
    await aio88_client.videos.retrieve(task_id)  # hits the 429, waits, succeeds
    limited = aio88_emulator.requests[0]
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(aio88_client.videos.retrieve, task_id)
    assert all(r.at - limited.at >= 0.5 for r in aio88_emulator.requests[1:])


async def test_too_long_retry_after_is_raised(aio88_emulator: Emulator) -> None:
    """A server asking for longer than retry_after_max gets its error, not a long sleep."""
    policy = RetryPolicy(retry_after_max=0.5)
    aio88_emulator.inject("429", retry_after=60)
    async with Client("sk-test", base_url=aio88_emulator.base_url, retry=policy) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.videos.retrieve("task_x")
    assert caught.value.retry_after == 60


@pytest.mark.parametrize("fault", ["500", "drop"])
async def test_create_is_not_resent_after_500_or_drop(
    aio88_client: Client, aio88_emulator: Emulator, fault: str
) -> None:
    """A create that may have been processed is never sent twice: one create, one bill."""
    aio88_emulator.inject(fault, method="POST")  # type: ignore[arg-type]
    with pytest.raises((InternalServerError, APIConnectionError)):
        await aio88_client.generations.create(model="kling-v1", prompt="x")
    assert aio88_emulator.creates == 1


async def test_create_timeout_is_not_resent(aio88_emulator: Emulator) -> None:
    """A create that timed out waiting for the answer is not resent either."""
    aio88_emulator.faults.latency = 0.3
    timeouts = aio88.Timeouts(total=0.1)
    async with Client(
        "sk-test", base_url=aio88_emulator.base_url, timeouts=timeouts, retry=FAST_RETRY
    ) as client:
        with pytest.raises(aio88.APITimeoutError):
            await client.videos.create(prompt="x")
    assert aio88_emulator.creates == 1


async def test_create_is_resent_after_429(aio88_client: Client, aio88_emulator: Emulator) -> None:
    """A 429 means the server did nothing: the create is resent."""
    aio88_emulator.inject("429", method="POST")
    await aio88_client.generations.create(model="kling-v1", prompt="x")
    assert aio88_emulator.creates == 2
    assert len(aio88_emulator.tasks) == 1


async def test_unsafe_create_retries_are_opt_in(aio88_emulator: Emulator) -> None:
    """retry_unsafe_creates=True resends a create after a 500."""
    policy = RetryPolicy(backoff_initial=0.01, retry_unsafe_creates=True)
    aio88_emulator.inject("500", method="POST")
    async with Client("sk-test", base_url=aio88_emulator.base_url, retry=policy) as client:
        await client.generations.create(model="kling-v1", prompt="x")
    assert aio88_emulator.creates == 2


async def test_connect_failure_is_connection_error(closed_port: int) -> None:
    """Nothing listening: APIConnectionError that says the request never left."""
    port = closed_port
    async with Client("sk-test", base_url=f"http://127.0.0.1:{port}", retry=FAST_RETRY) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.generations.create(model="kling-v1", prompt="x")
    assert caught.value.request_sent is False
    assert f"127.0.0.1:{port}" in str(caught.value)


# -- credentials ---------------------------------------------------------------------


async def test_key_never_in_repr_errors_or_logs(
    aio88_emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The key appears in no repr, no exception text and no DEBUG log record."""
    secret = "sk-test"
    caplog.set_level(logging.DEBUG, logger="aio88")
    client = Client(secret, base_url=aio88_emulator.base_url, retry=FAST_RETRY)
    async with client:
        assert secret not in repr(client)
        task_id = aio88_emulator.add_task()
        aio88_emulator.inject("500")
        await client.videos.retrieve(task_id)
        for call in (client.videos.retrieve("task_missing"),):
            with pytest.raises(aio88.Aio88Error) as caught:
                await call
            assert secret not in str(caught.value) and secret not in repr(caught.value)
    assert caplog.records, "expected DEBUG records"
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert "Bearer" not in record.getMessage()


async def test_no_authorization_to_the_second_origin() -> None:
    """The newapi dialect's 307 goes to an origin that refuses credentials: none arrive."""
    async with Emulator(dialect="newapi", duration=None) as emu:
        task_id = emu.add_task("video", status="succeeded")
        async with (
            Client("sk-test", base_url=emu.base_url) as client,
            client.videos.content(task_id) as body,
        ):
            data = await body.read()
        assert len(data) == emu.content_length
        api, media = emu.requests
        assert (api.status, media.status) == (307, 200)
        assert api.authorization == "Bearer sk-test"
        assert media.origin == "media" and media.authorization is None


@pytest.mark.aio88_emulator(duration=None, dialect="newapi")
async def test_credentials_only_for_the_api_origin(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """Another origin (a vendor URL) gets no Authorization header; the API's gets it."""
    task_id = aio88_emulator.add_task(status="succeeded")
    task = await aio88_client.videos.retrieve(task_id)
    assert task.url is not None and task.url.startswith(aio88_emulator.media_url)
    await aio88_client.download(task.url, tmp_path / "v.mp4")  # a plain URL elsewhere
    api, media = aio88_emulator.requests
    assert api.origin == "api" and api.authorization == "Bearer sk-test"
    assert media.origin == "media" and media.authorization is None and media.status == 200


async def test_json_where_video_expected(aio88_client: Client, aio88_emulator: Emulator) -> None:
    """A content answer that is JSON is a DownloadError, not bytes handed on as video."""
    from aiohttp import web

    async def json_instead(request: web.Request) -> web.Response:
        return web.json_response({"message": "not a video"})

    app = web.Application()
    app.router.add_get("/v1/videos/{id}/content", json_instead)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with Client("sk-test", base_url=f"http://{host}:{port}") as client:
            with pytest.raises(DownloadError, match="not a video"):
                async with client.videos.content("task_x"):
                    pass  # pragma: no cover
    finally:
        await runner.cleanup()


# -- lifecycle and configuration -------------------------------------------------------


async def test_aclose_twice_and_closed_client_says_so(aio88_emulator: Emulator) -> None:
    """aclose is idempotent; a closed client refuses work and reopening, clearly."""
    client = Client("sk-test", base_url=aio88_emulator.base_url)
    async with client:
        pass
    await client.aclose()
    assert client.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        await client.videos.retrieve("task_x")
    with pytest.raises(RuntimeError, match="cannot be reopened"):
        async with client:
            pass  # pragma: no cover


async def test_entering_twice_is_refused(aio88_emulator: Emulator) -> None:
    """One client, one `async with`."""
    async with Client("sk-test", base_url=aio88_emulator.base_url) as client:
        with pytest.raises(RuntimeError, match="already open"):
            client.open()


async def test_first_use_opens_the_client(aio88_emulator: Emulator) -> None:
    """A client used without `async with` opens itself; aclose still closes it."""
    client = Client("sk-test", base_url=aio88_emulator.base_url)
    assert "unopened" in repr(client)
    task_id = aio88_emulator.add_task()
    assert (await client.videos.retrieve(task_id)).id == task_id
    await client.aclose()


async def test_unclosed_client_warns_and_frees_its_sockets(raw_servers: RawServerPool) -> None:
    """An abandoned open client warns once, in aio88's words, and leaks no session: its
    connection is closed (the server sees it go) and aiohttp has nothing to warn about."""
    import gc

    server = await raw_servers.start(
        lambda request: http_reply(task_json(task_id_of(request), "queued"))
    )
    client = Client("sk-test", base_url=server.base_url)
    await client.videos.retrieve("task_1")
    assert server.open_connections == 1  # kept alive in the client's pool
    with pytest.warns(ResourceWarning) as warned:
        del client
        gc.collect()
    assert [str(w.message) for w in warned] == [
        "an aio88.Client was never closed; use `async with Client() as client:` "
        "or `await client.aclose()`"
    ]
    with anyio.fail_after(5):
        while server.open_connections:  # noqa: ASYNC110 - the server counts, no event
            await anyio.sleep(0.01)


async def test_callers_session_is_left_open(aio88_emulator: Emulator) -> None:
    """A session passed in belongs to the caller: the client does not close it."""
    async with aiohttp.ClientSession() as session:
        async with Client("sk-test", base_url=aio88_emulator.base_url, session=session) as client:
            await client.videos.retrieve(aio88_emulator.add_task())
        assert not session.closed


def test_missing_key_names_the_variable() -> None:
    """No key anywhere: a ValueError that names AIO88_API_KEY."""
    with pytest.raises(ValueError, match="AIO88_API_KEY"):
        Client()
    with pytest.raises(ValueError, match="AIO88_API_KEY"):
        Client("   ")


async def test_environment_configures_the_client(
    monkeypatch: pytest.MonkeyPatch, aio88_emulator: Emulator
) -> None:
    """AIO88_API_KEY and AIO88_BASE_URL are read when no arguments are given."""
    monkeypatch.setenv("AIO88_API_KEY", "sk-env")
    monkeypatch.setenv("AIO88_BASE_URL", "http://127.0.0.1:9/prefix/")
    assert Client().base_url == "http://127.0.0.1:9/prefix"
    assert Client("k").base_url == "http://127.0.0.1:9/prefix"
    monkeypatch.setenv("AIO88_BASE_URL", aio88_emulator.base_url)
    async with Client() as client:
        with pytest.raises(AuthenticationError):  # the emulator takes sk-test only
            await client.videos.retrieve("task_x")
    assert [r.authorization for r in aio88_emulator.requests] == ["Bearer sk-env"]
    monkeypatch.delenv("AIO88_BASE_URL")
    assert Client("k").base_url == "https://88api.ai"


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("https://88api.ai/v1", "https://88api.ai"),
        ("https://88api.ai/v1/", "https://88api.ai"),
        ("https://gw.example/api/v1", "https://gw.example/api"),
        ("https://gw.example/v1beta", "https://gw.example/v1beta"),
    ],
)
async def test_a_base_url_in_openai_style_works(given: str, used: str) -> None:
    """A base URL ending in /v1 (as openai-python writes it) does not post to /v1/v1/..."""
    assert Client("k", base_url=given).base_url == used


async def test_a_v1_base_url_reaches_the_api(aio88_emulator: Emulator) -> None:
    async with Client("sk-test", base_url=aio88_emulator.base_url + "/v1") as client:
        task = await client.videos.create(prompt="a fox")
    assert task.id in aio88_emulator.tasks


@pytest.mark.parametrize("url", ["88api.ai", "ftp://88api.ai", "https://", "https://x/?a=1"])
def test_bad_base_url(url: str) -> None:
    """A base_url that is not an absolute http(s) origin is refused with an example."""
    with pytest.raises(ValueError, match="base_url"):
        Client("k", base_url=url)


def test_bad_options() -> None:
    """Nonsense options fail at construction, not at the first request."""
    with pytest.raises(ValueError, match="max_connections"):
        Client("k", max_connections=0)
    with pytest.raises(ValueError, match="api_key"):
        Client("k", headers={"authorization": "Bearer x"})
    with pytest.raises(ValueError, match="rate_limit"):
        Client("k", rate_limit=0)


async def test_extra_headers_are_sent(aio88_emulator: Emulator) -> None:
    """headers= go with every API request."""
    async with Client("sk-test", base_url=aio88_emulator.base_url, headers={"X-Team": "a"}) as c:
        await c.videos.retrieve(aio88_emulator.add_task())
    assert aio88_emulator.requests[0].headers["x-team"] == "a"
    assert aio88_emulator.requests[0].headers["user-agent"].startswith("aio88/")


# -- bad input is refused before anything is sent -------------------------------------


@pytest.mark.parametrize(
    "task_id", ["a/b", "../x", "..", ".", "", "a b", "a?b", "a#b", "a%2fb", "a\\b", "a\x00b"]
)
async def test_bad_ids_are_refused_before_sending(
    aio88_client: Client, aio88_emulator: Emulator, task_id: str
) -> None:
    """An id that would change the URL's meaning is a ValueError; nothing is sent."""
    with pytest.raises(ValueError, match="not a valid task id"):
        await aio88_client.videos.retrieve(task_id)
    with pytest.raises(ValueError, match="not a valid"):
        await aio88_client.generations.wait(task_id)
    assert aio88_emulator.requests == []


async def test_bad_arguments_are_refused_before_sending(
    aio88_client: Client, aio88_emulator: Emulator
) -> None:
    """Empty prompts, wrong types and unreadable files fail before any request."""
    with pytest.raises(ValueError, match="prompt must not be empty"):
        await aio88_client.generations.create(model="kling-v1", prompt="  ")
    with pytest.raises(ValueError, match="model must not be empty"):
        await aio88_client.generations.create(model="", prompt="x")
    with pytest.raises(TypeError, match="prompt must be a str"):
        await aio88_client.videos.create(prompt=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="task_id must be a str"):
        await aio88_client.videos.retrieve(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot read input_reference"):
        await aio88_client.videos.create(prompt="x", input_reference=Path("/nonexistent.png"))
    with pytest.raises(ValueError, match="not a URL"):
        await aio88_client.videos.create(prompt="x", input_reference="https://img/x.png")
    with pytest.raises(TypeError, match="binary mode"):
        await aio88_client.videos.create(prompt="x", input_reference=io.StringIO("x"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="input_reference must be"):
        await aio88_client.videos.create(prompt="x", input_reference=3.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prompt must not be empty"):
        await aio88_client.videos.remix("task_x", prompt="")
    assert aio88_emulator.requests == []


# -- waiting -------------------------------------------------------------------------


@BOTH_DIALECTS
async def test_wait_raises_on_failure(aio88_client: Client, aio88_emulator: Emulator) -> None:
    """A failed task raises TaskFailedError carrying the task and the server's reason."""
    task_id = aio88_emulator.add_task("generation")
    aio88_emulator.fail(task_id, "content policy")
    with pytest.raises(TaskFailedError, match="content policy") as caught:
        await aio88_client.generations.wait(task_id, schedule=FAST_POLL)
    failed = caught.value.task
    assert failed.status is Status.FAILED
    assert failed.error is not None and failed.error.message == "content policy"


async def test_wait_times_out_with_last_task(
    aio88_client: Client, aio88_emulator: Emulator
) -> None:
    """The deadline raises WaitTimeoutError (a TimeoutError) with the last task seen."""
    task_id = aio88_emulator.add_task()
    with pytest.raises(TimeoutError) as caught:
        await aio88_client.videos.wait(task_id, timeout=0.2, schedule=FAST_POLL)
    error = caught.value
    assert isinstance(error, WaitTimeoutError)
    assert error.task is not None and error.task.id == task_id
    assert error.timeout == 0.2


async def test_wait_reports_updates(aio88_client: Client, aio88_emulator: Emulator) -> None:
    """on_update sees each change of status or progress once."""
    task_id = aio88_emulator.add_task()
    seen: list[tuple[Status, int | None]] = []

    def on_update(video: Video) -> None:
        seen.append((video.status, video.progress))
        if len(seen) == 1:
            aio88_emulator.set_progress(task_id, 50)
        elif video.progress == 50:
            aio88_emulator.complete(task_id)

    await aio88_client.videos.wait(task_id, schedule=FAST_POLL, on_update=on_update)
    assert seen == [
        (Status.QUEUED, 0),
        (Status.IN_PROGRESS, 50),
        (Status.SUCCEEDED, 100),
    ]


@pytest.mark.aio88_emulator(duration=None, poll_after_ms=20)
async def test_wait_follows_the_server_hint(aio88_client: Client, aio88_emulator: Emulator) -> None:
    """openai-poll-after-ms overrides the schedule (here 60 s) on every response."""
    task_id = aio88_emulator.add_task()
    with pytest.raises(WaitTimeoutError):
        await aio88_client.videos.wait(
            task_id,
            timeout=0.5,
            schedule=Schedule(first=60, tiers=((float("inf"), 60.0),), floor=0),
        )
    # The schedule alone would allow one poll in 0.5 s; the hint allows many.
    assert aio88_emulator.count("GET") >= 3
