"""pytest fixtures for code that uses aio88: a running emulator and a client bound to it.

Registered automatically (entry point ``pytest11``) when aio88 is installed. The fixtures
start on the event loop of the test that uses them, whichever plugin runs that test:
anyio's (``@pytest.mark.anyio``, or ``anyio_mode = "auto"``) or pytest-asyncio's
(``@pytest.mark.asyncio``, or ``asyncio_mode = "auto"``; any ``loop_scope``)::

    @pytest.mark.anyio  # or @pytest.mark.asyncio, or neither in either plugin's auto mode
    async def test_my_service(aio88_client, aio88_emulator):
        task = await aio88_client.videos.create(prompt="a red fox")
        aio88_emulator.complete(task.id)
        assert (await aio88_client.videos.wait(task.id)).status == "succeeded"

Configure the emulator per test with the ``aio88_emulator`` marker, whose keyword
arguments go to :class:`~aio88.testing.Emulator`::

    @pytest.mark.aio88_emulator(dialect="newapi", duration=None)
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import pytest

from .._config import RetryPolicy

if TYPE_CHECKING:
    from .. import Client
    from ._emulator import Emulator

# The client itself is imported inside the fixtures: only tests that use them need it.

#: Retries fast enough for tests: the policy's rules, none of its patience.
FAST_RETRY = RetryPolicy(attempts=4, backoff_initial=0.01, backoff_max=0.05)

#: A scope pytest-asyncio can run a test's event loop in.
_LoopScope = Literal["function", "class", "module", "package", "session"]

#: The loop scopes pytest-asyncio can run a test in; the fixtures have a variant for each.
_LOOP_SCOPES: tuple[_LoopScope, ...] = ("function", "class", "module", "package", "session")

# Why the public fixtures are synchronous and pick an async variant per test: an async
# fixture is run by whichever plugin claims it, and the two plugins claim differently
# (anyio's takes any async fixture of a test that uses ``anyio_backend``; pytest-asyncio's
# takes those marked with its own decorator, or every one in auto mode). A fixture claimed
# by one plugin while the other runs the test starts the emulator and the client's session
# on a loop the test never runs on: aiohttp then finds no current task ("Timeout context
# manager should be used inside a task"). So the choice is made per test, at setup, by
# asking which plugin will run it, and on pytest-asyncio which loop scope it runs in.

#: The Emulator's keyword arguments for the current test (marker, then indirect param),
#: from the public fixture to the variant that starts the emulator.
_EMULATOR_KWARGS = pytest.StashKey[dict[str, Any]]()


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``aio88_emulator`` marker."""
    config.addinivalue_line(
        "markers",
        "aio88_emulator(**kwargs): keyword arguments for the aio88_emulator fixture's Emulator",
    )


def _asyncio_loop_scope(item: pytest.Item) -> str:
    """The loop scope pytest-asyncio runs ``item`` in: its marker's, else the default."""
    marker = item.get_closest_marker("asyncio")
    if marker is not None:
        scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")
        if scope:
            return str(scope)
    try:
        return str(item.config.getini("asyncio_default_test_loop_scope") or "function")
    except ValueError:  # pytest-asyncio before 0.26 has no such option: tests used "function"
        return "function"


def _runner(request: pytest.FixtureRequest) -> str:
    """Which plugin runs the requesting test, as the suffix of the variant fixtures' names:
    ``"anyio"`` or ``"asyncio_<loop scope>"``."""
    item = request.node
    # pytest-asyncio first: when both plugins could take a test, pytest-asyncio runs it
    # (it replaces the test function with a synchronous one, which anyio then leaves alone).
    if isinstance(item, pytest.Item) and request.config.pluginmanager.has_plugin("asyncio"):
        import pytest_asyncio

        # is_async_test came with 0.23; before it, pytest-asyncio's tests end below.
        is_async_test = getattr(pytest_asyncio, "is_async_test", None)
        if is_async_test is not None and is_async_test(item):
            if not _HAS_ASYNCIO_VARIANTS:
                pytest.fail(
                    "aio88's fixtures need pytest-asyncio 0.24 or newer to run under it: "
                    "upgrade it, or run the test with anyio's plugin (@pytest.mark.anyio)",
                    pytrace=False,
                )
            return f"asyncio_{_asyncio_loop_scope(item)}"
    if "anyio_backend" in request.fixturenames:
        backend = request.getfixturevalue("anyio_backend_name")
        if backend != "asyncio":
            pytest.fail(
                f"aio88's fixtures need asyncio (aiohttp's loop), not {backend}: give the "
                'test an anyio_backend fixture that returns "asyncio"',
                pytrace=False,
            )
        return "anyio"
    pytest.fail(
        f"{request.fixturename} needs an async test run by anyio's pytest plugin "
        "(@pytest.mark.anyio) or by pytest-asyncio (@pytest.mark.asyncio, or "
        'asyncio_mode = "auto")',
        pytrace=False,
    )


