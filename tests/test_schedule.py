"""Schedule: the docs' tiers, fixed, backoff, jitter and server hints. Pure, no sleeping."""

from __future__ import annotations

import math

import pytest

from aio88 import Schedule

NO_JITTER = Schedule(jitter=0.0)


@pytest.mark.parametrize(
    ("age", "delay"), [(0, 5.0), (29.9, 5.0), (30, 10.0), (119, 10.0), (120, 30.0), (3600, 30.0)]
)
def test_default_follows_the_docs_tiers(age: float, delay: float) -> None:
    """5 s until 30 s, 10 s until 2 min, 30 s after."""
    assert NO_JITTER.next_delay(age, polls=3) == delay


def test_default_first_poll_after_two_seconds() -> None:
    """The first poll of a new task comes after about 2 s."""
    assert Schedule().first == 2.0


def test_jitter_spreads_by_ten_percent() -> None:
    """±10 %: the extremes of the random draw give 0.9x and 1.1x."""
    schedule = Schedule()
    assert schedule.next_delay(0, 1, rand=lambda: 0.0) == pytest.approx(4.5)
    assert schedule.next_delay(0, 1, rand=lambda: 1.0) == pytest.approx(5.5)
    assert schedule.next_delay(0, 1, rand=lambda: 0.5) == pytest.approx(5.0)


def test_server_hint_wins_above_the_floor() -> None:
    """A hint replaces the schedule's delay but never goes below the floor."""
    schedule = Schedule(floor=1.0)
    assert schedule.next_delay(0, 1, hint=3.0) == 3.0
    assert schedule.next_delay(0, 1, hint=0.01) == 1.0
    ignoring = Schedule(jitter=0, use_server_hint=False)
    assert ignoring.next_delay(0, 1, hint=3.0) == 5.0


def test_fixed() -> None:
    """Schedule.fixed(s) polls every s seconds, first poll included."""
    schedule = Schedule.fixed(0.5)
    assert schedule.first == 0.5
    assert [schedule.next_delay(age, 1) for age in (0, 100, 10_000)] == [0.5, 0.5, 0.5]
    assert "inf" in repr(schedule)


def test_backoff() -> None:
    """Schedule.backoff grows geometrically to its maximum: the docs' alternative."""
    schedule = Schedule.backoff(2.0, 1.5, 30.0, jitter=0.0)
    delays = [schedule.next_delay(0, polls) for polls in range(9)]
    assert delays[:4] == [2.0, 3.0, 4.5, 6.75]
    assert delays[-1] == 30.0
    assert repr(schedule) == "Schedule.backoff(2, 1.5, 30)"


@pytest.mark.parametrize(
    "make",
    [
        lambda: Schedule(tiers=((10.0, 1.0),)),
        lambda: Schedule(tiers=()),
        lambda: Schedule(jitter=1.0),
        lambda: Schedule(first=-1),
        lambda: Schedule(tiers=((math.inf, 0.0),)),
        lambda: Schedule.backoff(0),
        lambda: Schedule.backoff(2, 0.5),
        lambda: Schedule.backoff(10, 2, 5),
    ],
)
def test_nonsense_is_refused(make: object) -> None:
    """Impossible schedules fail at construction."""
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]
