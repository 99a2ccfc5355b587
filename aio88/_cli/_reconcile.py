"""``aio88 run --reconcile``: settle ``unconfirmed`` jobs from the dashboard's task list.

A job is ``unconfirmed`` when its create was sent and the answer that would say never
came: its task may exist, and be billed. The dashboard lists the user's tasks
(:mod:`aio88._dashboard`), with the server's clock in its ``Date`` header. Two different
tests, one per way of being wrong:

- adopt (poll and download that task, never create again): exactly one task that no other
  job of the ledger owns, that the item *identifies* as the job's (its prompt, compared
  with whitespace and case normalised, or its ``metadata``, compared as strings: at least
  one present in the item and equal, none different; and the model, where both tell),
  submitted in the job's narrow window (from its first send to when its last create could
  still have been stored: ``api_deadline`` plus ``--settle`` after its last send), and
  that no other unconfirmed job identifies too;
- return to ``pending`` (create now): the listing is complete, the server's clock is
  measured and within the skew allowance, the job's last create is past its deadline and
  ``--settle``, and no task at all that the job's model could have made (any, when it
  names none; an item without a model could be any) was submitted from its first send to
  now: not only none identified, none whatever;
- anything else stays ``unconfirmed``, its candidates named.

The decision (:func:`decide`) is pure; :func:`reconcile` reads the list and commits it.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .._config import DEFAULT_TIMEOUTS, ENV_DASHBOARD_TOKEN, ENV_USER_ID, RECONCILE_CLOCK_SKEW
from .._dashboard import (
    TASK_LIST_PATH,
    DashboardRefusedError,
    DashboardTask,
    Listing,
    dashboard_transport,
    list_tasks,
)
from .._errors import Aio88Error, APIStatusError, AuthenticationError, PermissionDeniedError
from .._http import Transport, api_deadline
from .._ledger import Job, Ledger, LedgerStore, SqliteStore
from ..testing._arguments import UsageError
from ..testing._arguments import seconds as settle_seconds
from ._output import Printer

__all__ = [
    "Decision",
    "Verdict",
    "dashboard_credentials",
    "decide",
    "identifies",
    "matches",
    "model_allows",
    "narrow_window",
    "normalise_prompt",
    "reconcile",
    "settle_seconds",
    "wide_window",
]

Verdict = Literal["adopted", "pending", "unconfirmed"]
"""What reconciling makes of an unconfirmed job."""


@dataclass(frozen=True)
class Decision:
    """What to do with one unconfirmed job."""

    key: str
    verdict: Verdict
    task_id: str | None = None
    """The task adopted."""
    candidates: tuple[str, ...] = ()
    """The tasks that could be its own, when they are too many to choose."""
    why: str = ""
    """Why it stays unconfirmed."""


def dashboard_credentials() -> tuple[str, str]:
    """The dashboard token and user id from the environment.

    Raises:
        UsageError: Either is missing (before anything is sent).
    """
    token = os.environ.get(ENV_DASHBOARD_TOKEN, "").strip()
    user_id = os.environ.get(ENV_USER_ID, "").strip()
    what = {
        ENV_DASHBOARD_TOKEN: "the access token from the 88API console's personal settings, "
        "not an sk- key",
        ENV_USER_ID: "your numeric user id, shown in the same settings",
    }
    missing = [
        f"{name} ({what[name]})"
        for name, value in ((ENV_DASHBOARD_TOKEN, token), (ENV_USER_ID, user_id))
        if not value
    ]
    if missing:
        raise UsageError(
            f"--reconcile reads the dashboard's task list: set {' and '.join(missing)}"
        )
    if not (user_id.isascii() and user_id.isdigit()):
        # isdigit() alone takes other scripts' digits, which no header carries.
        raise UsageError(f"{ENV_USER_ID} must be your numeric user id (ASCII digits)")
    return token, user_id


def _skew_of(skew: float | None) -> float:
    return RECONCILE_CLOCK_SKEW if skew is None else skew


def _create_deadline() -> float:
    """How long after it was written a create can still reach the server and be stored."""
    deadline = api_deadline(DEFAULT_TIMEOUTS)
    # No deadline: a create may be stored any time later; a day stands for "much later".
    return 86400.0 if deadline is None else deadline


def narrow_window(
    job: Job, *, settle: float, offset: float = 0.0, skew: float | None = None
) -> tuple[float, float]:
    """The server's Unix seconds within which ``job``'s own task was stored: from its first
    send to its last create's deadline plus ``settle``, widened by ``skew`` and shifted by
    the server's clock ``offset``. Unbounded for a job with no send time recorded."""
    margin = _skew_of(skew)
    if job.sending_since is None:
        return -math.inf, math.inf
    last = job.sending_last if job.sending_last is not None else job.sending_since
    return (
        job.sending_since + offset - margin,
        last + _create_deadline() + settle + offset + margin,
    )


