"""The decision window of a registered letter, as a calendar rule.

CPCE R.53-3 I: the recipient may accept or refuse during fifteen days
counted from the day after the notification was sent. Days are civil days
in Europe/Paris, so a window that spans a daylight-saving change is 15
calendar days long, not 15 x 24 hours.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

__all__ = ["PARIS", "WINDOW_DAYS", "window_closes_at", "last_day_to_decide"]

PARIS = ZoneInfo("Europe/Paris")
WINDOW_DAYS = 15


def last_day_to_decide(notified_at: dt.datetime) -> dt.date:
    """The last Paris civil day on which the recipient may still decide."""
    if notified_at.tzinfo is None:
        raise ValueError("notification time must be timezone-aware")
    # CPCE R.53-3 I: day 1 is the day after the notification left.
    return notified_at.astimezone(PARIS).date() + dt.timedelta(days=WINDOW_DAYS)


def window_closes_at(notified_at: dt.datetime) -> dt.datetime:
    """The instant (UTC) the window closes: Paris midnight ending its last day."""
    day_after_last = last_day_to_decide(notified_at) + dt.timedelta(days=1)
    midnight = dt.datetime.combine(day_after_last, dt.time(0), tzinfo=PARIS)
    return midnight.astimezone(dt.UTC)
