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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

import msgspec

from ._config import DEFAULT_RETRY, DEFAULT_TIMEOUTS, RECONCILE_MAX_PAGES, RECONCILE_PAGE_SIZE
from ._errors import Aio88Error
from ._http import Transport

__all__ = [
    "TASK_LIST_PATH",
    "DashboardRefusedError",
    "DashboardTask",
    "Listing",
    "Page",
    "dashboard_transport",
    "decode_item",
    "decode_page",
    "list_tasks",
]

#: Where the dashboard lists the user's own tasks.
TASK_LIST_PATH = "/api/task/self"


class DashboardRefusedError(Aio88Error):
    """The dashboard answered ``success: false``: a token or user id it does not take, or
    a query it does not accept (its ``message`` says which)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"the dashboard answered success: false: {message}")
        self.server_message = message
        """The server's own ``message``."""


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


class Page(NamedTuple):
    """One page of the dashboard's task list."""

    tasks: list[DashboardTask]
    """Its items that carry a task id."""
    total: int | None
    """The list's ``total``, as this page counts it."""
    size: int | None
    """The page size the server used."""
    raw: int
    """How many items it held, with or without a task id: what says it is the last."""
    page: int | None
    """The page number the server says it answered."""


def decode_page(body: bytes) -> Page:
    """A page of the task list.

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
        raise DashboardRefusedError(_text(answer.get("message")) or "no reason given")
    data = answer.get("data")
    if not isinstance(data, dict):
        raise Aio88Error("the dashboard's task list has no data object")
    items = data.get("items") or []  # Go's nil slice is null
    if not isinstance(items, list):
        raise Aio88Error("the dashboard's task list has no items array")
    tasks = [t for t in (decode_item(i) for i in items if isinstance(i, dict)) if t is not None]
    total, size, page = data.get("total"), data.get("page_size"), data.get("page")
    return Page(
        tasks,
        _integer(total),
        size if (size := _integer(size)) is not None and size > 0 else None,
        len(items),
        _integer(page),
    )


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def dashboard_transport(base_url: str, token: str, user_id: str) -> Transport:
    """A transport that sends the dashboard's credentials (and never an API key).

    Raises:
        ValueError: The token or user id could not be sent in a header.
    """
    # str.isdigit() takes other scripts' digits too, which no header can carry as the id.
    if not (user_id.isascii() and user_id.isdigit()):
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


@dataclass(frozen=True)
class Listing:
    """The tasks the dashboard listed, and how far to trust the listing."""

    tasks: list[DashboardTask]
    complete: bool
    """Every page was read to a last one the server marked as such. When not, a task may
    be missing: nothing may be concluded from one's absence."""
    why_incomplete: str = ""
    clock_offset: float | None = None
    """The server's clock minus ours, in seconds, from its ``Date`` header (``None``: it
    sent none)."""
    clock_error: float = 0.0
    """How far ``clock_offset`` may be off (the header's 1 s step, the round trip)."""


def server_clock(date: str | None, sent: float, received: float) -> tuple[float, float] | None:
    """The server's clock minus ours from its ``Date`` header, and the error bound, for an
    answer to a request sent at ``sent`` and answered at ``received`` (our Unix times)."""
    if not date:
        return None
    try:
        when = parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    # The header truncates to the second: the server's time was in [when, when + 1), at
    # some moment between our send and our receipt.
    middle = (sent + received) / 2
    return when + 0.5 - middle, 0.5 + (received - sent) / 2


async def list_tasks(
    transport: Transport,
    *,
    start: int,
    end: int,
    page_size: int = RECONCILE_PAGE_SIZE,
    max_pages: int = RECONCILE_MAX_PAGES,
) -> Listing:
    """Every task the user submitted from ``start`` to ``end`` (Unix seconds, the
    server's), all pages, and the server's clock as its first answer tells.

    A task that moves from one page to the next while the list grows is kept once. The
    listing is incomplete when a server does not page as asked (it answers another page
    than the one asked for, or a page with no id not seen already) or ends with fewer
    tasks than its ``total``.

    Raises:
        DashboardRefusedError: The server answered ``success: false``.
        APIStatusError: The dashboard answered 4xx/5xx (a 401: the token refused).
        Aio88Error: An answer that is not the task list, or more than ``max_pages`` pages.
    """
    found: dict[str, DashboardTask] = {}
    idless = 0  # items without a task id: counted in "total", never in "found"
    clock: tuple[float, float] | None = None

    def listing(why: str = "") -> Listing:
        offset, error = clock if clock is not None else (None, 0.0)
        return Listing(list(found.values()), not why, why, offset, error)

    for page in range(1, max_pages + 1):
        params = {
            "p": str(page),
            "page_size": str(page_size),
            "start_timestamp": str(start),
            "end_timestamp": str(end),
        }
        sent = time.time()
        resp = await transport.request("GET", TASK_LIST_PATH, params=params)
        if page == 1:
            clock = server_clock(resp.headers.get("Date"), sent, time.time())
        answer = decode_page(resp.body)
        if answer.page is not None and answer.page != page:
            # A server that ignores "p", or counts from 0: its pages are not ours.
            return listing(f"the dashboard answered page {answer.page} when asked for {page}")
        new = [task for task in answer.tasks if task.task_id not in found]
        for task in new:
            found[task.task_id] = task
        idless += answer.raw - len(answer.tasks)
        listed = len(found) + idless
        # A page is short by its raw items (one without a task id still fills it), and by
        # the server's own page size, which may be smaller than the one asked for.
        if answer.raw < (answer.size or page_size):
            if answer.total is not None and listed < answer.total:
                return listing(
                    f"the dashboard's list ended with {listed} of its {answer.total} tasks"
                )
            return listing()
        if answer.total is not None and listed >= answer.total:
            return listing()
        if not new:
            return listing(f"page {page} of the dashboard's list held no task not seen before")
    raise Aio88Error(
        f"the dashboard lists more than {max_pages} pages of tasks in the window; "
        "reconcile fewer jobs at a time"
    )
