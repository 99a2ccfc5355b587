"""Mends from the issue tracker: the expired-link fallback in the ``newapi`` dialect and
a media server's 403, a truncate fault on the ``/content`` redirect, ``download`` into a
missing folder, ``timeout=0`` and negative timeouts, signed URLs in reprs and messages,
and the docs' annotations."""

from __future__ import annotations

import ast
import base64
import hashlib
import logging
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from aio88 import (
    APIConnectionError,
    Client,
    DownloadError,
    Outcome,
    PermissionDeniedError,
    Schedule,
    Status,
    WaitTimeoutError,
)
from aio88._errors import make_status_error
from aio88.testing import Emulator
from aio88.testing.pytest_plugin import FAST_RETRY

FAST = Schedule.fixed(0.02)
#: What a signed link carries that must never be printed.
SECRET = re.compile(r"X-Amz-Signature|X-Amz-Credential|emulated|s3cr3t")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
async def newapi() -> AsyncIterator[Emulator]:
    """An emulator in the ``newapi`` dialect: ``/content`` redirects to the media origin."""
    async with Emulator(dialect="newapi", duration=None) as emu:
        yield emu


def client_for(emu: Emulator) -> Client:
    return Client(emu.api_key, base_url=emu.base_url, retry=FAST_RETRY)


# -- 1. the expired-link fallback, and a media server's 403 ------------------------------


async def test_expired_link_falls_back_to_the_api_in_the_newapi_dialect(
    newapi: Emulator, tmp_path: Path
) -> None:
    """The task's own link answers 403 (expired); ``/content`` then serves the file itself,
    as 88API's fork does for a link with no validity left, instead of redirecting back
    to the same expired link."""
    task_id = newapi.add_task(status="succeeded")
    async with client_for(newapi) as client:
        task = await client.videos.retrieve(task_id)
        newapi.expired.add(task_id)
        await client.download(task, tmp_path / "v.mp4")
    assert sha256_of(tmp_path / "v.mp4") == newapi.content_sha256
    statuses = [(r.origin, r.status) for r in newapi.requests[1:]]
    assert statuses == [("media", 403), ("api", 200)]


async def test_a_media_servers_403_blames_the_link_not_the_key(
    newapi: Emulator, tmp_path: Path
) -> None:
    """A plain signed URL that has expired: the error names the media server and the
    link, not the API key; and it never quotes the link's signature."""
    task_id = newapi.add_task(status="succeeded")
    newapi.expired.add(task_id)
    link = f"{newapi.media_url}/media/{task_id}.mp4?X-Amz-Credential=k&X-Amz-Signature=s3cr3t"
    async with client_for(newapi) as client:
        with pytest.raises(DownloadError) as caught:
            await client.download(link, tmp_path / "v.mp4")
    message = str(caught.value)
    assert caught.value.status_code == 403
    assert "media server" in message and "expired" in message
    assert "key may not" not in message and "quota" not in message
    assert not SECRET.search(message), message


@pytest.fixture
async def redirector(newapi: Emulator) -> AsyncIterator[str]:
    """An API origin on loopback whose ``/content`` redirects to the emulator's media
    origin, with a link that has expired there (as a gateway that does not check would)."""

    async def content(request: web.Request) -> web.Response:
        task_id = request.match_info["id"]
        raise web.HTTPTemporaryRedirect(
            f"{newapi.media_url}/media/{task_id}.mp4?X-Amz-Signature=s3cr3t"
        )

    app = web.Application()
    app.router.add_get("/v1/videos/{id}/content", content)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_a_403_after_a_redirect_to_a_media_server(newapi: Emulator, redirector: str) -> None:
    """The API redirects; the media server refuses: the error says so, not "check your key"."""
    task_id = newapi.add_task(status="succeeded")
    newapi.expired.add(task_id)
    async with Client("sk-test", base_url=redirector, retry=FAST_RETRY) as client:
        with pytest.raises(PermissionDeniedError) as caught:
            async with client.videos.content(task_id):
                pass  # pragma: no cover
    message = str(caught.value)
    assert "127.0.0.1, a media server, not the API" in message
    assert "key may not" not in message
    assert not SECRET.search(message), message


