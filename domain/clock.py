"""The clock the domain is given: the domain never reads the wall clock."""

from __future__ import annotations

import datetime as dt
from typing import Protocol

__all__ = ["Clock", "FixedClock"]


class Clock(Protocol):
    """Something that tells the current time as an aware UTC datetime."""

    def now(self) -> dt.datetime:
        """Return the current instant."""
        ...


class FixedClock:
    """A clock that says what it was set to; for tests and replays."""

    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def now(self) -> dt.datetime:
        """Return the instant the clock was set to."""
        return self.at

    def advance(self, delta: dt.timedelta) -> None:
        """Move the clock forward."""
        self.at = self.at + delta
