"""Wire models: every dialect and spelling the server is known to send decodes right."""

from __future__ import annotations

import msgspec
import pytest

from aio88 import GenerationTask, Status, TaskError, Video
from aio88._models import (
    ResponseShapeError,
    decode_generation,
    decode_video,
    normalize_status,
    parse_progress,
)

# (raw status, expected) for every spelling in 88api-api.md §5, plus the synonyms.
STATUSES = [
    ("queued", Status.QUEUED),
    ("processing", Status.IN_PROGRESS),
    ("in_progress", Status.IN_PROGRESS),
    ("succeeded", Status.SUCCEEDED),
    ("failed", Status.FAILED),
    ("completed", Status.SUCCEEDED),
    ("unknown", Status.QUEUED),
    ("NOT_START", Status.QUEUED),
    ("SUBMITTED", Status.QUEUED),
    ("QUEUED", Status.QUEUED),
    ("IN_PROGRESS", Status.IN_PROGRESS),
    ("SUCCESS", Status.SUCCEEDED),
    ("FAILURE", Status.FAILED),
    ("UNKNOWN", Status.QUEUED),
    ("success", Status.SUCCEEDED),
    ("complete", Status.SUCCEEDED),
    ("succeed", Status.SUCCEEDED),
    ("finished", Status.SUCCEEDED),
    ("done", Status.SUCCEEDED),
    ("failure", Status.FAILED),
    ("fail", Status.FAILED),
    ("error", Status.FAILED),
    ("cancelled", Status.FAILED),
    ("canceled", Status.FAILED),
    (" Completed ", Status.SUCCEEDED),
    ("something-new", Status.QUEUED),
]


@pytest.mark.parametrize(("raw", "expected"), STATUSES, ids=[raw for raw, _ in STATUSES])
def test_every_status_spelling_normalises(raw: str, expected: Status) -> None:
    """Each documented or observed status maps to its Status; unknown words stay pending."""
    assert normalize_status(raw) is expected
    task = decode_video(msgspec.json.encode({"id": "t", "status": raw}))
    assert task.status is expected
    assert task.raw_status == raw
    assert task.done is expected.done


def test_missing_status_is_queued() -> None:
    """A task without a status is pending, never finished."""
    assert normalize_status(None) is Status.QUEUED
    assert decode_video(b'{"id": "t"}').raw_status == ""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (50, 50),
        ("50%", 50),
        ("50", 50),
        (" 7 % ", 7),
        (99.9, 99),
        (150, 100),
        (-3, 0),
        ("", None),
        ("abc", None),
        (None, None),
        (True, None),
        (float("nan"), None),
    ],
)
def test_progress_parses_numbers_and_percent_strings(raw: object, expected: int | None) -> None:
    """Progress comes as 50 or "50%"; both read as an int clamped to 0-100."""
    assert parse_progress(raw) == expected


def test_docs_generation_shape() -> None:
    """The documented flat 88API-format task (the docs' own example)."""
    body = b"""{"error": null, "format": "mp4", "metadata": {"duration": 5, "fps": 30,
      "height": 512, "seed": 20231234, "width": 512}, "status": "succeeded",
      "task_id": "abcd1234efgh", "url": "https://example.com/video.mp4"}"""
    task = decode_generation(body)
    assert isinstance(task, GenerationTask)
    assert task.id == "abcd1234efgh"
    assert task.status is Status.SUCCEEDED
    assert task.url == "https://example.com/video.mp4"
    assert task.format == "mp4"
    assert task.metadata is not None and task.metadata.fps == 30
    assert task.error is None
    assert task.progress is None


def test_newapi_envelope_is_unwrapped() -> None:
    """The server's {"code":"success","data":{TaskDto}} envelope, with its int row id."""
    body = b"""{"code": "success", "message": "", "data": {"id": 42, "task_id": "task_abc",
      "platform": "kling", "action": "generate", "status": "IN_PROGRESS", "progress": "50%",
      "fail_reason": "", "result_url": "", "submit_time": 1, "quota": 3,
      "data": {"vendor": {"deep": [1, 2]}}}}"""
    task = decode_generation(body)
    assert task.id == "task_abc"
    assert task.status is Status.IN_PROGRESS
    assert task.raw_status == "IN_PROGRESS"
    assert task.progress == 50
    assert task.url is None
    assert task.platform == "kling"
    assert task.error is None


def test_newapi_failure_reads_fail_reason() -> None:
    """A TaskDto failure carries its reason in fail_reason."""
    body = b'{"code":"success","data":{"task_id":"t","status":"FAILURE","fail_reason":"nsfw"}}'
    task = decode_generation(body)
    assert task.status is Status.FAILED
    assert task.error == TaskError(message="nsfw")


def test_fail_reason_is_ignored_unless_failed() -> None:
    """Legacy data puts a URL in fail_reason of a finished task; that is no error."""
    task = decode_generation(b'{"task_id":"t","status":"SUCCESS","fail_reason":"http://x"}')
    assert task.error is None


def test_docs_video_shape() -> None:
    """The documented /v1/videos object."""
    body = b"""{"id": "video_123", "object": "video", "model": "sora-2", "created_at": 1640995200,
      "status": "succeeded", "progress": 100, "expires_at": 1641081600, "size": "1920x1080",
      "seconds": "5", "quality": "standard", "url": "https://example.com/video.mp4"}"""
    video = decode_video(body)
    assert isinstance(video, Video)
    assert (video.id, video.status, video.progress) == ("video_123", Status.SUCCEEDED, 100)
    assert video.expires_at == 1641081600
    assert video.seconds == "5"
    assert video.url == "https://example.com/video.mp4"


