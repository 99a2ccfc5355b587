"""Error bodies of every shape become the right exception with a useful message."""

from __future__ import annotations

import pytest

import aio88
from aio88 import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
    WaitTimeoutError,
)
from aio88._errors import make_status_error


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (422, UnprocessableEntityError),
        (429, RateLimitError),
        (500, InternalServerError),
        (502, InternalServerError),
        (503, InternalServerError),
        (418, APIStatusError),
    ],
)
def test_status_picks_the_class(status: int, cls: type[APIStatusError]) -> None:
    """The HTTP status decides the class."""
    error = make_status_error(status, b"", {})
    assert type(error) is cls
    assert error.status_code == status


def test_shape_a_documented_flat() -> None:
    """Shape A: {"code": null, "message", "param", "type"}."""
    body = (
        b'{"code":null,"message":"Task not found","param":"task_id","type":"invalid_request_error"}'
    )
    error = make_status_error(404, body, {"x-request-id": "req-1"})
    assert isinstance(error, NotFoundError)
    assert error.message == "HTTP 404 Not Found: Task not found"
    assert (error.param, error.type, error.code) == ("task_id", "invalid_request_error", None)
    assert error.request_id == "req-1"
    assert str(error) == "HTTP 404 Not Found: Task not found (request id: req-1)"


def test_shape_b_openai_style() -> None:
    """Shape B/E: {"error": {"message", "type"}}."""
    body = b'{"error":{"message":"bad size","type":"invalid_request_error","param":"size"}}'
    error = make_status_error(400, body, {})
    assert isinstance(error, BadRequestError)
    assert "bad size" in str(error)
    assert error.param == "size"


def test_shape_c_task_layer_and_task_not_exist_is_not_found() -> None:
    """Shape C with 400 task_not_exist means "no such task": a NotFoundError."""
    body = b'{"code":"task_not_exist","message":"task_not_exist","data":null}'
    error = make_status_error(400, body, {"X-Oneapi-Request-Id": "2026abc"})
    assert isinstance(error, NotFoundError)
    assert error.status_code == 400
    assert error.code == "task_not_exist"
    assert error.request_id == "2026abc"
    origin = make_status_error(400, b'{"code":"x","message":"task_origin_not_exist"}', {})
    assert isinstance(origin, NotFoundError)


def test_shape_d_middleware() -> None:
    """Shape D: new_api_error with the request id inside the message; not repeated."""
    body = '{"error":{"message":"无效的令牌 (request id: R1)","type":"new_api_error","code":""}}'
    error = make_status_error(401, body.encode(), {"X-Oneapi-Request-Id": "R1"})
    assert isinstance(error, AuthenticationError)
    assert "无效的令牌" in error.message
    assert "AIO88_API_KEY" in error.message
    assert str(error).count("R1") == 1
    assert error.type == "new_api_error"


def test_shape_f_empty_429() -> None:
    """Shape F: the per-IP limiter's empty 429 still says what happened."""
    error = make_status_error(429, b"", {}, retry_after=2.0)
    assert isinstance(error, RateLimitError)
    assert error.retry_after == 2.0
    assert error.body is None
    assert "429 Too Many Requests: (empty body)" in error.message


def test_non_json_body_is_quoted() -> None:
    """An HTML or text error page becomes the message (truncated)."""
    error = make_status_error(502, b"<html>Bad Gateway</html>" + b"x" * 1000, {})
    assert isinstance(error, InternalServerError)
    assert "<html>Bad Gateway</html>" in error.message
    assert len(error.message) < 300


def test_numeric_code_and_string_error() -> None:
    """A numeric code is spelt; {"error": "text"} is read as the message."""
    error = make_status_error(400, b'{"code": 1201, "message": "bad"}', {})
    assert error.code == "1201"
    assert make_status_error(400, b'{"error": "plain"}', {}).message.endswith("plain")


def test_unknown_status_phrase() -> None:
    """A status Python has no phrase for still formats."""
    assert make_status_error(599, b"", {}).message.startswith("HTTP 599 Error")


def test_hierarchy() -> None:
    """The tree as the contract draws it."""
    assert issubclass(APITimeoutError, APIConnectionError)
    assert issubclass(APIConnectionError, APIError)
    assert issubclass(APIStatusError, APIError)
    assert issubclass(APIError, aio88.Aio88Error)
    assert issubclass(WaitTimeoutError, TimeoutError)
    assert issubclass(aio88.TaskFailedError, aio88.Aio88Error)
    assert issubclass(aio88.DownloadError, aio88.Aio88Error)
    assert issubclass(aio88.APIResponseValidationError, APIError)


def test_wait_timeout_message_says_what_to_do() -> None:
    """WaitTimeoutError says the task may still finish and how to wait again."""
    error = WaitTimeoutError("task_1", 5.0)
    assert "task_1" in str(error) and "never retrieved" in str(error)
    assert error.task is None and error.timeout == 5.0
