"""What a failed create means for the bill: not created (send it again later), refused
for good, or unknown (sent, and the answer that would say is lost or says "billed, but no
id"). Decided from the server's code, as docs/billing.md explains; used by ``aio88 run``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._errors import APIConnectionError, APIStatusError

__all__ = ["BILLED_WITHOUT_ID", "CreateFate", "create_fate"]

#: The one error new-api answers after the task was stored and charged (its settlement
#: failed): the task runs and is billed, but the answer carries no id.
BILLED_WITHOUT_ID = "task_billing_settlement_failed"

#: What a create raises before anything is sent: a bad argument, a file it cannot read.
#: (Not every OSError: a TimeoutError is one, and it may come after the request left.)
_LOCAL_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)

#: Complete answers that create nothing and may succeed later.
_TRANSIENT = frozenset({408, 429})


@dataclass(frozen=True)
class CreateFate:
    """Where a job goes after its create failed, and why, in words for the ledger."""

    state: Literal["not_created", "rejected", "unconfirmed"]
    """``not_created``: nothing was made or billed; safe to send again (later).
    ``rejected``: the API refused this request (nothing billed); sending it again would fail
    again. ``unconfirmed``: it may exist and be billed; only the dashboard's task list (or
    a callback) can tell, so do not send it again blindly."""
    why: str


def create_fate(error: BaseException, *, sent: bool | None = None) -> CreateFate:
    """What a failed create means: not created, rejected, or unconfirmed (maybe billed).

    Use it where a create raised, before deciding to send it again::

        try:
            video = await client.videos.create(prompt=prompt)
        except aio88.Aio88Error as exc:
            if aio88.create_fate(exc).state == "unconfirmed":
                ...  # it may exist and be billed: record it, do not resend blindly

    Args:
        error: What the create raised (an API answer, a lost connection, a local error).
        sent: Whether any of the request was written to a connection. By default:
            ``APIConnectionError.request_sent`` (exact for the client's own sessions),
            ``False`` for a local error raised before sending (a bad argument, a file that
            cannot be read), ``True`` for anything else: a timeout or a cancellation of
            the caller's may have come after the request left.
    """
    if sent is None:
        if isinstance(error, APIConnectionError):
            sent = error.request_sent
        else:
            sent = not isinstance(error, _LOCAL_ERRORS)
    if not sent:
        return CreateFate("not_created", f"not sent: {error}")
    if isinstance(error, APIStatusError):
        status = error.status_code
        if status in _TRANSIENT:
            return CreateFate("not_created", f"HTTP {status}: nothing created; send it later")
        if status >= 500:
            if error.code == BILLED_WITHOUT_ID:
                return CreateFate(
                    "unconfirmed",
                    f"HTTP {status} {BILLED_WITHOUT_ID}: the server stored and billed the "
                    "task but did not say its id",
                )
            if not _refunded_shape(error):
                # Not one of new-api's refunded error answers (a proxy's 502/504, its
                # crash handler, another gateway's JSON, nothing): the create may have gone
                # through behind it.
                return CreateFate(
                    "unconfirmed", f"HTTP {status} without new-api's error body: unknown"
                )
            # new-api refunds every other error answer of a create (docs/billing.md).
            return CreateFate(
                "not_created", f"HTTP {status} {error.code or 'error'}: not billed; send it later"
            )
        return CreateFate("rejected", str(error))
    if isinstance(error, APIConnectionError):
        return CreateFate("unconfirmed", f"sent, and the answer was lost: {error}")
    return CreateFate("unconfirmed", f"sent, then {type(error).__name__}: {error}")


def _refunded_shape(error: APIStatusError) -> bool:
    """Whether a 5xx is one of new-api's own error answers, which it refunds: the task
    layer's ``{code, message, data}`` (a code) or the middleware's ``new_api_error``
    (before any upstream call). Its crash handler (``new_api_panic``) may come after the
    task was stored, so it is not one."""
    if error.type == "new_api_panic":
        return False
    return bool(error.code) or error.type == "new_api_error"
