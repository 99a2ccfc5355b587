"""``aio88 run``: the crash-safe batch, every step kept in a ledger, and its ``--status``."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TypeVar

import anyio

from .._client import Client
from .._config import DEFAULT_DOWNLOAD_WORKERS, FLEET_BATCH_TEND
from .._download import file_name_for
from .._errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    DownloadError,
    PermissionDeniedError,
    WaitTimeoutError,
)
from .._ledger import Job, Ledger, LedgerStore, SharedLedger, SqliteStore
from .._models import GenerationTask, Status, Video
from .._outcome import Outcome
from .._partfile import file_facts
from ..testing._arguments import UsageError
from ._api import api_client
from ._creates import Creates
from ._interrupt import Interrupt
from ._jobs import load_jobs
from ._output import EXIT_FAILED, EXIT_OK, Printer, Tally, error_text, outcome_event
from ._reconcile import dashboard_credentials, reconcile

#: What fails one video's download without ending the run (as ``watch(download_dir=)``).
_DOWNLOAD_ERRORS = (ValueError, TypeError, DownloadError, APIConnectionError, APIStatusError)

#: The states --status lists job by job (the others are counted): what needs a decision.
_LOOSE_ENDS = ("failed", "rejected", "unconfirmed", "download_failed")


def writable_folder(folder: Path) -> Path:
    """``folder``, created if need be and checked writable (else a usage error)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
    return folder


async def run_batch(args: argparse.Namespace, printer: Printer) -> int:
    """``aio88 run JOBS --out DIR [--ledger URL]``: create, poll and download, surviving
    crashes; with ``--ledger``, as one of several workers sharing the batch."""
    jobs = load_jobs(Path(args.jobs))
    out = writable_folder(Path(args.out))
    client = api_client(rate_limit=args.rate_limit)  # no key: refused before anything is sent
    reconciling = getattr(args, "reconcile", False)
    if reconciling and args.resend_unconfirmed:
        raise UsageError(
            "--reconcile and --resend-unconfirmed do not go together: reconcile first, then "
            "resend what stays unconfirmed if you choose to"
        )
    credentials = dashboard_credentials() if reconciling else None  # before anything is sent
    dsn = getattr(args, "ledger", None)
    if dsn and not dsn.startswith(("postgresql://", "postgres://")):
        raise UsageError(
            "--ledger takes a PostgreSQL URL (postgresql://user@host/database); without "
            "--ledger, the batch's ledger is DIR/ledger.sqlite3"
        )
    if dsn:
        # Imported here: asyncpg only for a run that asked for PostgreSQL.
        from ..fleet import FleetError
        from ..fleet._batch import open_batch

        async with AsyncExitStack() as stack:
            try:
                shared = await stack.enter_async_context(open_batch(dsn, lease=args.lease))
            except FleetError as exc:
                raise UsageError(f"--ledger: {exc}") from None
            # --rate-limit and a 429's pause hold for every worker of the batch together.
            client = api_client(rate_limit=args.rate_limit, fleet=shared.fleet)
            try:
                return await _run_on(shared, shared, jobs, out, client, args, printer, credentials)
            except Exception as exc:  # an ExceptionGroup from the run's tasks
                gone = _found_in(exc, FleetError)
                if gone is None:
                    raise
                # The database out of reach for too long: one line and exit 1, not an
                # ExceptionGroup's traceback.
                raise gone from None
    store = SqliteStore(Ledger(out))
    try:
        return await _run_on(store, None, jobs, out, client, args, printer, credentials)
    finally:
        await store.close()


_E = TypeVar("_E", bound=BaseException)


def _found_in(error: BaseException, kind: type[_E]) -> _E | None:
    """``error`` if it is a ``kind``, or the first ``kind`` in it if it is an exception
    group (nested or not; Python 3.10's backport included)."""
    if isinstance(error, kind):
        return error
    for inner in getattr(error, "exceptions", ()):
        found = _found_in(inner, kind)
        if found is not None:
            return found
    return None


