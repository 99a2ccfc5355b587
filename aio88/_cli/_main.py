"""The command line: its parser, the table of commands, and ``main``, which turns every
error into one line and an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import anyio

from .._config import (
    DEFAULT_LEASE,
    DEFAULT_POLL_CONCURRENCY,
    DEFAULT_WAIT_TIMEOUT,
    RECONCILE_SETTLE,
)
from .._errors import Aio88Error, AuthenticationError, PermissionDeniedError
from .._ledger import LedgerBusyError
from .._version import __version__
from ..testing._arguments import (
    OneLineParser,
    UsageError,
    positive_seconds,
    rate,
    seconds,
    whole_number,
)
from ._demo import demo
from ._output import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Printer
from ._run import ledger_status, run_batch
from ._task import create, download, status, wait


def build_parser() -> argparse.ArgumentParser:
    """The ``aio88`` command line."""
    parser = OneLineParser(
        prog="aio88",
        description="Create, poll and download 88API videos. Reads AIO88_API_KEY and "
        "AIO88_BASE_URL. Exit codes: 0 all ok, 1 some tasks failed or not settled, 2 usage "
        "or configuration error, 130 interrupted (143 for SIGTERM).",
    )
    parser.add_argument("--version", action="version", version=f"aio88 {__version__}")
    output = OneLineParser(add_help=False)
    output.add_argument(
        "--json", action="store_true", help="print JSON lines (numbers as numbers, errors too)"
    )
    amount = output.add_mutually_exclusive_group()
    amount.add_argument(
        "-q", "--quiet", action="store_true", help="print only failures and the summary"
    )
    amount.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="print every event, and log retries on stderr (-vv: every request)",
    )
    kinds = OneLineParser(add_help=False)
    kinds.add_argument(
        "--kind",
        choices=["video", "generation"],
        default="video",
        help="/v1/videos (video, default) or /v1/video/generations (generation)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", parents=[output], help="the whole job on an in-process emulator")
    p.add_argument("--tasks", type=whole_number(1), default=50, help="tasks to create (default 50)")
    p.add_argument("--concurrency", type=whole_number(1), default=16, help="polls in flight (16)")
    p.add_argument("--dialect", choices=["docs", "newapi"], default="newapi")
    p.add_argument("--out", default="aio88-demo-videos", help="where the videos go")
    p.add_argument("--failure-rate", type=rate, default=0.0, help="share of tasks that fail (0)")
    p.add_argument("--rate-429", type=rate, default=0.0, help="share of requests answered 429")
    p.add_argument("--drop-rate", type=rate, default=0.0, help="share of connections dropped")
    p.add_argument(
        "--duration",
        type=float,
        nargs=2,
        default=(2.0, 10.0),
        metavar=("LOW", "HIGH"),
        help="seconds each emulated task takes, drawn uniformly (2 10)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--callbacks",
        action="store_true",
        help="create the tasks with the callback_url of a receiver on loopback and poll "
        "only as a fallback; the summary compares the requests with polling alone",
    )

    p = sub.add_parser("run", parents=[output], help="a crash-safe batch from a JSONL file")
    p.add_argument(
        "jobs",
        nargs="?",
        help="JSONL: one job per line, e.g. "
        '{"kind": "video", "model": "sora-2", "prompt": "...", "key": "fox-1"}',
    )
    p.add_argument("--out", help="folder for videos/ and the ledger")
    p.add_argument(
        "--status",
        metavar="DIR",
        nargs="?",
        const="",
        help="summarise the ledger in DIR (or the --ledger batch) and exit",
    )
    p.add_argument(
        "--ledger",
        metavar="URL",
        help="a PostgreSQL ledger (postgresql://...) shared by workers on several machines "
        "(needs aio88[postgres]); default: ledger.sqlite3 in --out",
    )
    p.add_argument(
        "--lease",
        type=positive_seconds,
        default=DEFAULT_LEASE,
        metavar="S",
        help=f"with --ledger: seconds before a silent worker's tasks are taken over "
        f"({DEFAULT_LEASE:g})",
    )
    p.add_argument(
        "--concurrency",
        type=whole_number(1),
        default=DEFAULT_POLL_CONCURRENCY,
        help="polls in flight (64)",
    )
    p.add_argument(
        "--create-concurrency", type=whole_number(1), default=8, help="creates in flight (8)"
    )
    p.add_argument("--rate-limit", type=float, default=None, help="requests per second, all told")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per task (3600)")
    p.add_argument(
        "--resend-unconfirmed",
        action="store_true",
        help="create again the jobs whose create may have reached the server",
    )
    p.add_argument(
        "--reconcile",
        action="store_true",
        help="first look for each unconfirmed job's task in the dashboard's task list "
        "(needs AIO88_DASHBOARD_TOKEN and AIO88_USER_ID): adopt it, or create the job if "
        "there is none",
    )
    p.add_argument(
        "--settle",
        type=seconds,
        default=RECONCILE_SETTLE,
        metavar="S",
        help="with --reconcile: a job with no task listed stays unconfirmed until S seconds "
        f"after its last create's deadline ({RECONCILE_SETTLE:g})",
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


#: The function behind each command (``emulator`` runs apart, in ``main``).
COMMANDS = {
    "demo": demo,
    "run": run_batch,
    "create": create,
    "status": status,
    "wait": wait,
    "download": download,
}


def _refusal(error: AuthenticationError | PermissionDeniedError) -> str:
    """A 401 or 403 in words that say what to do: a key to fix, or a balance to top up."""
    if "quota" in f"{error.code} {error}".lower():
        return f"the account's quota is not enough ({error}): top up on 88API, then rerun"
    return f"the API refused the key: {error}"


def _log_to_stderr(level: int) -> None:
    """Show aio88's log (retries, then every request) on stderr, as ``aio88: ...`` lines."""
    log = logging.getLogger("aio88")
    log.setLevel(level)
    if any(handler.get_name() == "aio88-cli" for handler in log.handlers):
        return  # main() called again in one process (tests)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("aio88-cli")
    handler.setFormatter(logging.Formatter("aio88: %(message)s"))
    log.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aio88`` command; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["emulator"]:
        # Its options are the emulator's own (aio88 emulator --help).
        from ..testing.__main__ import main as emulator_main

        return emulator_main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return Printer(json_lines="--json" in argv).error(str(exc), EXIT_USAGE)
    printer = Printer(
        json_lines=args.json, quiet=args.quiet, verbose=args.verbose, title=f"aio88 {args.command}"
    )
    if args.verbose:
        _log_to_stderr(logging.INFO if args.verbose == 1 else logging.DEBUG)
    try:
        if args.command == "run":
            if args.status is not None:
                folder = Path(args.status) if args.status else None
                return ledger_status(folder, printer, show_all=args.all, dsn=args.ledger)
            if not args.jobs or not args.out:
                raise UsageError("aio88 run needs JOBS.jsonl and --out DIR (or --status DIR)")
        return int(anyio.run(COMMANDS[args.command], args, printer))
    except (UsageError, LedgerBusyError, ValueError) as exc:  # ValueError: no key, bad URL
        return printer.error(str(exc), EXIT_USAGE)
    except (AuthenticationError, PermissionDeniedError) as exc:
        return printer.error(_refusal(exc), EXIT_USAGE)
    except Aio88Error as exc:
        return printer.error(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return printer.error("interrupted; rerun the same command to resume", EXIT_INTERRUPTED)
    finally:
        printer.close()  # the live panel, if any, unpinned on every way out
