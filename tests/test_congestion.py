"""Congestion control after 429s: one decrease per window, a floor, growth with successes
and with time (pure arithmetic), and a poller that neither collapses nor stays low."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from aio88 import Client, Poller, RetryPolicy
from aio88._config import CONGESTION_RECOVERY
from aio88._congestion import Congestion
from aio88.testing import Emulator

pytestmark = pytest.mark.anyio


def test_a_burst_of_429s_from_one_window_halves_once() -> None:
    c = Congestion(64, floor=8, recovery=10.0, now=0.0)
    assert c.signal(now=1.0, sent_at=0.9)
    assert c.current(1.0) == 32
    # The answers to the 63 others sent before 1.0 come back 429 too: same window.
    assert not any(c.signal(now=1.0 + i / 1000, sent_at=0.95) for i in range(63))
    assert c.current(1.0) == 32
    assert c.signal(now=1.2, sent_at=1.1)  # sent after the decrease: a new window
    grown = 32 + 0.2 * (64 - 8) / 10.0  # time's growth over the 0.2 s between
    assert c.current(1.2) == pytest.approx(grown / 2)


def test_never_below_the_floor_and_back_with_time() -> None:
    c = Congestion(64, floor=8, recovery=10.0, now=0.0)
    for i in range(20):
        c.signal(now=i / 100, sent_at=i / 100)
    assert c.current(0.19) == pytest.approx(8, rel=0.01)
    assert c.time_until(36, now=0.19) == pytest.approx(5.0, rel=0.01)
    assert c.time_until(65, now=0.19) == math.inf
    assert c.time_until(8, now=0.19) == 0.0
    assert c.lowered
    assert c.current(5.19) == pytest.approx(36, rel=0.01)  # linear: floor to ceiling in 10 s
    assert c.current(10.2) == 64
    assert not c.lowered  # seen back at the ceiling (time only moves forward)


def test_successes_grow_it_one_unit_per_window() -> None:
    c = Congestion(64, floor=8, recovery=1e9, now=0.0)  # time's growth out of the way
    c.signal(now=0.0, sent_at=0.0)
    assert c.current(0.0) == 32
    for _ in range(32):  # one window of successes at 32
        c.success(now=0.0)
    assert c.current(0.0) == pytest.approx(33, rel=0.01)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        Congestion(4, floor=8, recovery=1.0, now=0.0)


@asynccontextmanager
async def poller_after_a_burst() -> AsyncIterator[Poller]:
    """A poller of 64 tasks at concurrency 64 whose first round met 20 429s without
    Retry-After, once all of them (and their retries) have been answered."""
    retry = RetryPolicy(backoff_initial=0.01, backoff_max=0.05)
    async with (
        Emulator(duration=None) as emu,
        Client("sk-test", base_url=emu.base_url, retry=retry) as client,
    ):
        tasks = [await client.videos.create(prompt=f"fox {i}") for i in range(64)]
        emu.inject("429", times=20, method="GET")  # no Retry-After: the poller adapts
        async with client.poller(concurrency=64) as poller:
            for task in tasks:
                poller.add(task.id, kind="video")
            with anyio.fail_after(5):
                while emu.count("GET") < 64 + 20:  # noqa: ASYNC110 - the log has no event
                    await anyio.sleep(0.01)
            yield poller


async def test_a_burst_of_429s_does_not_collapse_the_poller() -> None:
    """64 polls in flight, 20 of them answered 429 at once: the concurrency halves once
    (not to 1), and each of them is retried and answered."""
    async with poller_after_a_burst() as poller:
        stats = poller.stats()
        assert 32 <= stats.concurrency < 64  # 64 halved once (and regrowing), not to 1
        assert stats.rate_limited == 20 and stats.errors == 0  # each retried, and answered


def test_time_alone_brings_it_back_within_the_recovery() -> None:
    """After signals, time alone brings the amount back to the ceiling, as configured."""
    assert CONGESTION_RECOVERY > 0
    c = Congestion(64, floor=8, recovery=CONGESTION_RECOVERY, now=0.0)
    for i in range(5):
        c.signal(now=i * 0.01, sent_at=i * 0.01)
    assert c.current(0.05) < 64
    assert c.current(0.05 + CONGESTION_RECOVERY) == 64


@pytest.mark.slow
@pytest.mark.timeout(30)
async def test_a_poller_left_idle_after_a_burst_returns_to_its_concurrency() -> None:
    """429s without Retry-After halve the concurrency; then, with no poll at all, time
    alone brings it back to what it was configured for."""
    async with poller_after_a_burst() as poller:
        assert poller.stats().concurrency < 64
        await anyio.sleep(CONGESTION_RECOVERY + 0.2)  # idle: the next polls are far off
        assert poller.stats().concurrency == 64