def wide_window(
    job: Job, now: float, *, offset: float = 0.0, skew: float | None = None
) -> tuple[float, float]:
    """The server's Unix seconds from ``job``'s first send (less ``skew``) to ``now`` (plus
    ``skew``): any task of its model in there rules out "never created"."""
    margin = _skew_of(skew)
    since = job.sending_since if job.sending_since is not None else -math.inf
    return since + offset - margin, now + offset + margin


def _in(task: DashboardTask, bounds: tuple[float, float]) -> bool:
    # An item without a time could be from any time.
    return task.submit_time is None or bounds[0] <= task.submit_time <= bounds[1]


def normalise_prompt(prompt: str) -> str:
    """``prompt`` as servers may store it: whitespace runs as one space, case folded."""
    return " ".join(prompt.split()).casefold()


def _as_strings(value: object) -> object:
    """``value`` with every scalar as a string (servers stringify metadata values)."""
    if isinstance(value, dict):
        return {str(k): _as_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_strings(v) for v in value]
    if isinstance(value, bool):
        return str(value).lower()  # JSON's spelling, as a server writing it back would
    return "" if value is None else str(value)


def model_allows(job: Job, task: DashboardTask) -> bool:
    """Whether ``task`` could have been made with ``job``'s model (it names none, the item
    names none, or the item names it)."""
    model = job.request.get("model")
    return not isinstance(model, str) or not task.models or model in task.models


def identifies(job: Job, task: DashboardTask) -> bool:
    """Whether ``task``'s item tells it is ``job``'s, ignoring time: a prompt or
    ``metadata`` the item carries equals the job's, none differs, and the model agrees."""
    if not model_allows(job, task):
        return False
    agreed = False
    prompt = job.request.get("prompt")
    if isinstance(prompt, str) and task.prompt is not None:
        if normalise_prompt(prompt) != normalise_prompt(task.prompt):
            return False
        agreed = True
    metadata = job.request.get("metadata")
    if isinstance(metadata, dict) and task.metadata is not None:
        if _as_strings(metadata) != _as_strings(task.metadata):
            return False
        agreed = True
    return agreed


def matches(
    job: Job, task: DashboardTask, *, settle: float, offset: float = 0.0, skew: float | None = None
) -> bool:
    """Whether ``task`` may be adopted as ``job``'s: identified, in its narrow window."""
    return identifies(job, task) and _in(
        task, narrow_window(job, settle=settle, offset=offset, skew=skew)
    )


