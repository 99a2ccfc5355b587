"""The ``aio88`` command.

``aio88 demo`` runs the whole job against an emulator in this process; ``aio88 run`` is
the crash-safe batch tool for the real API; ``create``, ``status``, ``wait`` and
``download`` handle one task; ``emulator`` serves an emulated 88API.

Exit codes: 0 every task ok, 1 some tasks failed, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio

from ._client import Client
from ._config import DEFAULT_POLL_CONCURRENCY, DEFAULT_WAIT_TIMEOUT, RetryPolicy
from ._errors import (
    Aio88Error,
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    PermissionDeniedError,
    WaitTimeoutError,
)
from ._ledger import Job, Ledger, LedgerBusyError
from ._models import GenerationTask, Kind, Status, Video
from ._outcome import Outcome
from ._partfile import file_facts
from ._schedule import Schedule
from ._version import __version__

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: Fields a job line may carry for each kind; anything else goes as ``extra_body``.
_VIDEO_FIELDS = {"model", "prompt", "seconds", "size", "input_reference", "metadata"}
_GENERATION_FIELDS = {
    "model",
    "prompt",
    "duration",
    "fps",
    "width",
    "height",
    "size",
    "image",
    "seed",
    "n",
    "metadata",
    "callback_url",
}


class UsageError(Exception):
    """Bad input: reported on stderr with exit code 2, before anything is sent."""


# -- output ----------------------------------------------------------------------------


@dataclass
class Tally:
    """What happened so far, for the progress line and the summary."""

    total: int = 0
    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    states: dict[str, Status] = field(default_factory=dict)

    def update(self, task: GenerationTask | Video) -> None:
        """A task changed status."""
        previous = self.states.get(task.id)
        status = task.status
        if previous is status:
            return
        self.states[task.id] = status
        for state, delta in ((previous, -1), (status, +1)):
            if state is Status.QUEUED:
                self.queued += delta
            elif state is Status.IN_PROGRESS:
                self.running += delta

    def finish(self, outcome: Outcome) -> None:
        """A task reached its outcome: count it, and take it off the running counts."""
        if outcome.ok:
            self.done += 1
            self.bytes += _size_of(outcome.path)
        else:
            self.failed += 1
        status = self.states.pop(outcome.id, None)
        if status is Status.QUEUED:
            self.queued -= 1
        elif status is Status.IN_PROGRESS:
            self.running -= 1


class Printer:
    """Writes progress and results as a live line (terminal), plain lines, or JSON lines."""

    def __init__(self, *, json_lines: bool, quiet: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.json = json_lines
        self.quiet = quiet
        self.live = not json_lines and not quiet and self.stream.isatty()
        self._last_draw = 0.0

    def event(self, name: str, /, **fields: Any) -> None:
        """One result line: JSON, or words (not in quiet mode)."""
        if self.json:
            self._json({"event": name, **fields})
        elif not self.quiet:
            self._clear()
            words = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
            print(f"{name:<10} {words}", file=self.stream, flush=True)

    def progress(self, tally: Tally, force: bool = False) -> None:
        """Redraw the live line (a terminal only), at most ten times a second."""
        now = time.monotonic()
        if not self.live or (not force and now - self._last_draw < 0.1):
            return
        self._last_draw = now
        width = 24
        finished = tally.done + tally.failed
        filled = width * finished // tally.total if tally.total else width
        bar = "#" * filled + "." * (width - filled)
        line = (
            f"\r[{bar}] {finished}/{tally.total}  queued {tally.queued}  running {tally.running}"
            f"  done {tally.done}  failed {tally.failed}  {tally.bytes / 1e6:.1f} MB"
            f"  {now - tally.started:.0f}s"
        )
        print(line, end="", file=self.stream, flush=True)

    def _json(self, record: dict[str, Any]) -> None:
        print(json.dumps(record, default=str), file=self.stream, flush=True)

    def _clear(self) -> None:
        if self.live:
            print("\r\x1b[2K", end="", file=self.stream)

    def summary(self, **fields: Any) -> None:
        """The closing summary (also in quiet mode). Numbers stay numbers in JSON; for
        people, counts get thousands separators and rates two decimals at most."""
        self._clear()
        if self.json:
            print(
                json.dumps({"event": "summary", **fields}, default=str),
                file=self.stream,
                flush=True,
            )
            return
        print("", file=self.stream)
        for key, value in fields.items():
            print(f"  {key.replace('_', ' '):<18} {_human(value)}", file=self.stream)
        self.stream.flush()

    def error(self, message: str, code: int) -> int:
        """A fatal error: one line on stderr, and in JSON mode an ``error`` event on
        stdout too (a pipeline reading JSON lines sees why the command ended). Returns
        ``code``, the exit code."""
        self._clear()
        print(f"aio88: error: {message}", file=sys.stderr)
        if self.json:
            self._json({"event": "error", "message": message, "exit_code": code})
        return code


def _human(value: object) -> str:
    """A summary value as people read it: 229,820 bytes; 4.09 tasks per second; - for none."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{round(value, 2):,g}"


