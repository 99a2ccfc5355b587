"""aio88: the asyncio-native client for the 88API video-generation gateway.

::

    from aio88 import Client

    async with Client() as client:
        task = await client.generations.create(model="kling-v1", prompt="a red fox")
        task = await client.generations.wait(task.id)
"""

from types import FunctionType

from ._billing import CreateFate, create_fate
from ._client import Client
from ._clock import Clock
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
    WebhookVerificationError,
)
from ._models import (
    FileInput,
    GenerationTask,
    Kind,
    Status,
    Task,
    TaskError,
    Video,
    VideoMetadata,
)
from ._outcome import Outcome, PollerStats
from ._poll import Poller
from ._resources import Generations, Videos
from ._schedule import Schedule
from ._stream import VideoContent
from ._version import __version__
from ._watch import Watch
from ._webhooks import CallbackEvent, Webhooks

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "Aio88Error",
    "AuthenticationError",
    "BadRequestError",
    "CallbackEvent",
    "Client",
    "Clock",
    "ConflictError",
    "CreateFate",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "DownloadError",
    "FileInput",
    "GenerationTask",
    "Generations",
    "InternalServerError",
    "Kind",
    "NotFoundError",
    "Outcome",
    "PermissionDeniedError",
    "Poller",
    "PollerStats",
    "RateLimitError",
    "RetryPolicy",
    "Schedule",
    "Status",
    "Task",
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
    "WebhookVerificationError",
    "Webhooks",
    "__version__",
    "create_fate",
]

# Present every public name as aio88.X (in reprs, tracebacks and docs), not aio88._module.X.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type | FunctionType) and _obj.__module__.startswith("aio88._"):
        _obj.__module__ = "aio88"
del _name, _obj, FunctionType