async def _run_on(
    ledger: LedgerStore,
    shared: SharedLedger | None,
    jobs: list[Job],
    out: Path,
    client: Client,
    args: argparse.Namespace,
    printer: Printer,
    credentials: tuple[str, str] | None,
) -> int:
    reconciling = credentials is not None
    started = time.time()  # the sending times in the ledger are Unix times
    await _check_edits(ledger, jobs, replace=args.replace)
    added = await ledger.add_new(jobs)
    if added:
        printer.detail("ledger", new_jobs=added, path=ledger.where)
    if shared is None:
        for job in await ledger.jobs("submitting"):
            # A create sent just before a crash: the server may have it, and 88API cannot
            # be asked. Sending it again could bill twice.
            await ledger.set_state(
                job.key,
                "unconfirmed",
                error="the run stopped while this create was in flight",
                was="submitting",
            )
    else:
        # The same, for workers that died; a live worker's creates are its own business.
        await shared.bury()
    if args.resend_unconfirmed:
        for job in await ledger.jobs("unconfirmed"):
            if shared is not None and (job.sending_last or 0.0) >= started:
                # Resent by another worker of the batch since this one began (and its
                # answer lost again): one blind resend per request, not one per worker.
                continue
            # Only if still unconfirmed: another worker resending too may have claimed it.
            await ledger.set_state(job.key, "pending", was="unconfirmed")
    if credentials is not None:
        # Before any create or poll: an adopted task is then polled like any other,
        # and a job found not created is created like any pending one.
        await reconcile(ledger, client.base_url, credentials, printer, settle=args.settle)
    for job, problem in await _check_files(ledger, None if shared is None else out):
        # Fetched again through the task (no create): a changed file is kept aside.
        if problem == "changed" and job.path is not None:
            await anyio.Path(job.path).replace(job.path + ".changed")
        # With a shared ledger it belongs to nobody then: whoever takes it over fetches it.
        await ledger.set_state(
            job.key, "submitted", error=f"file {problem}: fetching it again", was="downloaded"
        )
        printer.problem(problem, key=job.key, id=job.task_id, path=job.path)
    for job in await ledger.jobs("unconfirmed"):
        printer.problem(
            "unconfirmed",
            key=job.key,
            line=job.line,
            error=job.error
            if reconciling and job.error
            else "its create may have reached the server; check the 88API console (or "
            "rerun with --reconcile), then rerun with --resend-unconfirmed to create it "
            "again",
        )
    async with client:
        return await _run_jobs(client, ledger, shared, out, args, printer)


async def _check_edits(ledger: LedgerStore, jobs: list[Job], *, replace: bool) -> None:
    """A line edited since the ledger took it (same key, other request) is refused, naming
    the line: its old form may be created already. ``--replace`` accepts it for a job not
    sent yet."""
    for job, known in await ledger.edited(jobs):
        if replace and known.state == "pending":
            await ledger.replace_request(job)
            continue
        why = (
            "use --replace to take the new line"
            if known.state == "pending"
            else f'its job is {known.state} already; give the new line another "key"'
        )
        raise UsageError(
            f"line {job.line} was edited since the ledger took it (key {job.key!r}): {why}"
        )


