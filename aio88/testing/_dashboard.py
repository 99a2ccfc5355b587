"""The dashboard's task list, ``GET /api/task/self``, as new-api serves it: its auth check,
its filters and pages, and each task's item, per dialect.

Pure functions, no server and no state. From new-api's code (``router/api-router.go``,
``controller/task.go`` ``GetUserTask``, ``model/task.go`` ``TaskGetAllUserTask``,
``dto/task.go`` ``TaskDto``, ``middleware/auth.go``):

- auth: the dashboard access token in ``Authorization`` (``Bearer <token>`` or bare), and
  ``New-Api-User`` equal to the token's user (checked by the versions that read it; the
  emulator checks it always). A refusal: 401 ``{"success": false, "message"}``;
- query: ``p`` (from 1), ``page_size`` (10 when absent, 100 at most), ``start_timestamp`` and
  ``end_timestamp`` (Unix seconds, both included, on ``submit_time``; 0: no bound),
  ``task_id``, ``status``, ``action``, ``platform``; no model filter. Newest first;
- answer: ``{"success": true, "message": "", "data": {"page", "page_size", "total",
  "items"}}``.

The items differ between versions, which the two dialects stand for:

- ``"newapi"`` (88API's fork): ``properties.input`` holds the prompt; ``data`` is the
  vendor's answer (no prompt, no metadata); no ``result_url`` once succeeded;
- ``"docs"`` (upstream): ``properties.input`` empty; ``data`` is the vendor's answer with
  the ``prompt`` and the create's ``metadata``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._lifecycle import EmulatedTask, Phase
from ._wire import Answer, Dialect

__all__ = ["DASHBOARD_PREFIX", "TASK_LIST_PATH", "dashboard_refusal", "task_item", "task_list"]

#: The dashboard API's paths (user auth, not the key).
DASHBOARD_PREFIX = "/api/"
#: The user's own tasks.
TASK_LIST_PATH = "/api/task/self"
#: new-api's ``ItemsPerPage``: the page size when none is asked for.
_ITEMS_PER_PAGE = 10
#: The largest page new-api serves (``common.GetPageQuery``): more asked for gets this.
_MAX_PAGE_SIZE = 100

_STATUS: dict[Phase, str] = {
    "queued": "QUEUED",
    "in_progress": "IN_PROGRESS",
    "succeeded": "SUCCESS",
    "failed": "FAILURE",
}


def dashboard_refusal(headers: Mapping[str, str], token: str, user_id: int) -> Answer | None:
    """The 401 that refuses a dashboard request, or ``None`` when its credentials are
    ``token`` and ``user_id``."""
    raw = headers.get("Authorization", "").strip()
    parts = raw.split()
    given = parts[1] if len(parts) == 2 and parts[0].lower() == "bearer" else raw
    if not given or given != token:
        return Answer(401, {"success": False, "message": "access token invalid"})
    user = headers.get("New-Api-User", "")
    if not user:
        return Answer(401, {"success": False, "message": "New-Api-User not provided"})
    if not user.isdigit():
        return Answer(401, {"success": False, "message": "New-Api-User malformed"})
    if int(user) != user_id:
        return Answer(401, {"success": False, "message": "New-Api-User does not match"})
    return None


def task_item(
    dialect: Dialect,
    task: EmulatedTask,
    *,
    user_id: int,
    phase: Phase,
    progress: int,
    submitted: int,
    finished: int,
) -> dict[str, Any]:
    """One task's item in the list (``submitted``, ``finished``: Unix seconds)."""
    status = _STATUS[phase]
    vendor: dict[str, Any] = {
        "id": task.id,
        "object": "video",
        "model": task.model,
        "status": status.lower(),
        "progress": progress,
    }
    if dialect == "docs":
        vendor["prompt"] = task.prompt
        if isinstance(task.request.get("metadata"), dict):
            vendor["metadata"] = task.request["metadata"]
    item: dict[str, Any] = {
        "id": task.row_id,
        "created_at": submitted,
        "updated_at": finished if phase in ("succeeded", "failed") else submitted,
        "task_id": task.id,
        "platform": "sora" if task.kind == "video" else "kling",
        "user_id": user_id,
        "group": "default",
        "channel_id": 0,  # omitted from a user's own list
        "quota": 0,
        "action": "textGenerate",
        "status": status,
        "fail_reason": task.fail_message if phase == "failed" else "",
        "submit_time": submitted,
        "start_time": submitted if phase != "queued" else 0,
        "finish_time": finished if phase in ("succeeded", "failed") else 0,
        "progress": f"{progress}%",
        "properties": {
            "input": task.prompt if dialect == "newapi" else "",
            "upstream_model_name": task.model,
            "origin_model_name": task.model,
        },
        "data": vendor,
    }
    if dialect == "docs" and phase == "succeeded":
        item["result_url"] = f"/v1/videos/{task.id}/content"
    return item


def _number(query: Mapping[str, str], name: str) -> int:
    try:
        return int(query.get(name, "") or 0)
    except ValueError:
        return 0


def task_list(items: list[dict[str, Any]], query: Mapping[str, str]) -> Answer:
    """The answer to ``GET /api/task/self?<query>`` over ``items`` (all the user's)."""
    start, end = _number(query, "start_timestamp"), _number(query, "end_timestamp")
    chosen = [
        item
        for item in items
        if (not start or item["submit_time"] >= start)
        and (not end or item["submit_time"] <= end)
        and all(
            not query.get(name) or str(item[name]) == query[name]
            for name in ("task_id", "status", "action", "platform")
        )
    ]
    chosen.sort(key=lambda item: item["id"], reverse=True)
    page = max(1, _number(query, "p"))
    size = min(_number(query, "page_size") or _ITEMS_PER_PAGE, _MAX_PAGE_SIZE)
    first = (page - 1) * size
    data = {
        "page": page,
        "page_size": size,
        "total": len(chosen),
        "items": chosen[first : first + size],
    }
    return Answer(200, {"success": True, "message": "", "data": data})
