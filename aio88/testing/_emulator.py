"""The emulator's server: two origins on loopback, their routes and middleware, the
request log, and the controls a test drives it with.

Each dialect's bodies come from :mod:`._wire` (whose docstring tells the two apart), the
tasks from :mod:`._lifecycle`, the faults from :mod:`._faults`, the video from
:mod:`._content` and the signed callbacks from :mod:`._callbacks`; none of them imports
the client.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

from aiohttp import web

from . import _wire as wire
from ._callbacks import (
    CallbackDelivery,
    CallbackSender,
    InvalidCallbackURL,
    check_callback_url,
    event_body,
)
from ._content import ConnectionCut, Content, drop, etag_for, send_content, send_truncated
from ._dashboard import DASHBOARD_PREFIX, TASK_LIST_PATH, dashboard_refusal, task_item, task_list
from ._faults import CallbackFaults, FaultKind, FaultPicker, Faults, ScriptedFault
from ._lifecycle import EmulatedTask, Kind, Phase, TaskMaker
from ._requests import CreateRequest, LoggedRequest, authorized, log_entry, read_create
from ._stats import STATS_PATH, Counters, EmulatorStats
from ._wire import Answer, Dialect, Moment

log = logging.getLogger("aio88.testing")

__all__ = ["Emulator"]

# The fault chosen for the request being answered: the middleware decides, the content
# handler (same task) reads it to cut a streamed body short.
_current_fault: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "aio88_emulator_fault", default=None
)


def _respond(answer: Answer) -> web.Response:
    """The HTTP response for a wire answer (no body when it has none)."""
    if answer.body is None:
        return web.Response(status=answer.status, headers=answer.headers)
    response = web.json_response(answer.body, status=answer.status)
    response.headers.update(answer.headers)
    return response


def _is_video_route(request: web.Request) -> bool:
    # The docs dialect answers errors in a different shape on this family.
    return request.path.startswith("/v1/videos")


class Emulator:
    """An 88API server on loopback (``127.0.0.1``, a free port by default).

    ::

        async with Emulator(api_key="sk-test", dialect="newapi") as emu:
            async with Client(api_key="sk-test", base_url=emu.base_url) as client:
                ...

    Args:
        api_key: The only key it accepts (as ``Bearer sk-test`` or ``Bearer test``).
        dialect: ``"docs"``, as docs.88api.ai documents the API, or ``"newapi"``, as
            88API's server behaves (envelopes, 400 for an unknown id, content redirected
            to a media origin).
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
        dashboard_token: The dashboard access token the dashboard API
            (``GET /api/task/self``) accepts, never the API key (nor the key there).
        user_id: The dashboard user every task belongs to (``New-Api-User``).
        on_answer: Called with each request's :class:`LoggedRequest` once it is answered
            (or dropped), on the emulator's loop: ``aio88 emulator --log`` prints them.
        callback_faults: Random faults of the signed callbacks it sends to a task's
            ``callback_url`` (:class:`CallbackFaults`).
        callback_time_scale: Multiplies the callbacks' waits (the retries' 10 s doubling,
            a delayed or held event's wait): ``0.01`` makes the first retry come after
            0.1 s. The waits run on ``clock``, so a manual clock needs ``advance``.
        on_callback: Called with each callback attempt's :class:`CallbackDelivery` once it
            is answered (and with each lost event), on the emulator's loop.

    A task created with ``callback_url`` (JSON, multipart or remix) gets a signed ``POST``
    of its event there when it ends, by its own timeline or by ``complete``/``fail``, as
    88API's server sends it (``docs/webhooks.md``). Only loopback URLs are called: any
    other is accepted (as the server accepts it) and its event logged as skipped; a URL
    that is not ``http(s)`` or is too long is refused with 400 ``invalid_callback_url``.
    See ``emu.callbacks``.
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
        dashboard_token: str = "dash-test",  # noqa: S107 - a test double's fixed token
        user_id: int = 1,
        on_answer: Callable[[LoggedRequest], None] | None = None,
        callback_faults: CallbackFaults | None = None,
        callback_time_scale: float = 1.0,
        on_callback: Callable[[CallbackDelivery], None] | None = None,
    ) -> None:
        if dialect not in ("docs", "newapi"):
            raise ValueError(f"dialect must be 'docs' or 'newapi', got {dialect!r}")
        if not callback_time_scale > 0:
            raise ValueError("callback_time_scale must be more than 0")
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
        self.dashboard_token = dashboard_token
        self.user_id = user_id
        self.on_answer = on_answer
        """Called with each request's log entry once it is answered (or dropped)."""
        self._content = Content(content, content_size, seed)
        self.callback_faults = callback_faults or CallbackFaults()
        """The callbacks' fault rates; change them while it runs."""
        self._callbacks = CallbackSender(
            clock=self.clock,
            api_key=lambda: self.api_key,
            faults=lambda: self.callback_faults,
            make_event=self._callback_event,
            seed=seed,
            time_scale=callback_time_scale,
            on_delivery=on_callback,
        )

        self.tasks: dict[str, EmulatedTask] = {}
        """Every task, by id."""
        self.requests: list[LoggedRequest] = []
        """Every request received, in arrival order."""
        self.in_flight = 0
        """Requests being answered right now (API origin)."""
        self.max_in_flight = 0
        """The most requests the API origin answered at once."""
        self.expired: set[str] = set()
        """Task ids whose media URL answers 403 (an expired signed link); their
        ``/content`` then serves the file itself instead of redirecting to it."""

        self._maker = TaskMaker(seed)
        # Task ids whose next media GET is cut short: a truncate fault met their redirect.
        self._cut_media: set[str] = set()
        self._faults = FaultPicker(seed)
        self._request_ids = itertools.count(1)
        self._runners: list[web.AppRunner] = []
        self._counters = Counters()
        self._started = time.monotonic()
        # Unix time = epoch + clock(): a manual clock starting at 0 still dates tasks today.
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
        api.router.add_get(STATS_PATH, self._stats_route)
        api.router.add_get(TASK_LIST_PATH, self._task_list)
        api.router.add_post("/v1/video/generations", self._create_generation)
        api.router.add_get("/v1/video/generations/{id}", self._get_generation)
        api.router.add_post("/v1/videos", self._create_video)
        api.router.add_get("/v1/videos/{id}", self._get_video)
        api.router.add_post("/v1/videos/{id}/remix", self._remix)
        api.router.add_get("/v1/videos/{id}/content", self._content_route)  # GET also answers HEAD
        media = web.Application(middlewares=[self._media_middleware])
        media.router.add_get("/media/{id}.mp4", self._media)
        self._started = time.monotonic()
        self.base_url = await self._serve(api, self.port)
        self.media_url = await self._serve(media, 0)

    async def _serve(self, app: web.Application, port: int) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, port, reuse_address=True)
        await site.start()
        self._runners.append(runner)
        host, bound_port = runner.addresses[0][:2]
        if ":" in host:  # an IPv6 address goes in brackets in a URL
            host = f"[{host}]"
        return f"http://{host}:{bound_port}"

    async def aclose(self) -> None:
        """Stop serving, and sending callbacks (those waiting or in flight are dropped).
        Safe to call twice."""
        await self._callbacks.aclose()
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
        """Finish a task successfully, now (its callback, if any, goes out)."""
        self.tasks[task_id].forced = "succeeded"
        self._callbacks.poke()

    def fail(self, task_id: str, message: str | None = None) -> None:
        """Fail a task, now, with ``message`` as the reason (its callback, if any, goes
        out)."""
        task = self.tasks[task_id]
        task.forced = "failed"
        if message is not None:
            task.fail_message = message
        self._callbacks.poke()

    def set_progress(self, task_id: str, progress: int) -> None:
        """Hold a task in progress at ``progress`` percent."""
        task = self.tasks[task_id]
        task.forced = "in_progress"
        task.forced_progress = progress
        self._callbacks.poke()

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
        self._faults.add(ScriptedFault(kind, times, method, path, retry_after))

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

    @property
    def callbacks(self) -> list[CallbackDelivery]:
        """Every callback attempt sent (and every event lost by a fault), in order: what
        was sent (``body``, ``headers``), when, to where, and the receiver's answer."""
        return self._callbacks.deliveries

    def stats(self) -> EmulatorStats:
        """The counts since it started: creates, polls, content, faults, tasks by state,
        callbacks (what ``GET /__emulator/stats`` serves as JSON)."""
        now = self.clock()
        return self._counters.snapshot(
            dialect=self.dialect,
            uptime=time.monotonic() - self._started,
            phases=[task.phase(now)[0] for task in self.tasks.values()],
            in_flight=self.in_flight,
            max_in_flight=self.max_in_flight,
            callbacks=self._callbacks.counts(),
        )

    async def _stats_route(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats().as_dict())

    def now_unix(self) -> int:
        """The emulator's current time as a Unix timestamp."""
        return int(self._epoch + self.clock())

    @property
    def content_length(self) -> int:
        """The size of the file every finished task serves."""
        return self._content.length

    @property
    def content_sha256(self) -> str:
        """The hex SHA-256 of that file (computed once)."""
        return self._content.sha256

    @property
    def etag(self) -> str:
        """The strong ETag the content carries."""
        return etag_for(self.seed, self.content_length)

    # -- task bodies (public so tests can compare) -------------------------------------

    def generation_json(self, task: EmulatedTask) -> dict[str, Any]:
        """What ``GET /v1/video/generations/{id}`` answers for ``task`` now."""
        return wire.generation_body(self.dialect, task, self._moment(task))

    def video_json(self, task: EmulatedTask) -> dict[str, Any]:
        """What ``GET /v1/videos/{id}`` answers for ``task`` now."""
        return wire.video_body(self.dialect, task, self._moment(task))

    def _moment(self, task: EmulatedTask) -> Moment:
        # One reading of the clock for the whole body, so its fields agree.
        now = self.clock()
        phase, progress = task.phase(now)
        created = int(self._epoch + task.created)
        end = task.finished_at()
        return Moment(
            phase=phase,
            progress=progress,
            created=created,
            ended=int(self._epoch + (end if end is not None else now)),
            now=int(self._epoch + now),
            expires_at=int(created + self.expires_in),
            media_link=self._media_link(task),
        )

    def _media_link(self, task: EmulatedTask) -> str:
        return f"{self.media_url}/media/{task.id}.mp4?X-Amz-Expires=3600&X-Amz-Signature=emulated"

    def _callback_event(self, task: EmulatedTask, phase: Phase) -> dict[str, Any]:
        """The event of a task that has just ended, as the server makes it."""
        now = self.clock()
        end = task.finished_at()
        # Ended by its own timeline: then; driven by hand: now, when it was seen to end.
        ended = end if task.forced is None and end is not None and end <= now else now
        return event_body(
            task_id=task.id,
            model=task.model,
            phase=phase,
            output_url=self._media_link(task) if phase == "succeeded" else None,
            error=task.fail_message if phase == "failed" else None,
            created_at=int(self._epoch + task.created),
            completed_at=int(self._epoch + ended),
            now=int(self._epoch + now),
        )

    # -- middleware ------------------------------------------------------------------

    def _log(self, request: web.Request, origin: Literal["api", "media"]) -> LoggedRequest:
        entry = log_entry(request, origin, self.clock)
        self.requests.append(entry)
        return entry

    def _answered(self, entry: LoggedRequest) -> None:
        """A request is answered (or dropped): time it, count it, report it."""
        entry.elapsed = time.monotonic() - entry.at
        self._counters.record(entry)
        if self.on_answer is not None:
            try:
                self.on_answer(entry)
            except Exception:
                # A broken observer must not break the answer it observes: said once,
                # and not called again.
                log.exception("Emulator(on_answer=...) failed; it is not called any more")
                self.on_answer = None

    @web.middleware
    async def _api_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        if request.path == STATS_PATH:
            # The emulator's own route: not the API, so no key, no fault, no log entry.
            own: web.StreamResponse = await handler(request)
            return own
        entry = self._log(request, "api")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        request_id = f"{self.now_unix()}{next(self._request_ids):012d}emu"
        try:
            if self.faults.latency:
                await self._hold()
            fault, retry_after = self._faults.pick(request.method, request.path, self.faults)
            entry.fault = fault
            response: web.StreamResponse
            if fault == "drop":
                drop(request)
                entry.status = 0
                raise ConnectionCut
            # A 429 comes before the key check, as a rate limiter in front of the API
            # would answer; a 500 comes after it.
            video_route = _is_video_route(request)
            if fault == "429":
                response = _respond(
                    wire.rate_limited(
                        self.dialect, video_route=video_route, retry_after=retry_after
                    )
                )
            elif request.path.startswith(DASHBOARD_PREFIX) and (
                refusal := dashboard_refusal(request.headers, self.dashboard_token, self.user_id)
            ):  # the dashboard's user auth, not the key
                response = _respond(refusal)
            elif not request.path.startswith(DASHBOARD_PREFIX) and not authorized(
                request, self.api_key
            ):
                response = _respond(
                    wire.unauthorized(self.dialect, video_route=video_route, request_id=request_id)
                )
            elif fault == "500":
                response = _respond(wire.server_error(self.dialect, video_route=video_route))
            elif fault == "garbage":
                response = web.Response(status=200, text=wire.GARBAGE)
            else:
                _current_fault.set(fault)
                response = await handler(request)
            entry.status = response.status
            if not response.prepared:
                response.headers[wire.request_id_header(self.dialect)] = request_id
                # A body-less answer (the /content redirect) has nothing to cut.
                if (
                    fault == "truncate"
                    and isinstance(response, web.Response)
                    and response.body is not None
                ):
                    await send_truncated(request, response)
            return response
        except (ConnectionCut, ConnectionResetError):
            # The connection is already closed (by a fault, or by a client that went away
            # while its request waited): tell aiohttp there is nothing to send.
            entry.status = 0
            raise web.HTTPException() from None
        except web.HTTPException as exc:  # aiohttp's own answer: no route, wrong method
            entry.status = exc.status
            raise
        finally:
            self.in_flight -= 1
            self._answered(entry)

    async def _hold(self) -> None:
        """Wait ``faults.latency`` seconds, re-reading it as it goes: lowering it lets the
        requests already waiting go (a test holds answers, then releases them)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while (left := self.faults.latency - (loop.time() - started)) > 0:  # noqa: ASYNC110 - a plain field, no event to wait on
            await asyncio.sleep(min(left, 0.05))

    @web.middleware
    async def _media_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        entry = self._log(request, "media")
        if "Authorization" in request.headers:
            # What a signed storage URL does with a second credential.
            entry.status = 400
            self._answered(entry)
            return web.Response(status=400, text=wire.MEDIA_TWO_CREDENTIALS)
        # The handler names the fault it picked here (same task, same context).
        _current_fault.set(None)
        try:
            response: web.StreamResponse = await handler(request)
            entry.status = response.status
        except ConnectionCut:
            raise web.HTTPException() from None
        except web.HTTPException as exc:  # aiohttp's own answer: no route, wrong method
            entry.status = exc.status
            raise
        finally:
            entry.fault = _current_fault.get()
            self._answered(entry)
        return response

    async def _read_create(self, request: web.Request) -> CreateRequest | web.Response:
        """The create body, or the 400 that refuses it (in this dialect's shape)."""
        read = await read_create(request)
        if isinstance(read, CreateRequest):
            try:
                check_callback_url(read.fields.get("callback_url"))
            except InvalidCallbackURL as exc:
                return _respond(
                    wire.error(
                        self.dialect,
                        400,
                        str(exc),
                        video_route=_is_video_route(request),
                        code="invalid_callback_url",
                        param="callback_url",
                    )
                )
            return read
        return _respond(
            wire.error(
                self.dialect,
                400,
                read.message,
                video_route=_is_video_route(request),
                code=read.code,
                param=read.param,
            )
        )

    def _not_found(self, request: web.Request) -> web.Response:
        return _respond(
            wire.not_found(
                self.dialect,
                video_route=_is_video_route(request),
                remix=request.path.endswith("/remix"),
            )
        )

    # -- tasks -----------------------------------------------------------------------

    def _new_task(
        self, kind: Kind, model: str, prompt: str, fields: dict[str, Any]
    ) -> EmulatedTask:
        task = self._maker.make(
            kind,
            model,
            prompt,
            fields,
            clock=self.clock,
            duration=self.duration,
            failure_rate=self.failure_rate,
        )
        self.tasks[task.id] = task
        return task

    def _create_answer(self, task: EmulatedTask) -> web.Response:
        return _respond(wire.create_answer(self.dialect, task, int(self._epoch + task.created)))

    async def _create(self, request: web.Request, kind: Kind, default_model: str) -> web.Response:
        read = await self._read_create(request)
        if isinstance(read, web.Response):
            return read
        fields = read.fields
        task = self._new_task(
            kind, str(fields.get("model") or default_model), fields["prompt"], fields
        )
        task.files = read.files
        self._follow(task)
        return self._create_answer(task)

    async def _create_generation(self, request: web.Request) -> web.Response:
        return await self._create(request, "generation", "kling-v1")

    async def _create_video(self, request: web.Request) -> web.Response:
        return await self._create(request, "video", "sora-2")

    async def _remix(self, request: web.Request) -> web.Response:
        origin = self.tasks.get(request.match_info["id"])
        if origin is None:
            return self._not_found(request)
        read = await self._read_create(request)
        if isinstance(read, web.Response):
            return read
        task = self._new_task("video", origin.model, read.fields["prompt"], read.fields)
        task.remixed_from = origin.id
        self._follow(task)
        return self._create_answer(task)

    def _follow(self, task: EmulatedTask) -> None:
        """Call the task's ``callback_url`` back when it ends (checked at create)."""
        url = check_callback_url(task.request.get("callback_url"))
        if url is not None:
            self._callbacks.follow(task, url)

    async def _task_list(self, request: web.Request) -> web.Response:
        """The dashboard's list of the user's tasks (see :mod:`._dashboard`)."""
        now = self.clock()
        items = []
        for task in self.tasks.values():
            phase, progress = task.phase(now)
            end = task.finished_at()
            items.append(
                task_item(
                    self.dialect,
                    task,
                    user_id=self.user_id,
                    phase=phase,
                    progress=progress,
                    submitted=int(self._epoch + task.created),
                    finished=int(self._epoch + (end if end is not None else now)),
                )
            )
        return _respond(task_list(items, request.query))

    def _lookup(self, request: web.Request) -> EmulatedTask | None:
        """The task the path names; with ``any_id``, a finished one made on the spot."""
        task_id = request.match_info["id"]
        task = self.tasks.get(task_id)
        if task is None and self.any_id:
            kind: Kind = "video" if _is_video_route(request) else "generation"
            task = self._new_task(kind, "sora-2", "made on the spot", {"prompt": "any"})
            del self.tasks[task.id]
            task.id = task_id
            task.forced = "succeeded"
            self.tasks[task_id] = task
        return task

    async def _get_generation(self, request: web.Request) -> web.Response:
        task = self._lookup(request)
        if task is None:
            return self._not_found(request)
        return self._task_answer(self.generation_json(task))

    async def _get_video(self, request: web.Request) -> web.Response:
        task = self._lookup(request)
        if task is None:
            return self._not_found(request)
        return self._task_answer(self.video_json(task))

    def _task_answer(self, body: dict[str, Any]) -> web.Response:
        response = web.json_response(body)
        if self.poll_after_ms is not None:
            response.headers["openai-poll-after-ms"] = str(self.poll_after_ms)
        return response

    # -- content ---------------------------------------------------------------------

    async def _content_route(self, request: web.Request) -> web.StreamResponse:
        task = self._lookup(request)
        if task is None:
            if self.dialect == "newapi":  # the content proxy's own shape (E)
                return _respond(wire.content_not_found())
            return self._not_found(request)
        phase, _ = task.phase(self.clock())
        if phase != "succeeded":
            return _respond(wire.content_not_ready(self.dialect, phase))
        truncate = _current_fault.get() == "truncate"
        # 88API's fork redirects only to a link with validity left; an expired one it
        # proxies itself (88api-api.md §4.5), which is what a client's fallback relies on.
        if self.redirect_content and task.id not in self.expired:
            if truncate and request.method == "GET":
                # A redirect has no body to cut: the body it leads to is cut instead.
                self._cut_media.add(task.id)
            return web.Response(
                status=307,
                headers={"Location": self._media_link(task), "Cache-Control": "no-store"},
            )
        return await self._send_content(request, truncate=truncate)

    async def _media(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["id"]
        task = self.tasks.get(task_id)
        if task_id in self.expired:
            return web.Response(status=403, text=wire.MEDIA_EXPIRED)
        if task is None or task.phase(self.clock())[0] != "succeeded":
            return web.Response(status=404, text=wire.MEDIA_MISSING)
        fault = None
        if request.method == "GET":
            if task_id in self._cut_media:  # a truncate fault on the /content redirect
                self._cut_media.discard(task_id)
                fault = "truncate"  # logged (and counted) on the redirect
            else:
                # The media origin has no fault middleware; it takes its share here.
                fault, _ = self._faults.pick(request.method, request.path, self.faults)
                _current_fault.set(fault)
        return await self._send_content(request, truncate=fault == "truncate")

    async def _send_content(self, request: web.Request, *, truncate: bool) -> web.StreamResponse:
        return await send_content(
            request, self._content, etag=self.etag, honor_range=self.honor_range, truncate=truncate
        )