async def _run_jobs(
    client: Client,
    ledger: LedgerStore,
    shared: SharedLedger | None,
    out: Path,
    args: argparse.Namespace,
    printer: Printer,
) -> int:
    to_create = [] if shared is not None else await ledger.jobs("pending")
    to_watch = [] if shared is not None else await ledger.jobs("submitted", "download_failed")
    tally = Tally(total=len(to_create) + len(to_watch))
    printer.progress(tally)  # on a terminal, the live panel from the first create on
    videos = out / "videos"
    results: list[Outcome] = []

    timed_out = 0

    def lost(key: str, task_id: str) -> None:
        """A job another worker took over while this one was taken for dead (a shared
        ledger): its outcome is that worker's to record, its file that worker's to fetch."""
        tally.total -= 1
        printer.detail(
            "lost",
            key=key,
            id=task_id,
            error="another worker of the batch has this job now (this one was silent for "
            "over 2 leases); left to it",
        )

    async def record(outcome: Outcome) -> None:
        nonlocal timed_out
        key = await ledger.key_of_task(outcome.id)
        if key is None:
            return
        if isinstance(outcome.error, WaitTimeoutError):
            # Not a verdict on the task: it may finish (and is paid for). It stays
            # submitted, so the next run polls it again.
            error = "timed out: still running at --timeout"
            if not await ledger.set_state(key, "submitted", error=error):
                lost(key, outcome.id)
                return
            timed_out += 1
            if shared is not None:
                await shared.timed_out(key)  # not taken over by the other workers either
            printer.problem(
                "timed_out", key=key, id=outcome.id, error="still running; rerun to poll again"
            )
            results.append(outcome)
            return
        if outcome.ok and outcome.path is not None:
            # Size and SHA-256 kept, so that --status and a rerun notice a file deleted
            # or changed since.
            size, digest = await anyio.to_thread.run_sync(file_facts, outcome.path)
            # Shared by several machines: the path says which folder, wherever run from.
            path = str(outcome.path if shared is None else outcome.path.absolute())
            mine = await ledger.set_state(key, "downloaded", path=path, size=size, sha256=digest)
        elif outcome.task is not None and outcome.task.status is Status.SUCCEEDED:
            mine = await ledger.set_state(key, "download_failed", error=error_text(outcome.error))
        else:
            mine = await ledger.set_state(key, "failed", error=error_text(outcome.error))
        if not mine:
            lost(key, outcome.id)
            return
        results.append(outcome)
        outcome_event(printer, outcome, key)

    def on_update(task: GenerationTask | Video) -> None:
        tally.update(task)
        printer.progress(tally)

    # A shared batch's worker downloads each video itself, once it has checked that the
    # job is still its own (a worker taken for dead may have lost it meanwhile).
    downloads = anyio.CapacityLimiter(DEFAULT_DOWNLOAD_WORKERS)

    async def fetch(outcome: Outcome) -> None:
        assert shared is not None and outcome.task is not None
        task = outcome.task
        async with downloads:
            key = await ledger.key_of_task(outcome.id)
            if key is not None and not await shared.holds(key):
                lost(key, outcome.id)
                return
            try:
                path = await client.download(task, videos / file_name_for(task.id, task.format))
                outcome = Outcome(outcome.id, outcome.kind, task, None, path)
            except _DOWNLOAD_ERRORS as exc:
                outcome = Outcome(outcome.id, outcome.kind, task, exc, None)
        tally.finish(outcome)
        await record(outcome)
        printer.progress(tally)

    async with client.watch(
        [],
        concurrency=args.concurrency,
        download_dir=videos if shared is None else None,
        on_update=on_update,
        timeout=args.timeout,
    ) as outcomes:
        for job in to_watch:
            assert job.task_id is not None
            outcomes.add([job.task_id], kind=job.kind)
        # The iteration stays open while they are created; a worker of a shared batch
        # holds it open (one expected task more) until the batch needs it no more.
        outcomes.expect(len(to_create) if shared is None else 1)

        def created(job: Job, task: GenerationTask | Video) -> None:
            tally.update(task)
            outcomes.add([task], fresh=True)

        def given_up(job: Job, state: str) -> None:
            if state == "lost":
                tally.total -= 1  # another worker's now
            elif state == "unconfirmed":
                tally.unconfirmed += 1
            else:
                tally.failed += 1
            outcomes.forget()

        creates = Creates(
            client,
            ledger,
            printer,
            on_created=created,
            on_given_up=given_up,
            concurrency=args.create_concurrency,
            shared=shared,
        )

        async def claim(skip: set[str]) -> Job | None:
            assert shared is not None
            job = await shared.claim(skip)
            if job is not None:
                tally.total += 1
                outcomes.expect(1)  # its task (or its forget(), if it is given up)
            return job

        async def tend() -> None:
            """A worker of a shared batch: take over the dead workers' tasks, mark their
            creates in flight unconfirmed, and end when the batch needs it no more."""
            assert shared is not None
            while True:
                buried = await shared.bury()
                if buried:
                    printer.detail("unconfirmed", jobs=buried, error="their worker died")
                for job in await shared.take_over():
                    assert job.task_id is not None
                    tally.total += 1
                    outcomes.expect(1)  # so that the add below cannot take a create's place
                    outcomes.add([job.task_id], kind=job.kind)
                    printer.detail("taken_over", key=job.key, id=job.task_id)
                if creates.settled.is_set() and not await shared.open_elsewhere(
                    creates.left_pending
                ):
                    outcomes.forget()  # the iteration ends with this worker's own tasks
                    return
                await anyio.sleep(FLEET_BATCH_TEND)

        interrupt = Interrupt(creates, printer)
        refused: list[BaseException] = []
        async with anyio.create_task_group() as tg:
            await tg.start(interrupt.listen, tg)

            async def create_all() -> None:
                if shared is None:
                    await creates.run(to_create)
                else:
                    await creates.run_claimed(claim)
                if isinstance(creates.fatal, AuthenticationError | PermissionDeniedError):
                    tg.cancel_scope.cancel()  # the polls would be refused too

            tg.start_soon(create_all)
            if shared is not None:
                tg.start_soon(tend)
            async with anyio.create_task_group() as fetching:
                try:
                    async for outcome in outcomes:
                        if shared is not None and outcome.ok and outcome.path is None:
                            fetching.start_soon(fetch, outcome)
                            continue
                        tally.finish(outcome)
                        await record(outcome)
                        printer.progress(tally)
                except (AuthenticationError, PermissionDeniedError) as exc:  # a poll refused
                    refused.append(exc)
                    fetching.cancel_scope.cancel()
            tg.cancel_scope.cancel()  # every job is settled: stop listening for Ctrl-C
    if creates.fatal is not None:
        refused.insert(0, creates.fatal)
    if refused:
        # Raised here, outside the task group, so that it reaches the user as itself: one
        # line and exit 2, not an ExceptionGroup's traceback.
        raise refused[0]
    counts = await ledger.counts()
    if interrupt.signal is not None:
        interrupt.explain(counts)
    else:
        _what_next(printer, counts, timed_out, args.timeout)
    printer.summary(
        jobs=sum(counts.values()),
        **{state: counts[state] for state in sorted(counts)},
        timed_out=timed_out,
        seconds=round(time.monotonic() - tally.started, 1),
        bytes=tally.bytes,
        files=str(videos),
        ledger=ledger.where,
    )
    if interrupt.signal is not None:
        return 128 + int(interrupt.signal)
    return EXIT_OK if counts["downloaded"] == sum(counts.values()) else EXIT_FAILED


