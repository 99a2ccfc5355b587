"""The emulator's command line: ``aio88 emulator --port 8088 --dialect newapi`` (or
``python -m aio88.testing ...``).

It prints how to connect, then (with ``--log``) one line per request and per callback
attempt on stdout, and
serves until Ctrl-C or SIGTERM, which end it with exit code 0: stopping is how a server's
run ends, not an interruption. Mistakes (a bad flag, a busy port) are one line on stderr
and exit code 2, as everywhere in the ``aio88`` command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from ._arguments import (
    OneLineParser,
    UsageError,
    positive_seconds,
    rate,
    seconds,
    whole_number,
)
from ._callbacks import CallbackDelivery
from ._emulator import Emulator
from ._faults import CallbackFaults, Faults
from ._requests import LoggedRequest
from ._stats import STATS_PATH

EXIT_USAGE = 2


def build_parser(prog: str = "aio88 emulator") -> argparse.ArgumentParser:
    """The command line of the emulator, named ``prog`` in its usage and errors."""
    parser = OneLineParser(
        prog=prog,
        description="Serve an emulated 88API on loopback until Ctrl-C (exit code 0). "
        "It prints the AIO88_BASE_URL and AIO88_API_KEY to connect with; "
        f"GET {STATS_PATH} answers its counts as JSON. Mistakes: one line, exit code 2.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=whole_number(0, 65535),
        default=8088,
        help="API port; 0 picks a free one (default 8088)",
    )
    parser.add_argument("--dialect", choices=["docs", "newapi"], default="docs")
    parser.add_argument(
        "--api-key", type=_token, default="sk-test", help="the key it accepts (default sk-test)"
    )
    parser.add_argument(
        "--dashboard-token",
        type=_token,
        default="dash-test",
        help="the dashboard access token its task list accepts, for `aio88 run --reconcile` "
        "(default dash-test)",
    )
    parser.add_argument(
        "--user-id", type=whole_number(1), default=1, help="the dashboard user id (default 1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--duration",
        type=positive_seconds,
        nargs=2,
        default=(5.0, 20.0),
        metavar=("LOW", "HIGH"),
        help="seconds a task takes, drawn uniformly (default 5 20)",
    )
    parser.add_argument("--failure-rate", type=rate, default=0.0, help="share of tasks that fail")
    parser.add_argument("--rate-429", type=rate, default=0.0, help="share of requests answered 429")
    parser.add_argument(
        "--retry-after", type=seconds, default=None, help="Retry-After of those 429s (none)"
    )
    parser.add_argument("--rate-500", type=rate, default=0.0, help="share answered 500")
    parser.add_argument("--drop-rate", type=rate, default=0.0, help="share of connections dropped")
    parser.add_argument("--truncate-rate", type=rate, default=0.0, help="share of bodies cut")
    parser.add_argument("--latency", type=seconds, default=0.0, help="seconds added per answer")
    parser.add_argument("--content-size", type=whole_number(1), default=None, help="serve N bytes")
    hooks = parser.add_argument_group(
        "signed callbacks",
        "a task created with a loopback callback_url gets a signed POST there when it ends; "
        "these faults are drawn per event",
    )
    hooks.add_argument("--callback-loss", type=rate, default=0.0, help="share of events never sent")
    hooks.add_argument(
        "--callback-duplicate", type=rate, default=0.0, help="share of events sent twice"
    )
    hooks.add_argument(
        "--callback-delay-rate", type=rate, default=0.0, help="share of events sent late"
    )
    hooks.add_argument(
        "--callback-delay", type=seconds, default=60.0, help="seconds they are late (60)"
    )
    hooks.add_argument(
        "--callback-reorder",
        type=rate,
        default=0.0,
        help="share of events held until a later one is sent",
    )
    hooks.add_argument(
        "--callback-hold", type=seconds, default=60.0, help="most seconds one is held (60)"
    )
    hooks.add_argument(
        "--callback-wrong-signature",
        type=rate,
        default=0.0,
        help="share of events signed with a wrong key",
    )
    hooks.add_argument(
        "--callback-time-scale",
        type=positive_seconds,
        default=1.0,
        metavar="X",
        help="multiply the callbacks' waits (retries from 10 s, delays, holds) by X (1)",
    )
    parser.add_argument(
        "--any-id", action="store_true", help="answer unknown ids as finished tasks (load tests)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON lines (the start, requests, errors)"
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--log",
        "-v",
        "--verbose",
        dest="log",
        action="store_true",
        help="print one line per request on stdout as it is answered",
    )
    amount.add_argument(
        "-q", "--quiet", action="store_true", help="print only the export line and errors"
    )
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse cannot check flag by flag."""
    low, high = args.duration
    if low > high:
        parser.error(f"argument --duration: LOW must not exceed HIGH, got {low:g} {high:g}")