def test_the_apis_own_403_keeps_its_key_hint() -> None:
    """The same answer from the API itself still points at the key."""
    body = b'{"error": {"message": "forbidden"}}'
    assert "key may not" in str(make_status_error(403, body, {}))
    from_cdn = str(make_status_error(403, body, {}, media_host="cdn.example"))
    assert "cdn.example, a media server" in from_cdn and "key may not" not in from_cdn


# -- 2. a truncate fault on the newapi /content redirect -----------------------------------


async def test_truncate_on_the_content_redirect_cuts_the_media_body(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The redirect has no body to cut: the body it leads to is cut instead, the download
    resumes, and the server logs no error."""
    async with Emulator(dialect="newapi", duration=None, content_size=512 * 1024) as emu:
        task_id = emu.add_task(status="succeeded")
        emu.inject("truncate", path=f"/v1/videos/{task_id}/content")
        with caplog.at_level(logging.ERROR, logger="aiohttp"):
            async with client_for(emu) as client:
                await client.videos.download(task_id, tmp_path / "v.mp4")
    assert sha256_of(tmp_path / "v.mp4") == emu.content_sha256
    assert [r.getMessage() for r in caplog.records if r.name.startswith("aiohttp")] == []
    api, media = (
        [(r.status, r.fault) for r in emu.requests if r.origin == origin]
        for origin in ("api", "media")
    )
    assert api == [(307, "truncate"), (307, None)]
    assert media[0] == (0, None) and media[1][0] in (200, 206)  # cut, then the rest


# -- 3. download into a missing folder --------------------------------------------------------


async def test_download_creates_missing_folders(newapi: Emulator, tmp_path: Path) -> None:
    """``download`` makes the folders ``dest`` needs, as ``watch(download_dir=)`` does:
    for a task, an id and a ``data:`` URL alike."""
    task_id = newapi.add_task(status="succeeded")
    async with client_for(newapi) as client:
        task = await client.videos.retrieve(task_id)
        saved = await client.download(task, tmp_path / "out" / "a.mp4")
        again = await client.videos.download(task_id, tmp_path / "x" / "y" / "b.mp4")
        uri = "data:video/mp4;base64," + base64.b64encode(b"tiny").decode()
        tiny = await client.download(uri, tmp_path / "d" / "c.mp4")
    assert sha256_of(saved) == sha256_of(again) == newapi.content_sha256
    assert tiny.read_bytes() == b"tiny"


async def test_download_refuses_a_folder_it_cannot_make(newapi: Emulator, tmp_path: Path) -> None:
    """A file where a folder should be: a DownloadError naming it, and nothing fetched."""
    task_id = newapi.add_task(status="succeeded")
    (tmp_path / "out").write_text("a file")
    async with client_for(newapi) as client:
        with pytest.raises(DownloadError, match="cannot create the folder") as caught:
            await client.videos.download(task_id, tmp_path / "out" / "a.mp4")
    assert caught.value.path == tmp_path / "out" / "a.mp4"
    assert newapi.requests == []


async def test_a_refused_source_makes_no_folder(newapi: Emulator, tmp_path: Path) -> None:
    """A failed task has nothing to download: no folder is left behind for it."""
    task_id = newapi.add_task(status="failed")
    async with client_for(newapi) as client:
        task = await client.videos.retrieve(task_id)
        with pytest.raises(DownloadError, match="failed"):
            await client.download(task, tmp_path / "out" / "a.mp4")
    assert not (tmp_path / "out").exists()


# -- 4. timeout=0 polls once; a negative timeout is refused ------------------------------------


async def test_wait_with_timeout_zero_polls_once(newapi: Emulator) -> None:
    """``wait(id, timeout=0)``: one poll; the task if it has succeeded, else a
    WaitTimeoutError carrying what that poll saw. Both resources alike."""
    done = newapi.add_task("generation", status="succeeded")
    pending = newapi.add_task("video", status="in_progress")
    async with client_for(newapi) as client:
        task = await client.generations.wait(done, timeout=0)
        assert task.status is Status.SUCCEEDED
        with pytest.raises(WaitTimeoutError) as caught:
            await client.videos.wait(pending, timeout=0)
    assert caught.value.task is not None and caught.value.task.id == pending
    assert caught.value.timeout == 0
    assert newapi.count("GET", f"/v1/video/generations/{done}") == 1
    assert newapi.count("GET", f"/v1/videos/{pending}") == 1


async def test_poller_wait_with_timeout_zero(newapi: Emulator) -> None:
    """On a long-lived poller (whose schedule would poll again only after a minute): one
    poll each, and the id is forgotten after it."""
    done = newapi.add_task(status="succeeded")
    pending = newapi.add_task(status="in_progress")
    async with client_for(newapi) as client, client.poller(schedule=Schedule.fixed(60)) as poller:
        assert (await poller.wait(done, timeout=0)).status is Status.SUCCEEDED
        with pytest.raises(WaitTimeoutError) as first:
            await poller.wait(pending, timeout=0)
        assert first.value.task is not None and first.value.task.progress is not None
        assert poller.stats().tracked == 0  # nobody waits for it any more
    assert newapi.count("GET", f"/v1/videos/{done}") == 1
    assert newapi.count("GET", f"/v1/videos/{pending}") == 1


async def _tick() -> None:
    await anyio.sleep(0.005)


async def test_shared_poll_answers_a_zero_timeout_at_once(newapi: Emulator) -> None:
    """Another caller waits on the same id (a 60 s schedule): ``timeout=0`` takes the
    shared stream's latest answer at once, and the other caller is not disturbed."""
    pending = newapi.add_task(status="in_progress")
    async with client_for(newapi) as client, client.poller(schedule=Schedule.fixed(60)) as poller:
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller.wait, pending)
            while newapi.count("GET", f"/v1/videos/{pending}") < 1:
                await _tick()
            with anyio.fail_after(5):
                while poller.stats().polls < 1 or poller.stats().in_flight:
                    await _tick()
                with pytest.raises(WaitTimeoutError) as caught:
                    await poller.wait(pending, timeout=0)
            assert caught.value.task is not None
            assert poller.stats().tracked == 1  # the other caller still waits
            tg.cancel_scope.cancel()
    assert newapi.count("GET", f"/v1/videos/{pending}") == 1


