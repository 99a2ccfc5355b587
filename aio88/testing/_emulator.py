"""A real 88API server on loopback, for tests, demos and benchmarks.

The emulator speaks the video API in either dialect:

- ``"docs"``: as docs.88api.ai documents it: flat objects, ``succeeded``, ``processing``,
  HTTP 201 on create, 404 for an unknown task, error shapes A and B, ``x-request-id``.
- ``"newapi"``: as 88API's server code behaves: the ``{"code":"success","data":{...}}``
  envelope with upper-case statuses on ``/v1/video/generations``, ``completed`` on
  ``/v1/videos``, HTTP 200 on create, 400 ``task_not_exist``, error shapes C and D, an empty
  body on 429, a 307 redirect of ``/content`` to a second origin that refuses any
  ``Authorization`` header, and ``X-Oneapi-Request-Id``.

It builds every response from plain dicts and imports nothing from the client, so a wrong
field name in the client cannot agree with itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import hashlib
import itertools
import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from types import TracebackType
from typing import Any, Literal

from aiohttp import BodyPartReader, web

__all__ = ["Emulator", "EmulatedTask", "Faults", "LoggedRequest", "ManualClock"]

Dialect = Literal["docs", "newapi"]
Kind = Literal["generation", "video"]
#: How long a truncated video body pauses before its connection is dropped.
TRUNCATE_PAUSE = 0.05

FaultKind = Literal["429", "500", "drop", "truncate", "garbage"]

#: Bytes per write when serving content: large enough to keep loopback fast.
_WRITE_CHUNK = 1024 * 1024
#: Length of the block that deterministic content repeats.
_PATTERN_BLOCK = 64 * 1024


class ManualClock:
    """A clock that moves only when told to, so schedules and deadlines are tested
    without sleeping.

    Give the same clock to the emulator and to the client's poller; then
    ``clock.advance(30)`` makes 30 seconds pass for every task and every deadline::

        clock = ManualClock()
        async with Emulator(clock=clock) as emu, Client(...) as client:
            async with client.watch(ids, clock=clock, timeout=600) as outcomes:
                clock.advance(601)   # every unfinished task times out now
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._moved: asyncio.Event | None = None

    def __call__(self) -> float:
        return self._now

    def now(self) -> float:
        """The current time, in seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking whoever sleeps until then."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds
        moved, self._moved = self._moved, None
        if moved is not None:
            moved.set()

    async def sleep_until(self, deadline: float) -> None:
        """Return once the clock has been advanced to ``deadline`` (at once if it has)."""
        while self._now < deadline:
            if self._moved is None:
                self._moved = asyncio.Event()
            await self._moved.wait()
        await asyncio.sleep(0)  # a checkpoint, as a real sleep would be


@dataclass
class LoggedRequest:
    """One request the emulator received (either origin)."""

    at: float
    """Real monotonic time of arrival (``time.monotonic()``), for measuring gaps."""
    clock: float
    """The emulator's clock at arrival (differs from ``at`` under a manual clock)."""
    origin: Literal["api", "media"]
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """The request headers, names in lower case."""
    status: int = 0
    """The status answered; 0 while in flight or when the connection was dropped."""
    fault: str | None = None
    """The injected fault, if one was applied."""

    @property
    def authorization(self) -> str | None:
        """The ``Authorization`` header it carried, if any."""
        return self.headers.get("authorization")


