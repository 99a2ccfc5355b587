"""``aio88 run --reconcile``: settle ``unconfirmed`` jobs from the dashboard's task list.

A job is ``unconfirmed`` when its create was sent and the answer that would say never
came: its task may exist, and be billed. The dashboard lists the user's tasks
(:mod:`aio88._dashboard`); each unconfirmed job is looked for there, among the tasks
submitted in its sending window (from its first send to now, widened by the clock skew)
that no other job of the ledger owns, and that agree with it on what the item tells:
model, prompt, ``metadata``. Then:

- exactly one such task, which no other unconfirmed job could claim -> adopted: the job is
  ``submitted`` with that id, polled and downloaded, never created again;
- none, and the last send is older than ``--settle`` -> ``pending``: created in this run;
- more than one, or one that two jobs could claim, or none yet while the send is too
  recent to be listed -> stays ``unconfirmed``, the candidates named.

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

from .._config import ENV_DASHBOARD_TOKEN, ENV_USER_ID, RECONCILE_CLOCK_SKEW
from .._dashboard import (
    TASK_LIST_PATH,
    DashboardRefusedError,
    DashboardTask,
    dashboard_transport,
    list_tasks,
)
from .._errors import Aio88Error, APIStatusError, AuthenticationError, PermissionDeniedError
from .._ledger import Job, Ledger
from ._output import Printer, UsageError

__all__ = ["Decision", "Verdict", "dashboard_credentials", "decide", "matches", "reconcile"]

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
    missing = [
        name for name, value in ((ENV_DASHBOARD_TOKEN, token), (ENV_USER_ID, user_id)) if not value
    ]
    if missing:
        raise UsageError(
            f"--reconcile reads the dashboard's task list: set {' and '.join(missing)} (the "
            "access token from the 88API console's personal settings, not an sk- key, and "
            "your user id)"
        )
    return token, user_id


def window(job: Job, now: float, *, skew: float = RECONCILE_CLOCK_SKEW) -> tuple[int, int] | None:
    """The Unix seconds between which ``job``'s task can have been stored, or ``None``
    when the ledger never recorded when it was sent."""
    if job.sending_since is None:
        return None
    return math.floor(job.sending_since - skew), math.ceil(now + skew)


def matches(job: Job, task: DashboardTask, bounds: tuple[int, int]) -> bool:
    """Whether ``task`` can be the one ``job``'s create made: submitted in ``bounds`` and
    agreeing with the job on each field the item carries (one it lacks rules nothing out)."""
    if task.submit_time is not None and not bounds[0] <= task.submit_time <= bounds[1]:
        return False
    request = job.request
    model = request.get("model")
    if isinstance(model, str) and task.models and model not in task.models:
        return False
    prompt = request.get("prompt")
    if isinstance(prompt, str) and task.prompt is not None and task.prompt != prompt.strip():
        return False
    metadata = request.get("metadata")
    return not (
        isinstance(metadata, dict) and task.metadata is not None and task.metadata != metadata
    )


def decide(
    jobs: Iterable[Job],
    tasks: Iterable[DashboardTask],
    known: set[str],
    now: float,
    *,
    settle: float,
    skew: float = RECONCILE_CLOCK_SKEW,
) -> list[Decision]:
    """The decision for each unconfirmed job of ``jobs``.

    Args:
        tasks: The dashboard's tasks (of a window covering every job's).
        known: Task ids the ledger already gives to a job: never another job's.
        now: Unix time now.
        settle: Seconds after its last send during which a job's task may not be listed yet.
    """
    jobs = list(jobs)
    free = [task for task in tasks if task.task_id not in known]
    found: dict[str, list[str]] = {}
    for job in jobs:
        bounds = window(job, now, skew=skew)
        if bounds is not None:
            found[job.key] = [t.task_id for t in free if matches(job, t, bounds)]
    claims = Counter(task_id for ids in found.values() for task_id in ids)
    decisions = []
    for job in jobs:
        ids = found.get(job.key)
        if ids is None:
            decisions.append(
                Decision(
                    job.key,
                    "unconfirmed",
                    why="the ledger has no time for its send (written by an older aio88): "
                    "check the 88API console",
                )
            )
        elif len(ids) == 1 and claims[ids[0]] == 1:
            decisions.append(Decision(job.key, "adopted", task_id=ids[0]))
        elif not ids:
            last = job.sending_last or job.sending_since or 0.0
            if now < last + settle:
                decisions.append(
                    Decision(
                        job.key,
                        "unconfirmed",
                        why=f"no task listed yet, but it was sent {now - last:.0f}s ago and may "
                        f"still be stored: rerun with --reconcile after {settle:g}s",
                    )
                )
            else:
                decisions.append(Decision(job.key, "pending"))
        else:
            shared = [i for i in ids if claims[i] > 1]
            why = (
                f"{len(ids)} tasks in the dashboard match it"
                if len(ids) > 1
                else "its one matching task matches another unconfirmed job too"
            )
            if shared and len(ids) > 1:
                why += " (some match other unconfirmed jobs too)"
            decisions.append(
                Decision(
                    job.key,
                    "unconfirmed",
                    candidates=tuple(ids),
                    why=f"{why}: {', '.join(ids)}; check them in the 88API console",
                )
            )
    return decisions


async def reconcile(
    ledger: Ledger, base_url: str, credentials: tuple[str, str], printer: Printer, *, settle: float
) -> Counter[Verdict]:
    """Settle the ledger's ``unconfirmed`` jobs from the dashboard's task list (committing
    each decision) and return how many went each way.

    Raises:
        UsageError: The dashboard refused the credentials, or has no task list there.
        Aio88Error: The list could not be read.
    """
    jobs = list(ledger.jobs("unconfirmed"))
    if not jobs:
        return Counter()
    now = time.time()
    windows = [w for w in (window(job, now) for job in jobs) if w is not None]
    tasks: list[DashboardTask] = []
    if windows:
        transport = dashboard_transport(base_url, *credentials)
        try:
            tasks = await list_tasks(
                transport,
                start=min(w[0] for w in windows),
                end=max(w[1] for w in windows),
            )
        except (AuthenticationError, PermissionDeniedError, DashboardRefusedError) as exc:
            raise UsageError(
                f"the dashboard refused {ENV_DASHBOARD_TOKEN}/{ENV_USER_ID} ({exc}); use the "
                "access token from the console's personal settings and your user id"
            ) from exc
        except APIStatusError as exc:
            if exc.status_code in (404, 405):
                raise UsageError(
                    f"no dashboard task list at {base_url}{TASK_LIST_PATH} (HTTP "
                    f"{exc.status_code}): --reconcile needs new-api's dashboard API"
                ) from exc
            raise Aio88Error(
                f"--reconcile could not read the dashboard's task list: {exc}"
            ) from exc
        finally:
            await transport.aclose()
    counts: Counter[Verdict] = Counter()
    by_key = {job.key: job for job in jobs}
    for decision in decide(jobs, tasks, ledger.task_ids(), now, settle=settle):
        counts[decision.verdict] += 1
        job = by_key[decision.key]
        if decision.verdict == "adopted":
            ledger.set_state(job.key, "submitted", task_id=decision.task_id)
            printer.event("adopted", key=job.key, id=decision.task_id)
        elif decision.verdict == "pending":
            ledger.set_state(job.key, "pending")
            printer.event("not_created", key=job.key, line=job.line)
        else:
            ledger.set_state(job.key, "unconfirmed", error=decision.why)
    printer.note(
        f"--reconcile: {counts['adopted']} job(s) adopted their task, {counts['pending']} "
        f"found not created (created now), {counts['unconfirmed']} still unconfirmed"
    )
    return counts
