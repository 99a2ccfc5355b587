"""The public surface: names, order, docs, and where they claim to live."""

from __future__ import annotations

import importlib.metadata
import inspect

import aio88
import aio88.testing

CONTRACT_NAMES = {
    "Client",
    "GenerationTask",
    "Video",
    "VideoMetadata",
    "TaskError",
    "Status",
    "Schedule",
    "Aio88Error",
    "APIError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "UnprocessableEntityError",
    "RateLimitError",
    "InternalServerError",
    "APIConnectionError",
    "APITimeoutError",
    "APIResponseValidationError",
    "TaskFailedError",
    "WaitTimeoutError",
    "DownloadError",
}


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted, has no duplicates, and every name exists."""
    assert aio88.__all__ == sorted(aio88.__all__)
    assert len(set(aio88.__all__)) == len(aio88.__all__)
    for name in aio88.__all__:
        assert hasattr(aio88, name), name


def test_contract_names_are_exported() -> None:
    """Every name the design contract promises is public."""
    assert set(aio88.__all__) >= CONTRACT_NAMES
    assert aio88.testing.Emulator is not None


def test_public_classes_live_in_aio88() -> None:
    """Public classes present themselves as aio88.X, and each has a docstring."""
    for name in aio88.__all__:
        obj = getattr(aio88, name)
        if inspect.isclass(obj):
            assert obj.__module__ == "aio88", name
            assert obj.__doc__ and obj.__doc__.strip(), name


def test_public_methods_have_docstrings() -> None:
    """Every public method and property of public classes is documented."""
    for name in aio88.__all__:
        obj = getattr(aio88, name)
        if not inspect.isclass(obj) or issubclass(obj, BaseException):
            continue
        for attr, member in vars(obj).items():
            if attr.startswith("_") or not (callable(member) or isinstance(member, property)):
                continue
            assert inspect.getdoc(member), f"{name}.{attr}"


def test_version_matches_metadata() -> None:
    """__version__ is the installed distribution's version."""
    assert aio88.__version__ == importlib.metadata.version("aio88")


def _public_names(module: object) -> set[str]:
    """What a user sees in ``dir(module)``: no private names, no submodules."""
    return {
        name
        for name in dir(module)
        if not name.startswith("_") and not inspect.ismodule(getattr(module, name))
    } | ({"__version__"} if hasattr(module, "__version__") else set())


def test_all_is_exactly_the_public_names() -> None:
    """``__all__`` lists every public name and nothing else (as httpx checks its own):
    nothing leaks into the namespace (``annotations``, helpers), nothing is hidden."""
    assert set(aio88.__all__) == _public_names(aio88)
    assert set(aio88.testing.__all__) == _public_names(aio88.testing)


def test_types_user_code_needs_are_exported() -> None:
    """The types that appear in public signatures can be imported to annotate user code."""
    for name in ("Task", "Kind", "FileInput", "Outcome", "Watch", "Poller", "VideoContent"):
        assert name in aio88.__all__, name
    for name in ("FaultKind", "Dialect", "ManualClock", "Faults"):
        assert name in aio88.testing.__all__, name


def test_testing_classes_live_in_aio88_testing() -> None:
    """aio88.testing's classes present themselves as aio88.testing.X."""
    for name in aio88.testing.__all__:
        obj = getattr(aio88.testing, name)
        if inspect.isclass(obj):
            assert obj.__module__ == "aio88.testing", name
            assert obj.__doc__ and obj.__doc__.strip(), name
