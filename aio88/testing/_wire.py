"""The wire: every JSON body the emulator sends, per dialect, built from plain values.

Pure functions and constants, no server and no state, so each shape reads in one place.
The two dialects:

- ``"docs"``: as docs.88api.ai documents it: flat objects, ``succeeded``, ``processing``,
  HTTP 201 on create, 404 for an unknown task, error shapes A and B, ``x-request-id``.
- ``"newapi"``: as 88API's server code behaves: the ``{"code":"success","data":{...}}``
  envelope with upper-case statuses on ``/v1/video/generations``, ``completed`` on
  ``/v1/videos``, HTTP 200 on create, 400 ``task_not_exist``, error shapes C and D, an empty
  body on 429, a 307 redirect of ``/content`` to a second origin that refuses any
  ``Authorization`` header, and ``X-Oneapi-Request-Id``.

The error shapes:

- shape A: ``{"code", "message", "param", "type"}``, docs dialect, ``/v1/video/generations``;
- shape B: ``{"error": {"message", "type"}}``, docs dialect, ``/v1/videos``;
- shape C: ``{"code", "message", "data": null}``, newapi dialect;
- shape D: ``{"error": {"message", "type": "new_api_error", "code": ""}}``, newapi's 401;
- shape E: ``{"error": {"message", "type"}}`` with 404, newapi's content proxy;
- shape F: an empty body, newapi's 429.

Nothing here comes from the client: a wrong field name there cannot agree with itself here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from ._lifecycle import EmulatedTask, Phase

__all__ = [
    "GARBAGE",
    "MEDIA_EXPIRED",
    "MEDIA_MISSING",
    "MEDIA_TWO_CREDENTIALS",
    "Answer",
    "Dialect",
    "Moment",
    "content_not_found",
    "content_not_ready",
    "create_answer",
    "error",
    "generation_body",
    "not_found",
    "rate_limited",
    "request_id_header",
    "server_error",
    "unauthorized",
    "video_body",
]

Dialect = Literal["docs", "newapi"]
"""``"docs"``: as docs.88api.ai documents the API; ``"newapi"``: as 88API's server behaves."""

GARBAGE = "<html>502 Bad Gateway</html>"
"""The body of a ``"garbage"`` fault: a 200 that is not JSON (a proxy's error page)."""

# The media origin answers as signed object storage does, in plain text.
MEDIA_EXPIRED = "AccessDenied: Request has expired"
"""The media origin's 403 for an expired link."""
MEDIA_MISSING = "NoSuchKey"
"""The media origin's 404 for a file that does not exist (yet)."""
MEDIA_TWO_CREDENTIALS = (
    "InvalidArgument: only one auth mechanism allowed; an Authorization "
    "header must not accompany a signed URL"
)
"""The media origin's 400 for a request that carries an ``Authorization`` header."""


class Answer(NamedTuple):
    """A status, its JSON body (``None``: an empty body) and any extra headers."""

    status: int
    body: dict[str, Any] | None
    headers: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class Moment:
    """A task at the instant it is answered, in wire units (Unix seconds)."""

    phase: Phase
    progress: int
    """Percent done, 0 to 100."""
    created: int
    """When it was created."""
    ended: int
    """When it ended by itself, or now (a task driven by hand ends when it is read)."""
    now: int
    """The instant itself."""
    expires_at: int
    """When its video link expires."""
    media_link: str
    """The signed URL of its video on the media origin."""


def request_id_header(dialect: Dialect) -> str:
    """The header that carries each answer's request id."""
    return "X-Oneapi-Request-Id" if dialect == "newapi" else "x-request-id"


# -- errors --------------------------------------------------------------------------


def error(
    dialect: Dialect,
    status: int,
    message: str,
    *,
    video_route: bool,
    code: str | None = None,
    type_: str = "invalid_request_error",
    param: str | None = None,
) -> Answer:
    """An error in the shape this dialect uses on this route (A, B or C).

    ``video_route``: the request's path is under ``/v1/videos`` (the docs dialect answers
    the two families in different shapes).
    """
    body: dict[str, Any]
    if dialect == "newapi":
        body = {"code": code or type_, "message": message, "data": None}  # shape C
    elif video_route:
        body = {"error": {"message": message, "type": type_}}  # shape B
    else:
        body = {"code": code, "message": message, "param": param, "type": type_}  # shape A
    return Answer(status, body)


def unauthorized(dialect: Dialect, *, video_route: bool, request_id: str) -> Answer:
    """The 401 for a missing or wrong key."""
    if dialect == "newapi":
        body = {
            "error": {
                "message": f"无效的令牌 (request id: {request_id})",
                "type": "new_api_error",
                "code": "",
            }
        }  # shape D
        return Answer(401, body)
    return error(
        dialect, 401, "Invalid API key", video_route=video_route, type_="authentication_error"
    )