@pytest.fixture
def aio88_emulator(request: pytest.FixtureRequest) -> Emulator:
    """A running :class:`~aio88.testing.Emulator` on loopback (docs dialect by default),
    started on the test's own event loop."""
    marker = request.node.get_closest_marker("aio88_emulator")
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    if hasattr(request, "param") and isinstance(request.param, dict):
        kwargs.update(request.param)
    request.node.stash[_EMULATOR_KWARGS] = kwargs
    emulator: Emulator = request.getfixturevalue(f"_aio88_emulator_on_{_runner(request)}")
    return emulator


@pytest.fixture
def aio88_client(aio88_emulator: Emulator, request: pytest.FixtureRequest) -> Client:
    """An open :class:`~aio88.Client` talking to ``aio88_emulator``, with fast retries,
    opened on the test's own event loop."""
    client: Client = request.getfixturevalue(f"_aio88_client_on_{_runner(request)}")
    return client


@asynccontextmanager
async def _running_emulator(request: pytest.FixtureRequest) -> AsyncIterator[Emulator]:
    """The emulator for the current test, with the kwargs ``aio88_emulator`` gathered."""
    from ._emulator import Emulator

    async with Emulator(**request.node.stash[_EMULATOR_KWARGS]) as emulator:
        yield emulator


@asynccontextmanager
async def _open_client(emulator: Emulator) -> AsyncIterator[Client]:
    """A client for ``emulator`` with retries fast enough for tests."""
    from .. import Client

    async with Client(
        api_key=emulator.api_key, base_url=emulator.base_url, retry=FAST_RETRY
    ) as client:
        yield client


# The variants under anyio: plain async fixtures, which anyio's plugin runs on its runner
# (the test's loop) because the test uses ``anyio_backend``.


@pytest.fixture(name="_aio88_emulator_on_anyio")
async def _emulator_on_anyio(request: pytest.FixtureRequest) -> AsyncIterator[Emulator]:
    """``aio88_emulator`` for a test that anyio's plugin runs."""
    async with _running_emulator(request) as emulator:
        yield emulator


@pytest.fixture(name="_aio88_client_on_anyio")
async def _client_on_anyio(aio88_emulator: Emulator) -> AsyncIterator[Client]:
    """``aio88_client`` for a test that anyio's plugin runs."""
    async with _open_client(aio88_emulator) as client:
        yield client


def _asyncio_variants(loop_scope: _LoopScope) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The two fixtures for tests that pytest-asyncio runs in ``loop_scope``: its own
    decorator, so that it claims them in strict mode too, on the test's loop."""
    import pytest_asyncio

    @pytest_asyncio.fixture(
        loop_scope=loop_scope,
        name=f"_aio88_emulator_on_asyncio_{loop_scope}",
    )
    async def emulator(request: pytest.FixtureRequest) -> AsyncIterator[Emulator]:
        async with _running_emulator(request) as running:
            yield running

    @pytest_asyncio.fixture(
        loop_scope=loop_scope,
        name=f"_aio88_client_on_asyncio_{loop_scope}",
    )
    async def client(aio88_emulator: Emulator) -> AsyncIterator[Client]:
        async with _open_client(aio88_emulator) as opened:
            yield opened

    return emulator, client


# pytest collects fixtures from the module's names, so each variant gets one; without
# pytest-asyncio installed there is nothing to define (and no test it could run).
_HAS_ASYNCIO_VARIANTS = False
if importlib.util.find_spec("pytest_asyncio") is not None:
    try:
        for _scope in _LOOP_SCOPES:
            (
                globals()[f"_emulator_on_asyncio_{_scope}"],
                globals()[f"_client_on_asyncio_{_scope}"],
            ) = _asyncio_variants(_scope)
        _HAS_ASYNCIO_VARIANTS = True
    except TypeError:
        # pytest-asyncio before 0.24 has no loop_scope. This plugin loads for every pytest
        # run, so it must not fail here: the tests pytest-asyncio runs are told (_runner).
        pass