def test_newapi_video_completed_with_metadata_url() -> None:
    """The server's OpenAI-format object: completed, task_id beside id, URL in metadata."""
    body = b"""{"id": "task_x", "task_id": "task_x", "object": "video", "status": "completed",
      "progress": 100, "completed_at": 5, "metadata": {"url": "https://cdn/v.mp4"},
      "error": null, "brand_new_field": {"x": 1}}"""
    video = decode_video(body)
    assert video.status is Status.SUCCEEDED
    assert video.raw_status == "completed"
    assert video.url == "https://cdn/v.mp4"


@pytest.mark.parametrize(
    ("fields", "url"),
    [
        ({"url": "a"}, "a"),
        ({"video_url": "b"}, "b"),
        ({"result_url": "c"}, "c"),
        ({"metadata": {"url": "d"}}, "d"),
        ({"url": "", "video_url": "", "result_url": "", "metadata": {"url": "d"}}, "d"),
        ({"url": "", "metadata": {"url": ""}}, None),
        ({"metadata": "a JSON string, not an object"}, None),
    ],
)
def test_url_is_first_non_empty_of_four_places(fields: dict[str, object], url: str | None) -> None:
    """url, video_url, result_url, metadata.url: the first that is not empty."""
    task = decode_video(msgspec.json.encode({"id": "t", **fields}))
    assert task.url == url


def test_id_prefers_task_id_over_id() -> None:
    """The docs' create answer has a display id and the task_id to query with."""
    task = decode_generation(b'{"id": "video_123", "task_id": "abcd", "status": "processing"}')
    assert task.id == "abcd"
    assert decode_video(b'{"id": "video_9"}').id == "video_9"
    assert decode_generation(b'{"id": 17, "status": "queued"}').id == "17"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ({"code": "x", "message": "boom"}, TaskError(code="x", message="boom")),
        ({"code": 1301, "message": "boom"}, TaskError(code=1301, message="boom")),
        ("plain words", TaskError(message="plain words")),
        ({}, None),
        (None, None),
        ("", None),
    ],
)
def test_error_in_any_form(error: object, expected: TaskError | None) -> None:
    """error as an object (string or numeric code), as a string, or empty."""
    task = decode_video(msgspec.json.encode({"id": "t", "status": "failed", "error": error}))
    assert task.error == expected


def test_numbers_sent_as_strings_are_accepted() -> None:
    """The server sends numbers as strings in places; they decode all the same."""
    task = decode_video(b'{"id": "t", "created_at": "1640995200", "seconds": 8}')
    assert task.created_at == 1640995200
    assert task.seconds == 8


def test_not_json_raises_decode_error() -> None:
    """A body that is not JSON is a msgspec.DecodeError (the client wraps it)."""
    with pytest.raises(msgspec.DecodeError):
        decode_video(b"<html>502</html>")


@pytest.mark.parametrize("body", [b"{}", b'{"code": "success", "data": null}', b'{"foo": 1}'])
def test_json_without_an_id_is_not_a_task(body: bytes) -> None:
    """Valid JSON with no task id in it is refused, not returned as an empty task."""
    with pytest.raises(ResponseShapeError, match="no task id"):
        decode_generation(body)


def test_wrong_types_raise() -> None:
    """A field with an impossible type fails decoding rather than passing silently."""
    with pytest.raises(msgspec.ValidationError):
        decode_video(b'{"id": "t", "status": ["not", "a", "string"]}')


def test_repr_shows_the_useful_surface() -> None:
    """repr says id, normalised status, raw status when it differs, progress, url, error."""
    task = decode_generation(
        b'{"code":"success","data":{"task_id":"t1","status":"FAILURE","progress":"100%",'
        b'"fail_reason":"bad"}}'
    )
    assert repr(task) == (
        "GenerationTask(id='t1', status='failed', raw_status='FAILURE', progress=100, error='bad')"
    )
    assert str(Status.SUCCEEDED) == "succeeded"


def test_answers_for_either_id() -> None:
    """A task answers for its task_id and for its id (the generation dialect's display id),
    never for another."""
    task = decode_generation(b'{"task_id": "task_1", "id": "video_9", "status": "queued"}')
    assert task.answers_for("task_1") and task.answers_for("video_9")
    assert not task.answers_for("task_2")
    numbered = decode_generation(b'{"code": "success", "data": {"task_id": "t", "id": 42}}')
    assert numbered.answers_for("42") and numbered.answers_for("t")


def test_redact_text_hides_every_query_in_free_text() -> None:
    """An excerpt of a body quoted in a message never carries a signed link whole."""
    from aio88._models import redact_text

    text = (
        '{"url":"https://cdn.example/v/1.mp4?X-Amz-Signature=abc&X-Amz-Credential=k",'
        ' "other": "see http://x.example/a?token=t"} and https://plain.example/b'
    )
    redacted = redact_text(text)
    assert "abc" not in redacted and "token=t" not in redacted
    assert "https://cdn.example/v/1.mp4?…" in redacted and "http://x.example/a?…" in redacted
    assert "https://plain.example/b" in redacted