def _what_next(printer: Printer, counts: Counter[str], timed_out: int, timeout: float) -> None:
    """After a run that did not settle everything: one line per kind of loose end, saying
    what to do about it."""
    if timed_out:
        printer.note(
            f"{timed_out} task(s) still running at --timeout {timeout:g}s; they stay in the "
            "ledger: rerun the same command to poll and download them"
        )
    if counts["pending"]:
        printer.note(
            f"{counts['pending']} job(s) not created (nothing billed, see each one's error): "
            "rerun the same command to send them"
        )
    if counts["unconfirmed"]:
        printer.note(
            f"{counts['unconfirmed']} job(s) unconfirmed: the create was sent and its answer "
            "never came, so the task may exist and be billed. Rerun with --reconcile to look "
            "for them in your task list (AIO88_DASHBOARD_TOKEN, AIO88_USER_ID); "
            "--resend-unconfirmed creates them again blindly (paying twice for any that exist)"
        )
    if counts["rejected"]:
        printer.note(
            f"{counts['rejected']} job(s) rejected by the API (nothing billed, see each "
            'one\'s error): fix the line and give it a new "key" to send it again'
        )


def ledger_status(
    folder: Path | None, printer: Printer, *, show_all: bool = False, dsn: str | None = None
) -> int:
    """``aio88 run --status DIR``: summarise a ledger without touching the network; with
    ``--ledger URL``, the shared batch (and which worker holds what), checking the files
    of ``DIR`` if given."""
    if dsn:
        return _shared_status(dsn, folder, printer, show_all=show_all)
    if folder is None:
        raise UsageError("--status needs the run's folder (or --ledger URL)")
    if not (folder / Ledger.FILE_NAME).exists():
        raise UsageError(f"no ledger in {folder} (looked for {Ledger.FILE_NAME})")
    ledger = Ledger(folder, lock=False)  # reading only: a run may be going on
    try:
        jobs = list(ledger.jobs())
    finally:
        ledger.close()
    return _report(jobs, None, printer, show_all=show_all)