@dataclass
class EmulatedTask:
    """A task inside the emulator. Read it; drive it with ``Emulator.complete``/``fail``."""

    id: str
    kind: Kind
    model: str
    prompt: str
    created: float
    """Emulator clock at creation."""
    queued_for: float | None
    """Seconds queued before running; ``None``: it waits for a manual ``complete``/``fail``."""
    run_for: float
    will_fail: bool
    request: dict[str, Any]
    """The create request's fields, as the emulator parsed them."""
    row_id: int
    remixed_from: str | None = None
    forced: Literal["succeeded", "failed", "in_progress"] | None = None
    forced_progress: int | None = None
    fail_message: str = "the video vendor rejected the prompt (emulated failure)"
    files: dict[str, Any] = field(default_factory=dict)
    """Uploaded files of a multipart create: field name -> (filename, size, content type)."""

    def phase(self, now: float) -> tuple[str, int]:
        """The task's lifecycle phase (queued, in_progress, succeeded, failed) and progress."""
        if self.forced == "succeeded":
            return "succeeded", 100
        if self.forced == "failed":
            return "failed", 100
        if self.forced == "in_progress":
            return "in_progress", self.forced_progress or 0
        if self.queued_for is None:
            return "queued", 0
        age = now - self.created
        if age < self.queued_for:
            return "queued", 0
        running = age - self.queued_for
        if running < self.run_for:
            return "in_progress", max(1, min(99, int(100 * running / self.run_for)))
        return ("failed" if self.will_fail else "succeeded"), 100

    def finished_at(self) -> float | None:
        """Emulator time at which the task ends by itself, or ``None`` if driven by hand."""
        if self.queued_for is None:
            return None
        return self.created + self.queued_for + self.run_for


@dataclass
class Faults:
    """Random faults, each a probability per request to the API origin (0 = never).

    Change them while the emulator runs; scripted faults (``Emulator.inject``) come first.
    """

    rate_429: float = 0.0
    """Answer 429."""
    retry_after: float | None = None
    """The ``Retry-After`` of injected 429s, in seconds; ``None`` sends none."""
    rate_500: float = 0.0
    """Answer 500."""
    drop_rate: float = 0.0
    """Close the connection without answering."""
    truncate_rate: float = 0.0
    """Promise the whole body, send part of it, and close the connection."""
    latency: float = 0.0
    """Seconds added before each API answer."""


@dataclass
class _Scripted:
    kind: FaultKind
    remaining: int
    method: str | None
    path: str | None
    retry_after: float | None


# The fault chosen for the request being answered: the middleware decides, the content
# handler (same task) reads it to cut a streamed body short.
_current_fault: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "aio88_emulator_fault", default=None
)


class _Truncated(Exception):
    """Raised inside a handler to cut the connection after a partial body."""


def _pattern_block(seed: int) -> bytes:
    return random.Random(seed).randbytes(_PATTERN_BLOCK)


