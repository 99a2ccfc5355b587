"""pytest fixtures for code that uses aio88: a running emulator and a client bound to it.

Registered automatically (entry point ``pytest11``) when aio88 is installed. The fixtures
are async and run under anyio's pytest plugin (on asyncio)::

    @pytest.mark.anyio
    async def test_my_service(aio88_client, aio88_emulator):
        task = await aio88_client.videos.create(prompt="a red fox")
        aio88_emulator.complete(task.id)
        assert (await aio88_client.videos.wait(task.id)).status == "succeeded"

Configure the emulator per test with the ``aio88_emulator`` marker, whose keyword
arguments go to :class:`~aio88.testing.Emulator`::

    @pytest.mark.aio88_emulator(dialect="newapi", duration=None)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

from .._config import RetryPolicy

if TYPE_CHECKING:
    from .. import Client
    from ._emulator import Emulator

# The client itself is imported inside the fixtures: only tests that use them need it.

#: Retries fast enough for tests: the policy's rules, none of its patience.
FAST_RETRY = RetryPolicy(attempts=4, backoff_initial=0.01, backoff_max=0.05)


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``aio88_emulator`` marker."""
    config.addinivalue_line(
        "markers",
        "aio88_emulator(**kwargs): keyword arguments for the aio88_emulator fixture's Emulator",
    )


@pytest.fixture
async def aio88_emulator(
    request: pytest.FixtureRequest, anyio_backend: Any
) -> AsyncIterator[Emulator]:
    """A running :class:`~aio88.testing.Emulator` on loopback (docs dialect by default)."""
    from ._emulator import Emulator

    marker = request.node.get_closest_marker("aio88_emulator")
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    if hasattr(request, "param") and isinstance(request.param, dict):
        kwargs.update(request.param)
    async with Emulator(**kwargs) as emulator:
        yield emulator


@pytest.fixture
async def aio88_client(aio88_emulator: Emulator, anyio_backend: Any) -> AsyncIterator[Client]:
    """An open :class:`~aio88.Client` talking to ``aio88_emulator``, with fast retries."""
    from .. import Client

    async with Client(
        api_key=aio88_emulator.api_key, base_url=aio88_emulator.base_url, retry=FAST_RETRY
    ) as client:
        yield client