def _shared_status(dsn: str, folder: Path | None, printer: Printer, *, show_all: bool) -> int:
    from ..fleet._batch import batch_status  # asyncpg only when asked

    try:
        found = anyio.run(batch_status, dsn)
    except (OSError, ConnectionError) as exc:
        raise UsageError(f"cannot read the batch at {dsn.split('@')[-1]}: {exc}") from exc
    if found is None:
        raise UsageError(f"no batch in that database ({dsn.split('@')[-1]}): run one first")
    jobs, workers = found
    for worker in workers:
        printer.event("worker", id=worker.id, alive=worker.alive, **worker.holds)
    # Without DIR, no file is checked: they may be on other machines.
    return _report(jobs, folder, printer, show_all=show_all, check=folder is not None)


def _report(
    jobs: list[Job], within: Path | None, printer: Printer, *, show_all: bool, check: bool = True
) -> int:
    for job in jobs:
        if job.state in _LOOSE_ENDS:
            printer.problem(job.state, key=job.key, line=job.line, id=job.task_id, error=job.error)
    downloaded = [job for job in jobs if job.state == "downloaded"]
    problems = anyio.run(_check_jobs_files, downloaded if check else [], within)
    for job, problem in problems:
        printer.problem(problem, key=job.key, id=job.task_id, path=job.path)
    if show_all:
        for job in jobs:
            printer.event("job", key=job.key, id=job.task_id, state=job.state, path=job.path)
    counts = Counter(job.state for job in jobs)
    found = Counter(problem for _, problem in problems)
    printer.summary(
        jobs=sum(counts.values()),
        **{state: counts[state] for state in sorted(counts)},
        **{problem: found[problem] for problem in sorted(found)},
    )
    settled = counts["downloaded"] == sum(counts.values()) and not problems
    return EXIT_OK if settled else EXIT_FAILED


async def _check_files(ledger: LedgerStore, within: Path | None) -> list[tuple[Job, str]]:
    """Downloaded jobs whose file is ``missing`` or ``changed`` (size or SHA-256)."""
    return await _check_jobs_files(await ledger.jobs("downloaded"), within)


async def _check_jobs_files(jobs: list[Job], within: Path | None) -> list[tuple[Job, str]]:
    """Of ``jobs``, those whose file is ``missing`` or ``changed``; with ``within`` (a
    shared batch, whose files may be on other machines), only the files in that folder."""

    def check(job: Job) -> str | None:
        path = Path(job.path or "")
        if within is not None and not path.absolute().is_relative_to(within.absolute()):
            return None  # another machine's folder: not ours to judge
        if not path.is_file():
            return "missing"
        if job.size is None or job.sha256 is None:
            return None  # recorded by an aio88 that kept no facts: nothing to compare
        size, digest = file_facts(path)
        return "changed" if (size, digest) != (job.size, job.sha256) else None

    problems = []
    for job in jobs:
        problem = await anyio.to_thread.run_sync(check, job)
        if problem is not None:
            problems.append((job, problem))
    return problems
