"""Reading what a client sends: the log entry of each request, the key check, and the
fields and files of a create."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import BodyPartReader, web

__all__ = ["CreateRequest", "LoggedRequest", "Refusal", "authorized", "log_entry", "read_create"]


@dataclass
class LoggedRequest:
    """One request the emulator received (either origin)."""

    at: float
    """Real monotonic time of arrival (``time.monotonic()``), for measuring gaps."""
    clock: float
    """The emulator's clock at arrival (differs from ``at`` under a manual clock)."""
    origin: Literal["api", "media"]
    """The origin it reached: the API, or the media origin that serves finished files."""
    method: str
    path: str
    query: dict[str, str]
    """The query parameters (the first value of a repeated one)."""
    headers: dict[str, str]
    """The request headers, names in lower case."""
    status: int = 0
    """The status answered; 0 while in flight or when the connection was dropped."""
    fault: str | None = None
    """The injected fault, if one was applied."""
    elapsed: float | None = None
    """Seconds from arrival to answer (to the end of a streamed body); ``None`` while in
    flight."""

    @property
    def authorization(self) -> str | None:
        """The ``Authorization`` header it carried, if any."""
        return self.headers.get("authorization")


def log_entry(
    request: web.Request, origin: Literal["api", "media"], clock: Callable[[], float]
) -> LoggedRequest:
    """A log entry for ``request`` as it arrives (status and fault filled in later)."""
    return LoggedRequest(
        at=time.monotonic(),
        clock=clock(),
        origin=origin,
        method=request.method,
        path=request.path,
        query=dict(request.query),
        headers={k.lower(): v for k, v in request.headers.items()},
    )


def authorized(request: web.Request, api_key: str) -> bool:
    """Whether ``request`` carries ``api_key`` as a bearer token."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return False
    given = header[len("Bearer ") :].strip()
    # 88API accepts its keys with or without the sk- prefix.
    bare = api_key.removeprefix("sk-")
    return given.removeprefix("sk-") == bare


@dataclass
class CreateRequest:
    """The parsed body of a create (or remix)."""

    fields: dict[str, Any]
    """Its fields (multipart ``metadata`` decoded from JSON); ``prompt`` is a non-blank str."""
    files: dict[str, Any] = field(default_factory=dict)
    """Uploaded files: field name -> (filename, size, content type)."""


@dataclass(frozen=True)
class Refusal:
    """Why a create body was refused: the message, ``code`` and ``param`` of a 400."""

    message: str
    param: str | None = None
    code: str = "invalid_request"


async def read_create(request: web.Request) -> CreateRequest | Refusal:
    """The create body (JSON or multipart), or why it is refused."""
    files: dict[str, Any] = {}
    if request.content_type == "multipart/form-data":
        fields: dict[str, Any] = {}
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            if part.filename:
                # Only its size is kept: tests check what arrived, not the pixels.
                data = await part.read()
                files[part.name] = (part.filename, len(data), part.headers.get("Content-Type"))
            else:
                fields[part.name] = await part.text()
        metadata = fields.get("metadata")
        if isinstance(metadata, str):
            try:
                fields["metadata"] = json.loads(metadata)
            except ValueError:
                return Refusal("metadata must be a JSON string")
    else:
        try:
            decoded: object = await request.json()
        except ValueError:
            return Refusal("invalid JSON body")
        if not isinstance(decoded, dict):
            return Refusal("body must be an object")
        fields = decoded
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return Refusal("prompt is required", param="prompt")
    return CreateRequest(fields, files)
