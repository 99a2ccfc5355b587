"""The jobs of ``aio88 run``: a JSONL file read and checked, and each job's create."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._client import Client
from .._ledger import Job
from .._models import GenerationTask, Video
from ..testing._arguments import UsageError

#: Fields a job line may carry for each kind; anything else goes as ``extra_body``.
_VIDEO_FIELDS = {
    "model",
    "prompt",
    "seconds",
    "size",
    "input_reference",
    "metadata",
    "callback_url",
}
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
        if "callback_url" in fields:
            _check_callback_url(fields["callback_url"], where)
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


def _check_callback_url(value: object, where: str) -> None:
    """A job's ``callback_url`` must be an absolute http(s) URL: the gateway posts to it,
    and a typo found after the create has been paid for cannot be mended."""
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
        raise UsageError(
            f'{where}: "callback_url" must be an http:// or https:// URL, not {value!r}'
        )
    if not urlsplit(value).hostname:
        raise UsageError(f'{where}: "callback_url" {value!r} has no host')


def _create_kwargs(job: Job) -> dict[str, Any]:
    known = _VIDEO_FIELDS if job.kind == "video" else _GENERATION_FIELDS
    kwargs = {k: v for k, v in job.request.items() if k in known}
    extra = {k: v for k, v in job.request.items() if k not in known}
    if extra:
        kwargs["extra_body"] = extra
    if "input_reference" in kwargs:
        kwargs["input_reference"] = Path(kwargs["input_reference"])
    return kwargs


async def create_job(client: Client, job: Job) -> GenerationTask | Video:
    """Send a job's create: one request to /v1/videos or /v1/video/generations."""
    kwargs = _create_kwargs(job)
    if job.kind == "video":
        return await client.videos.create(**kwargs)
    return await client.generations.create(**kwargs)
