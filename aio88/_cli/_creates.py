"""The creates of one ``aio88 run``: each job is paid for at most once.

Every create is committed to the ledger as ``submitting`` just before its first byte is
written (the transport's :class:`~aio88._sending.SendMark`), and back to ``pending`` while
a 429's backoff runs, so that a crash at any moment leaves ``submitting`` only for a create
the server may have. After a failure the server's answer decides (:mod:`aio88._billing`):
not created -> ``pending`` (sent again in this run, a few times, after a pause), refused
-> ``rejected``, unknown -> ``unconfirmed``. The first create goes alone: a refused key
costs one create. :meth:`Creates.stop` is the first Ctrl-C: nothing more is sent, creates
not sent are called off, and those sent get a few seconds to answer.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import anyio

from .._billing import fate_of_failed_create
from .._client import Client
from .._config import CREATE_RESENDS, RetryPolicy
from .._errors import (
    Aio88Error,
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    PermissionDeniedError,
)
from .._ledger import Job, Ledger
from .._models import GenerationTask, Video
from .._retry import backoff_delay
from .._sending import SendMark, marking
from ._jobs import create_job
from ._output import Printer, UsageError, error_text


class Creates:
    """Sends the creates of one run, ``concurrency`` at a time, keeping the ledger true.

    Args:
        client: Sends them.
        ledger: Where each job's state is committed.
        printer: Where each result is reported.
        on_created: Called with each task created (to watch it).
        on_given_up: Called once for each job that will not become a task in this run.
        concurrency: Creates in flight at most.
    """

    def __init__(
        self,
        client: Client,
        ledger: Ledger,
        printer: Printer,
        *,
        on_created: Callable[[Job, GenerationTask | Video], None],
        on_given_up: Callable[[Job], None],
        concurrency: int,
    ) -> None:
        self._client = client
        self._ledger = ledger
        self._printer = printer
        self._on_created = on_created
        self._on_given_up = on_given_up
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._in_flight: dict[str, tuple[anyio.CancelScope, SendMark]] = {}
        self._backoff = RetryPolicy()
        self.stopping = False
        """No more creates will be sent (a Ctrl-C, or a fatal error)."""
        self.fatal: Exception | None = None
        """Why the run cannot go on: the key refused, no such route at the base URL, the
        API unreachable. Every job not created stays ``pending``."""
        self._proven = False  # a create succeeded: the key, the URL and the network work
        self.settled = anyio.Event()
        """Set when every job of :meth:`run` has settled (created, given up or called off)."""

    async def run(self, jobs: list[Job]) -> None:
        """Create every job: one at a time until one succeeds, then the rest together."""
        rest = list(jobs)
        try:
            # A refused key, a wrong base URL or an unreachable API then costs one create
            # (or none), not one per concurrency slot.
            while rest and not self._proven and not self.stopping:
                await self._create(rest.pop(0))
            async with anyio.create_task_group() as tg:
                for job in rest:
                    tg.start_soon(self._create, job)
        finally:
            self.settled.set()

    def stop(self, grace: float) -> None:
        """Send nothing more. Creates not sent yet are called off (their jobs stay
        ``pending``); creates already sent get ``grace`` seconds to answer."""
        self.stopping = True
        deadline = anyio.current_time() + grace
        for scope, mark in self._in_flight.values():
            if mark.sent:
                scope.deadline = min(scope.deadline, deadline)
            else:
                scope.cancel()

    def stop_now(self) -> None:
        """Call off every create at once (a sent one becomes ``unconfirmed``)."""
        self.stopping = True
        for scope, _ in self._in_flight.values():
            scope.cancel()

    async def _create(self, job: Job) -> None:
        mark = SendMark(
            before_write=partial(self._set, job, "submitting"),
            not_taken=partial(self._set, job, "pending"),
        )
        settled = False
        try:
            with anyio.CancelScope() as scope:
                self._in_flight[job.key] = (scope, mark)
                settled = await self._send(job, mark)
        finally:
            # Settled, or called off by stop(), or cancelled with the whole run: what
            # the ledger says must match what may have reached the server.
            del self._in_flight[job.key]
            if not settled:
                self._call_off(job, mark)

    async def _send(self, job: Job, mark: SendMark) -> bool:
        """Send ``job``'s create until it settles; False if stopped before it did."""
        for attempt in range(CREATE_RESENDS + 1):
            if attempt:
                await anyio.sleep(backoff_delay(attempt, self._backoff))
            async with self._limiter:
                if self.stopping:
                    return False
                try:
                    with marking(mark):
                        task = await create_job(self._client, job)
                except (AuthenticationError, PermissionDeniedError) as exc:
                    self._end_run(job, exc)  # refused: nothing billed
                    return True
                except (ValueError, TypeError, OSError) as exc:
                    # Local (a reference image unreadable now): nothing was sent.
                    self._give_up(job, "pending", error_text(exc))
                    return True
                except Aio88Error as exc:
                    if (fatal := self._fatal(exc, mark)) is not None:
                        self._end_run(job, fatal)
                        return True
                    fate = fate_of_failed_create(exc, sent=mark.sent)
                    if fate.state == "pending" and attempt < CREATE_RESENDS and mark.sent:
                        # Complete, and it created nothing: sent again after a pause.
                        await mark.not_taken()
                        self._printer.detail("resend", key=job.key, error=fate.why)
                        continue
                    self._give_up(job, fate.state, fate.why)
                    return True
            # Committed at once: from here on a crash leaves a task to poll, not to guess.
            self._ledger.set_state(job.key, "submitted", task_id=task.id)
            self._proven = True
            self._printer.detail("created", key=job.key, id=task.id)
            self._on_created(job, task)
            return True
        raise AssertionError("unreachable: the last attempt always settles")  # pragma: no cover

    def _fatal(self, error: Aio88Error, mark: SendMark) -> Exception | None:
        """The error that ends the run, if ``error`` says every create would fail alike."""
        if (
            isinstance(error, APIStatusError)
            and error.status_code in (404, 405)
            and "model" not in str(error).lower()  # "no such model" is the job's own
        ):
            return UsageError(
                f"the API has no create route at {self._client.base_url} (HTTP "
                f"{error.status_code}); check AIO88_BASE_URL: the API's root, such as "
                "https://88api.ai, without /videos. Nothing was created"
            )
        if isinstance(error, APIConnectionError) and not mark.sent and not self._proven:
            return APIConnectionError(
                f"cannot reach the API ({error}); nothing was sent: rerun when it is "
                "reachable (check AIO88_BASE_URL and any proxy settings)",
                request_sent=False,
            )
        return None

    def _end_run(self, job: Job, why: Exception) -> None:
        """Stop the run for ``why``; ``job`` stays pending (nothing of it was billed)."""
        self._set_now(job, "pending", None)
        self.fatal = self.fatal or why
        self.stopping = True
        self._on_given_up(job)

    def _give_up(self, job: Job, state: str, why: str | None) -> None:
        self._set_now(job, state, why)
        self._printer.problem(state, key=job.key, line=job.line, error=why)
        self._on_given_up(job)

    def _call_off(self, job: Job, mark: SendMark) -> None:
        """The create stopped before it settled (a Ctrl-C): sent or not decides."""
        if mark.sent:
            self._set_now(job, "unconfirmed", "the run stopped before its answer came")
            self._printer.problem(
                "unconfirmed",
                key=job.key,
                line=job.line,
                error="sent, and the run stopped before the answer came",
            )
        elif mark.committed:
            self._set_now(job, "pending", None)
        self._on_given_up(job)

    async def _set(self, job: Job, state: str) -> None:
        self._set_now(job, state, None)

    def _set_now(self, job: Job, state: str, why: str | None) -> None:
        self._ledger.set_state(job.key, state, error=why)
