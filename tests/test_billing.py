"""What a failed create means for the bill (docs/billing.md): each answer new-api can give,
as the server's code says it, and a lost answer."""

from __future__ import annotations

import json

import pytest

from aio88 import APIConnectionError, APIResponseValidationError, APITimeoutError, create_fate
from aio88._billing import BILLED_WITHOUT_ID
from aio88._errors import make_status_error


def _answer(status: int, body: object) -> BaseException:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return make_status_error(status, raw, {})


def _shape_c(code: str) -> dict[str, object]:
    return {"code": code, "message": "...", "data": None}


@pytest.mark.parametrize(
    ("error", "state"),
    [
        # Complete refusals that create nothing and may pass later.
        (_answer(429, b""), "not_created"),
        (_answer(408, _shape_c("request_cancelled")), "not_created"),
        # new-api refunds every error answer of a create but one.
        (_answer(500, _shape_c("do_request_failed")), "not_created"),
        (_answer(500, _shape_c("task_insert_failed")), "not_created"),
        (_answer(502, _shape_c("plugin_submit_response_invalid")), "not_created"),
        (
            _answer(503, {"error": {"type": "new_api_error", "message": "no channel"}}),
            "not_created",
        ),
        # Not new-api's refunded answers: its crash handler, other gateways' JSON.
        (_answer(500, {"error": {"message": "boom", "type": "new_api_panic"}}), "unconfirmed"),
        (_answer(500, {"error": {"message": "failed", "type": "server_error"}}), "unconfirmed"),
        (_answer(504, {"message": "Endpoint request timed out"}), "unconfirmed"),
        (_answer(500, _shape_c(BILLED_WITHOUT_ID)), "unconfirmed"),
        # Not new-api's answer: a proxy's page, an empty body. It may have gone through.
        (_answer(502, b"<html><body>Bad Gateway</body></html>"), "unconfirmed"),
        (_answer(504, b""), "unconfirmed"),
        # The request itself is refused: sending it again fails again.
        (_answer(400, _shape_c("invalid_request")), "rejected"),
        (_answer(413, b"too big"), "rejected"),
        # Sent, the answer lost or unreadable.
        (APIConnectionError("cut"), "unconfirmed"),
        (APITimeoutError("slow"), "unconfirmed"),
        (APIResponseValidationError("not JSON", status_code=200, body_excerpt="<"), "unconfirmed"),
    ],
)
def test_a_sent_create(error: BaseException, state: str) -> None:
    fate = create_fate(error, sent=True)
    assert fate.state == state
    assert fate.why


@pytest.mark.parametrize(
    "error", [APIConnectionError("refused", request_sent=False), ValueError("bad file")]
)
def test_nothing_sent_is_not_created(error: BaseException) -> None:
    assert create_fate(error, sent=False).state == "not_created"
    assert create_fate(error).state == "not_created"  # what the error itself says


def test_the_billed_answer_says_so() -> None:
    fate = create_fate(_answer(500, _shape_c(BILLED_WITHOUT_ID)), sent=True)
    assert "billed" in fate.why and "id" in fate.why


@pytest.mark.parametrize("error", [TimeoutError(), OSError("disk"), RuntimeError("x")])
def test_a_timeout_or_anything_unknown_may_have_been_sent(error: BaseException) -> None:
    """A caller's own timeout (anyio.fail_after around a create) may come after the request
    left: unconfirmed, never "safe to send again"."""
    assert create_fate(error).state == "unconfirmed"