def decide(
    jobs: Iterable[Job],
    tasks: Iterable[DashboardTask],
    known: set[str],
    now: float,
    *,
    settle: float,
    skew: float | None = None,
    clock_offset: float | None = 0.0,
    clock_error: float = 0.0,
    complete: bool = True,
    why_incomplete: str = "",
) -> list[Decision]:
    """The decision for each unconfirmed job of ``jobs``.

    Args:
        tasks: The dashboard's tasks (of a window covering every job's wide window).
        known: Task ids the ledger already gives to a job: never another job's.
        now: Unix time now (ours).
        settle: Seconds after a create's deadline during which its task may not be listed.
        skew: The clock skew allowance (``RECONCILE_CLOCK_SKEW``).
        clock_offset: The server's clock minus ours (``None``: not measured).
        clock_error: How far ``clock_offset`` may be off.
        complete: Whether the listing holds every task (else none returns to pending).
        why_incomplete: Why it does not.
    """
    margin = _skew_of(skew)
    jobs = list(jobs)
    free = [task for task in tasks if task.task_id not in known]
    offset = clock_offset or 0.0
    # Why no job may return to pending, if any reason holds for all.
    blocked = ""
    if not complete:
        blocked = f"the dashboard's list is incomplete ({why_incomplete})"
    elif clock_offset is None:
        blocked = "the dashboard sent no Date header, so its clock is unknown"
    elif abs(clock_offset) + clock_error > margin:
        blocked = (
            f"the dashboard's clock is {clock_offset:+.0f}s off ours, more than the "
            f"{margin:g}s allowed"
        )
    # Every job claims the tasks it identifies in its window; a job with no send time
    # recorded, in any window (its task may be any of them).
    claimed: dict[str, list[str]] = {
        job.key: [
            t.task_id for t in free if matches(job, t, settle=settle, offset=offset, skew=skew)
        ]
        for job in jobs
    }
    claims = Counter(task_id for ids in claimed.values() for task_id in ids)
    # The tasks adopted in this pass are their jobs' as surely as the ledger's known ones.
    adopted = {
        ids[0]
        for job in jobs
        if job.sending_since is not None
        and len(ids := claimed[job.key]) == 1
        and claims[ids[0]] == 1
    }
    decisions = []
    for job in jobs:
        ids = claimed[job.key]
        if job.sending_since is None:
            decisions.append(
                Decision(
                    job.key,
                    "unconfirmed",
                    candidates=tuple(ids),
                    why="the ledger has no time for its send (written by an older aio88): "
                    "check the 88API console" + (f" (candidates: {', '.join(ids)})" if ids else ""),
                )
            )
            continue
        if len(ids) == 1 and claims[ids[0]] == 1:
            decisions.append(Decision(job.key, "adopted", task_id=ids[0]))
            continue
        if ids:
            why = (
                f"{len(ids)} tasks in the dashboard match it"
                if len(ids) > 1
                else "its one matching task matches another unconfirmed job too"
            )
            decisions.append(
                Decision(
                    job.key,
                    "unconfirmed",
                    candidates=tuple(ids),
                    why=f"{why}: {', '.join(ids)}; check them in the 88API console",
                )
            )
            continue
        wide = wide_window(job, now, offset=offset, skew=skew)
        possible = [
            t.task_id
            for t in free
            if t.task_id not in adopted and model_allows(job, t) and _in(t, wide)
        ]
        last = job.sending_last if job.sending_last is not None else job.sending_since
        ready = last + _create_deadline() + settle
        if possible:
            shown = ", ".join(possible[:10]) + (" ..." if len(possible) > 10 else "")
            decisions.append(
                Decision(
                    job.key,
                    "unconfirmed",
                    candidates=tuple(possible),
                    why=f"no task is identified as its own, but {len(possible)} task(s) of "
                    f"its model were submitted since it was sent and could be ({shown}): "
                    "check them in the 88API console",
                )
            )
        elif blocked:
            decisions.append(Decision(job.key, "unconfirmed", why=f"no task listed, but {blocked}"))
        elif now < ready:
            decisions.append(
                Decision(
                    job.key,
                    "unconfirmed",
                    why=f"no task listed yet, but it was sent {now - last:.0f}s ago and may "
                    f"still be stored: rerun with --reconcile after {ready - now:.0f}s",
                )
            )
        else:
            decisions.append(Decision(job.key, "pending"))
    return decisions


