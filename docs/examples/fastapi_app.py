"""A video service on FastAPI: one aio88 Client and one shared poller for the app's life.

    POST /jobs {"prompt": "..."}   -> 201 {"id": ...}        create a video job
    GET  /jobs/{id}?timeout=600    -> 200 {"status": ...}    wait for it, without blocking
    GET  /jobs/{id}/video          -> 200 video/mp4          the finished file, streamed
    POST /88api/callback           -> 204                    88API's signed task callbacks

With ``PUBLIC_URL`` set (the address 88API can reach this app at, e.g.
``https://videos.example``), every job is created with ``callback_url=PUBLIC_URL +
"/88api/callback"`` and the poller only polls as a safety net (``Schedule.fallback()``): a
job costs about one GET instead of a dozen, and waiters learn of its end within a second.
Expose only that route publicly (docs/webhooks.md).

Every error of the API becomes one answer that tells the caller what to do next (the
client has already retried whatever was safe to retry; docs/web-backends.md says why):

    429 + Retry-After   rate-limited: nothing was created; come back then
    503 + Retry-After   the API failed and nothing was created (or billed): send it again then
    502 "unconfirmed"   a create was sent and its answer lost: the job may exist and be billed;
                        never sent again by this app, and the caller should not either
    422                 the API refused the request (its message), or the job failed (its error)
    504                 not finished within ``timeout``: wait again with the id
    500 "misconfigured" the API refused our key (logged; the key is never shown)

Run it (with AIO88_API_KEY set, or against the emulator: ``aio88 emulator --port 8088``
and ``AIO88_BASE_URL=http://127.0.0.1:8088 AIO88_API_KEY=sk-test``)::

    uvicorn docs.examples.fastapi_app:app
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from aio88 import (
    Aio88Error,
    APIConnectionError,
    APIError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    DownloadError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    Poller,
    RateLimitError,
    Schedule,
    TaskFailedError,
    WaitTimeoutError,
    WebhookVerificationError,
    create_fate,
)

T = TypeVar("T")

log = logging.getLogger("videos")

#: The ``Retry-After`` (seconds) of a 429 or 503 when the API named no pause. The client
#: has already retried with backoff, so the fault has outlasted a few seconds.
RETRY_AFTER = 5

#: The most a callback may weigh: 88API's are well under 1 KiB.
CALLBACK_LIMIT = 64 * 1024


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One client (its connections and rate budget) and one poller, for every request.

    With callbacks (``PUBLIC_URL`` set), the poller polls as a safety net only: once when
    a caller first waits for a job, then every three minutes (a lost callback costs
    minutes, never a job).
    """
    public_url = os.environ.get("PUBLIC_URL", "").rstrip("/")
    app.state.callback_url = f"{public_url}/88api/callback" if public_url else None
    schedule = Schedule.fallback() if public_url else None
    async with Client() as client, client.poller(concurrency=64, schedule=schedule) as poller:
        app.state.client = client
        app.state.poller = poller
        yield


app = FastAPI(title="videos", lifespan=lifespan)


class JobRequest(BaseModel):
    """The body of ``POST /jobs``."""

    prompt: str
    seconds: str = "4"


# -- errors -> HTTP ------------------------------------------------------------------------


def problem(
    status: int, error: str, message: str, /, *, retry_after: float | None = None, **facts: Any
) -> HTTPException:
    """An HTTP error whose body says what happened (``error``), in words, with facts."""
    headers = None
    if retry_after is not None:
        headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}  # whole seconds
    return HTTPException(status, {"error": error, "message": message, **facts}, headers=headers)


def api_failure(exc: Aio88Error) -> HTTPException:
    """The answer to an API error that means the same on every route."""
    if isinstance(exc, APIStatusError) and exc.media_host is not None:
        # A media server (a CDN) refused the video's link, whatever its status: not our
        # key, not the caller, and not the API's rate.
        log.warning("the media server refused a video link: %s", exc)
        return problem(502, "bad_gateway", "the video's storage refused it; try again later")
    if isinstance(exc, RateLimitError):
        # The client retried the 429s (slowing all its requests); these outlasted that.
        return problem(
            429,
            "rate_limited",
            "the video API is rate-limiting us; try again later",
            retry_after=exc.retry_after or RETRY_AFTER,
        )
    if isinstance(exc, AuthenticationError | PermissionDeniedError):
        # The operator's problem, not the caller's: said in the log (aio88 never puts the
        # key in a message), and nothing of it in the answer.
        log.error("the video API refused our key: %s", exc)
        return problem(500, "misconfigured", "the service is misconfigured")
    if isinstance(exc, InternalServerError | APIConnectionError) or (
        isinstance(exc, APIStatusError) and exc.status_code == 408
    ):
        # Reads reach here only after the client's retries; creates only when nothing
        # was created (create_failure sorts them first).
        log.warning("the video API is failing: %s", exc)
        return problem(
            503, "unavailable", "the video API is failing; try again later", retry_after=RETRY_AFTER
        )
    if isinstance(exc, APIStatusError):  # any other 4xx: this request was refused
        return problem(422, "rejected", exc.message, request_id=exc.request_id)
    # An answer the client could not read (or about another task): a bad gateway.
    log.warning("unusable answer from the video API: %s", exc)
    return problem(502, "bad_gateway", "the video API's answer could not be used")