class Emulator:
    """An 88API server on loopback (``127.0.0.1``, a free port by default).

    ::

        async with Emulator(api_key="sk-test", dialect="newapi") as emu:
            async with Client(api_key="sk-test", base_url=emu.base_url) as client:
                ...

    Args:
        api_key: The only key it accepts (as ``Bearer sk-test`` or ``Bearer test``).
        dialect: ``"docs"`` or ``"newapi"`` (see the module docstring).
        host: The address to bind.
        port: The API port; 0 picks a free one.
        seed: Seeds task ids, durations, outcomes, faults and deterministic content.
        duration: ``(low, high)`` seconds a task takes from creation to its end, drawn
            uniformly; ``None`` keeps every task queued until ``complete``/``fail``.
        failure_rate: The share of tasks that end ``failed``.
        clock: What time it is: ``time.monotonic`` by default, or a :class:`ManualClock`.
        faults: Random fault probabilities (:class:`Faults`).
        content: The video bytes every finished task serves; a small real MP4 by default.
        content_size: Serve this many deterministic bytes instead (for big downloads:
            nothing is held in memory).
        honor_range: Answer ``Range`` requests with 206; ``False`` always sends it all.
        redirect_content: Answer ``/content`` with a 307 to the media origin; by default,
            in the ``newapi`` dialect only.
        expires_in: Seconds from creation to a video's ``expires_at``.
        poll_after_ms: Send ``openai-poll-after-ms`` with this value on every task
            retrieval (a server poll hint); ``None`` sends none, as 88API does.
        any_id: Answer an unknown id as a finished task (made on the spot) instead of
            "not found": for load tests that poll ids they never created.
    """

    def __init__(
        self,
        *,
        api_key: str = "sk-test",
        dialect: Dialect = "docs",
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        duration: tuple[float, float] | None = (1.0, 3.0),
        failure_rate: float = 0.0,
        clock: Callable[[], float] | None = None,
        faults: Faults | None = None,
        content: bytes | None = None,
        content_size: int | None = None,
        honor_range: bool = True,
        redirect_content: bool | None = None,
        expires_in: float = 24 * 3600.0,
        poll_after_ms: int | None = None,
        any_id: bool = False,
    ) -> None:
        if dialect not in ("docs", "newapi"):
            raise ValueError(f"dialect must be 'docs' or 'newapi', got {dialect!r}")
        if duration is not None and not 0 < duration[0] <= duration[1]:
            raise ValueError("duration must be (low, high) with 0 < low <= high")
        self.api_key = api_key
        self.dialect: Dialect = dialect
        self.host = host
        self.port = port
        self.seed = seed
        self.duration = duration
        self.failure_rate = failure_rate
        self.clock: Callable[[], float] = clock or time.monotonic
        self.faults = faults or Faults()
        self.honor_range = honor_range
        self.redirect_content = (
            dialect == "newapi" if redirect_content is None else redirect_content
        )
        self.expires_in = expires_in
        self.poll_after_ms = poll_after_ms
        self.any_id = any_id
        if content is not None and content_size is not None:
            raise ValueError("pass content or content_size, not both")
        self._content = content
        self._content_size = content_size
        self._block = _pattern_block(seed) if content_size is not None else b""
        self._content_sha256: str | None = None
        self._pattern: bytes | None = None

        self.tasks: dict[str, EmulatedTask] = {}
        """Every task, by id."""
        self.requests: list[LoggedRequest] = []
        """Every request received, in arrival order."""
        self.in_flight = 0
        """Requests being answered right now (API origin)."""
        self.max_in_flight = 0
        """The most requests the API origin answered at once."""
        self.expired: set[str] = set()
        """Task ids whose media URL answers 403 (an expired signed link)."""

        self._rng = random.Random(seed)
        self._fault_rng = random.Random(seed + 1)
        self._ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._scripted: collections.deque[_Scripted] = collections.deque()
        self._runners: list[web.AppRunner] = []
        self._epoch = time.time() - self.clock()
        self.base_url = ""
        """The API origin, e.g. ``http://127.0.0.1:41234`` (set once started)."""
        self.media_url = ""
        """The second, credential-free origin that serves finished files."""

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind both origins and start serving."""
        api = web.Application(middlewares=[self._api_middleware], client_max_size=64 * 2**20)
        api.router.add_post("/v1/video/generations", self._create_generation)
        api.router.add_get("/v1/video/generations/{id}", self._get_generation)
        api.router.add_post("/v1/videos", self._create_video)
        api.router.add_get("/v1/videos/{id}", self._get_video)
        api.router.add_post("/v1/videos/{id}/remix", self._remix)
        api.router.add_get("/v1/videos/{id}/content", self._content_route)  # GET also answers HEAD
        media = web.Application(middlewares=[self._media_middleware])
        media.router.add_get("/media/{id}.mp4", self._media)
        self.base_url = await self._serve(api, self.port)
        self.media_url = await self._serve(media, 0)

    async def _serve(self, app: web.Application, port: int) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, port, reuse_address=True)
        await site.start()
        self._runners.append(runner)
        host, bound_port = runner.addresses[0][:2]
        return f"http://{host}:{bound_port}"

    async def aclose(self) -> None:
        """Stop serving. Safe to call twice."""
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    # -- control ---------------------------------------------------------------------

    def add_task(
        self,
        kind: Kind = "video",
        *,
        model: str | None = None,
        prompt: str = "an emulated video",
        status: Literal["queued", "in_progress", "succeeded", "failed"] | None = None,
    ) -> str:
        """Create a task directly (no HTTP request); return its id.

        ``status`` pins it in that state; otherwise it follows the seeded lifecycle.
        """
        model = model or ("sora-2" if kind == "video" else "kling-v1")
        task = self._new_task(kind, model, prompt, {"model": model, "prompt": prompt})
        if status == "succeeded":
            self.complete(task.id)
        elif status == "failed":
            self.fail(task.id)
        elif status == "in_progress":
            self.set_progress(task.id, 0)
        elif status == "queued":
            task.queued_for = None
        return task.id

    def complete(self, task_id: str) -> None:
        """Finish a task successfully, now."""
        self.tasks[task_id].forced = "succeeded"

    def fail(self, task_id: str, message: str | None = None) -> None:
        """Fail a task, now, with ``message`` as the reason."""
        task = self.tasks[task_id]
        task.forced = "failed"
        if message is not None:
            task.fail_message = message

    def set_progress(self, task_id: str, progress: int) -> None:
        """Hold a task in progress at ``progress`` percent."""
        task = self.tasks[task_id]
        task.forced = "in_progress"
        task.forced_progress = progress

    def inject(
        self,
        kind: FaultKind,
        *,
        times: int = 1,
        method: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Make the next ``times`` matching API requests fail with ``kind``.

        Args:
            kind: ``"429"``, ``"500"``, ``"drop"`` (close without answering),
                ``"truncate"`` (part of the body, then close) or ``"garbage"`` (a 200
                whose body is not JSON).
            times: How many requests it hits.
            method: Only requests with this method.
            path: Only requests whose path starts with this.
            retry_after: For ``"429"``: the ``Retry-After`` seconds to send.
        """
        self._scripted.append(_Scripted(kind, times, method, path, retry_after))

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """How many logged requests match ``method`` and start with ``path``."""
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method) and (path is None or r.path.startswith(path))
        )

    @property
    def creates(self) -> int:
        """How many create requests (both families, remix included) reached the server."""
        return sum(1 for r in self.requests if r.method == "POST" and r.origin == "api")

    def reset_log(self) -> None:
        """Forget logged requests and the in-flight maximum."""
        self.requests.clear()
        self.max_in_flight = self.in_flight

    def now_unix(self) -> int:
        """The emulator's current time as a Unix timestamp."""
        return int(self._epoch + self.clock())

    # -- content ---------------------------------------------------------------------

    @property
    def content_length(self) -> int:
        """The size of the file every finished task serves."""
        if self._content_size is not None:
            return self._content_size
        return len(self._video_bytes())

    @property
    def content_sha256(self) -> str:
        """The hex SHA-256 of that file (computed once)."""
        if self._content_sha256 is None:
            digest = hashlib.sha256()
            for chunk in self._chunks(0, self.content_length):
                digest.update(chunk)
            self._content_sha256 = digest.hexdigest()
        return self._content_sha256

    @property
    def etag(self) -> str:
        """The strong ETag the content carries."""
        return f'"emu-{self.seed}-{self.content_length}"'

    def _video_bytes(self) -> bytes:
        if self._content is None:
            self._content = (resources.files(__package__) / "sample.mp4").read_bytes()
        return self._content

    def _chunks(self, start: int, end: int) -> Iterable[bytes | memoryview]:
        """The content's bytes ``[start, end)``, in chunks of at most 1 MiB."""
        if self._content_size is None:
            data = memoryview(self._video_bytes())
            for offset in range(start, end, _WRITE_CHUNK):
                yield data[offset : min(end, offset + _WRITE_CHUNK)]
            return
        # One buffer of whole blocks plus a spare block, made once; each chunk is a
        # zero-copy slice of it at the right phase, so serving 1 GiB allocates nothing.
        big = self._pattern_buffer()
        view = memoryview(big)
        offset = start
        while offset < end:
            phase = offset % _PATTERN_BLOCK
            n = min(end - offset, _WRITE_CHUNK)
            yield view[phase : phase + n]
            offset += n

    def _pattern_buffer(self) -> bytes:
        if self._pattern is None:
            self._pattern = self._block * (_WRITE_CHUNK // _PATTERN_BLOCK + 1)
        return self._pattern

    # -- middleware ------------------------------------------------------------------

    def _log(self, request: web.Request, origin: Literal["api", "media"]) -> LoggedRequest:
        entry = LoggedRequest(
            at=time.monotonic(),
            clock=self.clock(),
            origin=origin,
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
        )
        self.requests.append(entry)
        return entry

    def _next_fault(self, request: web.Request) -> tuple[FaultKind | None, float | None]:
        for scripted in self._scripted:
            if (scripted.method is None or scripted.method == request.method) and (
                scripted.path is None or request.path.startswith(scripted.path)
            ):
                scripted.remaining -= 1
                if scripted.remaining <= 0:
                    self._scripted.remove(scripted)
                return scripted.kind, scripted.retry_after
        faults, rng = self.faults, self._fault_rng
        if faults.drop_rate and rng.random() < faults.drop_rate:
            return "drop", None
        if faults.rate_429 and rng.random() < faults.rate_429:
            return "429", faults.retry_after
        if faults.rate_500 and rng.random() < faults.rate_500:
            return "500", None
        if faults.truncate_rate and rng.random() < faults.truncate_rate:
            return "truncate", None
        return None, None

    @web.middleware
    async def _api_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        entry = self._log(request, "api")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        request_id = f"{self.now_unix()}{next(self._request_ids):012d}emu"
        try:
            if self.faults.latency:
                await asyncio.sleep(self.faults.latency)
            fault, retry_after = self._next_fault(request)
            entry.fault = fault
            response: web.StreamResponse
            if fault == "drop":
                self._drop(request)
                entry.status = 0
                raise _Truncated
            if fault == "429":
                response = self._rate_limited(request, retry_after)
            elif not self._authorized(request):
                response = self._unauthorized(request, request_id)
            elif fault == "500":
                response = self._server_error(request)
            elif fault == "garbage":
                response = web.Response(status=200, text="<html>502 Bad Gateway</html>")
            else:
                _current_fault.set(fault)
                response = await handler(request)
            entry.status = response.status
            if not response.prepared:
                response.headers[self._request_id_header] = request_id
                if fault == "truncate" and isinstance(response, web.Response):
                    await self._send_truncated(request, response)
            return response
        except _Truncated:
            # The connection is already closed; tell aiohttp there is nothing to send.
            raise web.HTTPException() from None
        finally:
            self.in_flight -= 1

    @web.middleware
    async def _media_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        entry = self._log(request, "media")
        if "Authorization" in request.headers:
            # What a signed storage URL does with a second credential.
            entry.status = 400
            return web.Response(
                status=400,
                text="InvalidArgument: only one auth mechanism allowed; an Authorization "
                "header must not accompany a signed URL",
            )
        try:
            response: web.StreamResponse = await handler(request)
        except _Truncated:
            raise web.HTTPException() from None
        entry.status = response.status
        return response

    @property
    def _request_id_header(self) -> str:
        return "X-Oneapi-Request-Id" if self.dialect == "newapi" else "x-request-id"

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        given = header[len("Bearer ") :].strip()
        bare = self.api_key.removeprefix("sk-")
        return given.removeprefix("sk-") == bare

    @staticmethod
    def _drop(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.close()

    async def _send_truncated(self, request: web.Request, response: web.Response) -> None:
        body = response.body
        assert isinstance(body, bytes)
        stream = web.StreamResponse(status=response.status, headers=response.headers)
        stream.content_length = len(body)
        await stream.prepare(request)
        await stream.write(body[: len(body) // 2])
        self._drop(request)
        raise _Truncated

    # -- error bodies ----------------------------------------------------------------

    @staticmethod
    def _is_video_route(request: web.Request) -> bool:
        return request.path.startswith("/v1/videos")

    def _error(
        self,
        request: web.Request,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type_: str = "invalid_request_error",
        param: str | None = None,
    ) -> web.Response:
        """An error in the shape this dialect uses on this route."""
        body: dict[str, Any]
        if self.dialect == "newapi":
            body = {"code": code or type_, "message": message, "data": None}  # shape C
        elif self._is_video_route(request):
            body = {"error": {"message": message, "type": type_}}  # shape B
        else:
            body = {"code": code, "message": message, "param": param, "type": type_}  # shape A
        return web.json_response(body, status=status)

    def _unauthorized(self, request: web.Request, request_id: str) -> web.Response:
        if self.dialect == "newapi":
            body = {
                "error": {
                    "message": f"无效的令牌 (request id: {request_id})",
                    "type": "new_api_error",
                    "code": "",
                }
            }  # shape D
            return web.json_response(body, status=401)
        return self._error(request, 401, "Invalid API key", type_="authentication_error")

    def _rate_limited(self, request: web.Request, retry_after: float | None) -> web.Response:
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        if self.dialect == "newapi":
            return web.Response(status=429, headers=headers)  # shape F: empty body
        response = self._error(request, 429, "Rate limit exceeded", type_="rate_limit_error")
        response.headers.update(headers)
        return response

    def _server_error(self, request: web.Request) -> web.Response:
        return self._error(
            request,
            500,
            "upstream request failed (emulated fault)",
            code="do_request_failed",
            type_="server_error",
        )

    def _not_found(self, request: web.Request, task_id: str) -> web.Response:
        if self.dialect == "newapi":
            message = (
                "task_origin_not_exist" if request.path.endswith("/remix") else "task_not_exist"
            )
            body = {"code": "task_not_exist", "message": message, "data": None}
            return web.json_response(body, status=400)
        return self._error(request, 404, "Task not found", param="task_id")

    # -- tasks -----------------------------------------------------------------------

    def _new_id(self) -> str:
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        return "task_" + "".join(self._rng.choice(alphabet) for _ in range(32))

    def _new_task(
        self, kind: Kind, model: str, prompt: str, fields: dict[str, Any]
    ) -> EmulatedTask:
        if self.duration is None:
            queued_for: float | None = None
            run_for = 0.0
        else:
            total = self._rng.uniform(*self.duration)
            queued_for = total * self._rng.uniform(0.05, 0.3)
            run_for = total - queued_for
        task = EmulatedTask(
            id=self._new_id(),
            kind=kind,
            model=model,
            prompt=prompt,
            created=self.clock(),
            queued_for=queued_for,
            run_for=run_for,
            will_fail=self._rng.random() < self.failure_rate,
            request=fields,
            row_id=next(self._ids),
        )
        self.tasks[task.id] = task
        return task

    def _media_link(self, task: EmulatedTask) -> str:
        return f"{self.media_url}/media/{task.id}.mp4?X-Amz-Expires=3600&X-Amz-Signature=emulated"

    def _created_unix(self, task: EmulatedTask) -> int:
        return int(self._epoch + task.created)

    def _end_unix(self, task: EmulatedTask) -> int:
        end = task.finished_at()
        return int(self._epoch + (end if end is not None else self.clock()))

    async def _read_create(self, request: web.Request) -> dict[str, Any] | web.Response:
        """The create body as a dict (JSON or multipart), or an error response."""
        files: dict[str, Any] = {}
        if request.content_type == "multipart/form-data":
            fields: dict[str, Any] = {}
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader) or part.name is None:
                    continue
                if part.filename:
                    data = await part.read()
                    files[part.name] = (part.filename, len(data), part.headers.get("Content-Type"))
                else:
                    fields[part.name] = await part.text()
            metadata = fields.get("metadata")
            if isinstance(metadata, str):
                try:
                    fields["metadata"] = json.loads(metadata)
                except ValueError:
                    return self._error(
                        request, 400, "metadata must be a JSON string", code="invalid_request"
                    )
        else:
            try:
                decoded: object = await request.json()
            except ValueError:
                return self._error(request, 400, "invalid JSON body", code="invalid_request")
            if not isinstance(decoded, dict):
                return self._error(request, 400, "body must be an object", code="invalid_request")
            fields = decoded
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return self._error(
                request, 400, "prompt is required", code="invalid_request", param="prompt"
            )
        fields["_files"] = files
        return fields

    def _create_answer(self, task: EmulatedTask) -> web.Response:
        created = self._created_unix(task)
        if self.dialect == "newapi":
            body: dict[str, Any] = {
                "id": task.id,
                "task_id": task.id,
                "object": "video",
                "model": task.model,
                "status": "queued",
                "progress": 0,
                "created_at": created,
                "metadata": {"url": ""},
            }
            return web.json_response(body, status=200)
        if task.kind == "generation":
            # The docs' example: a display id beside the task_id to query with.
            body = {
                "id": f"video_{task.row_id}",
                "object": "video",
                "model": task.model,
                "created_at": created,
                "task_id": task.id,
                "status": "processing",
            }
        else:
            body = {
                "id": task.id,
                "object": "video",
                "model": task.model,
                "created_at": created,
                "status": "queued",
                "progress": 0,
            }
        return web.json_response(body, status=201)

    async def _create(self, request: web.Request, kind: Kind, default_model: str) -> web.Response:
        fields = await self._read_create(request)
        if isinstance(fields, web.Response):
            return fields
        files = fields.pop("_files")
        task = self._new_task(
            kind, str(fields.get("model") or default_model), fields["prompt"], fields
        )
        task.files = files
        return self._create_answer(task)

    async def _create_generation(self, request: web.Request) -> web.Response:
        return await self._create(request, "generation", "kling-v1")

    async def _create_video(self, request: web.Request) -> web.Response:
        return await self._create(request, "video", "sora-2")

    async def _remix(self, request: web.Request) -> web.Response:
        origin = self.tasks.get(request.match_info["id"])
        if origin is None:
            return self._not_found(request, request.match_info["id"])
        fields = await self._read_create(request)
        if isinstance(fields, web.Response):
            return fields
        fields.pop("_files")
        task = self._new_task("video", origin.model, fields["prompt"], fields)
        task.remixed_from = origin.id
        return self._create_answer(task)

    def _lookup(self, request: web.Request) -> EmulatedTask | web.Response:
        task_id = request.match_info["id"]
        task = self.tasks.get(task_id)
        if task is None and self.any_id:
            kind: Kind = "video" if self._is_video_route(request) else "generation"
            task = self._new_task(kind, "sora-2", "made on the spot", {"prompt": "any"})
            del self.tasks[task.id]
            task.id = task_id
            task.forced = "succeeded"
            self.tasks[task_id] = task
        return task if task is not None else self._not_found(request, task_id)

    async def _get_generation(self, request: web.Request) -> web.Response:
        task = self._lookup(request)
        if isinstance(task, web.Response):
            return task
        return self._task_answer(self.generation_json(task))

    async def _get_video(self, request: web.Request) -> web.Response:
        task = self._lookup(request)
        if isinstance(task, web.Response):
            return task
        return self._task_answer(self.video_json(task))

    def _task_answer(self, body: dict[str, Any]) -> web.Response:
        response = web.json_response(body)
        if self.poll_after_ms is not None:
            response.headers["openai-poll-after-ms"] = str(self.poll_after_ms)
        return response

    # -- task bodies, per dialect (public so tests can compare) ------------------------

    def generation_json(self, task: EmulatedTask) -> dict[str, Any]:
        """What ``GET /v1/video/generations/{id}`` answers for ``task`` now."""
        phase, progress = task.phase(self.clock())
        done = phase == "succeeded"
        if self.dialect == "newapi":
            status = {
                "queued": "QUEUED" if task.row_id % 2 else "NOT_START",
                "in_progress": "IN_PROGRESS",
                "succeeded": "SUCCESS",
                "failed": "FAILURE",
            }[phase]
            dto = {
                "id": task.row_id,
                "task_id": task.id,
                "platform": "kling" if task.kind == "generation" else "sora",
                "action": "generate",
                "status": status,
                "progress": f"{progress}%",
                "fail_reason": task.fail_message if phase == "failed" else "",
                "result_url": self._media_link(task) if done else "",
                "submit_time": self._created_unix(task),
                "start_time": self._created_unix(task),
                "finish_time": self._end_unix(task) if phase in ("succeeded", "failed") else 0,
                "created_at": self._created_unix(task),
                "updated_at": self.now_unix(),
                "quota": 0,
                "data": {"vendor_task_id": f"vendor-{task.row_id}", "raw": [1, 2, 3]},
            }
            return {"code": "success", "message": "", "data": dto}
        status = {"queued": "queued", "in_progress": "processing"}.get(phase, phase)
        return {
            "task_id": task.id,
            "status": status,
            "format": "mp4",
            "url": self._media_link(task) if done else "",
            "metadata": {
                "duration": task.request.get("duration", 5),
                "fps": 30,
                "height": 512,
                "width": 512,
                "seed": 20231234,
            },
            "error": {"code": "generation_failed", "message": task.fail_message}
            if phase == "failed"
            else None,
        }

    def video_json(self, task: EmulatedTask) -> dict[str, Any]:
        """What ``GET /v1/videos/{id}`` answers for ``task`` now."""
        phase, progress = task.phase(self.clock())
        done = phase == "succeeded"
        created = self._created_unix(task)
        body: dict[str, Any] = {
            "id": task.id,
            "object": "video",
            "model": task.model,
            "created_at": created,
            "progress": progress,
            "expires_at": int(created + self.expires_in),
            "size": str(task.request.get("size") or "1280x720"),
            "seconds": str(task.request.get("seconds") or "4"),
            "remixed_from_video_id": task.remixed_from,
            "error": {"code": "generation_failed", "message": task.fail_message}
            if phase == "failed"
            else None,
        }
        if self.dialect == "newapi":
            body["task_id"] = task.id
            body["status"] = {"succeeded": "completed"}.get(phase, phase)
            body["completed_at"] = self._end_unix(task) if done else None
            body["metadata"] = {"url": self._media_link(task) if done else ""}
        else:
            body["status"] = phase
            body["quality"] = "standard"
            if done:
                body["url"] = self._media_link(task)
        return body

    # -- content ---------------------------------------------------------------------

    async def _content_route(self, request: web.Request) -> web.StreamResponse:
        task = self._lookup(request)
        if isinstance(task, web.Response):
            if self.dialect == "newapi":  # the content proxy's own shape (E)
                return web.json_response(
                    {"error": {"message": "Task not found", "type": "invalid_request_error"}},
                    status=404,
                )
            return task
        phase, _ = task.phase(self.clock())
        if phase != "succeeded":
            if self.dialect == "newapi":  # the fork hides the status behind a 404
                return web.json_response(
                    {"error": {"message": "Task not found", "type": "invalid_request_error"}},
                    status=404,
                )
            return web.json_response(
                {
                    "error": {
                        "message": "Task is not completed yet, current status: "
                        + {"queued": "QUEUED", "in_progress": "IN_PROGRESS"}.get(phase, "FAILURE"),
                        "type": "invalid_request_error",
                    }
                },
                status=400,
            )
        if self.redirect_content:
            return web.Response(
                status=307,
                headers={"Location": self._media_link(task), "Cache-Control": "no-store"},
            )
        return await self._send_content(request, truncate=_current_fault.get() == "truncate")

    async def _media(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["id"]
        task = self.tasks.get(task_id)
        if task_id in self.expired:
            return web.Response(status=403, text="AccessDenied: Request has expired")
        if task is None or task.phase(self.clock())[0] != "succeeded":
            return web.Response(status=404, text="NoSuchKey")
        fault = None
        if request.method == "GET":
            fault, _ = self._next_fault(request)
        return await self._send_content(request, truncate=fault == "truncate")

    async def _send_content(self, request: web.Request, *, truncate: bool) -> web.StreamResponse:
        size = self.content_length
        etag = self.etag
        start, end = 0, size
        status = 200
        range_header = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if range_header and self.honor_range and (if_range is None or if_range == etag):
            parsed = _parse_range(range_header, size)
            if parsed is None:
                return web.Response(
                    status=416, headers={"Content-Range": f"bytes */{size}", "ETag": etag}
                )
            start, end = parsed
            status = 206
        response = web.StreamResponse(status=status)
        response.content_type = "video/mp4"
        response.content_length = end - start
        response.headers["ETag"] = etag
        response.headers["Accept-Ranges"] = "bytes" if self.honor_range else "none"
        response.headers["Content-Disposition"] = 'attachment; filename="video.mp4"'
        if status == 206:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        stop = start + (end - start) // 2 if truncate else end
        for chunk in self._chunks(start, stop):
            await response.write(chunk)
        if truncate:
            # A real connection dies a moment after its last bytes, not in the same
            # instant: the client gets to read them (and keep them in its .part).
            await asyncio.sleep(TRUNCATE_PAUSE)
            self._drop(request)
            raise _Truncated
        await response.write_eof()
        return response


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` into ``[start, end)``.

    Returns ``None`` when the range cannot be satisfied (the caller answers 416).
    """
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if not first:
            n = int(last)
            return (max(0, size - n), size) if n > 0 and size else None
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size or start >= end:
        return None
    return start, min(end, size)