class Output:
    """What the command prints: how to connect, the request log, and errors."""

    def __init__(self, *, json_lines: bool, quiet: bool = False, stream: TextIO | None = None):
        self.json = json_lines
        self.quiet = quiet
        self.stream = stream or sys.stdout
        self.on_closed: Callable[[], None] | None = None
        """Called once if stdout is closed under it (``| head``): the server stops."""

    def ready(self, emulator: Emulator) -> None:
        """The start: the URL and the key to connect with."""
        stats_url = f"{emulator.base_url}{STATS_PATH}"
        export = (
            f"export AIO88_BASE_URL={emulator.base_url} "
            f"AIO88_API_KEY={shlex.quote(emulator.api_key)} "
            f"AIO88_DASHBOARD_TOKEN={shlex.quote(emulator.dashboard_token)} "
            f"AIO88_USER_ID={emulator.user_id}"
        )
        if self.json:
            self._json(
                event="ready",
                dialect=emulator.dialect,
                base_url=emulator.base_url,
                api_key=emulator.api_key,
                dashboard_token=emulator.dashboard_token,
                user_id=emulator.user_id,
                media_url=emulator.media_url,
                stats_url=stats_url,
            )
        elif self.quiet:
            self._line(export)
        else:
            # The first line ends with the URL: scripts written for earlier versions read it.
            self._line(f"88API emulator ({emulator.dialect} dialect) at {emulator.base_url}")
            self._line(export)
            self._line(f"stats: curl {stats_url}; media origin {emulator.media_url}; Ctrl-C stops")

    def request(self, entry: LoggedRequest) -> None:
        """One answered request (``--log``)."""
        ms = round((entry.elapsed or 0.0) * 1000, 1)
        if self.json:
            self._json(
                event="request",
                time=round(time.time(), 3),
                origin=entry.origin,
                method=entry.method,
                path=entry.path,
                status=entry.status,
                fault=entry.fault,
                ms=ms,
            )
            return
        status = str(entry.status) if entry.status else "dropped"
        fault = f" fault={entry.fault}" if entry.fault else ""
        clock = time.strftime("%H:%M:%S")
        self._line(f"{clock} {entry.method} {entry.path} {status}{fault} {ms:g}ms")

    def callback(self, delivery: CallbackDelivery) -> None:
        """One callback attempt answered, or one event lost (``--log``)."""
        if self.json:
            self._json(
                event="callback",
                time=round(time.time(), 3),
                type=delivery.event,
                task_id=delivery.task_id,
                url=delivery.url,
                attempt=delivery.attempt,
                status=delivery.status,
                faults=list(delivery.faults),
                ms=round((delivery.elapsed or 0.0) * 1000, 1),
            )
            return
        clock = time.strftime("%H:%M:%S")
        faults = f" fault={','.join(delivery.faults)}" if delivery.faults else ""
        if not delivery.sent:
            why = "lost" if delivery.faults else "skipped (not loopback)"
            self._line(f"{clock} CALLBACK {delivery.event} {delivery.task_id} {why}{faults}")
            return
        status = str(delivery.status) if delivery.status else f"failed ({delivery.error})"
        self._line(
            f"{clock} CALLBACK {delivery.event} {delivery.task_id} -> {delivery.url} "
            f"{status} attempt {delivery.attempt}{faults}"
        )

    def error(self, message: str, code: int = EXIT_USAGE) -> int:
        """A fatal error: one line on stderr, and with ``--json`` an ``error`` event on
        stdout too. Returns ``code``."""
        print(f"aio88: error: {message}", file=sys.stderr, flush=True)
        if self.json:
            self._json(event="error", message=message, exit_code=code)
        return code

    def _json(self, **fields: Any) -> None:
        self._line(json.dumps(fields))

    def _line(self, text: str) -> None:
        try:
            # Flushed at once: a log is read live, and by tests waiting for a line.
            print(text, file=self.stream, flush=True)
        except (BrokenPipeError, ValueError, OSError):
            # The reader left (or stdout was closed under us: ValueError): point stdout at
            # nothing (so the exit flush cannot fail too) and stop, as a command piped into
            # `head` does.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
            closed, self.on_closed = self.on_closed, None
            if closed is not None:
                closed()


