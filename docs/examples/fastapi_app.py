"""A video service on FastAPI: one aio88 Client and one shared poller for the app's life.

    POST /jobs {"prompt": "..."}   -> {"id": ...}            create a video job
    GET  /jobs/{id}?timeout=600    -> {"status": ...}        wait for it, without blocking
    GET  /jobs/{id}/video          -> video/mp4              the finished file

Run it (with AIO88_API_KEY set, or against the emulator: ``aio88 emulator --port 8088``
and ``AIO88_BASE_URL=http://127.0.0.1:8088 AIO88_API_KEY=sk-test``)::

    uvicorn docs.examples.fastapi_app:app
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from aio88 import (
    APIStatusError,
    Client,
    DownloadError,
    NotFoundError,
    Poller,
    TaskFailedError,
    WaitTimeoutError,
)

T = TypeVar("T")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One client (its connections and rate budget) and one poller, for every request."""
    async with Client() as client, client.poller(concurrency=64) as poller:
        app.state.client = client
        app.state.poller = poller
        yield


app = FastAPI(title="videos", lifespan=lifespan)


class JobRequest(BaseModel):
    prompt: str
    seconds: str = "4"


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the HTTP client goes away first (then give up on it).

    Cancelling a ``poller.wait`` leaves the other waiters of the same job served, and stops
    polling the job when nobody waits for it any more.
    """
    result: list[T] = []
    failure: list[Exception] = []

    async with anyio.create_task_group() as tg:

        async def run() -> None:
            try:
                result.append(await work)
            except Exception as exc:  # re-raised below as itself, not in an ExceptionGroup
                failure.append(exc)
            tg.cancel_scope.cancel()

        async def watch() -> None:
            # Starlette offers no disconnect event to wait on; polling it is the way.
            while not await request.is_disconnected():  # noqa: ASYNC110
                await anyio.sleep(0.5)
            tg.cancel_scope.cancel()

        tg.start_soon(run)
        tg.start_soon(watch)
    if failure:
        raise failure[0]
    if not result:
        raise HTTPException(499, "the client went away")
    return result[0]


@app.post("/jobs", status_code=201)
async def create_job(job: JobRequest, request: Request) -> dict[str, Any]:
    """Create a video job; the caller keeps the id."""
    client: Client = request.app.state.client
    video = await client.videos.create(model="sora-2", prompt=job.prompt, seconds=job.seconds)
    return {"id": video.id, "status": video.status.value}


@app.get("/jobs/{job_id}")
async def wait_for_job(job_id: str, request: Request, timeout: float = 600) -> dict[str, Any]:
    """Wait until the job finishes (or ``timeout``); many callers share one poll stream."""
    poller: Poller = request.app.state.poller
    try:
        task = await until_disconnected(request, poller.wait(job_id, kind="video", timeout=timeout))
    except TaskFailedError as exc:
        raise HTTPException(422, f"the job failed: {exc.task.error}") from exc
    except WaitTimeoutError as exc:
        raise HTTPException(504, "not finished yet; wait again") from exc
    except NotFoundError as exc:
        raise HTTPException(404, "no such job") from exc
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    return {"id": task.id, "status": task.status.value, "progress": task.progress}


@app.get("/jobs/{job_id}/video")
async def job_video(job_id: str, request: Request) -> StreamingResponse:
    """Stream the finished video through, without holding it in memory."""
    client: Client = request.app.state.client
    content = client.videos.content(job_id)
    try:
        body = await content.__aenter__()
    except (APIStatusError, DownloadError) as exc:  # unknown, or not finished yet
        raise HTTPException(409, f"no finished video for {job_id}") from exc

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in body:
                yield chunk
        finally:
            await content.__aexit__(None, None, None)

    return StreamingResponse(chunks(), media_type="video/mp4")
