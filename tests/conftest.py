"""Shared fixtures. The emulator and client fixtures come from aio88's own pytest plugin."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """aiohttp is asyncio-only."""
    return "asyncio"


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (free once the probe socket is closed)."""
    from benchmarks._server import free_port

    return free_port()


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read a developer's real key or base URL."""
    monkeypatch.delenv("AIO88_API_KEY", raising=False)
    monkeypatch.delenv("AIO88_BASE_URL", raising=False)


#: Run a test once per dialect: ``@BOTH_DIALECTS`` on a test using ``aio88_emulator``.
BOTH_DIALECTS = pytest.mark.parametrize(
    "aio88_emulator",
    [{"dialect": "docs"}, {"dialect": "newapi"}],
    indirect=True,
    ids=["docs", "newapi"],
)