def _token(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def callback_faults(args: argparse.Namespace) -> CallbackFaults:
    """The callback faults the command line asks for."""
    return CallbackFaults(
        loss_rate=args.callback_loss,
        duplicate_rate=args.callback_duplicate,
        delay_rate=args.callback_delay_rate,
        delay=args.callback_delay,
        reorder_rate=args.callback_reorder,
        hold=args.callback_hold,
        wrong_signature_rate=args.callback_wrong_signature,
    )


def _bind_error(exc: OSError, host: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} is in use (another process listens on {host}:{port}); "
            "pass --port 0 for a free one"
        )
    return f"cannot listen on {host}:{port} ({exc.strerror or exc})"


async def serve(args: argparse.Namespace, output: Output) -> None:
    """Start the emulator and serve until SIGINT or SIGTERM.

    Raises:
        UsageError: when it cannot listen where asked.
    """
    # Handlers first, before the ready line: a process started in the background by a
    # non-interactive shell inherits SIGINT as ignored, and a signal sent as soon as the
    # ready line is read must not be lost.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform
            loop.add_signal_handler(signum, stop.set)
    output.on_closed = stop.set
    faults = Faults(
        rate_429=args.rate_429,
        retry_after=args.retry_after,
        rate_500=args.rate_500,
        drop_rate=args.drop_rate,
        truncate_rate=args.truncate_rate,
        latency=args.latency,
    )
    emulator = Emulator(
        api_key=args.api_key,
        dashboard_token=args.dashboard_token,
        user_id=args.user_id,
        dialect=args.dialect,
        host=args.host,
        port=args.port,
        seed=args.seed,
        duration=tuple(args.duration),
        failure_rate=args.failure_rate,
        faults=faults,
        content_size=args.content_size,
        any_id=args.any_id,
        on_answer=output.request if args.log else None,
        callback_faults=callback_faults(args),
        callback_time_scale=args.callback_time_scale,
        on_callback=output.callback if args.log else None,
    )
    try:
        try:
            await emulator.start()
        except OSError as exc:
            raise UsageError(_bind_error(exc, args.host, args.port)) from None
        output.ready(emulator)
        await stop.wait()
    finally:
        await emulator.aclose()


def main(argv: list[str] | None = None, *, prog: str = "aio88 emulator") -> int:
    """Entry point; returns the exit code (0 when stopped, 2 for a usage error)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
        _check(parser, args)
    except UsageError as exc:
        return Output(json_lines="--json" in argv).error(str(exc))
    output = Output(json_lines=args.json, quiet=args.quiet)
    try:
        asyncio.run(serve(args, output))
    except UsageError as exc:
        return output.error(str(exc))
    except KeyboardInterrupt:
        pass  # Ctrl-C before the handlers were in place: the same clean stop
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m aio88.testing"))