def rate_limited(dialect: Dialect, *, video_route: bool, retry_after: float | None) -> Answer:
    """The 429, with a ``Retry-After`` of ``retry_after`` seconds unless it is ``None``."""
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
    if dialect == "newapi":
        return Answer(429, None, headers)  # shape F: empty body
    body = error(
        dialect, 429, "Rate limit exceeded", video_route=video_route, type_="rate_limit_error"
    ).body
    return Answer(429, body, headers)


def server_error(dialect: Dialect, *, video_route: bool) -> Answer:
    """The 500 of a ``"500"`` fault: an upstream failure."""
    return error(
        dialect,
        500,
        "upstream request failed (emulated fault)",
        video_route=video_route,
        code="do_request_failed",
        type_="server_error",
    )


def not_found(dialect: Dialect, *, video_route: bool, remix: bool) -> Answer:
    """An unknown task id: 404 in the docs dialect, 400 ``task_not_exist`` in newapi.

    ``remix``: the unknown id is the origin of a remix (newapi says so in the message).
    """
    if dialect == "newapi":
        message = "task_origin_not_exist" if remix else "task_not_exist"
        return Answer(400, {"code": "task_not_exist", "message": message, "data": None})
    return error(dialect, 404, "Task not found", video_route=video_route, param="task_id")


def content_not_found() -> Answer:
    """newapi's content proxy, for an unknown task or one not finished (shape E, 404)."""
    return Answer(404, {"error": {"message": "Task not found", "type": "invalid_request_error"}})


def content_not_ready(dialect: Dialect, phase: Phase) -> Answer:
    """``/content`` of a task that has not succeeded."""
    if dialect == "newapi":  # the fork hides the status behind a 404
        return content_not_found()
    status = {"queued": "QUEUED", "in_progress": "IN_PROGRESS"}.get(phase, "FAILURE")
    return Answer(
        400,
        {
            "error": {
                "message": "Task is not completed yet, current status: " + status,
                "type": "invalid_request_error",
            }
        },
    )


# -- task bodies -----------------------------------------------------------------------


def create_answer(dialect: Dialect, task: EmulatedTask, created: int) -> Answer:
    """The answer to a create (or remix) that made ``task`` at Unix time ``created``."""
    if dialect == "newapi":
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
        return Answer(200, body)
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
    return Answer(201, body)


def _failure(task: EmulatedTask, at: Moment) -> dict[str, Any] | None:
    """The ``error`` member of a task body: set only once it has failed."""
    if at.phase == "failed":
        return {"code": "generation_failed", "message": task.fail_message}
    return None


def generation_body(dialect: Dialect, task: EmulatedTask, at: Moment) -> dict[str, Any]:
    """What ``GET /v1/video/generations/{id}`` answers for ``task`` at ``at``."""
    done = at.phase == "succeeded"
    if dialect == "newapi":
        status = {
            # Both spellings of "not started" occur; the row id picks one, reproducibly.
            "queued": "QUEUED" if task.row_id % 2 else "NOT_START",
            "in_progress": "IN_PROGRESS",
            "succeeded": "SUCCESS",
            "failed": "FAILURE",
        }[at.phase]
        dto = {
            "id": task.row_id,
            "task_id": task.id,
            "platform": "kling" if task.kind == "generation" else "sora",
            "action": "generate",
            "status": status,
            "progress": f"{at.progress}%",
            "fail_reason": task.fail_message if at.phase == "failed" else "",
            "result_url": at.media_link if done else "",
            "submit_time": at.created,
            "start_time": at.created,
            "finish_time": at.ended if at.phase in ("succeeded", "failed") else 0,
            "created_at": at.created,
            "updated_at": at.now,
            "quota": 0,
            "data": {"vendor_task_id": f"vendor-{task.row_id}", "raw": [1, 2, 3]},
        }
        return {"code": "success", "message": "", "data": dto}
    return {
        "task_id": task.id,
        "status": {"queued": "queued", "in_progress": "processing"}.get(at.phase, at.phase),
        "format": "mp4",
        "url": at.media_link if done else "",
        "metadata": {
            "duration": task.request.get("duration", 5),
            "fps": 30,
            "height": 512,
            "width": 512,
            "seed": 20231234,
        },
        "error": _failure(task, at),
    }


def video_body(dialect: Dialect, task: EmulatedTask, at: Moment) -> dict[str, Any]:
    """What ``GET /v1/videos/{id}`` answers for ``task`` at ``at``."""
    done = at.phase == "succeeded"
    body: dict[str, Any] = {
        "id": task.id,
        "object": "video",
        "model": task.model,
        "created_at": at.created,
        "progress": at.progress,
        "expires_at": at.expires_at,
        "size": str(task.request.get("size") or "1280x720"),
        "seconds": str(task.request.get("seconds") or "4"),
        "remixed_from_video_id": task.remixed_from,
        "error": _failure(task, at),
    }
    if dialect == "newapi":
        body["task_id"] = task.id
        body["status"] = {"succeeded": "completed"}.get(at.phase, at.phase)
        body["completed_at"] = at.ended if done else None
        body["metadata"] = {"url": at.media_link if done else ""}
    else:
        body["status"] = at.phase
        body["quality"] = "standard"
        if done:
            body["url"] = at.media_link
    return body