async def reconcile(
    ledger: LedgerStore | Ledger,
    base_url: str,
    credentials: tuple[str, str],
    printer: Printer,
    *,
    settle: float,
) -> Counter[Verdict]:
    """Settle the ledger's ``unconfirmed`` jobs from the dashboard's task list (committing
    each decision) and return how many went each way.

    Raises:
        UsageError: The dashboard refused the credentials, or has no task list there.
        Aio88Error: The list could not be read.
    """
    if isinstance(ledger, Ledger):  # the SQLite ledger itself, as a single run has it
        ledger = SqliteStore(ledger)
    jobs = await ledger.jobs("unconfirmed")
    if not jobs:
        return Counter()
    now = time.time()
    dated = [job for job in jobs if job.sending_since is not None]
    listing = Listing([], complete=True)
    if dated:
        # Our clock's range, widened by the skew allowance once for the windows and once
        # more for the server's clock; shifted by it when it is off by more.
        margin = RECONCILE_CLOCK_SKEW
        low = min(wide_window(job, now)[0] for job in dated)
        high = max(max(narrow_window(job, settle=settle)[1] for job in dated), now + margin)
        try:
            transport = dashboard_transport(base_url, *credentials)
        except ValueError as exc:  # a token no header can carry: said, without the token
            raise UsageError(f"{ENV_DASHBOARD_TOKEN}/{ENV_USER_ID}: {exc}") from exc
        try:
            listing = await _list(transport, base_url, low - margin, high + margin)
            offset = listing.clock_offset
            if offset is not None and abs(offset) > margin:
                listing = await _list(transport, base_url, low + offset, high + offset)
        finally:
            await transport.aclose()
    counts: Counter[Verdict] = Counter()
    by_key = {job.key: job for job in jobs}
    decisions = decide(
        jobs,
        listing.tasks,
        await ledger.task_ids(),
        now,
        settle=settle,
        clock_offset=listing.clock_offset,
        clock_error=listing.clock_error,
        complete=listing.complete,
        why_incomplete=listing.why_incomplete,
    )
    for decision in decisions:
        counts[decision.verdict] += 1
        job = by_key[decision.key]
        # Each only if the job is still unconfirmed: in a shared batch, another worker may
        # have settled (or resent) it since it was read.
        if decision.verdict == "adopted":
            if await ledger.set_state(
                job.key, "submitted", task_id=decision.task_id, was="unconfirmed"
            ):
                printer.event("adopted", key=job.key, id=decision.task_id)
        elif decision.verdict == "pending":
            if await ledger.set_state(job.key, "pending", was="unconfirmed"):
                printer.event("not_created", key=job.key, line=job.line)
        else:
            await ledger.set_state(job.key, "unconfirmed", error=decision.why, was="unconfirmed")
    printer.note(
        f"--reconcile: {counts['adopted']} job(s) adopted their task, {counts['pending']} "
        f"found not created (created now), {counts['unconfirmed']} still unconfirmed"
    )
    return counts


async def _list(transport: Transport, base_url: str, start: float, end: float) -> Listing:
    """The dashboard's listing from ``start`` to ``end``, its errors said for a person.

    Raises:
        UsageError: The dashboard refused the credentials, or has no task list there.
        Aio88Error: The list could not be read.
    """
    try:
        return await list_tasks(transport, start=math.floor(start), end=math.ceil(end))
    except (AuthenticationError, PermissionDeniedError) as exc:
        raise UsageError(
            f"the dashboard refused {ENV_DASHBOARD_TOKEN}/{ENV_USER_ID} ({exc}); use the "
            "access token from the console's personal settings and your user id"
        ) from exc
    except DashboardRefusedError as exc:
        # success: false is also how new-api refuses a query it cannot serve: its message
        # says which, and is what a person needs.
        raise UsageError(
            f"the dashboard did not list the tasks: {exc.server_message!r} (if it is about "
            f"the login: {ENV_DASHBOARD_TOKEN} is the console's access token, "
            f"{ENV_USER_ID} your user id)"
        ) from exc
    except APIStatusError as exc:
        if exc.status_code in (404, 405):
            raise UsageError(
                f"no dashboard task list at {base_url}{TASK_LIST_PATH} (HTTP "
                f"{exc.status_code}): --reconcile needs new-api's dashboard API"
            ) from exc
        raise Aio88Error(f"--reconcile could not read the dashboard's task list: {exc}") from exc
