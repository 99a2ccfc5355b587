"""Reading tasks from the API: where each kind lives, decoding an answer, the poll hint.

Shared by the resources (``retrieve``, creates) and the poller, which both take a
:class:`~aio88._http.Transport`; nothing here knows of the client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import msgspec

from ._errors import BODY_EXCERPT_CHARS, APIResponseValidationError
from ._http import Response, Transport
from ._models import Kind, ResponseShapeError, Task, decode_generation, decode_video, redact_text
from ._retry import parse_retry_after

__all__ = ["DECODERS", "PATHS", "decode_answer", "fetch_task", "poll_hint"]

TaskT = TypeVar("TaskT", bound=Task)

#: Where each kind of task lives.
PATHS: dict[Kind, str] = {"generation": "/v1/video/generations", "video": "/v1/videos"}
#: How each kind of task is decoded.
DECODERS: dict[Kind, Callable[[bytes], Task]] = {
    "generation": decode_generation,
    "video": decode_video,
}


def poll_hint(headers: Mapping[str, str]) -> float | None:
    """Seconds the server suggests before the next poll (``openai-poll-after-ms``, or
    ``Retry-After`` on a successful response), or ``None``."""
    raw = headers.get("openai-poll-after-ms")
    if raw is not None:
        try:
            return max(0.0, float(raw) / 1000.0)
        except ValueError:
            pass
    if "Retry-After" in headers:
        return parse_retry_after(headers, time.time())
    return None


def decode_answer(decode: Callable[[bytes], TaskT], resp: Response) -> TaskT:
    """A successful answer's task, or :class:`APIResponseValidationError` saying what came."""
    try:
        return decode(resp.body)
    except (msgspec.DecodeError, ResponseShapeError) as exc:
        # A task's body carries its signed link: never quoted whole.
        excerpt = redact_text(resp.body[:BODY_EXCERPT_CHARS].decode("utf-8", "replace"))
        raise APIResponseValidationError(
            f"HTTP {resp.status} with a body that is not a task ({exc}): {excerpt!r}",
            status_code=resp.status,
            request_id=resp.request_id,
            body_excerpt=excerpt,
        ) from exc


async def fetch_task(transport: Transport, kind: Kind, task_id: str) -> tuple[Task, float | None]:
    """One GET of a task (``task_id`` already checked), and the server's poll-after hint.

    The task may be about another id than the one asked for: callers check with
    ``task.answers_for(task_id)``.
    """
    resp = await transport.request("GET", f"{PATHS[kind]}/{task_id}")
    return decode_answer(DECODERS[kind], resp), poll_hint(resp.headers)
