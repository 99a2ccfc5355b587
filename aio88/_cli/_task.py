"""The one-task commands: ``create``, ``status``, ``wait`` and ``download`` (the last two
with a spinner or a byte bar on a terminal)."""

from __future__ import annotations

import argparse
from typing import Any

from .._client import Client
from .._models import GenerationTask, Status, Video
from .._outcome import Outcome
from ..testing._arguments import UsageError
from ._api import api_client
from ._output import EXIT_FAILED, EXIT_OK, Printer, error_text, size_of


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
    async with api_client() as client:
        task = await _resource(client, args.kind).create(**fields)
    printer.result("created", kind=args.kind, **_task_fields(task))
    return EXIT_OK


async def status(args: argparse.Namespace, printer: Printer) -> int:
    """``aio88 status ID``: print a task's state."""
    async with api_client() as client:
        task = await _resource(client, args.kind).retrieve(args.id)
    printer.result("status", kind=args.kind, **_task_fields(task))
    return EXIT_FAILED if task.status is Status.FAILED else EXIT_OK


async def wait(args: argparse.Namespace, printer: Printer) -> int:
    """``aio88 wait ID``: wait for a task; optionally download it."""
    async with api_client() as client:
        with printer.activity(args.id) as show:
            async with client.watch(
                [args.id], kind=args.kind, timeout=args.timeout, on_update=show.task
            ) as outcomes:
                [outcome] = [o async for o in outcomes]
        if outcome.ok and args.download and outcome.task is not None:
            with printer.activity(f"{args.id} downloading", download=True) as show:
                path = await client.download(outcome.task, args.download, on_progress=show.bytes)
            outcome = Outcome(outcome.id, outcome.kind, outcome.task, None, path)
    fields: dict[str, Any] = (
        _task_fields(outcome.task) if outcome.task is not None else {"id": outcome.id}
    )
    if outcome.error is not None:
        fields["error"] = error_text(outcome.error)
    printer.result("done" if outcome.ok else "failed", path=outcome.path, **fields)
    return EXIT_OK if outcome.ok else EXIT_FAILED


async def download(args: argparse.Namespace, printer: Printer) -> int:
    """``aio88 download ID DEST``: save a finished video."""
    async with api_client() as client:
        with printer.activity(f"{args.id} downloading", download=True) as show:
            if args.kind == "generation":
                task = await client.generations.retrieve(args.id)
                path = await client.download(
                    task, args.dest, overwrite=args.overwrite, on_progress=show.bytes
                )
            else:
                path = await client.videos.download(
                    args.id, args.dest, overwrite=args.overwrite, on_progress=show.bytes
                )
    printer.result("downloaded", id=args.id, path=path, bytes=size_of(path))
    return EXIT_OK
