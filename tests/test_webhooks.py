"""Verifying 88API's signed task callbacks exactly as its server signs them: the test
vector, every way a forged, tampered, stale, future or malformed callback is refused, key
rotation and normalisation, and messages that never hold a key or the body."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from aio88 import CallbackEvent, Client, Status, WebhookVerificationError
from aio88._webhooks import normalize_key, unwrap

KEY = "sk-callbacksigningkey"
STAMP = 1760000000
BODY = (
    b'{"id":"evt_task_abc_completed","type":"video.completed","created_at":1760000000,'
    b'"data":{"task_id":"task_abc","model":"sora-2","status":"completed","progress":"100%",'
    b'"output_url":"https://assets.example/media/x.mp4","created_at":1759999900,'
    b'"completed_at":1759999990}}'
)
VECTOR = "sha256=dbe8d9bad77e927d52fd69c146b624b46672606a83d430ff6d98916e4f682518"


def headers(
    signature: str = VECTOR, stamp: int = STAMP, extra: dict[str, str] | None = None
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "NewAPI-Task-Callback/1.0",
        "X-NewAPI-Event": "video.completed",
        "X-NewAPI-Delivery": "evt_task_abc_completed",
        "X-NewAPI-Timestamp": str(stamp),
        "X-NewAPI-Signature": signature,
        **(extra or {}),
    }


def sign(body: bytes, stamp: int, key: str = KEY) -> str:
    secret = ("sk-" + normalize_key(key)).encode()
    return "sha256=" + hmac.new(secret, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()


def test_the_servers_test_vector_verifies() -> None:
    event = Client(KEY).webhooks.unwrap(BODY, headers(), tolerance=None)
    assert event == CallbackEvent(
        id="evt_task_abc_completed",
        type="video.completed",
        created_at=1760000000,
        task_id="task_abc",
        status=Status.SUCCEEDED,
        raw_status="completed",
        progress=100,
        url="https://assets.example/media/x.mp4",
        error=None,
        model="sora-2",
    )
    assert sign(BODY, STAMP) == VECTOR


def test_header_names_in_any_case_and_the_timestamp_window() -> None:
    lowered = {k.lower(): v for k, v in headers().items()}
    assert unwrap(BODY, lowered, keys=[KEY], now=STAMP + 299).task_id == "task_abc"
    assert unwrap(BODY, lowered, keys=[KEY], now=STAMP - 299).task_id == "task_abc"


@pytest.mark.parametrize(
    ("body", "given", "now", "why"),
    [
        (BODY.replace(b"task_abc", b"task_xyz"), headers(), STAMP, "does not match"),
        (BODY, headers(stamp=STAMP + 1), STAMP, "does not match"),  # the timestamp is signed too
        (BODY, headers(signature=VECTOR.upper().replace("SHA256", "sha256")), STAMP, "malformed"),
        (BODY, headers(signature=VECTOR[7:]), STAMP, "malformed"),
        (BODY, headers(signature="sha256=" + "0" * 63), STAMP, "malformed"),
        (BODY, headers(signature="sha1=" + "0" * 40), STAMP, "malformed"),
        (BODY, headers(), STAMP + 301, "old"),  # a replay, five minutes on
        (BODY, headers(), STAMP - 301, "ahead"),
        (BODY, {"Content-Type": "application/json"}, STAMP, "missing"),
        (BODY, headers(extra={"X-NewAPI-Event": "video.failed"}), STAMP, "disagrees"),
        (BODY, headers(extra={"X-NewAPI-Delivery": "evt_other"}), STAMP, "disagrees"),
    ],
)
def test_what_is_refused(body: bytes, given: dict[str, str], now: int, why: str) -> None:
    with pytest.raises(WebhookVerificationError, match=why) as caught:
        unwrap(body, given, keys=[KEY], now=now)
    assert "callbacksigningkey" not in str(caught.value)
    assert "task_xyz" not in str(caught.value) and "assets.example" not in str(caught.value)
    assert caught.value.malformed == (why == "disagrees")


def test_another_key_is_refused_and_rotation_accepts_either() -> None:
    with pytest.raises(WebhookVerificationError, match="does not match"):
        Client("sk-someoneelse").webhooks.unwrap(BODY, headers(), tolerance=None)
    client = Client("sk-newkey")
    event = client.webhooks.unwrap(BODY, headers(), keys=["sk-newkey", KEY], tolerance=None)
    assert event.task_id == "task_abc"


@pytest.mark.parametrize(
    "held",
    [
        "sk-callbacksigningkey",
        "callbacksigningkey",
        "Bearer sk-callbacksigningkey",
        "sk-callbacksigningkey-channel7",
        "  sk-callbacksigningkey  ",
    ],
)
def test_keys_are_normalised_as_the_server_does(held: str) -> None:
    assert normalize_key(held) == "callbacksigningkey"
    assert unwrap(BODY, headers(), keys=[held], tolerance=None).task_id == "task_abc"


def test_a_signed_body_that_is_not_an_event_is_refused() -> None:
    for body in (
        b"not json",
        b'{"id":"x","type":"video.completed"}',
        b'{"id":"x","type":"video.deleted","created_at":1,"data":{"task_id":"t"}}',
    ):
        given = headers(signature=sign(body, STAMP), extra={"X-NewAPI-Delivery": "x"})
        with pytest.raises(WebhookVerificationError, match=r"not an event|unknown") as caught:
            unwrap(body, given, keys=[KEY], now=STAMP)
        assert caught.value.malformed  # signed by us, but not an event: a 400, not a 401


def test_a_failed_event_carries_its_error() -> None:
    body = (
        b'{"id":"evt_task_abc_failed","type":"video.failed","created_at":1760000000,'
        b'"data":{"task_id":"task_abc","status":"failed","progress":"40%",'
        b'"error":{"message":"content policy","code":"blocked"}}}'
    )
    given = headers(
        signature=sign(body, STAMP),
        extra={"X-NewAPI-Event": "video.failed", "X-NewAPI-Delivery": "evt_task_abc_failed"},
    )
    event = unwrap(body, given, keys=[KEY], now=STAMP)
    assert event.status is Status.FAILED and event.error == "content policy"
    assert event.progress == 40 and event.url is None


def test_the_webhooks_repr_never_shows_the_key() -> None:
    assert "callbacksigningkey" not in repr(Client(KEY).webhooks)
