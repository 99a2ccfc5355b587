"""The dashboard's task list, ``GET /api/task/self``: the tasks of the key's user, read to
settle creates whose answer was lost (``aio88 run --reconcile``).

new-api routes it to ``GetUserTask`` behind ``UserAuth``: a dashboard access token in
``Authorization`` (``Bearer`` or bare) and, on the versions that check it, the user's id in
``New-Api-User``. Those are not the ``sk-`` key: this module builds a :class:`Transport` of
its own for them, so that the API key never goes to the dashboard, nor the token to the
API. Query: ``p`` (from 1), ``page_size``, ``start_timestamp``/``end_timestamp`` (Unix
seconds, on the task's ``submit_time``, both ends included); answer:
``{"success": true, "data": {"page", "page_size", "total", "items": [TaskDto...]}}``,
newest first. A refusal is ``{"success": false, "message"}``, with 401 or (older versions)
200.

An item's fields differ between server versions and forks, so each is read defensively:
the model from ``properties.origin_model_name``/``upstream_model_name`` or ``data.model``;
the prompt from ``properties.input`` or ``data.prompt``; ``metadata`` from ``data`` when
the vendor's answer kept it. What an item lacks, it cannot be told apart by.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from ._config import DEFAULT_RETRY, DEFAULT_TIMEOUTS, RECONCILE_MAX_PAGES, RECONCILE_PAGE_SIZE
from ._errors import Aio88Error
from ._http import Transport

__all__ = [
    "TASK_LIST_PATH",
    "DashboardRefusedError",
    "DashboardTask",
    "dashboard_transport",
    "decode_item",
    "decode_page",
    "list_tasks",
]

#: Where the dashboard lists the user's own tasks.
TASK_LIST_PATH = "/api/task/self"


class DashboardRefusedError(Aio88Error):
    """The dashboard answered ``success: false`` (a token or user id it does not take)."""


@dataclass(frozen=True)
class DashboardTask:
    """One task of the dashboard's list, as far as its item tells."""

    task_id: str
    submit_time: int | None
    """Unix seconds at which the server stored it."""
    models: frozenset[str]
    """Every model name the item carries (the one asked for, the one it was mapped to)."""
    prompt: str | None
    """The prompt, if the item carries one."""
    metadata: dict[str, Any] | None
    """The create's ``metadata``, if the item kept it."""
    status: str | None = None


def _as_object(value: object) -> dict[str, Any] | None:
    """``value`` as a JSON object: itself, or decoded from a string holding one."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _seconds(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if value > 0 else None


def decode_item(item: Mapping[str, Any]) -> DashboardTask | None:
    """The task an item describes, or ``None`` for one without a task id."""
    task_id = _text(item.get("task_id"))
    if task_id is None:
        return None
    properties = _as_object(item.get("properties")) or {}
    data = _as_object(item.get("data")) or {}
    models = {
        name
        for name in (
            _text(properties.get("origin_model_name")),
            _text(properties.get("upstream_model_name")),
            _text(data.get("model")),
            _text(item.get("model")),
        )
        if name is not None
    }
    prompt = _text(properties.get("input")) or _text(data.get("prompt"))
    metadata = _as_object(data.get("metadata")) or _as_object(item.get("metadata"))
    return DashboardTask(
        task_id=task_id,
        submit_time=_seconds(item.get("submit_time")) or _seconds(item.get("created_at")),
        models=frozenset(models),
        prompt=prompt.strip() if prompt else None,
        metadata=metadata,
        status=_text(item.get("status")),
    )


def decode_page(body: bytes) -> tuple[list[DashboardTask], int | None, int | None]:
    """A page's tasks, the list's ``total`` and the page size the server used.

    Raises:
        DashboardRefusedError: ``success: false``.
        Aio88Error: The body is not the dashboard's envelope.
    """
    try:
        answer = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise Aio88Error(f"the dashboard's task list is not JSON ({exc})") from exc
    if not isinstance(answer, dict):
        raise Aio88Error("the dashboard's task list is not a JSON object")
    if answer.get("success") is not True:
        message = _text(answer.get("message")) or "no reason given"
        raise DashboardRefusedError(f"the dashboard refused the request: {message}")
    data = answer.get("data")
    if not isinstance(data, dict):
        raise Aio88Error("the dashboard's task list has no data object")
    items = data.get("items") or []  # Go's nil slice is null
    if not isinstance(items, list):
        raise Aio88Error("the dashboard's task list has no items array")
    tasks = [t for t in (decode_item(i) for i in items if isinstance(i, dict)) if t is not None]
    total = data.get("total")
    size = data.get("page_size")
    return (
        tasks,
        total if isinstance(total, int) else None,
        size if isinstance(size, int) and size > 0 else None,
    )


def dashboard_transport(base_url: str, token: str, user_id: str) -> Transport:
    """A transport that sends the dashboard's credentials (and never an API key).

    Raises:
        ValueError: The token or user id could not be sent in a header.
    """
    if not user_id.isdigit():
        raise ValueError("the dashboard user id must be a number (the id on its profile page)")
    if any(char in token for char in ("\r", "\n", "\0", " ")):
        # Said without the token: it is a secret, and stays out of every message.
        raise ValueError("the dashboard token contains a space or a line break; copy it again")
    return Transport(
        # The Transport sends its "key" as "Bearer <key>" to the base URL's origin only,
        # which is what the dashboard's UserAuth reads.
        api_key=token,
        base_url=base_url,
        timeouts=DEFAULT_TIMEOUTS,
        retry=DEFAULT_RETRY,
        rate_limit=None,
        max_connections=4,
        headers={"New-Api-User": user_id},
        session=None,
    )


async def list_tasks(
    transport: Transport,
    *,
    start: int,
    end: int,
    page_size: int = RECONCILE_PAGE_SIZE,
    max_pages: int = RECONCILE_MAX_PAGES,
) -> list[DashboardTask]:
    """Every task the user submitted from ``start`` to ``end`` (Unix seconds), all pages.

    A task that moves from one page to the next while the list grows is kept once.

    Raises:
        DashboardRefusedError: The credentials were refused (``success: false``).
        APIStatusError: The dashboard answered 4xx/5xx (a 401: the token refused).
        Aio88Error: An answer that is not the task list, or more than ``max_pages`` pages.
    """
    found: dict[str, DashboardTask] = {}
    for page in range(1, max_pages + 1):
        params = {
            "p": str(page),
            "page_size": str(page_size),
            "start_timestamp": str(start),
            "end_timestamp": str(end),
        }
        resp = await transport.request("GET", TASK_LIST_PATH, params=params)
        tasks, total, size = decode_page(resp.body)
        for task in tasks:
            found.setdefault(task.task_id, task)
        # The server may use a smaller page than asked for: a short page is the last only
        # by its own measure.
        if not tasks or len(tasks) < (size or page_size):
            return list(found.values())
        if total is not None and page * (size or page_size) >= total:
            return list(found.values())
    raise Aio88Error(
        f"the dashboard lists more than {max_pages} pages of tasks in the window; "
        "reconcile fewer jobs at a time"
    )
