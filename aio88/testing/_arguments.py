"""What the emulator's command and the ``aio88`` command share in reading their command
lines: the usage error, a parser whose mistakes end in one line, and the value types.

It lives with the emulator, which imports nothing from the client; the ``aio88`` command,
which runs the emulator anyway, takes it from here.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

__all__ = [
    "OneLineParser",
    "UsageError",
    "number",
    "positive_seconds",
    "rate",
    "seconds",
    "whole_number",
]


class UsageError(Exception):
    """Bad input: reported on stderr with exit code 2, before anything is sent."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, whose mistakes end as every other usage error does: one line on stderr
    (and an ``error`` event with ``--json``), exit 2, not the usage text."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def number(text: str) -> float:
    """A finite number (an argparse ``type``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def rate(text: str) -> float:
    """A share, from 0 to 1."""
    value = number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def seconds(text: str) -> float:
    """Seconds, 0 or more."""
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def positive_seconds(text: str) -> float:
    """Seconds, more than 0."""
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """The type of a whole number from ``low`` (to ``high``, if given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {text}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value

    return parse
