"""CPCE R.53-3 I: the 15-day window, counted in Paris civil days."""

import datetime as dt

import pytest

from pli.domain.window import PARIS, last_day_to_decide, window_closes_at

UTC = dt.UTC


def paris(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=PARIS)


CASES = [
    # notified at (Paris), last day to decide, window closes at (Paris)
    pytest.param(
        paris(2026, 1, 5, 10, 0),
        dt.date(2026, 1, 20),
        paris(2026, 1, 21),
        id="ordinary winter week",
    ),
    pytest.param(
        paris(2026, 1, 31, 9, 0),
        dt.date(2026, 2, 15),
        paris(2026, 2, 16),
        id="month end",
    ),
    pytest.param(
        paris(2026, 12, 20, 18, 0),
        dt.date(2027, 1, 4),
        paris(2027, 1, 5),
        id="year end",
    ),
    pytest.param(
        paris(2028, 2, 14, 12, 0),
        dt.date(2028, 2, 29),
        paris(2028, 3, 1),
        id="leap day is a day",
    ),
    pytest.param(
        paris(2026, 3, 20, 11, 0),
        dt.date(2026, 4, 4),
        paris(2026, 4, 5),
        id="spring daylight-saving change inside the window",
    ),
    pytest.param(
        paris(2026, 10, 20, 11, 0),
        dt.date(2026, 11, 4),
        paris(2026, 11, 5),
        id="autumn daylight-saving change inside the window",
    ),
    pytest.param(
        paris(2026, 3, 10, 23, 59),
        dt.date(2026, 3, 25),
        paris(2026, 3, 26),
        id="a minute before Paris midnight counts as that day",
    ),
    pytest.param(
        paris(2026, 3, 11, 0, 0),
        dt.date(2026, 3, 26),
        paris(2026, 3, 27),
        id="Paris midnight starts the next day",
    ),
]


@pytest.mark.parametrize(("notified", "last_day", "closes"), CASES)
def test_window_opens_the_day_after_notification_and_lasts_15_paris_days(
    notified: dt.datetime, last_day: dt.date, closes: dt.datetime
) -> None:
    assert last_day_to_decide(notified) == last_day
    assert window_closes_at(notified) == closes
    assert window_closes_at(notified).tzinfo == UTC


def test_notification_late_in_utc_counts_in_paris_days() -> None:
    # 23:30 UTC on 5 January is already 6 January in Paris.
    notified = dt.datetime(2026, 1, 5, 23, 30, tzinfo=UTC)
    assert last_day_to_decide(notified) == dt.date(2026, 1, 21)


def test_window_across_spring_change_is_not_15_times_24_hours() -> None:
    notified = paris(2026, 3, 20, 11, 0)
    length = window_closes_at(notified) - notified
    naive = dt.timedelta(days=16) - dt.timedelta(hours=11)
    assert length == naive - dt.timedelta(hours=1)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError):
        window_closes_at(dt.datetime(2026, 1, 5, 10, 0))