def _error_text(error: BaseException | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"


def _outcome_event(printer: Printer, outcome: Outcome, key: str | None = None) -> None:
    printer.event(
        "done" if outcome.ok else "failed",
        key=key,
        id=outcome.id,
        kind=outcome.kind,
        path=outcome.path,
        error=_error_text(outcome.error),
    )


def _size_of(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


# -- demo --------------------------------------------------------------------------------


async def demo(args: argparse.Namespace, printer: Printer) -> int:
    """Create, poll and download N tasks on an in-process emulator; print a summary."""
    from .testing import Emulator, Faults

    out = _writable_folder(Path(args.out))
    faults = Faults(rate_429=args.rate_429, drop_rate=args.drop_rate, retry_after=None)
    retry = RetryPolicy(attempts=6, backoff_initial=0.05, backoff_max=1.0)
    async with Emulator(
        dialect=args.dialect,
        duration=tuple(args.duration),
        failure_rate=args.failure_rate,
        faults=faults,
        seed=args.seed,
    ) as emulator:
        printer.event("emulator", url=emulator.base_url, dialect=args.dialect)
        async with Client(
            api_key=emulator.api_key, base_url=emulator.base_url, retry=retry
        ) as client:
            tally = Tally(total=args.tasks)
            created: list[GenerationTask | Video] = []
            lost: list[Outcome] = []
            for n in range(args.tasks):
                prompt = f"demo video {n + 1}: a red fox in the snow"
                task: GenerationTask | Video
                try:
                    if n % 2:
                        task = await client.videos.create(
                            model="sora-2", prompt=prompt, seconds="4"
                        )
                    else:
                        task = await client.generations.create(
                            model="kling-v1", prompt=prompt, duration=5
                        )
                except APIConnectionError as exc:
                    # A create whose answer was lost may still have been processed (and
                    # billed): aio88 does not send it again. Shown as a failed task.
                    failure = Outcome(f"create-{n + 1}", "video", None, exc)
                    lost.append(failure)
                    tally.failed += 1
                    _outcome_event(printer, failure)
                    continue
                created.append(task)
                tally.update(task)
                printer.progress(tally)
            printer.event(
                "created", tasks=len(created), seconds=round(time.monotonic() - tally.started, 1)
            )
            results = lost + await _watch_with_progress(
                client, created, out, args.concurrency, printer, tally, fresh=True
            )
        requests = len(emulator.requests)
    return _finish_summary(printer, tally, results, out, requests=requests)


async def _watch_with_progress(
    client: Client,
    tasks: Sequence[GenerationTask | Video | str],
    out: Path,
    concurrency: int,
    printer: Printer,
    tally: Tally,
    *,
    fresh: bool = False,
    on_outcome: Callable[[Outcome], None] | None = None,
    kind: Kind = "video",
) -> list[Outcome]:
    """Watch tasks to the end with downloads, drawing progress as they go."""
    results: list[Outcome] = []

    def on_update(task: GenerationTask | Video) -> None:
        tally.update(task)
        printer.progress(tally)

    async with client.watch(
        [],
        kind=kind,
        concurrency=concurrency,
        download_dir=out,
        on_update=on_update,
        schedule=Schedule(),
    ) as outcomes:
        outcomes.add(tasks, fresh=fresh)
        async with anyio.create_task_group() as tg:

            async def redraw() -> None:
                while True:
                    printer.progress(tally, force=True)
                    await anyio.sleep(0.25)

            tg.start_soon(redraw)
            async for outcome in outcomes:
                results.append(outcome)
                tally.finish(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
                else:
                    _outcome_event(printer, outcome)
                printer.progress(tally)
            tg.cancel_scope.cancel()
    return results


def _finish_summary(
    printer: Printer, tally: Tally, results: list[Outcome], out: Path, *, requests: int
) -> int:
    elapsed = time.monotonic() - tally.started
    failures = [o for o in results if not o.ok]
    printer.summary(
        tasks=len(results),
        succeeded=len(results) - len(failures),
        failed=len(failures),
        seconds=round(elapsed, 1),
        tasks_per_second=round(len(results) / elapsed, 2) if elapsed else None,
        requests=requests,
        requests_per_task=round(requests / len(results), 1) if results else None,
        bytes=tally.bytes,
        files=str(out),
    )
    return EXIT_FAILED if failures else EXIT_OK


# -- run: the crash-safe batch ----------------------------------------------------------


def load_jobs(path: Path) -> list[Job]:
    """Parse and check every line of a JSONL jobs file; the first problem raises."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text") from exc
    jobs: list[Job] = []
    keys: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            fields = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(fields, dict):
            raise UsageError(f"{where}: each line must be a JSON object")
        kind = fields.pop("kind", "video")
        if kind not in ("video", "generation"):
            raise UsageError(f'{where}: "kind" must be "video" or "generation", not {kind!r}')
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError(f'{where}: "prompt" must be a non-empty string')
        if kind == "generation" and not isinstance(fields.get("model"), str):
            raise UsageError(f'{where}: a generation job needs a "model" (e.g. "kling-v1")')
        key = fields.pop("key", None)
        if key is None:
            canonical = json.dumps({"kind": kind, **fields}, sort_keys=True)
            key = hashlib.sha256(canonical.encode()).hexdigest()[:16]
        elif not isinstance(key, str) or not key:
            raise UsageError(f'{where}: "key" must be a non-empty string')
        if key in keys:
            raise UsageError(
                f'{where}: the same job as line {keys[key]}; give each a distinct "key" '
                "if you mean to create both"
            )
        if "input_reference" in fields:
            fields["input_reference"] = _reference_path(fields["input_reference"], path, where)
        keys[key] = number
        jobs.append(Job(key=key, line=number, kind=kind, request=fields))
    if not jobs:
        raise UsageError(f"{path} holds no jobs")
    return jobs


def _reference_path(value: object, jobs_file: Path, where: str) -> str:
    """An ``input_reference`` as an absolute path: relative ones are next to the jobs file
    (wherever the run starts from), and the file must be readable before anything is sent."""
    if not isinstance(value, str) or not value:
        raise UsageError(f'{where}: "input_reference" must be a file path')
    reference = Path(value).expanduser()
    if not reference.is_absolute():
        reference = jobs_file.resolve().parent / reference
    if not reference.is_file() or not os.access(reference, os.R_OK):
        raise UsageError(f"{where}: input_reference {reference} is not a readable file")
    return str(reference)


def _create_kwargs(job: Job) -> dict[str, Any]:
    known = _VIDEO_FIELDS if job.kind == "video" else _GENERATION_FIELDS
    kwargs = {k: v for k, v in job.request.items() if k in known}
    extra = {k: v for k, v in job.request.items() if k not in known}
    if extra:
        kwargs["extra_body"] = extra
    if "input_reference" in kwargs:
        kwargs["input_reference"] = Path(kwargs["input_reference"])
    return kwargs


async def _create(client: Client, job: Job) -> GenerationTask | Video:
    kwargs = _create_kwargs(job)
    if job.kind == "video":
        return await client.videos.create(**kwargs)
    return await client.generations.create(**kwargs)


def _writable_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
    return folder


async def run_batch(args: argparse.Namespace, printer: Printer) -> int:
    """``aio88 run JOBS --out DIR``: create, poll and download, surviving crashes."""
    jobs = load_jobs(Path(args.jobs))
    out = _writable_folder(Path(args.out))
    client = Client(rate_limit=args.rate_limit)  # a missing key raises before anything is sent
    ledger = Ledger(out)
    try:
        _check_edits(ledger, jobs, replace=args.replace)
        added = ledger.add_new(jobs)
        if added:
            printer.event("ledger", new_jobs=added, path=ledger.path)
        for job in ledger.jobs("submitting"):
            # A create sent just before a crash: the server may have it, and 88API cannot
            # be asked. Sending it again could bill twice.
            ledger.set_state(
                job.key, "unconfirmed", error="the run stopped while this create was in flight"
            )
        if args.resend_unconfirmed:
            for job in ledger.jobs("unconfirmed"):
                ledger.set_state(job.key, "pending")
        for job, problem in await _check_files(ledger):
            # Fetched again through the task (no create): a changed file is kept aside.
            if problem == "changed" and job.path is not None:
                await anyio.Path(job.path).replace(job.path + ".changed")
            ledger.set_state(job.key, "submitted", error=f"file {problem}: fetching it again")
            printer.event(problem, key=job.key, id=job.task_id, path=job.path)
        for job in ledger.jobs("unconfirmed"):
            printer.event(
                "unconfirmed",
                key=job.key,
                line=job.line,
                error="its create may have reached the server; check the 88API console, then "
                "rerun with --resend-unconfirmed to create it again",
            )
        async with client:
            return await _run_jobs(client, ledger, out, args, printer)
    finally:
        ledger.close()


def _check_edits(ledger: Ledger, jobs: list[Job], *, replace: bool) -> None:
    """A line edited since the ledger took it (same key, other request) is refused, naming
    the line: its old form may be created already. ``--replace`` accepts it for a job not
    sent yet."""
    for job, known in ledger.edited(jobs):
        if replace and known.state == "pending":
            ledger.replace_request(job)
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
    client: Client, ledger: Ledger, out: Path, args: argparse.Namespace, printer: Printer
) -> int:
    to_create = list(ledger.jobs("pending"))
    to_watch = list(ledger.jobs("submitted", "download_failed"))
    tally = Tally(total=len(to_create) + len(to_watch))
    videos = out / "videos"
    results: list[Outcome] = []

    timed_out = 0

    async def record(outcome: Outcome) -> None:
        nonlocal timed_out
        key = ledger.key_of_task(outcome.id)
        if key is None:
            return
        if isinstance(outcome.error, WaitTimeoutError):
            # Not a verdict on the task: it may finish (and is paid for). It stays
            # submitted, so the next run polls it again.
            timed_out += 1
            ledger.set_state(key, "submitted", error="timed out: still running at --timeout")
            printer.event(
                "timed_out", key=key, id=outcome.id, error="still running; rerun to poll again"
            )
            results.append(outcome)
            return
        if outcome.ok and outcome.path is not None:
            # Size and SHA-256 kept, so that --status and a rerun notice a file deleted
            # or changed since.
            size, digest = await anyio.to_thread.run_sync(file_facts, outcome.path)
            ledger.set_state(key, "downloaded", path=str(outcome.path), size=size, sha256=digest)
        elif outcome.task is not None and outcome.task.status is Status.SUCCEEDED:
            ledger.set_state(key, "download_failed", error=_error_text(outcome.error))
        else:
            ledger.set_state(key, "failed", error=_error_text(outcome.error))
        results.append(outcome)
        _outcome_event(printer, outcome, key)

    def on_update(task: GenerationTask | Video) -> None:
        tally.update(task)
        printer.progress(tally)

    async with client.watch(
        [],
        concurrency=args.concurrency,
        download_dir=videos,
        on_update=on_update,
        timeout=args.timeout,
    ) as outcomes:
        for job in to_watch:
            assert job.task_id is not None
            outcomes.add([job.task_id], kind=job.kind)
        outcomes.expect(len(to_create))  # the iteration stays open while they are created
        limiter = anyio.CapacityLimiter(args.create_concurrency)
        fatal: list[BaseException] = []

        async def submit(job: Job) -> None:
            async with limiter:
                if fatal:
                    outcomes.forget()
                    return
                ledger.set_state(job.key, "submitting")  # committed before the request
                try:
                    task = await _create(client, job)
                except (AuthenticationError, PermissionDeniedError) as exc:
                    ledger.set_state(job.key, "pending")  # refused: not billed, retry later
                    fatal.append(exc)
                    outcomes.forget()
                    return
                except (ValueError, TypeError) as exc:
                    # Local (a reference image that cannot be read now): nothing was sent,
                    # so the job stays pending for the next run.
                    ledger.set_state(job.key, "pending", error=_error_text(exc))
                    printer.event("pending", key=job.key, line=job.line, error=_error_text(exc))
                    outcomes.forget()
                    tally.failed += 1
                    return
                except APIStatusError as exc:
                    unsure = exc.status_code >= 500
                    state = "unconfirmed" if unsure else "rejected"
                    ledger.set_state(job.key, state, error=_error_text(exc))
                    printer.event(state, key=job.key, line=job.line, error=_error_text(exc))
                    outcomes.forget()
                    tally.failed += 1
                    return
                except APIConnectionError as exc:
                    state = "unconfirmed" if exc.request_sent else "pending"
                    ledger.set_state(job.key, state, error=_error_text(exc))
                    printer.event(state, key=job.key, line=job.line, error=_error_text(exc))
                    outcomes.forget()
                    tally.failed += 1
                    return
                ledger.set_state(job.key, "submitted", task_id=task.id)  # committed at once
                printer.event("created", key=job.key, id=task.id)
                tally.update(task)
                outcomes.add([task], fresh=True)

        async with anyio.create_task_group() as tg:
            if to_create:
                # The first create goes alone: a refused key costs one create, not one
                # per concurrency slot.
                await submit(to_create[0])
            for job in to_create[1:]:
                tg.start_soon(submit, job)  # after a refusal, each only steps aside
            try:
                async for outcome in outcomes:
                    tally.finish(outcome)
                    await record(outcome)
                    printer.progress(tally)
            except (AuthenticationError, PermissionDeniedError) as exc:  # a poll refused
                fatal.append(exc)
                tg.cancel_scope.cancel()
    if fatal:
        # Raised here, outside the task group, so that it reaches the user as itself: one
        # line and exit 2, not an ExceptionGroup's traceback.
        raise fatal[0]
    counts = ledger.counts()
    if timed_out:
        print(
            f"aio88: {timed_out} task(s) still running at --timeout {args.timeout:g}s; they stay "
            "in the ledger: rerun the same command to poll and download them",
            file=sys.stderr,
        )
    printer.summary(
        jobs=sum(counts.values()),
        **{state: counts[state] for state in sorted(counts)},
        timed_out=timed_out,
        seconds=round(time.monotonic() - tally.started, 1),
        bytes=tally.bytes,
        files=str(videos),
        ledger=str(ledger.path),
    )
    return EXIT_OK if counts["downloaded"] == sum(counts.values()) else EXIT_FAILED


def ledger_status(folder: Path, printer: Printer, *, show_all: bool = False) -> int:
    """``aio88 run --status DIR``: summarise a ledger without touching the network."""
    if not (folder / Ledger.FILE_NAME).exists():
        raise UsageError(f"no ledger in {folder} (looked for {Ledger.FILE_NAME})")
    ledger = Ledger(folder, lock=False)  # reading only: a run may be going on
    try:
        for job in ledger.jobs():
            if job.state != "downloaded":
                printer.event(
                    job.state, key=job.key, line=job.line, id=job.task_id, error=job.error
                )
        problems = anyio.run(_check_files, ledger)
        for job, problem in problems:
            printer.event(problem, key=job.key, id=job.task_id, path=job.path)
        if show_all:
            for job in ledger.jobs():
                printer.event("job", key=job.key, id=job.task_id, state=job.state, path=job.path)
        counts = ledger.counts()
    finally:
        ledger.close()
    found = Counter(problem for _, problem in problems)
    printer.summary(
        jobs=sum(counts.values()),
        **{state: counts[state] for state in sorted(counts)},
        **{problem: found[problem] for problem in sorted(found)},
    )
    settled = counts["downloaded"] == sum(counts.values()) and not problems
    return EXIT_OK if settled else EXIT_FAILED


async def _check_files(ledger: Ledger) -> list[tuple[Job, str]]:
    """Downloaded jobs whose file is ``missing`` or ``changed`` (size or SHA-256)."""

    def check(job: Job) -> str | None:
        path = Path(job.path or "")
        if not path.is_file():
            return "missing"
        if job.size is None or job.sha256 is None:
            return None  # recorded by an aio88 that kept no facts: nothing to compare
        size, digest = file_facts(path)
        return "changed" if (size, digest) != (job.size, job.sha256) else None

    problems = []
    for job in ledger.jobs("downloaded"):
        problem = await anyio.to_thread.run_sync(check, job)
        if problem is not None:
            problems.append((job, problem))
    return problems


# -- single tasks ------------------------------------------------------------------------


def _resource(client: Client, kind: str) -> Any:
    return client.videos if kind == "video" else client.generations


def _task_fields(task: GenerationTask | Video) -> dict[str, Any]:
    error = task.error
    return {
        "id": task.id,
        "status": task.status.value,
        "raw_status": task.raw_status,
        "progress": task.progress,
        "url": task.url,
        "error": None if error is None else error.message,
    }


async def create(args: argparse.Namespace, printer: Printer) -> int:
    """``aio88 create``: create one task and print its id."""
    fields: dict[str, Any] = {"prompt": args.prompt}
    if args.model:
        fields["model"] = args.model
    for name in ("seconds", "size", "duration"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.kind == "generation" and "model" not in fields:
        raise UsageError("a generation needs --model (e.g. kling-v1)")
    if args.kind == "video" and "duration" in fields:
        raise UsageError("--duration is for generations; videos take --seconds")
    if args.kind == "generation" and "seconds" in fields:
        raise UsageError("--seconds is for videos; generations take --duration")
    async with Client() as client:
        task = await _resource(client, args.kind).create(**fields)
    printer.event("created", kind=args.kind, **_task_fields(task))
    return EXIT_OK


async def status(args: argparse.Namespace, printer: Printer) -> int:
    """``aio88 status ID``: print a task's state."""
    async with Client() as client:
        task = await _resource(client, args.kind).retrieve(args.id)
    printer.event("status", kind=args.kind, **_task_fields(task))
    return EXIT_FAILED if task.status is Status.FAILED else EXIT_OK


async def wait(args: argparse.Namespace, printer: Printer) -> int:
    """``aio88 wait ID``: wait for a task; optionally download it."""
    async with Client() as client:
        async with client.watch([args.id], kind=args.kind, timeout=args.timeout) as outcomes:
            [outcome] = [o async for o in outcomes]
        if outcome.ok and args.download and outcome.task is not None:
            path = await client.download(outcome.task, args.download)
            outcome = Outcome(outcome.id, outcome.kind, outcome.task, None, path)
    fields: dict[str, Any] = (
        _task_fields(outcome.task) if outcome.task is not None else {"id": outcome.id}
    )
    if outcome.error is not None:
        fields["error"] = _error_text(outcome.error)
    printer.event("done" if outcome.ok else "failed", path=outcome.path, **fields)
    return EXIT_OK if outcome.ok else EXIT_FAILED


async def download(args: argparse.Namespace, printer: Printer) -> int:
    """``aio88 download ID DEST``: save a finished video."""
    async with Client() as client:
        if args.kind == "generation":
            task = await client.generations.retrieve(args.id)
            path = await client.download(task, args.dest, overwrite=args.overwrite)
        else:
            path = await client.videos.download(args.id, args.dest, overwrite=args.overwrite)
    printer.event("downloaded", id=args.id, path=path, bytes=_size_of(path))
    return EXIT_OK


# -- the command line --------------------------------------------------------------------


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``aio88`` command line."""
    parser = argparse.ArgumentParser(
        prog="aio88",
        description="Create, poll and download 88API videos. Reads AIO88_API_KEY and "
        "AIO88_BASE_URL. Exit codes: 0 all ok, 1 some tasks failed, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"aio88 {__version__}")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print JSON lines")
    output.add_argument("--quiet", action="store_true", help="print only the summary and errors")
    kinds = argparse.ArgumentParser(add_help=False)
    kinds.add_argument(
        "--kind",
        choices=["video", "generation"],
        default="video",
        help="/v1/videos (video, default) or /v1/video/generations (generation)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", parents=[output], help="the whole job on an in-process emulator")
    p.add_argument("--tasks", type=_positive_int, default=50, help="tasks to create (default 50)")
    p.add_argument("--concurrency", type=_positive_int, default=16, help="polls in flight (16)")
    p.add_argument("--dialect", choices=["docs", "newapi"], default="newapi")
    p.add_argument("--out", default="aio88-demo-videos", help="where the videos go")
    p.add_argument("--failure-rate", type=_rate, default=0.0, help="share of tasks that fail (0)")
    p.add_argument("--rate-429", type=_rate, default=0.0, help="share of requests answered 429")
    p.add_argument("--drop-rate", type=_rate, default=0.0, help="share of connections dropped")
    p.add_argument(
        "--duration",
        type=float,
        nargs=2,
        default=(2.0, 10.0),
        metavar=("LOW", "HIGH"),
        help="seconds each emulated task takes, drawn uniformly (2 10)",
    )
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("run", parents=[output], help="a crash-safe batch from a JSONL file")
    p.add_argument(
        "jobs",
        nargs="?",
        help="JSONL: one job per line, e.g. "
        '{"kind": "video", "model": "sora-2", "prompt": "...", "key": "fox-1"}',
    )
    p.add_argument("--out", help="folder for videos/ and the ledger")
    p.add_argument("--status", metavar="DIR", help="summarise the ledger in DIR and exit")
    p.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_POLL_CONCURRENCY,
        help="polls in flight (64)",
    )
    p.add_argument(
        "--create-concurrency", type=_positive_int, default=8, help="creates in flight (8)"
    )
    p.add_argument("--rate-limit", type=float, default=None, help="requests per second, all told")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per task (3600)")
    p.add_argument(
        "--resend-unconfirmed",
        action="store_true",
        help="create again the jobs whose create may have reached the server",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="accept edited job lines (same key) for jobs not sent yet",
    )
    p.add_argument(
        "--all", action="store_true", help="with --status: list every job (key, task, file)"
    )

    p = sub.add_parser("create", parents=[output, kinds], help="create one task")
    p.add_argument("--prompt", required=True)
    p.add_argument("--model")
    p.add_argument("--seconds", help="video duration (videos)")
    p.add_argument("--size", help="WIDTHxHEIGHT")
    p.add_argument("--duration", type=float, help="seconds (generations)")

    p = sub.add_parser("status", parents=[output, kinds], help="print a task's state")
    p.add_argument("id")

    p = sub.add_parser("wait", parents=[output, kinds], help="wait for a task to finish")
    p.add_argument("id")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT_TIMEOUT,
        help=f"seconds ({DEFAULT_WAIT_TIMEOUT:g})",
    )
    p.add_argument("--download", metavar="DEST", help="save the video here when it succeeds")

    p = sub.add_parser("download", parents=[output, kinds], help="save a finished video")
    p.add_argument("id")
    p.add_argument("dest")
    p.add_argument("--overwrite", action="store_true")

    sub.add_parser(
        "emulator",
        help="serve an emulated 88API (Ctrl-C stops); see `aio88 emulator --help`",
        add_help=False,
    )
    return parser


COMMANDS = {
    "demo": demo,
    "run": run_batch,
    "create": create,
    "status": status,
    "wait": wait,
    "download": download,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aio88`` command; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["emulator"]:
        # Its options are the emulator's own (python -m aio88.testing --help).
        from .testing.__main__ import main as emulator_main

        return emulator_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    printer = Printer(json_lines=args.json, quiet=args.quiet)
    try:
        if args.command == "run":
            if args.status:
                return ledger_status(Path(args.status), printer, show_all=args.all)
            if not args.jobs or not args.out:
                raise UsageError("aio88 run needs JOBS.jsonl and --out DIR (or --status DIR)")
        return int(anyio.run(COMMANDS[args.command], args, printer))
    except (UsageError, LedgerBusyError, ValueError) as exc:  # ValueError: no key, bad URL
        return printer.error(str(exc), EXIT_USAGE)
    except (AuthenticationError, PermissionDeniedError) as exc:
        return printer.error(f"the API refused the key: {exc}", EXIT_USAGE)
    except Aio88Error as exc:
        return printer.error(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return printer.error("interrupted; rerun the same command to resume", 130)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
