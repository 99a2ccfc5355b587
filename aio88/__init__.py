"""aio88: the asyncio-native client for the 88API video-generation gateway.

::

    from aio88 import Client

    async with Client() as client:
        task = await client.generations.create(model="kling-v1", prompt="a red fox")
        task = await client.generations.wait(task.id)
"""

from __future__ import annotations

from ._client import Client
from ._config import DEFAULT_RETRY, DEFAULT_TIMEOUTS, RetryPolicy, Timeouts
from ._errors import (
    Aio88Error,
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    DownloadError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    TaskFailedError,
    UnprocessableEntityError,
    WaitTimeoutError,
)
from ._models import GenerationTask, Status, TaskError, Video, VideoMetadata
from ._poll import Clock, Outcome, Poller, PollerStats, Schedule, Watch
from ._resources import Generations, VideoContent, Videos
from ._version import __version__

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "Aio88Error",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "Clock",
    "ConflictError",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "DownloadError",
    "GenerationTask",
    "Generations",
    "InternalServerError",
    "NotFoundError",
    "Outcome",
    "PermissionDeniedError",
    "Poller",
    "PollerStats",
    "RateLimitError",
    "RetryPolicy",
    "Schedule",
    "Status",
    "TaskError",
    "TaskFailedError",
    "Timeouts",
    "UnprocessableEntityError",
    "Video",
    "VideoContent",
    "VideoMetadata",
    "Videos",
    "WaitTimeoutError",
    "Watch",
    "__version__",
]

# Present every public name as aio88.X (in reprs, tracebacks and docs), not aio88._module.X.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("aio88._"):
        _obj.__module__ = "aio88"
del _name, _obj