def create_failure(exc: Aio88Error, job: JobRequest) -> HTTPException:
    """The answer to a failed create: sent again later (nothing made), or unconfirmed."""
    # create_fate reads the answer as new-api's code means it (docs/billing.md): its own
    # error answers are refunded, but a lost answer, a proxy's page, or its "billed but no
    # id" 500 may stand in front of a created task.
    if create_fate(exc).state != "unconfirmed":
        return api_failure(exc)
    # 88API has no idempotency key and no way to ask whether a create arrived: sending
    # it again could make (and bill) the video twice. Name the job, so that someone can
    # look for it in 88API's task list, and leave the decision to a person.
    log.warning("create unconfirmed, not sent again: prompt=%r: %s", job.prompt, exc)
    return problem(
        502,
        "unconfirmed",
        "the create was sent, and its answer was lost or does not say whether the job was "
        "made: it may exist (and be billed). It was not sent again; look for it in 88API's "
        "task list before sending it again",
        job=job.model_dump(),
        request_id=exc.request_id if isinstance(exc, APIError) else None,
    )


# -- routes --------------------------------------------------------------------------------


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
        raise problem(499, "gone", "the client went away")
    return result[0]


@app.post("/jobs", status_code=201)
async def create_job(job: JobRequest, request: Request) -> dict[str, Any]:
    """Create a video job; the caller keeps the id.

    Not raced against the caller's disconnect (unlike the wait): a create cancelled after
    it was sent would leave a job, maybe billed, whose id nobody learns.
    """
    client: Client = request.app.state.client
    try:
        video = await client.videos.create(
            model="sora-2",
            prompt=job.prompt,
            seconds=job.seconds,
            callback_url=request.app.state.callback_url,  # None: no callbacks
        )
    except Aio88Error as exc:
        raise create_failure(exc, job) from exc
    except (ValueError, TypeError) as exc:  # refused before anything was sent
        raise problem(422, "rejected", str(exc)) from exc
    return {"id": video.id, "status": video.status.value}


@app.get("/jobs/{job_id}")
async def wait_for_job(
    job_id: str, request: Request, timeout: float = Query(600, ge=0, allow_inf_nan=False)
) -> dict[str, Any]:
    """Wait until the job finishes (or ``timeout``); many callers share one poll stream."""
    poller: Poller = request.app.state.poller
    try:
        task = await until_disconnected(request, poller.wait(job_id, kind="video", timeout=timeout))
    except TaskFailedError as exc:
        error = exc.task.error
        raise problem(
            422,
            "failed",
            (error.message if error else None) or "the job failed",
            id=job_id,
            code=error.code if error else None,
        ) from exc
    except WaitTimeoutError as exc:
        last = exc.task.status.value if exc.task is not None else None
        raise problem(
            504,
            "timeout",
            f"not finished within {timeout:g}s; it goes on: GET /jobs/{job_id} again later",
            id=job_id,
            status=last,
        ) from exc
    except NotFoundError as exc:
        if exc.media_host is not None:
            raise api_failure(exc) from exc
        raise problem(404, "not_found", "no such job", id=job_id) from exc
    except Aio88Error as exc:
        raise api_failure(exc) from exc
    except ValueError as exc:  # not an id at all
        raise problem(400, "bad_id", str(exc)) from exc
    return {"id": task.id, "status": task.status.value, "progress": task.progress}


@app.get("/jobs/{job_id}/video")
async def job_video(job_id: str, request: Request) -> StreamingResponse:
    """Stream the finished video through, without holding it in memory.

    ``resume=True``: a connection to the API cut mid-body is continued with a ``Range``
    request, so the caller's stream goes on instead of breaking. Errors before the first
    byte get their HTTP status; after it the status is sent, so a stream that cannot be
    continued is closed short of its ``Content-Length``, which the caller can detect.
    """
    client: Client = request.app.state.client
    stack = AsyncExitStack()
    try:
        body = await stack.enter_async_context(client.videos.content(job_id, resume=True))
    except (NotFoundError, BadRequestError, ConflictError, DownloadError) as exc:
        if isinstance(exc, APIStatusError) and exc.media_host is not None:
            raise api_failure(exc) from exc  # the link's server, not the job
        # Unknown, or not finished yet (88API answers 400 or 404 for that).
        raise problem(409, "not_ready", f"no finished video for {job_id}", id=job_id) from exc
    except Aio88Error as exc:
        raise api_failure(exc) from exc
    except ValueError as exc:
        raise problem(400, "bad_id", str(exc)) from exc

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in body:
                yield chunk
        except Aio88Error as exc:
            log.error("video %s cut after %d bytes: %s", job_id, body.received, exc)
            raise
        finally:
            await stack.aclose()

    # The length, when the API said, lets the caller tell a whole video from a cut one.
    headers = {"Content-Length": str(body.content_length)} if body.content_length else {}
    return StreamingResponse(chunks(), media_type="video/mp4", headers=headers)


@app.post("/88api/callback", status_code=204)
async def task_callback(request: Request) -> Response:
    """88API's signed callback: verified, then handed to the poller, which polls the task
    once so that its waiters get the whole task. Answers at once (88API resends what
    fails, for about 21 minutes, so a refusal here is final for forgeries only).

    The only route to expose publicly; the signature (HMAC with our API key) and its
    5-minute timestamp window are what make it safe to.
    """
    body = bytearray()
    async for chunk in request.stream():  # capped as it arrives, Content-Length or not
        body += chunk
        if len(body) > CALLBACK_LIMIT:
            return Response(status_code=413)
    client: Client = request.app.state.client
    poller: Poller = request.app.state.poller
    try:
        event = client.webhooks.unwrap(bytes(body), request.headers)
    except WebhookVerificationError as exc:
        # Never logs the body or the key (neither is in the error's text).
        log.info("callback refused: %s", exc)
        return Response(status_code=400 if exc.malformed else 401)
    await poller.deliver(event)  # a hint: the poll runs on the poller's workers
    return Response(status_code=204)