async def test_watch_with_timeout_zero_polls_each_task_once(newapi: Emulator) -> None:
    """``watch(ids, timeout=0)``: each task is polled once and has its outcome."""
    done = newapi.add_task(status="succeeded")
    pending = newapi.add_task(status="queued")
    async with client_for(newapi) as client:
        async with client.watch([done, pending], schedule=FAST, timeout=0) as outcomes:
            results = {o.id: o async for o in outcomes}
    assert results[done].ok
    late = results[pending]
    assert isinstance(late.error, WaitTimeoutError) and late.task is not None
    assert newapi.count("GET") == 2


@pytest.mark.parametrize("bad", [-1, -0.5, math.nan])
async def test_negative_timeouts_are_refused(newapi: Emulator, bad: float) -> None:
    """A negative (or NaN) timeout is a ValueError that says what is allowed, from every
    public wait, before anything is sent."""
    task_id = newapi.add_task(status="succeeded")
    message = "timeout must be 0 or more seconds"
    async with client_for(newapi) as client:
        with pytest.raises(ValueError, match=message):
            await client.videos.wait(task_id, timeout=bad)
        with pytest.raises(ValueError, match=message):
            await client.generations.wait(task_id, timeout=bad)
        with pytest.raises(ValueError, match=message):
            client.poller(timeout=bad)
        with pytest.raises(ValueError, match=message):
            client.watch([task_id], timeout=bad)
        with pytest.raises(ValueError, match="batch_timeout must be 0 or more"):
            client.watch([task_id], batch_timeout=bad)
        async with client.poller() as poller:
            with pytest.raises(ValueError, match=message):
                await poller.wait(task_id, timeout=bad)
            with pytest.raises(ValueError, match=message):
                poller.add(task_id, timeout=bad)
    assert newapi.requests == []


# -- 5. signed URLs in reprs and messages -------------------------------------------------


