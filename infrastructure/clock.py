"""The wall clock, kept out of the domain and handed in from here."""

from __future__ import annotations

import datetime as dt

__all__ = ["SystemClock"]


class SystemClock:
    """The machine's clock, in UTC; proofs label it non-qualified."""

    def now(self) -> dt.datetime:
        """Return the current instant."""
        return dt.datetime.now(dt.UTC)
