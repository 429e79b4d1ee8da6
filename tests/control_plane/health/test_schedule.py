"""The keep-hot schedule: keywords, UTC windows (crossing midnight, wrapping the week), and the
errors that name the wrong part, at start-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from control_plane.health.schedule import in_schedule, parse_schedule
from control_plane.settings import Settings


def utc(day: int, hour: int, minute: int = 0) -> datetime:
    """2024-01-01 was a Monday: day 0 is Monday, 6 Sunday."""
    return datetime(2024, 1, 1 + day, hour, minute, tzinfo=UTC)


MON, TUE, WED, THU, FRI, SAT, SUN = range(7)


def test_keywords_always_never_and_pending_follow_waiting_work() -> None:
    noon = utc(WED, 12)
    assert in_schedule("always", noon, work_waiting=False)
    assert not in_schedule("never", noon, work_waiting=True)
    assert in_schedule("pending", noon, work_waiting=True)
    assert not in_schedule("pending", noon, work_waiting=False)


def test_learned_follows_the_forecast_and_combines_with_windows_and_pending() -> None:
    noon, night = utc(WED, 12), utc(WED, 23)
    assert in_schedule("learned", noon, work_waiting=False, work_expected=True)
    assert not in_schedule("learned", noon, work_waiting=True, work_expected=False)
    assert not in_schedule("pending", noon, work_waiting=False, work_expected=True)
    mixed = parse_schedule("learned, pending; Mon-Fri 08:00-20:00")
    assert (mixed.learned, mixed.pending, len(mixed.windows)) == (True, True, 1)
    assert in_schedule(mixed, noon, work_waiting=False)
    assert in_schedule(mixed, night, work_waiting=False, work_expected=True)
    assert not in_schedule(mixed, night, work_waiting=False)
    with pytest.raises(ValueError, match="`learned`"):
        parse_schedule("learnt")


def test_windows_cover_day_ranges_and_single_days_with_exclusive_ends() -> None:
    schedule = "Mon-Fri 08:00-20:00, Sat 10:00-14:00"
    assert in_schedule(schedule, utc(WED, 12), work_waiting=False)
    assert in_schedule(schedule, utc(MON, 8), work_waiting=False)
    assert not in_schedule(schedule, utc(FRI, 20), work_waiting=False)
    assert not in_schedule(schedule, utc(TUE, 7, 59), work_waiting=False)
    assert in_schedule(schedule, utc(SAT, 13, 59), work_waiting=False)
    assert not in_schedule(schedule, utc(SAT, 14), work_waiting=False)
    assert not in_schedule(schedule, utc(SUN, 12), work_waiting=True)


def test_window_crossing_midnight_belongs_to_its_day_and_the_morning_after() -> None:
    schedule = "Fri 22:00-02:00"
    assert in_schedule(schedule, utc(FRI, 23), work_waiting=False)
    assert in_schedule(schedule, utc(SAT, 1, 59), work_waiting=False)
    assert not in_schedule(schedule, utc(SAT, 2), work_waiting=False)
    assert not in_schedule(schedule, utc(FRI, 21, 59), work_waiting=False)
    assert not in_schedule(schedule, utc(FRI, 1), work_waiting=False)  # Thursday's night
    assert not in_schedule(schedule, utc(SAT, 23), work_waiting=False)


def test_day_ranges_wrap_the_week_and_semicolons_and_pending_combine() -> None:
    weekend = "Fri-Mon 00:00-24:00"
    assert in_schedule(weekend, utc(SUN, 3), work_waiting=False)
    assert in_schedule(weekend, utc(MON, 23, 59), work_waiting=False)
    assert not in_schedule(weekend, utc(TUE, 12), work_waiting=False)
    mixed = "pending; sat 10:00-14:00"
    assert parse_schedule(mixed).pending
    assert in_schedule(mixed, utc(SAT, 11), work_waiting=False)
    assert in_schedule(mixed, utc(TUE, 3), work_waiting=True)
    assert not in_schedule(mixed, utc(TUE, 3), work_waiting=False)
    every_day = "06:00-07:00"
    assert all(in_schedule(every_day, utc(day, 6, 30), work_waiting=False) for day in range(7))


def test_times_in_other_zones_are_read_in_utc() -> None:
    nine_in_paris = datetime(2024, 1, 3, 9, 30, tzinfo=timezone(timedelta(hours=1)))
    assert not in_schedule("Wed 09:00-10:00", nine_in_paris, work_waiting=False)
    assert in_schedule("Wed 08:00-09:00", nine_in_paris, work_waiting=False)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("Mon-Fry 08:00-20:00", "unknown day 'Fry'"),
        ("Mon 25:00-26:00", "'25:00' is not a time"),
        ("always, Mon 08:00-10:00", "must stand alone"),
        ("", "empty keep-hot schedule"),
        ("Mon 08:00-08:00", "starts and ends at the same time"),
        ("weekdays 8-20", "cannot read 'weekdays 8-20'"),
    ],
)
def test_bad_schedules_name_the_wrong_part(schedule: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_schedule(schedule)
    assert "Mon-Fri 08:00-20:00" in str(info.value)  # and show the expected form


def test_settings_refuse_a_bad_schedule_at_start_up() -> None:
    with pytest.raises(ValidationError, match="unknown day 'Fry'"):
        Settings(keep_hot_schedule="Mon-Fry 08:00-20:00")
    assert Settings(keep_hot_schedule=" Sat 10:00-14:00 ").keep_hot_schedule == "Sat 10:00-14:00"
    assert (Settings().keep_hot_schedule, Settings().keep_hot_workers) == ("pending", 1)