async def test_reprs_hide_signed_urls(newapi: Emulator, tmp_path: Path) -> None:
    """Tasks of both families, their metadata and a watch's outcomes print the link with
    its query hidden; the attribute keeps the real link."""
    video_id = newapi.add_task("video", status="succeeded")
    generation_id = newapi.add_task("generation", status="succeeded")
    async with client_for(newapi) as client:
        video = await client.videos.retrieve(video_id)
        generation = await client.generations.retrieve(generation_id)
        async with client.watch([video_id], download_dir=tmp_path) as outcomes:
            (outcome,) = [o async for o in outcomes]
    for task in (video, generation):
        assert task.url is not None and "X-Amz-Signature=emulated" in task.url
        for text in (repr(task), str(task)):
            assert task.url.split("?")[0] + "?…" in text
            assert not SECRET.search(text), text
    assert video.metadata is not None and video.metadata.url == video.url
    assert not SECRET.search(repr(video.metadata)), repr(video.metadata)
    assert outcome.ok and not SECRET.search(repr(outcome)), repr(outcome)
    failed = Outcome(video_id, "video", video, DownloadError("x"), None)
    assert not SECRET.search(repr(failed)) and not SECRET.search(str(failed))


async def test_a_redirect_to_an_unusable_url_hides_its_query() -> None:
    """A redirect whose Location cannot be followed is named without its signature."""

    async def content(request: web.Request) -> web.Response:
        return web.Response(
            status=307, headers={"Location": "ftp://cdn.example/x.mp4?Signature=s3cr3t"}
        )

    app = web.Application()
    app.router.add_get("/v1/videos/{id}/content", content)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with Client("sk-test", base_url=f"http://{host}:{port}") as client:
            with pytest.raises(APIConnectionError) as caught:
                async with client.videos.content("task_1"):
                    pass  # pragma: no cover
    finally:
        await runner.cleanup()
    assert "ftp://cdn.example/x.mp4?…" in str(caught.value)
    assert not SECRET.search(str(caught.value))


# -- 6. the docs' annotations ---------------------------------------------------------------

#: Generic builtins that ``mypy --strict`` refuses bare ("Missing type parameters").
BARE_GENERICS = {"dict", "list", "set", "frozenset", "tuple", "type"}


def _bare_generics(code: str) -> list[str]:
    """The annotations in ``code`` that are a bare generic builtin."""
    found = []
    for node in ast.walk(ast.parse(code)):
        annotations: list[ast.expr | None] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            annotations.append(node.returns)
            arguments = node.args
            every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
            every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
            annotations += [a.annotation for a in every]
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        found += [
            f"line {annotation.lineno}: {annotation.id}"
            for annotation in annotations
            if isinstance(annotation, ast.Name) and annotation.id in BARE_GENERICS
        ]
    return found


ROOT = Path(__file__).parent.parent
BLOCK = re.compile(r"^```(?:python|py)\n(.*?)^```", re.M | re.S)


def _docs_blocks() -> list[tuple[str, str]]:
    """Every ```python and ```py block of the README and docs/, named as test_docs does."""
    found = []
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in filter(Path.exists, pages):  # an sdist may ship no docs/
        for number, match in enumerate(BLOCK.finditer(page.read_text()), start=1):
            found.append((f"{page.relative_to(ROOT)}#{number}", match.group(1)))
    return found


BLOCKS = _docs_blocks()


def test_the_annotation_check_finds_a_bare_dict() -> None:
    """The check below finds what ``mypy --strict`` refuses, where it is."""
    code = "async def f(a: list, *b: set) -> dict:\n    x: tuple = ()\n    return {}\n"
    found = _bare_generics(code)
    assert sorted(found) == ["line 1: dict", "line 1: list", "line 1: set", "line 2: tuple"]
    assert _bare_generics("def f(a: list[int]) -> dict[str, Any]: ...") == []


@pytest.mark.parametrize(("name", "code"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_docs_annotations_have_type_parameters(name: str, code: str) -> None:
    """No docs block annotates with a bare ``dict``, ``list``...: readers copy them, and
    ``mypy --strict`` refuses them. Fragments (```py) too, which the slow ``mypy --strict``
    run of the whole programs in test_docs cannot check, having no imports."""
    assert _bare_generics(code) == [], name
