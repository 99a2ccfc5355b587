"""What a failed create means for the bill: not created (send it again later), refused
for good, or unknown (sent, and the answer that would say is lost or says "billed, but no
id"). Decided from the server's code, as docs/billing.md explains; used by ``aio88 run``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._errors import APIConnectionError, APIStatusError

__all__ = ["BILLED_WITHOUT_ID", "CreateFate", "fate_of_failed_create"]

#: The one error new-api answers after the task was stored and charged (its settlement
#: failed): the task runs and is billed, but the answer carries no id.
BILLED_WITHOUT_ID = "task_billing_settlement_failed"

#: Complete answers that create nothing and may succeed later.
_TRANSIENT = frozenset({408, 429})


@dataclass(frozen=True)
class CreateFate:
    """Where a job goes after its create failed, and why, in words for the ledger."""

    state: Literal["pending", "rejected", "unconfirmed"]
    """``pending``: not created, safe to send again. ``rejected``: the API refused this
    request; sending it again would fail again. ``unconfirmed``: it may exist and be
    billed; only the dashboard's task list (or a callback) can tell."""
    why: str


def fate_of_failed_create(error: BaseException, *, sent: bool) -> CreateFate:
    """Classify a failed create.

    Args:
        error: What the create raised (a local error, an API answer, a lost connection).
        sent: Whether any of the request was written to a connection (the transport's
            :class:`~aio88._sending.SendMark`).
    """
    if not sent:
        return CreateFate("pending", f"not sent: {error}")
    if isinstance(error, APIStatusError):
        status = error.status_code
        if status in _TRANSIENT:
            return CreateFate("pending", f"HTTP {status}: nothing created; it will be sent again")
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
                "pending",
                f"HTTP {status} {error.code or 'error'}: not billed; it will be sent again",
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
